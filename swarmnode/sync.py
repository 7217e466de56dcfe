"""When to sync: the swarm's sync policy, and what a node does once its own training is done.

The sync policy is a swarm parameter fixed at deploy (docs/round-protocol.md#joining): an id
plus four uint64 stored on chain (swarmnode.rules). Every node builds its policy from that same
Rule and feeds it the same on-chain numbers, so every node decides alike with no messages:

- EVERY_N_BATCHES, params (n, 0, 0, 0): a sync is due after every n local batches.
- ADAPTIVE, params (first, min, max, growth_ppm): the interval starts at ``first``. After each
  round, the median of the validation losses that the round's joins carried (uint64, the loss
  scaled by PPM, read from chain) is compared with the previous round's median:

  - it improved (strictly lower): ``interval = min(max, max(interval + 1,
    interval * growth_ppm // PPM))``, so the swarm syncs less often while it is learning;
  - it stalled or got worse: ``interval = max(min, interval * PPM // growth_ppm)``, so the
    swarm syncs more often when local training stops helping;
  - the first round a policy sees has nothing to compare with: the interval stays, the median
    is remembered.

  The growth step is at least one batch: with the bare ``floor(interval * growth)`` a small
  interval and a small factor (interval 1, growth 1.5) would never grow, while the shrink step
  always makes progress (``floor(i / g) < i`` for g > 1).

Everything here is integer arithmetic on Python ints (no float enters a decision), so nodes
on different hardware and Python builds get the same interval. The median of an even count is
the LOWER of the two middle values (``sorted(v)[(len(v) - 1) // 2]``): an integer, no
averaging, no rounding, and independent of the order the joins arrived in.

Which rounds a policy is fed is the caller's side of the agreement: every node must feed the
same rounds in the same order (a node that missed rounds replays them from chain with
``replay``). Pure: no I/O, no torch, no clock.
"""

from __future__ import annotations

import math
import operator
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from swarmnode.exceptions import ConfigError
from swarmnode.rules import PPM, Rule, SyncPolicyId, check_sync_policy

__all__ = [
    "UINT64_MAX",
    "Adaptive",
    "AfterTraining",
    "EveryNBatches",
    "SyncPolicy",
    "SyncState",
    "loss_to_int",
    "lower_median",
    "make_policy",
    "replay",
]

UINT64_MAX = 2**64 - 1
"""The largest validation loss the contract stores."""


class AfterTraining(StrEnum):
    """What a node does once it has trained all its local epochs.

    A node with little data finishes before the others; the swarm is better served when the
    choice is explicit than when such a node silently disappears.
    """

    LEAVE = "leave"
    """Stop joining rounds and keep the last merged model (the default: it costs nothing)."""
    CONTRIBUTE_LAST = "contribute_last"
    """Keep joining rounds with the last snapshot, so its data still counts in the merge."""
    KEEP_MERGING = "keep_merging"
    """Keep joining rounds without training: contribute the latest merged model, so the node
    stays in step with the swarm (and ends with the swarm's final model)."""

    @classmethod
    def parse(cls, text: str) -> AfterTraining:
        """Reads a config or CLI value ("leave", "contribute-last", ...); ConfigError if unknown."""
        key = text.strip().lower().replace("-", "_")
        try:
            return cls(key)
        except ValueError:
            choices = ", ".join(member.value for member in cls)
            raise ConfigError(f"after-training must be one of {choices}; got {text!r}") from None


@dataclass(frozen=True)
class SyncState:
    """What a policy carries from round to round: enough to checkpoint and resume.

    ``previous_median`` is None until the policy has seen a round. ``rounds`` counts the rounds
    fed so far (for logs and for checking that a restored state is where the caller thinks).
    """

    interval: int
    previous_median: int | None = None
    rounds: int = 0

    def to_dict(self) -> dict[str, int | None]:
        """A JSON-ready form for checkpoints."""
        return {
            "interval": self.interval,
            "previous_median": self.previous_median,
            "rounds": self.rounds,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SyncState:
        """Reads ``to_dict``'s form back; ConfigError when a field is missing or not an int."""
        try:
            interval = _as_int(data["interval"], "interval")
            raw_median = data.get("previous_median")
            median = None if raw_median is None else _as_int(raw_median, "previous_median")
            rounds = _as_int(data.get("rounds", 0), "rounds")
        except KeyError as exc:
            raise ConfigError(f"sync state lacks {exc.args[0]!r}") from None
        return cls(interval=interval, previous_median=median, rounds=rounds)


def _as_int(value: object, what: str) -> int:
    """An exact integer (int or numpy integer); floats and bools are refused (ConfigError)."""
    if isinstance(value, bool):
        raise ConfigError(f"{what} must be an integer, got a bool")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ConfigError(f"{what} must be an integer, got {type(value).__name__}") from None


def lower_median(values: Sequence[int]) -> int:
    """The median of integer losses; for an even count, the lower of the two middle values.

    Order-independent and exact. Values must be uint64 as stored on chain: a float, a negative
    number or an empty list is a ConfigError (the caller passes what the chain holds; a round
    that closed has at least min_peers >= 2 joins).
    """
    if len(values) == 0:
        raise ConfigError("a round's median needs at least one validation loss")
    checked = sorted(_as_int(value, "a validation loss") for value in values)
    if checked[0] < 0 or checked[-1] > UINT64_MAX:
        raise ConfigError("validation losses are uint64 (the loss scaled by 1e6)")
    return checked[(len(checked) - 1) // 2]


def loss_to_int(loss: float) -> int:
    """A node's own validation loss as the uint64 it joins with: round(loss x PPM), clamped.

    NaN and +inf map to UINT64_MAX (the worst loss), a negative loss to 0: the contract takes a
    uint64, and a node whose training diverged should still be able to join and be outvoted by
    the median rather than crash the round. Only the joining node converts; every decision is
    made on the integers read back from chain.
    """
    if math.isnan(loss) or loss * PPM >= UINT64_MAX:
        return UINT64_MAX
    if loss <= 0:
        return 0
    return min(round(loss * PPM), UINT64_MAX)


class SyncPolicy(ABC):
    """When this node syncs next. Build one with ``make_policy(rule)``.

    ``interval`` is the number of local batches between syncs; ``due(k)`` says whether k
    batches since the last sync are enough; ``after_round(losses)`` moves the policy on by one
    round and returns the new interval. ``state`` / ``restore`` checkpoint it.
    """

    def __init__(self, rule: Rule, state: SyncState) -> None:
        check_sync_policy(rule)
        self._rule = rule
        self._state = self._checked(state)

    @property
    def rule(self) -> Rule:
        """The on-chain rule the policy was built from."""
        return self._rule

    @property
    def interval(self) -> int:
        """Local batches between the last sync and the next one."""
        return self._state.interval

    @property
    def state(self) -> SyncState:
        """An immutable snapshot of the policy's state, for checkpoints."""
        return self._state

    def restore(self, state: SyncState) -> None:
        """Resumes from a checkpointed state; ConfigError when this rule cannot produce it."""
        self._state = self._checked(state)

    def due(self, batches_since_sync: int) -> bool:
        """True once ``batches_since_sync`` local batches reach the interval."""
        batches = _as_int(batches_since_sync, "batches since the last sync")
        if batches < 0:
            raise ConfigError(f"batches since the last sync cannot be negative ({batches})")
        return batches >= self._state.interval

    def after_round(self, val_losses: Sequence[int]) -> int:
        """Moves on by one round, given the scaled validation losses of its joins, in any order.

        Returns the new interval. The median is computed (and validated) for every policy, so
        a bad input fails alike whatever the swarm's policy is.
        """
        median = lower_median(val_losses)
        interval = self._next_interval(self._state.interval, self._state.previous_median, median)
        self._state = SyncState(interval, median, self._state.rounds + 1)
        return interval

    @abstractmethod
    def _next_interval(self, interval: int, previous: int | None, median: int) -> int:
        """The interval after a round whose median is ``median``."""

    @abstractmethod
    def _check_interval(self, interval: int) -> None:
        """Raises ConfigError when this rule can never have ``interval``."""

    def _checked(self, state: SyncState) -> SyncState:
        interval = _as_int(state.interval, "interval")
        rounds = _as_int(state.rounds, "rounds")
        if rounds < 0:
            raise ConfigError(f"sync state: rounds cannot be negative ({rounds})")
        if state.previous_median is not None:
            median = _as_int(state.previous_median, "previous_median")
            if not 0 <= median <= UINT64_MAX:
                raise ConfigError("sync state: previous_median must be a uint64")
        self._check_interval(interval)
        return state

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._rule.params}, state={self._state})"


class EveryNBatches(SyncPolicy):
    """Sync every n local batches, whatever the losses say."""

    def __init__(self, n: int, state: SyncState | None = None) -> None:
        self.n = n
        rule = Rule(SyncPolicyId.EVERY_N_BATCHES, (n, 0, 0, 0))
        super().__init__(rule, state if state is not None else SyncState(interval=n))

    def _next_interval(self, interval: int, previous: int | None, median: int) -> int:
        return self.n

    def _check_interval(self, interval: int) -> None:
        if interval != self.n:
            raise ConfigError(f"sync every {self.n} batches cannot have interval {interval}")


class Adaptive(SyncPolicy):
    """Grow the interval while the swarm's median validation loss falls, shrink it otherwise.

    Long intervals save rounds (chain transactions and transfers) while local training helps;
    short ones pull diverging nodes back together once it stops helping.
    """

    def __init__(
        self, first: int, min: int, max: int, growth_ppm: int, state: SyncState | None = None
    ) -> None:
        self.first = first
        self.min = min
        self.max = max
        self.growth_ppm = growth_ppm
        rule = Rule(SyncPolicyId.ADAPTIVE, (first, min, max, growth_ppm))
        super().__init__(rule, state if state is not None else SyncState(interval=first))

    def _next_interval(self, interval: int, previous: int | None, median: int) -> int:
        if previous is None:
            return interval
        if median < previous:
            grown = max(interval + 1, interval * self.growth_ppm // PPM)
            return min(self.max, grown)
        return max(self.min, interval * PPM // self.growth_ppm)

    def _check_interval(self, interval: int) -> None:
        if not self.min <= interval <= self.max:
            raise ConfigError(
                f"adaptive sync: interval {interval} is outside [{self.min}, {self.max}]"
            )


def make_policy(rule: Rule, state: SyncState | None = None) -> SyncPolicy:
    """The policy an on-chain Rule describes, optionally resumed from a checkpointed state.

    Parameters are checked with the same table the contract uses (ConfigError when bad).
    """
    check_sync_policy(rule)
    q = rule.params
    if rule.id == SyncPolicyId.EVERY_N_BATCHES:
        return EveryNBatches(q[0], state)
    if rule.id == SyncPolicyId.ADAPTIVE:
        return Adaptive(q[0], q[1], q[2], q[3], state)
    raise ConfigError(f"unknown sync policy {rule.id}")  # pragma: no cover - checked above


def replay(rule: Rule, rounds: Iterable[Sequence[int]]) -> SyncPolicy:
    """A fresh policy fed the given rounds' validation losses, oldest first.

    For a node that joins late or missed rounds: fed the same rounds from chain, it reaches
    the same interval as the nodes that were there.
    """
    policy = make_policy(rule)
    for losses in rounds:
        policy.after_round(losses)
    return policy
