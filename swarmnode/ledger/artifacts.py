"""The compiled contract, committed in the package so that a pip user needs no compiler.

contracts/build.mjs writes these files; tests/test_artifacts.py fails when they drift from
contracts/src.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list[dict[str, Any]]
    bytecode: str
    compiler: str
    source_sha256: str


@cache
def load(name: str = "SwarmLedger") -> Artifact:
    text = (
        resources.files("swarmnode.ledger")
        .joinpath("artifacts")
        .joinpath(f"{name}.json")
        .read_text()
    )
    data = json.loads(text)
    return Artifact(
        name=data["contractName"],
        abi=data["abi"],
        bytecode=data["bytecode"],
        compiler=data["compiler"],
        source_sha256=data["sourceSha256"],
    )
