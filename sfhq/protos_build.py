"""Regenerate (or check) the Python stubs in sfhq/v1 from protos/sfhq/v1/*.proto.

`python -m sfhq.protos_build` rewrites them; `--check` fails when the committed stubs are stale.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
OUT_DIR = ROOT / "sfhq" / "v1"


def generate(into: Path) -> list[Path]:
    """Run protoc (from grpcio-tools) on every proto; returns the generated files."""
    from grpc_tools import protoc  # dev dependency: only needed to (re)generate

    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in (PROTO_DIR / "sfhq" / "v1").glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={into}",
        f"--pyi_out={into}",
        f"--grpc_python_out={into}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted((into / "sfhq" / "v1").glob("*.py*"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only check that sfhq/v1 is up to date")
    check = parser.parse_args().check
    with tempfile.TemporaryDirectory() as tmp:
        generated = generate(Path(tmp))
        names = {p.name for p in generated}
        if check:
            committed = {p.name for p in OUT_DIR.glob("*_pb2*.py*")}
            stale = sorted(
                n
                for n in names
                if not (OUT_DIR / n).exists()
                or not filecmp.cmp(Path(tmp) / "sfhq" / "v1" / n, OUT_DIR / n, shallow=False)
            )
            extra = sorted(committed - names)
            if stale or extra:
                print(f"generated stubs are stale: {stale + extra}; run `make protos`", file=sys.stderr)
                return 1
            print(f"protos: {len(names)} generated files up to date")
            return 0
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        for old in OUT_DIR.glob("*_pb2*.py*"):
            old.unlink()
        for path in generated:
            shutil.copy(path, OUT_DIR / path.name)
        (OUT_DIR / "__init__.py").write_text('"""Generated gRPC stubs (make protos). Do not edit."""\n')
        print(f"wrote {len(generated)} files to {OUT_DIR}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
