"""One error family, so callers can catch what swarmnode raises without catching everything."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from swarmnode.error_names import ErrorName


class SwarmError(Exception):
    """Root of every error swarmnode raises on purpose."""


class ConfigError(SwarmError):
    """A configuration or parameter set that cannot work; raised before anything starts."""


class LedgerError(SwarmError):
    """The chain refused, failed or could not be reached."""


class ChainUnavailable(LedgerError):
    """No chain answered at the endpoint (down, restarting, wrong URL)."""


# Reverts that only say the caller's view of the round was out of date: the node re-reads the
# round and goes on (docs/round-protocol.md#clocks).
STALE_VIEW_ERRORS = frozenset(
    {
        ErrorName.ROUND_NOT_OPEN,
        ErrorName.ROUND_NOT_CLOSED,
        ErrorName.WRONG_ROUND,
        ErrorName.WRONG_ATTEMPT,
    }
)


class ContractError(LedgerError):
    """The contract reverted with one of its named custom errors."""

    def __init__(
        self, name: ErrorName, args: Mapping[str, Any] | None = None, call: str = ""
    ) -> None:
        self.name = name
        self.details: dict[str, Any] = dict(args or {})
        self.call = call
        rendered = ", ".join(f"{k}={_render(v)}" for k, v in self.details.items())
        where = f"{call}: " if call else ""
        super().__init__(f"{where}contract refused with {name}({rendered})")

    @property
    def too_early(self) -> bool:
        return self.name == ErrorName.TOO_EARLY

    @property
    def stale_view(self) -> bool:
        return self.name in STALE_VIEW_ERRORS


class MergeError(SwarmError):
    """A merge could not be computed from the contributions at hand."""


class PeerError(SwarmError):
    """A peer sent something invalid, or could not be reached."""


def _render(value: Any) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return str(value)
