"""Secure aggregation's core: fixed-point encoding, double masking, Shamir sharing, guarded
reveals and unmasking, and one node's state for one round (docs/secure-aggregation.md).

Nothing here talks to peers or the chain: swarmnode/secure_merge.py carries the session's
messages and the round (swarmnode/round.py) feeds it what the chain fixed.
"""

from __future__ import annotations

from swarmnode.secagg.errors import (
    RevealRefused,
    SecAggError,
    ShareError,
    SumRefused,
    UpdateOutOfBound,
)
from swarmnode.secagg.fixedpoint import FixedPoint
from swarmnode.secagg.masking import (
    Announcement,
    DealtShares,
    Masker,
    RoundContext,
    default_threshold,
)
from swarmnode.secagg.reveal import Reveal, Revealer, RevealRequest
from swarmnode.secagg.unmask import Unmasked, sum_rows, unmask

__all__ = [
    "Announcement",
    "DealtShares",
    "FixedPoint",
    "Masker",
    "Reveal",
    "RevealRefused",
    "RevealRequest",
    "Revealer",
    "RoundContext",
    "SecAggError",
    "ShareError",
    "SumRefused",
    "Unmasked",
    "UpdateOutOfBound",
    "default_threshold",
    "sum_rows",
    "unmask",
]
