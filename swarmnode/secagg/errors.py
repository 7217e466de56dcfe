"""What secure aggregation refuses, as errors of the families the round already handles
(docs/architecture.md#errors): a sum that must not be merged costs the attempt like any
merge that cannot be computed, a refused or broken reveal is a peer's problem."""

from __future__ import annotations

from collections.abc import Sequence

from swarmnode.exceptions import MergeError, PeerError, SwarmError


class SecAggError(SwarmError):
    """Root of what swarmnode.secagg raises on purpose."""


class UpdateOutOfBound(SecAggError, ValueError):
    """This node's own update breaks a deploy-time bound (|x| <= B, 1 <= w <= w_max): it
    cannot be encoded without risking a wrapped sum, so it is not encoded at all."""


class SumRefused(SecAggError, MergeError):
    """An unmasked sum decodes outside the bound every honest sum respects: a mask was left
    out, a row is missing or extra, or a share lied. It is never merged."""


class RevealRefused(SecAggError, PeerError):
    """A reveal this node will not give, because giving it could expose one node's update
    (docs/secure-aggregation.md#unmasking)."""


class Equivocation(RevealRefused):
    """Participants proved to have signed two different masked roots in the round: no
    reveal covers them, and the round votes them out (docs/secure-aggregation.md#checks)."""

    def __init__(self, accounts: Sequence[str]) -> None:
        self.accounts = tuple(accounts)
        super().__init__(
            f"{', '.join(self.accounts)} signed two different masked roots: no reveal for a "
            f"sum with them"
        )


class ShareError(SecAggError, PeerError):
    """Shares that do not reconstruct the secret their dealer committed to."""


class NotYet(SecAggError):
    """What a request needs has not arrived here yet (an announcement, a masked root, an
    owner's rows-complete notice): the caller asks again within its own deadline."""
