"""The Python parameter table and the contract's constructor must accept and refuse alike."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarmnode.exceptions import ConfigError, ContractError
from swarmnode.ledger.embedded import EmbeddedChain
from swarmnode.rules import (
    PPM,
    MergeRuleId,
    ParamsRefused,
    Rule,
    SecureAggregation,
    SwarmParams,
    SyncPolicyId,
)

small = st.integers(min_value=0, max_value=12)
rules = st.builds(
    Rule,
    id=st.integers(min_value=0, max_value=6),
    params=st.tuples(
        st.sampled_from([0, 1, 2, 3, 7, PPM // 4, PPM // 2, PPM, PPM + 1]),
        st.one_of(small, st.sampled_from([255, 256, 257, 1000, 1001])),
        small,
        st.sampled_from([0, PPM, PPM + 1, 2 * PPM]),
    ),
)
# around every edge of the secure-aggregation checks: bound 0, f 48/49, max weight 0, and
# moduli on both sides of 64 bits
secure_aggregations = st.one_of(
    st.none(),
    st.builds(
        SecureAggregation,
        bound=st.sampled_from([0, 1, 4, 16, 2**20, 2**32 - 1]),
        fraction_bits=st.sampled_from([0, 14, 20, 30, 48, 49, 255]),
        max_weight=st.sampled_from([0, 1, 2**16, 2**30, 2**64 - 1]),
    ),
)
params_strategy = st.builds(
    SwarmParams,
    min_peers=st.integers(min_value=0, max_value=6),
    max_peers=st.integers(min_value=0, max_value=10),
    join_window=st.integers(min_value=0, max_value=3),
    transfer_deadline=st.integers(min_value=0, max_value=3),
    round_deadline=st.integers(min_value=0, max_value=8),
    merge_rule=rules,
    sync_policy=rules,
    initial_model_digest=st.sampled_from([b"\x00" * 32, b"\x07" * 32]),
    secure_aggregation=secure_aggregations,
)


@pytest.fixture(scope="module")
def chain() -> EmbeddedChain:
    return EmbeddedChain()


@pytest.mark.chain
@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(params=params_strategy)
def test_python_and_contract_refuse_the_same_parameters(
    chain: EmbeddedChain, params: SwarmParams
) -> None:
    try:
        params.validate()
        python_refusal = None
    except ParamsRefused as exc:  # a refusal the contract names on its own
        python_refusal = (str(exc.error), exc.details)
    except ConfigError as exc:
        python_refusal = ("BadParameters", {"reason": str(exc)})

    try:
        deployment, owner = chain.deploy(params, validate=False)
    except ContractError as exc:
        assert python_refusal == (exc.name, exc.details)
        return
    assert python_refusal is None, f"contract accepted what Python refuses: {python_refusal}"
    ledger = chain.ledger(deployment, owner)
    assert ledger.params() == params


def test_min_live_follows_the_rule() -> None:
    krum = SwarmParams(min_peers=2, max_peers=10, merge_rule=Rule(MergeRuleId.KRUM, (2, 0, 0, 0)))
    assert krum.min_live == 7  # n > 2f + 2
    multi = SwarmParams(min_peers=2, max_peers=10, merge_rule=Rule(MergeRuleId.KRUM, (1, 8, 0, 0)))
    assert multi.min_live == 8
    mean = SwarmParams(min_peers=3, max_peers=10)
    assert mean.min_live == 3


@pytest.mark.parametrize(("live", "quorum"), [(2, 2), (3, 2), (4, 3), (5, 3), (8, 5)])
def test_quorum_is_a_majority_and_at_least_min_peers(live: int, quorum: int) -> None:
    assert SwarmParams(min_peers=2, max_peers=8).quorum(live) == quorum


def test_rule_refuses_values_outside_uint64() -> None:
    with pytest.raises(ConfigError, match="uint64"):
        Rule(SyncPolicyId.EVERY_N_BATCHES, (2**64, 0, 0, 0))
