"""Writes swarmnode/error_names.py, the contract's custom errors as an enum, from the ABI.

Run after rebuilding the contract (`node contracts/build.mjs`):

    python -m swarmnode.ledger.gen_error_names [--check]

With --check it writes nothing and exits 1 if the committed module differs from what the
ABI gives; tests/test_error_names.py makes the same comparison, so a contract that gains,
loses or renames an error fails the suite until this is rerun (docs/architecture.md#generated-code).
The ABI is read from the committed artifact, so neither solc nor web3 is needed.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from swarmnode.ledger.artifacts import load

TARGET = Path(__file__).resolve().parent.parent / "error_names.py"

_HEADER = '''"""The SwarmLedger contract's custom errors, by name.

GENERATED from the ABI in swarmnode/ledger/artifacts/SwarmLedger.json by
`python -m swarmnode.ledger.gen_error_names`: do not edit; tests/test_error_names.py fails
when this drifts from the ABI (docs/architecture.md#generated-code). It sits outside
swarmnode.ledger and imports nothing, so that swarmnode.exceptions can use it without web3
and without importing the ledger package (whose modules import swarmnode.exceptions).
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["ErrorName"]


class ErrorName(StrEnum):
    """A custom error the contract reverts with; the value is its name in the ABI, so a
    member compares equal to the plain string and prints as it."""

'''


def member_name(error: str) -> str:
    """NotAParticipant -> NOT_A_PARTICIPANT."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", error).upper()


def _arguments(entry: dict[str, Any]) -> str:
    return ", ".join(str(i["name"]) for i in entry["inputs"])


def render(abi: list[dict[str, Any]]) -> str:
    """The module's source for the error entries of `abi`, in name order."""
    errors = sorted((e for e in abi if e["type"] == "error"), key=lambda e: str(e["name"]))
    lines = [f'    {member_name(e["name"])} = "{e["name"]}"  # ({_arguments(e)})' for e in errors]
    return _HEADER + "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the module is stale")
    args = parser.parse_args()
    text = render(load().abi)
    if args.check:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(
                f"stale: {TARGET.name}: run `python -m swarmnode.ledger.gen_error_names`",
                file=sys.stderr,
            )
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
