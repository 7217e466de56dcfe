"""The committed contract artifact must be exactly what the pinned solc makes of the sources."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from swarmnode.ledger.artifacts import load

ROOT = Path(__file__).resolve().parent.parent
CONTRACTS = ROOT / "contracts"


def test_artifact_names_the_source_it_was_built_from() -> None:
    source = (CONTRACTS / "src" / "SwarmLedger.sol").read_bytes()
    artifact = load()
    assert artifact.source_sha256 == hashlib.sha256(source).hexdigest(), (
        "contracts/src/SwarmLedger.sol changed: run `node contracts/build.mjs`"
    )
    assert artifact.compiler.startswith("solc 0.8.37")


@pytest.mark.slow
def test_rebuilding_the_contract_reproduces_the_committed_artifact() -> None:
    node = shutil.which("node")
    assert node is not None, "node is needed to rebuild the contract (see README: setup)"
    assert (CONTRACTS / "node_modules" / "solc").is_dir(), (
        "contracts/node_modules is missing: run the setup (`make setup`) first"
    )
    result = subprocess.run(
        [node, "build.mjs", "--check"], cwd=CONTRACTS, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
