"""Sync policies: every node must reach the same interval from the same on-chain numbers, so
the tests pin boundaries, the integer arithmetic, order independence and checkpointing."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmnode.exceptions import ConfigError
from swarmnode.rules import PPM, Rule, SyncPolicyId
from swarmnode.sync import (
    UINT64_MAX,
    Adaptive,
    AfterTraining,
    EveryNBatches,
    SyncState,
    loss_to_int,
    lower_median,
    make_policy,
    replay,
)


def adaptive_rule(first: int, lo: int, hi: int, growth_ppm: int) -> Rule:
    return Rule(SyncPolicyId.ADAPTIVE, (first, lo, hi, growth_ppm))


# ----------------------------------------------------------------------------- every N


@pytest.mark.parametrize("n", [1, 2, 50])
def test_every_n_is_due_exactly_from_n_batches(n: int) -> None:
    policy = make_policy(Rule(SyncPolicyId.EVERY_N_BATCHES, (n, 0, 0, 0)))
    assert isinstance(policy, EveryNBatches)
    assert policy.interval == n
    assert not policy.due(0)
    assert not policy.due(n - 1)
    assert policy.due(n)
    assert policy.due(n + 1)


def test_every_n_ignores_losses() -> None:
    policy = EveryNBatches(7)
    for losses in ([5, 4], [1, 1], [9, 9, 9], [0]):
        assert policy.after_round(losses) == 7
    assert policy.state == SyncState(interval=7, previous_median=0, rounds=4)


def test_due_refuses_negative_and_non_integer_counts() -> None:
    policy = EveryNBatches(3)
    with pytest.raises(ConfigError, match="negative"):
        policy.due(-1)
    with pytest.raises(ConfigError, match="integer"):
        policy.due(2.5)  # type: ignore[arg-type]
    assert policy.due(np.int64(3))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- median


def test_median_of_even_count_is_the_lower_middle_value() -> None:
    assert lower_median([4, 1, 3, 2]) == 2
    assert lower_median([10, 20]) == 10
    assert lower_median([7]) == 7
    assert lower_median([3, 1, 2]) == 2
    assert lower_median([0, UINT64_MAX]) == 0


@pytest.mark.parametrize(
    "losses", [[], [1, -1], [1.5, 2], [True, 1], [UINT64_MAX + 1, 0]], ids=repr
)
def test_median_refuses_what_the_chain_cannot_hold(losses: list[object]) -> None:
    with pytest.raises(ConfigError):
        lower_median(losses)  # type: ignore[arg-type]


def test_loss_to_int_scales_and_clamps() -> None:
    assert loss_to_int(0.25) == 250_000
    assert loss_to_int(1.0000004) == 1_000_000
    assert loss_to_int(0.0) == 0
    assert loss_to_int(-3.0) == 0
    assert loss_to_int(float("nan")) == UINT64_MAX
    assert loss_to_int(float("inf")) == UINT64_MAX
    assert loss_to_int(1e30) == UINT64_MAX


# ----------------------------------------------------------------------------- adaptive


def test_adaptive_grows_while_the_median_falls_and_stops_at_max() -> None:
    policy = make_policy(adaptive_rule(10, 2, 40, 1_500_000))
    assert isinstance(policy, Adaptive)
    assert policy.interval == 10
    assert policy.after_round([900, 1000, 800]) == 10  # first round: nothing to compare with
    assert policy.after_round([700, 850, 600]) == 15  # 10 x 1.5
    assert policy.after_round([600, 500]) == 22  # floor(22.5)
    assert policy.after_round([400, 300]) == 33
    assert policy.after_round([200, 100]) == 40  # capped: 49 > max
    assert policy.after_round([100, 50]) == 40
    assert policy.due(40) and not policy.due(39)


def test_adaptive_shrinks_on_a_stall_or_a_rise_and_stops_at_min() -> None:
    policy = make_policy(adaptive_rule(20, 3, 40, 2_000_000))
    policy.after_round([500, 500])
    assert policy.after_round([500, 500]) == 10  # stalled: equal medians shrink
    assert policy.after_round([600, 700]) == 5  # worse
    assert policy.after_round([600, 700]) == 3  # floor(2.5) -> clamped to min 3
    assert policy.after_round([900]) == 3
    assert policy.after_round([100]) == 6  # improves again: grows from min


def test_adaptive_growth_is_at_least_one_batch() -> None:
    """floor(1 x 1.5) == 1: without the one-batch floor a small interval would never grow."""
    policy = make_policy(adaptive_rule(1, 1, 5, 1_500_000))
    policy.after_round([10])
    assert [policy.after_round([9 - i]) for i in range(6)] == [2, 3, 4, 5, 5, 5]


def test_adaptive_is_independent_of_join_order() -> None:
    rule = adaptive_rule(8, 2, 64, 1_250_000)
    rng = random.Random(3)
    rounds = [[rng.randrange(0, 5_000_000) for _ in range(rng.randrange(1, 9))] for _ in range(30)]
    reference = replay(rule, rounds)
    for _ in range(5):
        shuffled = [rng.sample(losses, len(losses)) for losses in rounds]
        again = replay(rule, shuffled)
        assert again.state == reference.state


rules = st.tuples(
    st.integers(min_value=1, max_value=10_000),
    st.integers(min_value=1, max_value=10_000),
    st.integers(min_value=1, max_value=10_000),
    st.integers(min_value=PPM + 1, max_value=10 * PPM),
).map(lambda q: (sorted(q[:3]), q[3]))
round_losses = st.lists(
    st.lists(st.integers(min_value=0, max_value=UINT64_MAX), min_size=1, max_size=9),
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(rule=rules, rounds=round_losses)
def test_adaptive_matches_an_exact_integer_model_and_stays_in_bounds(
    rule: tuple[list[int], int], rounds: list[list[int]]
) -> None:
    (lo, first, hi), growth = rule
    policy = make_policy(adaptive_rule(first, lo, hi, growth))
    interval, previous = first, None
    for losses in rounds:
        median = sorted(losses)[(len(losses) - 1) // 2]
        if previous is not None:
            if median < previous:
                interval = min(hi, max(interval + 1, (interval * growth) // PPM))
            else:
                interval = max(lo, (interval * PPM) // growth)
        previous = median
        got = policy.after_round(losses)
        assert type(got) is int
        assert got == interval == policy.interval
        assert lo <= got <= hi
    assert policy.state.rounds == len(rounds)
    assert policy.state.previous_median == previous


@settings(max_examples=50, deadline=None)
@given(rule=rules, rounds=round_losses, data=st.data())
def test_replay_with_permuted_joins_gives_the_same_state(
    rule: tuple[list[int], int], rounds: list[list[int]], data: st.DataObject
) -> None:
    (lo, first, hi), growth = rule
    on_chain = adaptive_rule(first, lo, hi, growth)
    permuted = [data.draw(st.permutations(losses)) for losses in rounds]
    assert replay(on_chain, rounds).state == replay(on_chain, permuted).state


# ----------------------------------------------------------------------------- parameters


@pytest.mark.parametrize(
    "rule",
    [
        Rule(SyncPolicyId.EVERY_N_BATCHES, (0, 0, 0, 0)),
        adaptive_rule(5, 0, 10, 2 * PPM),  # min 0
        adaptive_rule(5, 6, 10, 2 * PPM),  # min > first
        adaptive_rule(11, 1, 10, 2 * PPM),  # first > max
        adaptive_rule(5, 1, 10, PPM),  # growth 1.0
        adaptive_rule(5, 1, 10, 999_999),  # growth < 1.0
        Rule(7, (1, 1, 1, 2 * PPM)),  # unknown id
    ],
    ids=repr,
)
def test_bad_parameters_are_refused(rule: Rule) -> None:
    with pytest.raises(ConfigError):
        make_policy(rule)


def test_direct_constructors_validate_like_make_policy() -> None:
    with pytest.raises(ConfigError):
        EveryNBatches(0)
    with pytest.raises(ConfigError):
        Adaptive(first=5, min=1, max=4, growth_ppm=2 * PPM)
    assert Adaptive(first=5, min=1, max=9, growth_ppm=2 * PPM).rule == adaptive_rule(
        5, 1, 9, 2 * PPM
    )


# ----------------------------------------------------------------------------- state


def test_state_round_trips_through_a_json_checkpoint() -> None:
    rule = adaptive_rule(10, 2, 80, 1_300_000)
    policy = make_policy(rule)
    for losses in ([900, 800], [700, 600], [650, 640], [100]):
        policy.after_round(losses)
    text = json.dumps(policy.state.to_dict())
    restored = make_policy(rule, SyncState.from_dict(json.loads(text)))
    assert restored.state == policy.state
    for losses in ([90], [95], [20, 10, 30]):
        assert restored.after_round(losses) == policy.after_round(losses)
    other = make_policy(rule)
    other.restore(policy.state)
    assert other.interval == policy.interval


def test_a_state_the_rule_cannot_produce_is_refused() -> None:
    rule = adaptive_rule(10, 2, 80, 1_300_000)
    with pytest.raises(ConfigError, match="outside"):
        make_policy(rule, SyncState(interval=81))
    with pytest.raises(ConfigError, match="interval"):
        EveryNBatches(5, SyncState(interval=6))
    with pytest.raises(ConfigError, match="lacks"):
        SyncState.from_dict({"previous_median": 3})
    with pytest.raises(ConfigError, match="integer"):
        SyncState.from_dict({"interval": 5.0})
    with pytest.raises(ConfigError, match="uint64"):
        make_policy(rule, SyncState(interval=10, previous_median=-1))


# ----------------------------------------------------------------------------- after training


def test_after_training_values_parse_from_config_text() -> None:
    assert AfterTraining.parse("leave") is AfterTraining.LEAVE
    assert AfterTraining.parse("Contribute-Last") is AfterTraining.CONTRIBUTE_LAST
    assert AfterTraining.parse(" keep_merging ") is AfterTraining.KEEP_MERGING
    assert AfterTraining("keep_merging") is AfterTraining.KEEP_MERGING
    with pytest.raises(ConfigError, match="leave, contribute_last, keep_merging"):
        AfterTraining.parse("stay")
