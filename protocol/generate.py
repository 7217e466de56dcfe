"""Regenerates the gRPC stubs in swarmnode/p2p/ from protocol/*.proto.

Run from anywhere: python protocol/generate.py [--check]. With --check it generates into a
temporary folder and exits 1 if the committed stubs differ (tests/test_protocol.py runs it).
The stubs embed the grpcio-tools version, which pyproject.toml pins exactly.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = sorted((ROOT / "protocol").rglob("*.proto"))
OUTPUTS = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(into: Path) -> list[Path]:
    include = str(ROOT / "protocol")
    args = [
        "grpc_tools.protoc",
        f"-I{include}",
        f"--python_out={into}",
        f"--pyi_out={into}",
        f"--grpc_python_out={into}",
        *(str(p.relative_to(ROOT / "protocol")) for p in PROTOS),
    ]
    # protoc resolves relative proto paths against -I; run it from the include root.
    code = protoc.main(args)
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")
    made = []
    for proto in PROTOS:
        stem = proto.relative_to(ROOT / "protocol").with_suffix("")
        made += [into / f"{stem}{suffix}" for suffix in OUTPUTS]
    return made


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the stubs are stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        made = generate(Path(tmp))
        stale = []
        for path in made:
            target = ROOT / path.relative_to(tmp)
            if args.check:
                if not target.exists() or not filecmp.cmp(path, target, shallow=False):
                    stale.append(target.relative_to(ROOT))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
                print(f"wrote {target.relative_to(ROOT)}")
    if stale:
        print(
            "stale: " + ", ".join(map(str, stale)) + ": run `python protocol/generate.py`",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
