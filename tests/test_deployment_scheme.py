"""A deployment names its chunk hash, chunk size rule and commitment, and a node refuses
another swarm's.

Changing any is a protocol change (docs/canonical-vector.md#chunks-and-hashes): a swarm
deployed under another scheme has commitments this node cannot check, so loading its
deployment file fails in one line naming both schemes, before anything else happens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from swarmnode import canonical
from swarmnode.exceptions import ConfigError
from swarmnode.ledger import deployment as deployment_module
from swarmnode.ledger.deployment import Deployment
from swarmnode.rules import SwarmParams

ADDRESS = "0x" + "ab" * 20


def written(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    path = tmp_path / "deployment.json"
    Deployment(31337, ADDRESS, 7, SwarmParams(), "http://127.0.0.1:8545").save(path)
    return path, json.loads(path.read_text())


def test_the_deployment_names_canonicals_scheme() -> None:
    """deployment.py repeats the scheme (so reading it imports no torch): it must agree."""
    assert deployment_module.CHUNK_HASH == canonical.CHUNK_HASH == "blake3"
    assert deployment_module.CHUNK_ELEMENTS == canonical.CHUNK_RULE
    assert deployment_module.CHUNK_ELEMENTS == "pow2(numel/1024) in 16..4096"
    assert deployment_module.COMMITMENT == canonical.COMMITMENT == "merkle"


def test_deploy_writes_the_scheme_and_a_node_loads_it(tmp_path: Path) -> None:
    path, raw = written(tmp_path)
    assert raw["chunk_hash"] == "blake3" and raw["commitment"] == "merkle"
    assert raw["chunk_elements"] == "pow2(numel/1024) in 16..4096"
    loaded = Deployment.load(path)
    assert loaded.address == ADDRESS and loaded.block == 7 and loaded.params == SwarmParams()


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"chunk_hash": "sha256"}, "uses sha256 chunk hashes over pow2(numel/1024) in 16..4096"),
        ({"chunk_elements": 1024}, "uses blake3 chunk hashes over 1024-element chunks with a"),
        ({"commitment": None}, "16..4096 chunks with a sha256-list commitment;"),
        (  # the scheme of the BLAKE3 change, before Merkle roots
            {"chunk_elements": 4096, "commitment": None},
            "uses blake3 chunk hashes over 4096-element chunks with a sha256-list commitment;",
        ),
        (
            {"chunk_hash": None, "chunk_elements": None, "commitment": None},
            "sha256 chunk hashes over 4096-element chunks with a sha256-list commitment (it "
            "names none",
        ),
    ],
)
def test_a_deployment_of_another_scheme_is_refused_in_one_line(
    tmp_path: Path, changes: dict[str, Any], says: str
) -> None:
    path, raw = written(tmp_path)
    for key, value in changes.items():
        if value is None:
            del raw[key]  # a file deployed before deployments named their scheme
        else:
            raw[key] = value
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError) as refused:
        Deployment.load(path)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(str(path))
    assert says in message
    assert message.endswith(
        "this node uses blake3 chunk hashes over pow2(numel/1024) in 16..4096 chunks with a "
        "merkle commitment"
    )
