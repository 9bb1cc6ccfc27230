"""The env file of the local cluster `sfhq up` started: the CLI reads it, so no variable has to be set.

`sfhq up` writes `<state dir>/cluster.env` (the state dir is `$SFHQ_STATE_DIR`, default `~/.sfhq`)
with the gateway's address and the cluster's data folder; `sfhq down` removes it. Variables set in
the environment always win over the file.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

ENV_FILE_NAME = "cluster.env"


def state_dir() -> Path:
    return Path(os.environ.get("SFHQ_STATE_DIR") or Path.home() / ".sfhq")


def env_file() -> Path:
    return state_dir() / ENV_FILE_NAME


def read_env(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (shell-quoted values, `export ` prefixes and comments allowed)."""
    values: dict[str, str] = {}
    try:
        text = path.read_text()
    except OSError:
        return values
    for line in text.splitlines():
        line = line.strip().removeprefix("export ").strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        parts = shlex.split(value) if value.strip() else [""]
        values[key.strip()] = parts[0] if parts else ""
    return values


def write_env(path: Path, values: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# written by `sfhq up`; `sfhq down` removes it"]
    lines += [f"export {key}={shlex.quote(value)}" for key, value in values.items()]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def apply_cluster_env() -> dict[str, str]:
    """Put the running local cluster's settings into os.environ where they are not set; returns them."""
    values = read_env(env_file())
    for key, value in values.items():
        os.environ.setdefault(key, value)
    return values
