"""The public API is what `swarmnode.__all__` names, pinned here so that a change to it is a
decision someone makes in a diff, not a side effect of moving a module."""

from __future__ import annotations

import subprocess
import sys

import pytest

import swarmnode

PUBLIC = {
    "__version__",
    "SwarmNode",
    "SwarmCallback",
    "Syncer",
    "FlowerNode",
    "LivePeer",
    "RoundSettings",
    "RoundResult",
    "RoundOutcome",
    "Task",
    "LocalTrainer",
    "SwarmParams",
    "Rule",
    "MergeRuleId",
    "SyncPolicyId",
    "SwarmError",
    "ConfigError",
    "LedgerError",
    "ChainUnavailable",
    "ContractError",
    "MergeError",
    "PeerError",
}


def test_all_is_the_pinned_public_api() -> None:
    assert set(swarmnode.__all__) == PUBLIC
    assert len(swarmnode.__all__) == len(PUBLIC)  # no name twice
    assert set(swarmnode._EXPORTS) == PUBLIC - {"__version__"}  # every name has its module


@pytest.mark.parametrize("name", sorted(PUBLIC - {"__version__"}))
def test_every_public_name_resolves_to_what_its_module_defines(name: str) -> None:
    value = getattr(swarmnode, name)
    assert value.__name__ == name
    assert value.__module__.startswith("swarmnode.")


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        _ = swarmnode.no_such_thing  # type: ignore[attr-defined]


def test_importing_the_package_loads_no_heavy_dependency() -> None:
    probe = (
        "import sys, swarmnode; "
        "print(sorted(m for m in ('torch', 'web3', 'grpc', 'flwr') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
