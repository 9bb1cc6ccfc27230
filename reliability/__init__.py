"""Reliability, security, fuzzing and load tooling (see RELIABILITY.md).

`harness` starts a hardened local cluster (bearer tokens, mutual TLS, a Redis ACL user,
append-only Redis) with hooks to kill, freeze, restart and starve its processes, and checks a
finished job for exactly-once output. `fuzzing` holds the request generators shared by the
in-suite fuzz test and `reliability/fuzz.py`. The scripts `chaos.py`, `fuzz.py` and
`load.py` run the full-size experiments whose figures are recorded in RELIABILITY.md.
"""
