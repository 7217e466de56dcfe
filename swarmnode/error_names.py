"""The SwarmLedger contract's custom errors, by name.

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

    ALREADY_FINISHED = "AlreadyFinished"  # (account)
    ALREADY_JOINED = "AlreadyJoined"  # (round, node)
    ALREADY_REGISTERED = "AlreadyRegistered"  # (account)
    BAD_PARAMETERS = "BadParameters"  # (reason)
    CERTIFICATE_NOT_BOUND = "CertificateNotBound"  # (account, sanOffset)
    DUPLICATE_REPORT = "DuplicateReport"  # (round, attempt, node)
    DUPLICATE_VOTE = "DuplicateVote"  # (round, attempt, voter, peer)
    NOT_A_PARTICIPANT = "NotAParticipant"  # (round, node)
    NOT_ALLOWED = "NotAllowed"  # (account)
    NOT_LIVE = "NotLive"  # (round, node)
    NOT_OWNER = "NotOwner"  # (caller)
    NOT_REGISTERED = "NotRegistered"  # (account)
    ROUND_NOT_CLOSED = "RoundNotClosed"  # (round)
    ROUND_NOT_OPEN = "RoundNotOpen"  # (round)
    SECURE_AGGREGATION_BAD_NUMBERS = "SecureAggregationBadNumbers"  # (reason)
    SECURE_AGGREGATION_MODULUS_TOO_WIDE = "SecureAggregationModulusTooWide"  # (bits, limit)
    SECURE_AGGREGATION_NEEDS_MEAN = "SecureAggregationNeedsMean"  # (mergeRule)
    SECURE_AGGREGATION_NEEDS_PEERS = "SecureAggregationNeedsPeers"  # (minPeers, needed)
    TOO_EARLY = "TooEarly"  # (notBefore, now)
    TOO_FEW_JOINED = "TooFewJoined"  # (round, joined, needed)
    WEIGHT_ABOVE_MAX = "WeightAboveMax"  # (weight, maxWeight)
    WRONG_ATTEMPT = "WrongAttempt"  # (current, given)
    WRONG_ROUND = "WrongRound"  # (current, given)
