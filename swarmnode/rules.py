"""The swarm's parameter table: merge rules and sync policies as ids plus four integers.

The contract stores each rule as (id, four uint64) and validates them at deploy; this module
is the Python side of the same table, so that a bad swarm is refused with a clear message
before a transaction is sent, and so that a node derives the same minimum participant count
as the contract. tests/test_rules.py deploys every entry against the contract to keep the
two sides in step. Fractions are fixed point in parts per million (PPM).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from swarmnode.error_names import ErrorName
from swarmnode.exceptions import ConfigError

PPM = 1_000_000
MAX_PEERS_LIMIT = 256
MAX_ITERATIONS = 1000  # each iteration of an iterative rule is one exchange between peers
# Secure aggregation (docs/secure-aggregation.md#fixed-point); the contract holds the same
SECAGG_MIN_PEERS = 3  # with two, either participant subtracts its update from the sum
SECAGG_MAX_FRACTION_BITS = 48
SECAGG_HEADROOM_BITS = 8  # FixedPoint's default headroom: what catches a mask left out
SECAGG_MAX_BITS = 64  # the widest word the sums are added in


class MergeRuleId(IntEnum):
    """Merge rule ids; parameter meanings in MERGE_RULE_PARAMS."""

    MEAN = 0
    MEDIAN = 1
    TRIMMED_MEAN = 2
    KRUM = 3
    GEOMETRIC_MEDIAN = 4
    CENTERED_CLIP = 5


class SyncPolicyId(IntEnum):
    """Sync policy ids; parameter meanings in SYNC_POLICY_PARAMS."""

    EVERY_N_BATCHES = 0
    ADAPTIVE = 1


MERGE_RULE_PARAMS: dict[MergeRuleId, tuple[str, ...]] = {
    MergeRuleId.MEAN: (),
    MergeRuleId.MEDIAN: (),
    MergeRuleId.TRIMMED_MEAN: ("beta_ppm: fraction trimmed from each side",),
    MergeRuleId.KRUM: ("f: Byzantine peers tolerated", "m: models kept (0 or 1: Krum)"),
    MergeRuleId.GEOMETRIC_MEDIAN: (
        "tolerance_ppm: stop when a step is at most this fraction of the median distance",
        "max_iterations (1-1000)",
    ),
    MergeRuleId.CENTERED_CLIP: (
        "tau_ppm: clipping radius, an absolute L2 norm over the whole vector, in millionths",
        "iterations (1-1000)",
    ),
}

SYNC_POLICY_PARAMS: dict[SyncPolicyId, tuple[str, ...]] = {
    SyncPolicyId.EVERY_N_BATCHES: ("n: batches between syncs",),
    SyncPolicyId.ADAPTIVE: ("first", "min", "max", "growth_ppm: factor (> 1.0)"),
}


@dataclass(frozen=True)
class Rule:
    """A rule as the contract stores it."""

    id: int
    params: tuple[int, int, int, int] = (0, 0, 0, 0)

    def __post_init__(self) -> None:
        if len(self.params) != 4:
            raise ConfigError(f"a rule has exactly four parameters, got {len(self.params)}")
        for p in self.params:
            if not 0 <= p < 2**64:
                raise ConfigError(f"rule parameter {p} does not fit in uint64")


class ParamsRefused(ConfigError):
    """Parameters the contract refuses with a named error of its own rather than
    BadParameters: carries that error's name and arguments, so that the in-memory ledger
    reverts as the contract does and tests compare the two sides exactly."""

    def __init__(self, message: str, error: ErrorName, details: dict[str, int | str]) -> None:
        super().__init__(message)
        self.error = error
        self.details = details


@dataclass(frozen=True)
class SecureAggregation:
    """Secure aggregation's numbers, fixed at deploy (docs/secure-aggregation.md#fixed-point):
    they decide the modulus every node sums in, so no node may take them from its data."""

    bound: int = 16  # B: every value of a contributed vector lies in [-B, B]
    fraction_bits: int = 20  # f: fixed-point fractional bits
    max_weight: int = 65_536  # w_max: a join's weight (its sample count) is at most this

    def __post_init__(self) -> None:
        # what the contract's types can carry at all (uint32, uint8, uint64); what can work
        # within them is SwarmParams.validate's, in the contract's order
        for name, value, bits in (
            ("bound", self.bound, 32),
            ("fraction bits", self.fraction_bits, 8),
            ("max weight", self.max_weight, 64),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**bits:
                raise ConfigError(
                    f"secure aggregation: {name} {value!r} does not fit in uint{bits}"
                )

    def modulus_bits(self, max_peers: int) -> int:
        """k for a swarm of at most `max_peers`: the bit length of the largest honest sum,
        max_peers * max_weight * ceil(B * 2^f), plus a sign bit and the headroom; the same
        number as swarmnode/secagg/fixedpoint.py's FixedPoint.bits (a test pins it)."""
        largest = max_peers * self.max_weight * (self.bound << self.fraction_bits)
        return largest.bit_length() + 1 + SECAGG_HEADROOM_BITS

    def check(self, min_peers: int, max_peers: int, merge_rule: Rule) -> None:
        """Raises ParamsRefused naming the first thing that cannot work, in the contract's
        order (its _checkSecureAggregation)."""
        if min_peers < SECAGG_MIN_PEERS:
            raise ParamsRefused(
                f"secure aggregation needs minPeers >= {SECAGG_MIN_PEERS} (got {min_peers}): "
                "with two, each could subtract its own update from the sum and read the other's",
                ErrorName.SECURE_AGGREGATION_NEEDS_PEERS,
                {"minPeers": min_peers, "needed": SECAGG_MIN_PEERS},
            )
        if merge_rule.id != MergeRuleId.MEAN:
            raise ParamsRefused(
                f"secure aggregation merges a masked sum: merge rule {rule_name(merge_rule.id)} "
                "needs each node's update; use mean",
                ErrorName.SECURE_AGGREGATION_NEEDS_MEAN,
                {"mergeRule": merge_rule.id},
            )
        for bad, reason in (
            (self.bound == 0, "bound must be at least 1"),
            (
                self.fraction_bits > SECAGG_MAX_FRACTION_BITS,
                f"fraction bits must be at most {SECAGG_MAX_FRACTION_BITS}",
            ),
            (self.max_weight == 0, "max weight must be at least 1"),
        ):
            if bad:
                raise ParamsRefused(
                    f"secure aggregation: {reason}",
                    ErrorName.SECURE_AGGREGATION_BAD_NUMBERS,
                    {"reason": reason},
                )
        bits = self.modulus_bits(max_peers)
        if bits > SECAGG_MAX_BITS:
            raise ParamsRefused(
                f"secure aggregation needs a modulus of {bits} bits for maxPeers={max_peers}, "
                f"max weight={self.max_weight}, bound={self.bound}, fraction bits="
                f"{self.fraction_bits} (+{SECAGG_HEADROOM_BITS} headroom): more than "
                f"{SECAGG_MAX_BITS}; lower one of them",
                ErrorName.SECURE_AGGREGATION_MODULUS_TOO_WIDE,
                {"bits": bits, "limit": SECAGG_MAX_BITS},
            )


def rule_name(rule_id: int) -> str:
    """'median' for MergeRuleId.MEDIAN; the number for an id the table does not know."""
    try:
        return MergeRuleId(rule_id).name.lower()
    except ValueError:
        return str(rule_id)


@dataclass(frozen=True)
class SwarmParams:
    """Everything fixed at deploy. Times are in seconds."""

    min_peers: int = 2
    max_peers: int = 8
    join_window: int = 30
    transfer_deadline: int = 60
    round_deadline: int = 300
    merge_rule: Rule = field(default_factory=lambda: Rule(MergeRuleId.MEAN))
    sync_policy: Rule = field(
        default_factory=lambda: Rule(SyncPolicyId.EVERY_N_BATCHES, (50, 0, 0, 0))
    )
    initial_model_digest: bytes = b"\x01" * 32
    restricted: bool = False
    # each segment's merge checked by a second owner (docs/trust.md#unchecked-merge); off,
    # one owner per segment moves about (2n-2)/n of the model instead of (3n-4)/n
    checked_merge: bool = True
    # updates summed under masks, no peer sees another's (docs/secure-aggregation.md);
    # None: off. Only the mean can merge a masked sum, and a round needs three participants
    secure_aggregation: SecureAggregation | None = None

    def validate(self) -> None:
        """Raises ConfigError naming the first thing wrong, in the contract's order."""
        if self.min_peers < 2:
            raise ConfigError("minPeers must be at least 2")
        if self.max_peers < self.min_peers:
            raise ConfigError("maxPeers must be at least minPeers")
        if self.max_peers > MAX_PEERS_LIMIT:
            raise ConfigError(f"maxPeers must be at most {MAX_PEERS_LIMIT}")
        if self.join_window <= 0:
            raise ConfigError("joinWindow must be positive")
        if self.transfer_deadline <= 0:
            raise ConfigError("transferDeadline must be positive")
        if self.round_deadline <= 2 * self.transfer_deadline:
            raise ConfigError("roundDeadline must exceed 2 x transferDeadline")
        if self.round_deadline <= self.join_window:
            raise ConfigError("roundDeadline must exceed joinWindow")
        if len(self.initial_model_digest) != 32 or not any(self.initial_model_digest):
            raise ConfigError("initialModelDigest must be set")
        needs = merge_rule_needs(self.merge_rule)
        if needs > self.max_peers:
            raise ConfigError("mergeRule needs more peers than maxPeers")
        check_sync_policy(self.sync_policy)
        if self.secure_aggregation is not None:
            self.secure_aggregation.check(self.min_peers, self.max_peers, self.merge_rule)

    @property
    def min_live(self) -> int:
        """Fewest live participants a round may continue with."""
        return max(self.min_peers, merge_rule_needs(self.merge_rule))

    def quorum(self, live: int) -> int:
        """Agreeing reports that finalize a round with `live` participants."""
        return max(self.min_peers, live // 2 + 1)


def merge_rule_needs(rule: Rule) -> int:
    """Fewest participants the rule can merge; raises ConfigError on bad parameters."""
    q = rule.params
    if rule.id in (MergeRuleId.MEAN, MergeRuleId.MEDIAN):
        if any(q):
            raise ConfigError("rule takes no parameters")
        return 1
    if rule.id == MergeRuleId.TRIMMED_MEAN:
        if q[0] >= PPM // 2:
            raise ConfigError("trimmed mean: beta must be below 0.5")
        return 1
    if rule.id == MergeRuleId.KRUM:
        if q[0] > 126:
            raise ConfigError("krum: f too large")
        if q[1] > MAX_PEERS_LIMIT:
            raise ConfigError("krum: m too large")
        return max(2 * q[0] + 3, q[1])
    if rule.id == MergeRuleId.GEOMETRIC_MEDIAN:
        if q[0] == 0:
            raise ConfigError("geometric median: tolerance must be positive")
        if not 0 < q[1] <= MAX_ITERATIONS:
            raise ConfigError("geometric median: iteration cap must be 1-1000")
        return 1
    if rule.id == MergeRuleId.CENTERED_CLIP:
        if q[0] == 0:
            raise ConfigError("centered clipping: tau must be positive")
        if not 0 < q[1] <= MAX_ITERATIONS:
            raise ConfigError("centered clipping: iterations must be 1-1000")
        return 1
    raise ConfigError("unknown merge rule")


def check_sync_policy(policy: Rule) -> None:
    """Raises ConfigError when the sync policy's parameters cannot work."""
    q = policy.params
    if policy.id == SyncPolicyId.EVERY_N_BATCHES:
        if q[0] == 0:
            raise ConfigError("sync every N batches: N must be positive")
        return
    if policy.id == SyncPolicyId.ADAPTIVE:
        if q[1] == 0 or q[1] > q[0] or q[0] > q[2]:
            raise ConfigError("adaptive sync: need 0 < min <= first <= max")
        if q[3] <= PPM:
            raise ConfigError("adaptive sync: growth must exceed 1.0")
        return
    raise ConfigError("unknown sync policy")
