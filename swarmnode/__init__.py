"""swarmnode: train one model together, with no central server and no pooled data.

The names in `__all__` are the public API; everything else may move between releases
(tests/test_public_api.py pins the list). They load on first use, so that `import
swarmnode` stays light: it pulls in neither torch nor web3, grpc or flwr, which matters
on a machine that trains but never talks to a chain (docs/architecture.md#layers).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from swarmnode.version import __version__

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "SwarmNode": "swarmnode.node",
    "SwarmCallback": "swarmnode.node",
    "Syncer": "swarmnode.node",
    "FlowerNode": "swarmnode.flower",
    "LivePeer": "swarmnode.peer",
    "RoundSettings": "swarmnode.round",
    "RoundResult": "swarmnode.round",
    "RoundOutcome": "swarmnode.round",
    "Task": "swarmnode.training",
    "LocalTrainer": "swarmnode.training",
    "SwarmParams": "swarmnode.rules",
    "Rule": "swarmnode.rules",
    "MergeRuleId": "swarmnode.rules",
    "SyncPolicyId": "swarmnode.rules",
    "SwarmError": "swarmnode.exceptions",
    "ConfigError": "swarmnode.exceptions",
    "LedgerError": "swarmnode.exceptions",
    "ChainUnavailable": "swarmnode.exceptions",
    "ContractError": "swarmnode.exceptions",
    "MergeError": "swarmnode.exceptions",
    "PeerError": "swarmnode.exceptions",
}

__all__ = [  # the keys of _EXPORTS, spelled out for type checkers and linters
    "ChainUnavailable",
    "ConfigError",
    "ContractError",
    "FlowerNode",
    "LedgerError",
    "LivePeer",
    "LocalTrainer",
    "MergeError",
    "MergeRuleId",
    "PeerError",
    "RoundOutcome",
    "RoundResult",
    "RoundSettings",
    "Rule",
    "SwarmCallback",
    "SwarmError",
    "SwarmNode",
    "SwarmParams",
    "SyncPolicyId",
    "Syncer",
    "Task",
    "__version__",
]

if TYPE_CHECKING:
    from swarmnode.exceptions import (
        ChainUnavailable,
        ConfigError,
        ContractError,
        LedgerError,
        MergeError,
        PeerError,
        SwarmError,
    )
    from swarmnode.flower import FlowerNode
    from swarmnode.node import SwarmCallback, SwarmNode, Syncer
    from swarmnode.peer import LivePeer
    from swarmnode.round import RoundOutcome, RoundResult, RoundSettings
    from swarmnode.rules import MergeRuleId, Rule, SwarmParams, SyncPolicyId
    from swarmnode.training import LocalTrainer, Task


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'swarmnode' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # once loaded, later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
