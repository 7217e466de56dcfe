"""The SwarmLedger contract's behaviour, run against every ledger backend.

contracts/src/SwarmLedger.sol is the specification; each test here runs on every backend
(the in-memory ledger, the compiled contract inside the embedded py-evm chain, and the same
contract on anvil), so they cannot drift apart (docs/architecture.md#backends-and-behaviour-suites).
Chain time is moved, never slept for. On the embedded chain every mined block moves time
by at least one second, so a "too early" call is made right after the event that starts
its timer, with a margin of many seconds.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from swarmnode.exceptions import ConfigError, ContractError
from swarmnode.ledger.base import Ledger
from swarmnode.ledger.types import FailReason, LedgerEvent, RoundState, RoundStatus
from swarmnode.rules import (
    MergeRuleId,
    ParamsRefused,
    Rule,
    SecureAggregation,
    SwarmParams,
    SyncPolicyId,
)
from tests.backends import Backend

DIGEST_A = b"\xaa" * 32
DIGEST_B = b"\xbb" * 32
DIGEST_C = b"\xcc" * 32
INITIAL_DIGEST = b"\x11" * 32
NO_DIGEST = (1).to_bytes(32, "big")  # the contract's sentinel: never a valid digest

JOIN_WINDOW = 30
TRANSFER_DEADLINE = 30
ROUND_DEADLINE = 100

BASE_PARAMS = SwarmParams(
    min_peers=2,
    max_peers=4,
    join_window=JOIN_WINDOW,
    transfer_deadline=TRANSFER_DEADLINE,
    round_deadline=ROUND_DEADLINE,
    initial_model_digest=INITIAL_DIGEST,
)

ROUND_EVENTS = frozenset(
    {
        "RoundOpened",
        "Joined",
        "Left",
        "RoundClosed",
        "AttemptStarted",
        "DropVoted",
        "Dropped",
        "Withdrawn",
        "Reported",
        "RoundFinalized",
        "RoundFailed",
    }
)


# ---------------------------------------------------------------------------- helpers


def make_params(**overrides: Any) -> SwarmParams:
    return dataclasses.replace(BASE_PARAMS, **overrides)


def certificate(i: int, account: str) -> bytes:
    """A stand-in certificate that names `account` where the contract looks for it: as the
    lowercase DNS SubjectAltName of a real one (docs/trust.md#the-roster)."""
    return f"cert-{i}:".encode() + account.lower().encode()


def endpoint(i: int) -> str:
    return f"node{i}.swarm.test:50051"


def fingerprint(cert: bytes) -> bytes:
    return hashlib.sha256(cert).digest()


def commitment(ledger: Ledger) -> bytes:
    return hashlib.sha256(b"update:" + ledger.account.encode()).digest()


@dataclass
class Swarm:
    backend: Backend
    owner: Ledger
    nodes: list[Ledger]

    def accounts(self, indices: Sequence[int] | None = None) -> list[str]:
        chosen = range(len(self.nodes)) if indices is None else indices
        return [self.nodes[i].account for i in chosen]


def deploy(backend: Backend, n: int, **overrides: Any) -> Swarm:
    """Deploys a swarm with BASE_PARAMS plus `overrides` and registers `n` nodes."""
    owner = backend.deploy(make_params(**overrides))
    nodes = [backend.new_ledger() for _ in range(n)]
    for i, node in enumerate(nodes):
        node.register(endpoint(i), certificate(i, node.account))
    return Swarm(backend, owner, nodes)


def join(node: Ledger, number: int, weight: int = 100, val_loss: int = 250_000) -> None:
    node.join(number, commitment(node), weight, val_loss)


def closed_swarm(backend: Backend, n: int, **overrides: Any) -> Swarm:
    """A swarm of `n` nodes (max_peers n unless overridden) whose round 1 they all joined."""
    overrides.setdefault("max_peers", n)
    swarm = deploy(backend, n, **overrides)
    for node in swarm.nodes:
        join(node, 1)
    state = swarm.owner.round(1)
    assert state.status == RoundStatus.CLOSED
    assert state.attempt == 1 and state.live == n
    return swarm


def refused(name: str, call: Callable[[], object]) -> ContractError:
    """Runs `call`, which must be refused with the contract's custom error `name`."""
    with pytest.raises(ContractError) as info:
        call()
    assert info.value.name == name, f"expected {name}, got {info.value}"
    return info.value


def assert_round_ended(
    ledger: Ledger, number: int, status: RoundStatus, reason: FailReason = FailReason.NONE
) -> RoundState:
    """Round `number` ended with `status`/`reason` and round number+1 is open and empty."""
    state = ledger.round(number)
    assert (state.status, state.fail_reason) == (status, reason)
    assert ledger.current_round() == number + 1
    following = ledger.round(number + 1)
    assert following.status == RoundStatus.OPEN
    assert (following.joined, following.attempt, following.first_join_at) == (0, 0, 0)
    return state


class EventTail:
    """Reads a ledger's events incrementally from the moment it is created."""

    def __init__(self, ledger: Ledger, *, from_start: bool = False) -> None:
        self._ledger = ledger
        self._cursor = ledger.start_cursor()
        if not from_start:
            self.take()

    def take(self) -> list[LedgerEvent]:
        events, self._cursor = self._ledger.events(self._cursor)
        return events

    def take_round_events(self) -> list[LedgerEvent]:
        return [e for e in self.take() if e.name in ROUND_EVENTS]


def names(events: Sequence[LedgerEvent]) -> list[str]:
    return [e.name for e in events]


def only(events: Sequence[LedgerEvent], name: str) -> LedgerEvent:
    found = [e for e in events if e.name == name]
    assert len(found) == 1, f"expected one {name} in {names(events)}"
    return found[0]


# ---------------------------------------------------------------------------- roster


def test_register_stores_node_and_emits_full_certificate(backend: Backend) -> None:
    owner = backend.deploy(make_params())
    node = backend.new_ledger()
    assert owner.node(node.account) is None
    assert owner.active_nodes() == []
    tail = EventTail(owner)

    cert = certificate(7, node.account) * 10  # a few hundred bytes, stored only in the event
    node.register("10.0.0.7:50051", cert)

    event = only(tail.take(), "Registered")
    assert event.args["node"] == node.account
    assert event.args["endpoint"] == "10.0.0.7:50051"
    assert bytes(event.args["fingerprint"]) == fingerprint(cert)
    assert bytes(event.args["certificate"]) == cert
    record = owner.node(node.account)
    assert record is not None
    assert (record.account, record.endpoint, record.fingerprint, record.active) == (
        node.account,
        "10.0.0.7:50051",
        fingerprint(cert),
        True,
    )
    assert owner.active_nodes() == [record]


def test_update_endpoint_moves_the_node_and_keeps_its_certificate(backend: Backend) -> None:
    swarm = deploy(backend, 2)
    node = swarm.nodes[0]
    tail = EventTail(node)

    node.update_endpoint("moved.swarm.test:6000")

    event = only(tail.take(), "EndpointUpdated")
    assert event.args == {"node": node.account, "endpoint": "moved.swarm.test:6000"}
    record = node.node(node.account)
    assert record is not None
    assert (record.endpoint, record.fingerprint, record.active) == (
        "moved.swarm.test:6000",
        fingerprint(certificate(0, node.account)),
        True,
    )
    roster = {r.account: r.endpoint for r in node.active_nodes()}
    assert roster == {node.account: "moved.swarm.test:6000", swarm.nodes[1].account: endpoint(1)}
    refused("BadParameters", lambda: node.update_endpoint(""))
    refused("BadParameters", lambda: node.update_endpoint("x" * 256))
    node.update_endpoint("y" * 255)
    assert (node.node(node.account) or record).endpoint == "y" * 255


def test_deregister_then_register_again(backend: Backend) -> None:
    swarm = deploy(backend, 2)
    leaving, staying = swarm.nodes
    tail = EventTail(leaving)

    leaving.deregister()

    assert names(tail.take()) == ["Deregistered"]
    record = leaving.node(leaving.account)
    assert record is not None and record.active is False
    assert record.fingerprint == fingerprint(certificate(0, leaving.account))
    assert [r.account for r in leaving.active_nodes()] == [staying.account]
    refused("NotRegistered", leaving.deregister)
    refused("NotRegistered", lambda: leaving.update_endpoint("again:1"))
    refused("NotRegistered", lambda: join(leaving, 1))

    leaving.register("back.swarm.test:1", certificate(0, leaving.account))

    record = leaving.node(leaving.account)
    assert record is not None and (record.active, record.endpoint) == (True, "back.swarm.test:1")
    # back at the end of the live roster (docs/chain.md#gas: a live set, not every account)
    assert [r.account for r in leaving.active_nodes()] == [staying.account, leaving.account]
    join(leaving, 1)
    assert leaving.round(1).participants == (leaving.account,)


def test_roster_errors(backend: Backend) -> None:
    swarm = deploy(backend, 2)
    first, second = swarm.nodes
    stranger = backend.new_ledger()

    err = refused(
        "AlreadyRegistered", lambda: first.register("other:1", certificate(99, first.account))
    )
    assert err.details["account"] == first.account
    refused("BadParameters", lambda: stranger.register("", certificate(5, stranger.account)))
    refused("BadParameters", lambda: stranger.register("x" * 256, certificate(5, stranger.account)))
    refused("BadParameters", lambda: stranger.register("s:1", b""))
    err = refused("NotRegistered", lambda: stranger.update_endpoint("s:2"))
    assert err.details["account"] == stranger.account
    refused("NotRegistered", stranger.deregister)
    refused("NotRegistered", lambda: join(stranger, 1))
    assert stranger.node(stranger.account) is None
    assert [r.account for r in first.active_nodes()] == [first.account, second.account]


def test_a_certificate_not_naming_the_sender_is_refused(backend: Backend) -> None:
    swarm = deploy(backend, 1)
    stranger = backend.new_ledger()
    other = swarm.nodes[0].account

    for cert in (b"cert-without-an-account", certificate(1, other), b"0x"):
        err = refused("CertificateNotBound", lambda c=cert: stranger.register("s:1", c))
        assert err.details["account"] == stranger.account
    assert stranger.node(stranger.account) is None
    assert [r.account for r in stranger.active_nodes()] == [other]


def test_a_copied_certificate_cannot_block_its_owner(backend: Backend) -> None:
    """Before: a stranger registering the owner's certificate first got the owner refused
    with CertificateInUse. Now the copy names the owner, so the stranger is the one refused,
    and nothing is reserved for whoever registers first (docs/trust.md#the-roster)."""
    owner = backend.deploy(make_params())
    victim = backend.new_ledger()
    copier = backend.new_ledger()
    cert = certificate(0, victim.account)

    refused("CertificateNotBound", lambda: copier.register("copier:1", cert))
    victim.register("victim:1", cert)
    victim.deregister()
    refused("CertificateNotBound", lambda: copier.register("copier:1", cert))
    victim.register("victim:2", cert)
    assert [(r.account, r.fingerprint) for r in owner.active_nodes()] == [
        (victim.account, fingerprint(cert))
    ]


def test_active_nodes_follows_many_registrations_and_deregistrations(backend: Backend) -> None:
    """activeNodes() walks the live roster only (docs/chain.md#gas): a deregistration moves
    the last entry into its place, so the order is registration order with those moves."""
    swarm = deploy(backend, 12)
    live = swarm.accounts()
    for i in (0, 5, 11, 3, 1, 9, 2):
        swarm.nodes[i].deregister()
        index = live.index(swarm.nodes[i].account)
        last = live.pop()
        if index < len(live):
            live[index] = last
        assert [r.account for r in swarm.owner.active_nodes()] == live
    swarm.nodes[5].register("back:1", certificate(50, swarm.nodes[5].account))
    live.append(swarm.nodes[5].account)
    assert [r.account for r in swarm.owner.active_nodes()] == live
    assert all(r.active for r in swarm.owner.active_nodes())


# ---------------------------------------------------------------------------- admission


def test_restricted_admission(backend: Backend) -> None:
    owner = backend.deploy(make_params(restricted=True))
    node = backend.new_ledger()
    assert owner.is_allowed(node.account) is False
    err = refused("NotAllowed", lambda: node.register(endpoint(0), certificate(0, node.account)))
    assert err.details["account"] == node.account
    tail = EventTail(owner)

    owner.allow(node.account)
    assert owner.is_allowed(node.account) is True
    node.register(endpoint(0), certificate(0, node.account))
    assert [r.account for r in owner.active_nodes()] == [node.account]

    owner.revoke(node.account)
    assert names(tail.take()) == ["Allowed", "Registered", "Revoked", "Deregistered"]
    assert owner.is_allowed(node.account) is False
    record = owner.node(node.account)
    assert record is not None and record.active is False
    assert owner.active_nodes() == []
    refused("NotAllowed", lambda: node.register(endpoint(0), certificate(0, node.account)))


def test_only_the_owner_allows_and_revokes(backend: Backend) -> None:
    owner = backend.deploy(make_params(restricted=True))
    outsider = backend.new_ledger()
    other = backend.new_ledger()
    assert owner.owner() == owner.account

    err = refused("NotOwner", lambda: outsider.allow(other.account))
    assert err.details["caller"] == outsider.account
    assert owner.is_allowed(other.account) is False
    owner.allow(other.account)
    refused("NotOwner", lambda: outsider.revoke(other.account))
    assert owner.is_allowed(other.account) is True


def test_revoke_in_open_swarm_does_not_deregister(backend: Backend) -> None:
    swarm = deploy(backend, 1)
    node = swarm.nodes[0]
    swarm.owner.allow(node.account)
    swarm.owner.revoke(node.account)
    record = node.node(node.account)
    assert record is not None and record.active is True


def test_revoke_of_a_live_participant_withdraws_it(backend: Backend) -> None:
    owner = backend.deploy(make_params(restricted=True, max_peers=3))
    nodes = [backend.new_ledger() for _ in range(3)]
    for i, node in enumerate(nodes):
        owner.allow(node.account)
        node.register(endpoint(i), certificate(i, node.account))
    for node in nodes:
        join(node, 1)
    assert owner.round(1).status == RoundStatus.CLOSED
    tail = EventTail(owner)

    owner.revoke(nodes[2].account)

    assert names(tail.take()) == ["Revoked", "Deregistered", "Withdrawn", "AttemptStarted"]
    state = owner.round(1)
    assert (state.status, state.attempt, state.live) == (RoundStatus.CLOSED, 2, 2)
    assert state.seats[2].dropped_at == 1


# ---------------------------------------------------------------------------- deploy parameters

BAD_PARAMETERS: dict[str, dict[str, Any]] = {
    "min_peers_below_two": {"min_peers": 1},
    "max_peers_below_min_peers": {"min_peers": 3, "max_peers": 2},
    "max_peers_above_256": {"max_peers": 257},
    "zero_join_window": {"join_window": 0},
    "zero_transfer_deadline": {"transfer_deadline": 0},
    "round_deadline_equal_to_two_transfer_deadlines": {
        "transfer_deadline": 30,
        "round_deadline": 60,
    },
    "round_deadline_below_two_transfer_deadlines": {"transfer_deadline": 30, "round_deadline": 45},
    "zero_initial_digest": {"initial_model_digest": bytes(32)},
    "mean_with_parameters": {"merge_rule": Rule(MergeRuleId.MEAN, (1, 0, 0, 0))},
    "median_with_parameters": {"merge_rule": Rule(MergeRuleId.MEDIAN, (0, 0, 0, 1))},
    "trimmed_mean_beta_one_half": {
        "merge_rule": Rule(MergeRuleId.TRIMMED_MEAN, (500_000, 0, 0, 0))
    },
    "krum_needs_more_than_max_peers": {"merge_rule": Rule(MergeRuleId.KRUM, (1, 0, 0, 0))},
    "krum_keeps_more_than_max_peers": {"merge_rule": Rule(MergeRuleId.KRUM, (0, 5, 0, 0))},
    "krum_f_too_large": {"max_peers": 256, "merge_rule": Rule(MergeRuleId.KRUM, (127, 0, 0, 0))},
    "geometric_median_zero_tolerance": {
        "merge_rule": Rule(MergeRuleId.GEOMETRIC_MEDIAN, (0, 10, 0, 0))
    },
    "centered_clip_zero_iterations": {
        "merge_rule": Rule(MergeRuleId.CENTERED_CLIP, (100_000, 0, 0, 0))
    },
    "unknown_merge_rule": {"merge_rule": Rule(6)},
    "every_n_batches_zero": {"sync_policy": Rule(SyncPolicyId.EVERY_N_BATCHES)},
    "adaptive_min_above_first": {
        "sync_policy": Rule(SyncPolicyId.ADAPTIVE, (10, 20, 100, 1_500_000))
    },
    "adaptive_growth_not_above_one": {
        "sync_policy": Rule(SyncPolicyId.ADAPTIVE, (10, 5, 100, 1_000_000))
    },
    "adaptive_first_above_max": {
        "sync_policy": Rule(SyncPolicyId.ADAPTIVE, (200, 20, 100, 1_500_000))
    },
    "unknown_sync_policy": {"sync_policy": Rule(2, (10, 0, 0, 0))},
    # Several faults at once: both sides name the same (first) one.
    "several_faults": {
        "transfer_deadline": 60,
        "round_deadline": 100,
        "initial_model_digest": bytes(32),
        "merge_rule": Rule(6),
        "sync_policy": Rule(9),
    },
}


@pytest.mark.parametrize("case", sorted(BAD_PARAMETERS))
def test_bad_parameters_are_refused_by_swarm_and_by_python(backend: Backend, case: str) -> None:
    params = make_params(**BAD_PARAMETERS[case])
    with pytest.raises(ConfigError) as python_side:
        backend.deploy(params, validate=True)
    err = refused("BadParameters", lambda: backend.deploy(params, validate=False))
    # The Python table checks in the contract's order, with the contract's words.
    assert err.details["reason"] == str(python_side.value)


def test_krum_models_kept_beyond_uint16_is_refused(backend: Backend) -> None:
    """m = 65536 cannot be met by any swarm (max_peers <= 256); it must not wrap to 0."""
    params = make_params(merge_rule=Rule(MergeRuleId.KRUM, (0, 65_536, 0, 0)))
    with pytest.raises(ConfigError):
        backend.deploy(params, validate=True)
    refused("BadParameters", lambda: backend.deploy(params, validate=False))


def test_boundary_parameters_are_accepted(backend: Backend) -> None:
    accepted = [
        make_params(transfer_deadline=30, round_deadline=61),
        make_params(merge_rule=Rule(MergeRuleId.TRIMMED_MEAN, (499_999, 0, 0, 0))),
        make_params(max_peers=3, merge_rule=Rule(MergeRuleId.KRUM, (0, 3, 0, 0))),
        make_params(min_peers=256, max_peers=256),
        make_params(sync_policy=Rule(SyncPolicyId.ADAPTIVE, (10, 10, 10, 1_000_001))),
        make_params(checked_merge=False),  # the owner-check switch, read back from the chain
    ]
    for params in accepted:
        owner = backend.deploy(params, validate=False)
        assert owner.params() == params
        assert owner.owner() == owner.account
        assert owner.current_round() == 1
        assert owner.round(1).status == RoundStatus.OPEN
        assert owner.latest_model() == (0, INITIAL_DIGEST)
    never = owner.round(99)
    assert (never.status, never.joined, never.seats, never.final_digest) == (
        RoundStatus.NONE,
        0,
        (),
        None,
    )
    assert owner.drop_votes(99, 1, owner.account) == 0


def test_merge_rule_raises_the_live_minimum(backend: Backend) -> None:
    """Krum with f = 0 needs 3 live participants even though min_peers is 2."""
    swarm = closed_swarm(backend, 3, merge_rule=Rule(MergeRuleId.KRUM, (0, 0, 0, 0)))
    swarm.nodes[2].withdraw(1)
    assert_round_ended(swarm.owner, 1, RoundStatus.FAILED, FailReason.TOO_FEW_LIVE)


# Secure aggregation's refusals, each in the order the contract checks them: the first one
# wins (several at once: minPeers before the rule). Each as (overrides, error, details).
SECAGG = SecureAggregation(bound=16, fraction_bits=20, max_weight=1000)
SECAGG_REFUSALS: list[tuple[dict[str, Any], str, dict[str, Any]]] = [
    ({"min_peers": 2}, "SecureAggregationNeedsPeers", {"minPeers": 2, "needed": 3}),
    (
        {"min_peers": 2, "merge_rule": Rule(MergeRuleId.MEDIAN)},
        "SecureAggregationNeedsPeers",
        {"minPeers": 2, "needed": 3},
    ),
    *(
        ({"merge_rule": rule}, "SecureAggregationNeedsMean", {"mergeRule": int(rule.id)})
        for rule in (
            Rule(MergeRuleId.MEDIAN),
            Rule(MergeRuleId.TRIMMED_MEAN, (100_000, 0, 0, 0)),
            Rule(MergeRuleId.KRUM, (0, 0, 0, 0)),
            Rule(MergeRuleId.GEOMETRIC_MEDIAN, (1000, 10, 0, 0)),
            Rule(MergeRuleId.CENTERED_CLIP, (100_000, 3, 0, 0)),
        )
    ),
    (
        {"secure_aggregation": SecureAggregation(0, 20, 1000)},
        "SecureAggregationBadNumbers",
        {"reason": "bound must be at least 1"},
    ),
    (
        {"secure_aggregation": SecureAggregation(16, 49, 1000)},
        "SecureAggregationBadNumbers",
        {"reason": "fraction bits must be at most 48"},
    ),
    (
        {"secure_aggregation": SecureAggregation(16, 20, 0)},
        "SecureAggregationBadNumbers",
        {"reason": "max weight must be at least 1"},
    ),
    (  # maxPeers 4 x 2^41 x 16 x 2^20 = 2^67: 68 bits, a sign bit and 8 of headroom
        {"secure_aggregation": SecureAggregation(16, 20, 2**41)},
        "SecureAggregationModulusTooWide",
        {"bits": 77, "limit": 64},
    ),
]


def test_secure_aggregation_refusals_are_named_alike(backend: Backend) -> None:
    """Each refusal by its own named error, with the same arguments as the Python side's
    (swarmnode.rules.ParamsRefused); off, none of them applies."""
    for overrides, name, details in SECAGG_REFUSALS:
        params = make_params(**{"min_peers": 3, "secure_aggregation": SECAGG, **overrides})
        with pytest.raises(ParamsRefused) as python_side:
            params.validate()
        assert (python_side.value.error, python_side.value.details) == (name, details)
        err = refused(name, lambda params=params: backend.deploy(params, validate=False))
        assert err.details == details
        # without secure aggregation each of these swarms is a valid one
        dataclasses.replace(params, secure_aggregation=None).validate()


def test_secure_aggregation_is_fixed_at_deploy_and_caps_the_weight(backend: Backend) -> None:
    swarm = deploy(backend, 3, min_peers=3, secure_aggregation=SECAGG)
    assert swarm.owner.params().secure_aggregation == SECAGG
    n0, n1, n2 = swarm.nodes
    tail = EventTail(n0)
    err = refused("WeightAboveMax", lambda: join(n0, 1, weight=1001))
    assert err.details == {"weight": 1001, "maxWeight": 1000}
    refused("BadParameters", lambda: join(n0, 1, weight=0))
    assert tail.take() == []  # a refused join leaves nothing behind
    join(n0, 1, weight=1000)
    join(n1, 1, weight=1)
    join(n2, 1, weight=999)
    state = swarm.owner.round(1)
    assert state.status == RoundStatus.CLOSED
    assert [seat.weight for seat in state.seats] == [1000, 1, 999]
    # off, the same weight joins: the cap belongs to secure aggregation alone
    plain = deploy(backend, 2)
    assert plain.owner.params().secure_aggregation is None
    join(plain.nodes[0], 1, weight=2**64 - 1)


# ---------------------------------------------------------------------------- how rounds end


def test_agreeing_reports_finalize_the_round(backend: Backend) -> None:
    swarm = closed_swarm(backend, 3)  # quorum(3) = max(2, 2) = 2
    n0, n1, n2 = swarm.nodes
    assert n0.latest_model() == (0, INITIAL_DIGEST)
    tail = EventTail(n0)

    n0.report(1, 1, DIGEST_A)
    state = n0.round(1)
    assert (state.status, state.reports, state.final_digest) == (RoundStatus.CLOSED, 1, None)
    n1.report(1, 1, DIGEST_A)

    state = assert_round_ended(n0, 1, RoundStatus.FINAL)
    assert state.final_digest == DIGEST_A
    assert n0.latest_model() == (1, DIGEST_A)
    events = tail.take()
    assert names(events) == ["Reported", "Reported", "RoundFinalized", "RoundOpened"]
    assert events[2].args == {"round": 1, "attempt": 1, "digest": DIGEST_A}
    assert events[3].args == {"round": 2}
    err = refused("WrongRound", lambda: n2.report(1, 1, DIGEST_A))
    assert err.details == {"current": 2, "given": 1}

    # The next round agrees on its own digest; round 1's lead digest does not carry over.
    for node in swarm.nodes:
        join(node, 2)
    n2.report(2, 1, DIGEST_B)
    n0.report(2, 1, DIGEST_A)
    assert n0.round(2).status == RoundStatus.CLOSED
    n1.report(2, 1, DIGEST_B)
    assert_round_ended(n0, 2, RoundStatus.FINAL)
    assert n0.latest_model() == (2, DIGEST_B)
    assert n0.round(1).final_digest == DIGEST_A


def test_round_with_too_few_joins_expires(backend: Backend) -> None:
    swarm = deploy(backend, 3, min_peers=3)
    n0, n1, n2 = swarm.nodes
    err = refused("TooFewJoined", lambda: n0.expire(1))  # nobody joined: nothing to expire
    assert err.details == {"round": 1, "joined": 0, "needed": 3}
    join(n0, 1)
    first_join_at = n0.round(1).first_join_at
    assert first_join_at > 0
    join(n1, 1)

    err = refused("TooEarly", lambda: n2.expire(1))
    assert err.details["notBefore"] == first_join_at + ROUND_DEADLINE
    err = refused("TooFewJoined", lambda: n2.close(1))
    assert err.details == {"round": 1, "joined": 2, "needed": 3}
    backend.advance_to(first_join_at + ROUND_DEADLINE)
    tail = EventTail(n0)
    n2.expire(1)  # anyone may expire, joined or not

    assert_round_ended(n0, 1, RoundStatus.FAILED, FailReason.EXPIRED)
    events = tail.take()
    assert names(events) == ["RoundFailed", "RoundOpened"]
    assert events[0].args == {"round": 1, "reason": int(FailReason.EXPIRED)}
    assert n0.latest_model() == (0, INITIAL_DIGEST)
    join(n0, 2)  # the joiners are released
    assert n0.round(2).participants == (n0.account,)


def test_open_round_with_enough_joins_expires_from_first_join(backend: Backend) -> None:
    swarm = deploy(backend, 3)  # the third trains on: the round stays open
    n0, n1, _ = swarm.nodes
    join(n0, 1)
    join(n1, 1)
    assert n0.round(1).status == RoundStatus.OPEN
    first_join_at = n0.round(1).first_join_at
    refused("TooEarly", lambda: n0.expire(1))
    backend.advance_to(first_join_at + ROUND_DEADLINE)
    n0.expire(1)
    assert_round_ended(n0, 1, RoundStatus.FAILED, FailReason.EXPIRED)


def test_reports_disagree_fails_as_soon_as_quorum_is_impossible(backend: Backend) -> None:
    swarm = closed_swarm(backend, 4)  # quorum(4) = 3
    n0, n1, n2, n3 = swarm.nodes
    tail = EventTail(n0)
    n0.report(1, 1, DIGEST_A)
    n1.report(1, 1, DIGEST_B)
    assert n0.round(1).status == RoundStatus.CLOSED  # 1 + 2 outstanding can still reach 3

    n2.report(1, 1, DIGEST_C)  # 1 + 1 outstanding < 3

    assert_round_ended(n0, 1, RoundStatus.FAILED, FailReason.REPORTS_DISAGREE)
    events = tail.take()
    assert names(events) == ["Reported", "Reported", "Reported", "RoundFailed", "RoundOpened"]
    assert events[3].args == {"round": 1, "reason": int(FailReason.REPORTS_DISAGREE)}
    assert n0.latest_model() == (0, INITIAL_DIGEST)
    refused("WrongRound", lambda: n3.report(1, 1, DIGEST_A))


def test_reports_disagree_with_a_split_vote(backend: Backend) -> None:
    swarm = closed_swarm(backend, 4)  # quorum(4) = 3
    n0, n1, n2, n3 = swarm.nodes
    n0.report(1, 1, DIGEST_A)
    n1.report(1, 1, DIGEST_B)
    n2.report(1, 1, DIGEST_A)
    assert n0.round(1).status == RoundStatus.CLOSED  # A has 2 and one report is outstanding
    n3.report(1, 1, DIGEST_B)
    assert_round_ended(n0, 1, RoundStatus.FAILED, FailReason.REPORTS_DISAGREE)


def test_silent_participant_is_voted_out_and_a_new_attempt_finalizes(backend: Backend) -> None:
    swarm = closed_swarm(backend, 3)  # quorum(3) = 2
    n0, n1, silent = swarm.nodes
    n0.report(1, 1, DIGEST_A)
    n1.report(1, 1, DIGEST_B)  # 1 + 1 outstanding = quorum: still possible
    assert n0.round(1).status == RoundStatus.CLOSED
    start = n0.round(1).attempt_start
    backend.advance_to(start + 2 * TRANSFER_DEADLINE)
    tail = EventTail(n0)

    n0.drop(1, 1, silent.account)
    assert n0.round(1).attempt == 1  # 1 of 2 others is not more than half
    n1.drop(1, 1, silent.account)

    events = tail.take()
    assert names(events) == ["DropVoted", "DropVoted", "Dropped", "AttemptStarted"]
    assert events[2].args == {"round": 1, "attempt": 1, "peer": silent.account}
    assert events[3].args["attempt"] == 2 and events[3].args["live"] == 2
    state = n0.round(1)
    assert (state.status, state.attempt, state.live, state.reports) == (
        RoundStatus.CLOSED,
        2,
        2,
        0,
    )
    assert state.live_participants == (n0.account, n1.account)
    n0.report(1, 2, DIGEST_A)
    n1.report(1, 2, DIGEST_A)
    assert_round_ended(n0, 1, RoundStatus.FINAL)
    assert n0.latest_model() == (1, DIGEST_A)


def test_silent_participant_voted_out_below_the_minimum_fails_the_round(backend: Backend) -> None:
    swarm = closed_swarm(backend, 3, min_peers=3)  # quorum(3) = 3
    n0, n1, silent = swarm.nodes
    n0.report(1, 1, DIGEST_A)
    n1.report(1, 1, DIGEST_A)
    assert n0.round(1).status == RoundStatus.CLOSED  # two agree, three are needed
    backend.advance_to(n0.round(1).attempt_start + 2 * TRANSFER_DEADLINE)
    tail = EventTail(n0)
    n0.drop(1, 1, silent.account)
    n1.drop(1, 1, silent.account)
    assert names(tail.take_round_events()) == [
        "DropVoted",
        "DropVoted",
        "Dropped",
        "RoundFailed",
        "RoundOpened",
    ]
    assert_round_ended(n0, 1, RoundStatus.FAILED, FailReason.TOO_FEW_LIVE)


def test_dropped_peer_starts_attempt_two_and_voids_attempt_one_reports(backend: Backend) -> None:
    swarm = closed_swarm(backend, 4)  # quorum(4) = 3, quorum(3) = 2
    n0, n1, n2, bad = swarm.nodes
    n0.report(1, 1, DIGEST_A)
    n1.report(1, 1, DIGEST_A)
    first_start = n0.round(1).attempt_start
    backend.advance_to(first_start + TRANSFER_DEADLINE)

    n0.drop(1, 1, bad.account)
    assert n0.drop_votes(1, 1, bad.account) == 1
    assert n0.round(1).live == 4  # one vote of three others does not drop
    tail = EventTail(n0)
    n1.drop(1, 1, bad.account)  # two of three others: more than half

    events = tail.take()
    assert names(events) == ["DropVoted", "Dropped", "AttemptStarted"]
    assert events[0].args == {"round": 1, "attempt": 1, "voter": n1.account, "peer": bad.account}
    assert events[1].args == {"round": 1, "attempt": 1, "peer": bad.account}
    state = n0.round(1)
    assert (state.status, state.attempt, state.live, state.reports) == (
        RoundStatus.CLOSED,
        2,
        3,
        0,
    )
    assert state.attempt_start >= first_start + TRANSFER_DEADLINE
    assert events[2].args == {
        "round": 1,
        "attempt": 2,
        "startedAt": state.attempt_start,
        "live": 3,
    }
    assert state.participants == tuple(swarm.accounts())  # the list fixed at close stays
    assert state.live_participants == tuple(swarm.accounts([0, 1, 2]))
    assert [s.dropped_at for s in state.seats] == [0, 0, 0, 1]
    assert [s.reported_at for s in state.seats] == [1, 1, 0, 0]
    assert n0.drop_votes(1, 1, bad.account) == 2

    refused("NotLive", lambda: bad.report(1, 2, DIGEST_A))
    refused("WrongAttempt", lambda: n2.report(1, 1, DIGEST_A))
    # Attempt 1's two A reports are void: with them, this one would make quorum(3) = 2.
    n2.report(1, 2, DIGEST_A)
    assert n0.round(1).status == RoundStatus.CLOSED
    assert n0.round(1).reports == 1
    n0.report(1, 2, DIGEST_A)  # reporting again in the new attempt is no duplicate

    state = assert_round_ended(n0, 1, RoundStatus.FINAL)
    assert state.final_digest == DIGEST_A
    assert [s.reported_at for s in state.seats] == [2, 1, 2, 0]


def test_withdrawal_starts_a_new_attempt(backend: Backend) -> None:
    swarm = closed_swarm(backend, 3)
    n0, n1, leaving = swarm.nodes
    backend.advance_to(n0.round(1).attempt_start + TRANSFER_DEADLINE)
    leaving.drop(1, 1, n0.account)
    assert n0.drop_votes(1, 1, n0.account) == 1
    tail = EventTail(n0)

    leaving.withdraw(1)

    events = tail.take()
    assert names(events) == ["Withdrawn", "AttemptStarted"]
    assert events[0].args == {"round": 1, "attempt": 1, "node": leaving.account}
    state = n0.round(1)
    assert (state.status, state.attempt, state.live) == (RoundStatus.CLOSED, 2, 2)
    assert state.seats[2].dropped_at == 1
    assert n0.drop_votes(1, 2, n0.account) == 0  # the withdrawn node's vote is void
    refused("NotLive", lambda: leaving.withdraw(1))
    refused("NotLive", lambda: leaving.report(1, 2, DIGEST_A))
    tail.take()
    leaving.deregister()  # already out of the round: only the roster changes
    assert names(tail.take()) == ["Deregistered"]
    assert (n0.round(1).attempt, n0.round(1).live) == (2, 2)
    leaving.register(endpoint(2), certificate(2, leaving.account))
    n0.report(1, 2, DIGEST_A)
    n1.report(1, 2, DIGEST_A)
    assert_round_ended(n0, 1, RoundStatus.FINAL)
    join(leaving, 2)  # it joins again at r+1
    assert n0.round(2).participants == (leaving.account,)


def test_drop_or_withdrawal_below_the_minimum_fails_the_round(backend: Backend) -> None:
    swarm = closed_swarm(backend, 2)
    n0, n1 = swarm.nodes
    backend.advance_to(n0.round(1).attempt_start + TRANSFER_DEADLINE)
    tail = EventTail(n0)
    n0.drop(1, 1, n1.account)  # the only other live participant: one vote is enough

    assert names(tail.take()) == ["DropVoted", "Dropped", "RoundFailed", "RoundOpened"]
    state = assert_round_ended(n0, 1, RoundStatus.FAILED, FailReason.TOO_FEW_LIVE)
    assert state.live == 1

    join(n0, 2)
    join(n1, 2)
    assert n0.round(2).status == RoundStatus.CLOSED
    n1.withdraw(2)

    events = tail.take()
    assert names(events) == [
        "Joined",
        "Joined",
        "RoundClosed",
        "AttemptStarted",
        "Withdrawn",
        "RoundFailed",
        "RoundOpened",
    ]
    assert events[5].args == {"round": 2, "reason": int(FailReason.TOO_FEW_LIVE)}
    assert_round_ended(n0, 2, RoundStatus.FAILED, FailReason.TOO_FEW_LIVE)


def test_closed_round_expires_after_the_deadline_from_close(backend: Backend) -> None:
    swarm = deploy(backend, 3)  # the third trains on and never joins: the window closes it
    n0, n1, _ = swarm.nodes
    join(n0, 1)
    first_join_at = n0.round(1).first_join_at
    join(n1, 1)
    backend.advance_to(first_join_at + JOIN_WINDOW)
    n0.close(1)
    closed_at = n0.round(1).closed_at
    assert closed_at >= first_join_at + JOIN_WINDOW

    err = refused("TooEarly", lambda: n1.expire(1))
    assert err.details["notBefore"] == closed_at + ROUND_DEADLINE
    # Once closed, the deadline counts from close, not from the first join.
    backend.advance_to(first_join_at + ROUND_DEADLINE)
    refused("TooEarly", lambda: n1.expire(1))
    backend.advance_to(closed_at + ROUND_DEADLINE)
    tail = EventTail(n0)
    swarm.owner.expire(1)

    assert names(tail.take()) == ["RoundFailed", "RoundOpened"]
    assert_round_ended(n0, 1, RoundStatus.FAILED, FailReason.EXPIRED)
    refused("WrongRound", lambda: n0.report(1, 1, DIGEST_A))


# ---------------------------------------------------------------------------- join and close


def test_the_max_peers_join_closes_the_round(backend: Backend) -> None:
    swarm = deploy(backend, 4, max_peers=3)  # a fourth node trains on: max_peers closes
    n0, n1, n2, _ = swarm.nodes
    tail = EventTail(n0)
    n2.join(1, commitment(n2), 30, 7)
    n0.join(1, commitment(n0), 10, 5)
    assert n0.round(1).status == RoundStatus.OPEN
    n1.join(1, commitment(n1), 20, 6)

    events = tail.take()
    assert names(events) == ["Joined", "Joined", "Joined", "RoundClosed", "AttemptStarted"]
    assert events[0].args == {
        "round": 1,
        "node": n2.account,
        "commitment": commitment(n2),
        "weight": 30,
        "valLoss": 7,
    }
    order = (n2.account, n0.account, n1.account)
    assert events[3].args == {"round": 1, "participants": list(order)}
    assert len({e.position[0] for e in events[2:]}) == 1  # one transaction
    state = n0.round(1)
    assert state.status == RoundStatus.CLOSED
    assert state.participants == order
    assert (state.joined, state.live, state.attempt, state.reports) == (3, 3, 1, 0)
    assert state.closed_at == state.attempt_start >= state.first_join_at > 0
    assert events[4].args == {"round": 1, "attempt": 1, "startedAt": state.closed_at, "live": 3}
    assert [(s.commitment, s.weight, s.val_loss) for s in state.seats] == [
        (commitment(n2), 30, 7),
        (commitment(n0), 10, 5),
        (commitment(n1), 20, 6),
    ]
    err = refused("RoundNotOpen", lambda: join(n0, 1))
    assert err.details == {"round": 1}
    refused("RoundNotOpen", lambda: n0.leave(1))
    refused("RoundNotOpen", lambda: n0.close(1))


def test_close_after_the_join_window(backend: Backend) -> None:
    swarm = deploy(backend, 3)  # max_peers 4: nothing closes by itself
    n0, n1, n2 = swarm.nodes
    err = refused("TooFewJoined", lambda: n0.close(1))
    assert err.details == {"round": 1, "joined": 0, "needed": 2}
    join(n0, 1)
    first_join_at = n0.round(1).first_join_at
    refused("TooFewJoined", lambda: n1.close(1))
    join(n1, 1)

    err = refused("TooEarly", lambda: n1.close(1))
    assert err.details["notBefore"] == first_join_at + JOIN_WINDOW
    assert n0.round(1).status == RoundStatus.OPEN
    backend.advance_to(first_join_at + JOIN_WINDOW)
    tail = EventTail(n0)
    swarm.owner.close(1)  # anyone may close

    events = tail.take()
    assert names(events) == ["RoundClosed", "AttemptStarted"]
    assert events[0].args["participants"] == [n0.account, n1.account]
    state = n0.round(1)
    assert (state.status, state.joined, state.live, state.attempt) == (RoundStatus.CLOSED, 2, 2, 1)
    assert state.closed_at >= first_join_at + JOIN_WINDOW
    refused("RoundNotOpen", lambda: join(n2, 1))


def closing_block_hash(backend: Backend, closed: LedgerEvent) -> bytes | None:
    """The hash of the block a RoundClosed event sits in, read from the chain itself, not
    through the ledger; None in memory, which has no blocks."""
    from tests.backends import AnvilBackend, EmbeddedBackend

    if isinstance(backend, EmbeddedBackend):
        w3 = backend.chain.w3
    elif isinstance(backend, AnvilBackend):
        w3 = backend.chain.rpc.w3
    else:
        return None
    return bytes(w3.eth.get_block(closed.position[0])["hash"])


def test_each_closed_round_has_a_seed_nobody_in_it_chose(backend: Backend) -> None:
    swarm = deploy(backend, 3, max_peers=3)
    n0, n1, n2 = swarm.nodes
    handles = [swarm.owner, *swarm.nodes]
    tail = EventTail(n0)
    join(n0, 1)
    join(n1, 1)
    assert {h.round(1).seed for h in handles} == {b""}  # open: no seed yet
    join(n2, 1)  # closes round 1

    seeds = {h.round(1).seed for h in handles}
    assert len(seeds) == 1, "every participant's handle reads the same seed"
    seed_1 = seeds.pop()
    assert len(seed_1) == 32 and any(seed_1)
    expected = closing_block_hash(backend, only(tail.take(), "RoundClosed"))
    if expected is not None:
        assert seed_1 == expected

    n0.report(1, 1, DIGEST_A)
    n1.report(1, 1, DIGEST_A)
    assert_round_ended(n0, 1, RoundStatus.FINAL)
    assert [h.round(1).seed for h in handles] == [seed_1] * len(handles)

    # Round 2 closes by close() after the window, not by the max_peers join: a seed of its own.
    join(n0, 2)
    join(n1, 2)
    assert n2.round(2).seed == b""
    backend.advance_to(n0.round(2).first_join_at + JOIN_WINDOW)
    swarm.owner.close(2)
    seeds = {h.round(2).seed for h in handles}
    assert len(seeds) == 1
    seed_2 = seeds.pop()
    assert len(seed_2) == 32 and seed_2 != seed_1
    expected = closing_block_hash(backend, only(tail.take(), "RoundClosed"))
    if expected is not None:
        assert seed_2 == expected
    assert n0.round(3).seed == b""  # a round that never opened has none either


def test_join_errors(backend: Backend) -> None:
    swarm = deploy(backend, 2)
    n0, n1 = swarm.nodes
    tail = EventTail(n0)
    err = refused("WrongRound", lambda: join(n0, 2))
    assert err.details == {"current": 1, "given": 2}
    refused("WrongRound", lambda: join(n0, 0))
    refused("BadParameters", lambda: n0.join(1, commitment(n0), 0, 1))
    refused("BadParameters", lambda: n0.join(1, bytes(32), 10, 1))
    refused("NotRegistered", lambda: join(backend.new_ledger(), 1))
    assert n0.round(1).joined == 0
    assert tail.take() == []  # a refused call leaves nothing behind
    join(n0, 1)
    err = refused("AlreadyJoined", lambda: join(n0, 1))
    assert err.details == {"round": 1, "node": n0.account}
    err = refused("NotAParticipant", lambda: n1.leave(1))
    assert err.details == {"round": 1, "node": n1.account}
    refused("WrongRound", lambda: n0.leave(2))
    assert n0.round(1).participants == (n0.account,)


def test_leaving_before_close(backend: Backend) -> None:
    swarm = deploy(backend, 4)
    n0, n1, n2, n3 = swarm.nodes
    for node in (n0, n1, n2):
        join(node, 1)
    first_join_at = n0.round(1).first_join_at
    tail = EventTail(n0)

    n0.leave(1)

    events = tail.take()
    assert names(events) == ["Left"]
    assert events[0].args == {"round": 1, "node": n0.account}
    state = n0.round(1)
    # The last joiner takes the leaver's place; the first join time stays.
    assert state.participants == (n2.account, n1.account)
    assert (state.joined, state.first_join_at, state.status) == (2, first_join_at, RoundStatus.OPEN)
    refused("NotAParticipant", lambda: n0.leave(1))

    join(n0, 1)  # a leaver may join again, at the end
    join(n3, 1)  # the fourth join closes the round
    events = tail.take()
    assert events[-2].name == "RoundClosed"
    order = [n2.account, n1.account, n0.account, n3.account]
    assert events[-2].args["participants"] == order
    assert list(n0.round(1).participants) == order


def test_last_leaver_resets_the_join_window(backend: Backend) -> None:
    swarm = deploy(backend, 3)  # the third never joins: only the window closes the round
    n0, n1, _ = swarm.nodes
    join(n0, 1)
    assert n0.round(1).first_join_at > 0
    n0.leave(1)
    state = n0.round(1)
    assert (state.joined, state.first_join_at, state.participants) == (0, 0, ())
    refused("TooFewJoined", lambda: n0.expire(1))

    backend.advance(2 * JOIN_WINDOW)
    join(n1, 1)
    second_first_join = n0.round(1).first_join_at
    join(n0, 1)
    # The window counts from the new first join, not the one that left.
    err = refused("TooEarly", lambda: n0.close(1))
    assert err.details["notBefore"] == second_first_join + JOIN_WINDOW
    backend.advance_to(second_first_join + JOIN_WINDOW)
    n0.close(1)
    assert n0.round(1).participants == (n1.account, n0.account)


# ---------------------------------------------------------------------------- other errors


def test_report_and_vote_errors(backend: Backend) -> None:
    swarm = deploy(backend, 4, max_peers=3)
    n0, n1, n2, outsider = swarm.nodes
    join(n0, 1)
    join(n1, 1)
    err = refused("RoundNotClosed", lambda: n0.report(1, 1, DIGEST_A))
    assert err.details == {"round": 1}
    refused("RoundNotClosed", lambda: n0.withdraw(1))
    refused("RoundNotClosed", lambda: n0.drop(1, 1, n1.account))
    join(n2, 1)  # closes
    start = n0.round(1).attempt_start

    err = refused("TooEarly", lambda: n0.drop(1, 1, n2.account))
    assert err.details["notBefore"] == start + TRANSFER_DEADLINE
    err = refused("NotAParticipant", lambda: outsider.report(1, 1, DIGEST_A))
    assert err.details == {"round": 1, "node": outsider.account}
    refused("NotAParticipant", lambda: outsider.withdraw(1))
    refused("NotAParticipant", lambda: outsider.drop(1, 1, n0.account))
    refused("NotAParticipant", lambda: n0.drop(1, 1, outsider.account))
    refused("BadParameters", lambda: n0.drop(1, 1, n0.account))
    err = refused("WrongAttempt", lambda: n0.report(1, 2, DIGEST_A))
    assert err.details == {"current": 1, "given": 2}
    refused("WrongAttempt", lambda: n0.report(1, 0, DIGEST_A))
    err = refused("WrongRound", lambda: n0.report(2, 1, DIGEST_A))
    assert err.details == {"current": 1, "given": 2}
    refused("WrongRound", lambda: n0.withdraw(2))
    refused("WrongRound", lambda: n0.expire(2))
    refused("BadParameters", lambda: n0.report(1, 1, bytes(32)))
    refused("BadParameters", lambda: n0.report(1, 1, NO_DIGEST))

    n0.report(1, 1, DIGEST_A)
    err = refused("DuplicateReport", lambda: n0.report(1, 1, DIGEST_B))
    assert err.details == {"round": 1, "attempt": 1, "node": n0.account}
    assert n0.round(1).reports == 1

    backend.advance_to(start + TRANSFER_DEADLINE)
    n0.drop(1, 1, n2.account)
    err = refused("DuplicateVote", lambda: n0.drop(1, 1, n2.account))
    assert err.details == {"round": 1, "attempt": 1, "voter": n0.account, "peer": n2.account}
    assert n0.drop_votes(1, 1, n2.account) == 1
    n1.drop(1, 1, n2.account)  # attempt 2 starts with n0, n1

    refused("NotLive", lambda: n2.report(1, 2, DIGEST_A))
    refused("NotLive", lambda: n2.withdraw(1))
    backend.advance_to(n0.round(1).attempt_start + TRANSFER_DEADLINE)
    err = refused("NotLive", lambda: n2.drop(1, 2, n0.account))
    assert err.details == {"round": 1, "node": n2.account}
    refused("NotLive", lambda: n0.drop(1, 2, n2.account))
    err = refused("WrongAttempt", lambda: n0.drop(1, 1, n1.account))
    assert err.details == {"current": 2, "given": 1}
    refused("WrongAttempt", lambda: n1.report(1, 1, DIGEST_A))
    assert n0.round(1).status == RoundStatus.CLOSED


def test_drop_too_early_in_each_new_attempt(backend: Backend) -> None:
    swarm = closed_swarm(backend, 4)
    n0, n1, n2, n3 = swarm.nodes
    backend.advance_to(n0.round(1).attempt_start + TRANSFER_DEADLINE)
    n0.drop(1, 1, n3.account)
    n1.drop(1, 1, n3.account)
    second_start = n0.round(1).attempt_start
    err = refused("TooEarly", lambda: n0.drop(1, 2, n2.account))  # the clock restarted
    assert err.details["notBefore"] == second_start + TRANSFER_DEADLINE
    backend.advance_to(second_start + TRANSFER_DEADLINE)
    n0.drop(1, 2, n2.account)
    assert n0.drop_votes(1, 2, n2.account) == 1


# ---------------------------------------------------------------------------- vote counting


def test_votes_count_per_attempt_and_only_from_live_participants(backend: Backend) -> None:
    swarm = closed_swarm(backend, 4)
    n0, n1, n2, n3 = swarm.nodes
    backend.advance_to(n0.round(1).attempt_start + TRANSFER_DEADLINE)

    n0.drop(1, 1, n2.account)  # against n2 in attempt 1: 1 of 3, not enough
    n3.drop(1, 1, n0.account)
    n2.drop(1, 1, n0.account)
    assert (n0.drop_votes(1, 1, n2.account), n0.drop_votes(1, 1, n0.account)) == (1, 2)
    # n0 had 2 of 3: dropped; attempt 2 has n1, n2, n3 live.
    state = n0.round(1)
    assert (state.attempt, state.live) == (2, 3)
    assert state.live_participants == tuple(swarm.accounts([1, 2, 3]))
    assert n0.drop_votes(1, 2, n2.account) == 0
    assert n0.drop_votes(1, 2, n0.account) == 0

    backend.advance_to(state.attempt_start + TRANSFER_DEADLINE)
    refused("NotLive", lambda: n0.drop(1, 2, n2.account))  # a dropped peer's vote never counts
    n1.drop(1, 2, n2.account)
    # One vote of two others is not more than half; attempt 1's vote does not carry over.
    assert n0.drop_votes(1, 2, n2.account) == 1
    assert (n0.round(1).attempt, n0.round(1).live) == (2, 3)
    n3.drop(1, 2, n2.account)
    state = n0.round(1)
    assert (state.attempt, state.live) == (3, 2)
    assert [s.dropped_at for s in state.seats] == [1, 0, 2, 0]
    assert n0.drop_votes(1, 2, n2.account) == 2


# ---------------------------------------------------------------------------- deregistering


def test_deregistering_while_joined_to_an_open_round_leaves_it(backend: Backend) -> None:
    swarm = deploy(backend, 4, max_peers=3)  # the fourth trains on and has not joined
    n0, n1, n2, _ = swarm.nodes
    join(n0, 1)
    join(n1, 1)
    tail = EventTail(n0)

    n0.deregister()

    events = tail.take()
    assert names(events) == ["Deregistered", "Left"]
    assert events[1].args == {"round": 1, "node": n0.account}
    state = n0.round(1)
    assert (state.status, state.participants) == (RoundStatus.OPEN, (n1.account,))
    join(n2, 1)  # two joined of max 3, and the fourth still to come: still open
    assert n0.round(1).status == RoundStatus.OPEN


def test_deregistering_while_live_in_a_closed_round_withdraws(backend: Backend) -> None:
    swarm = closed_swarm(backend, 3)
    n0, n1, n2 = swarm.nodes
    tail = EventTail(n0)

    n2.deregister()

    events = tail.take()
    assert names(events) == ["Deregistered", "Withdrawn", "AttemptStarted"]
    assert events[1].args == {"round": 1, "attempt": 1, "node": n2.account}
    state = n0.round(1)
    assert (state.status, state.attempt, state.live) == (RoundStatus.CLOSED, 2, 2)
    assert state.seats[2].dropped_at == 1
    n0.report(1, 2, DIGEST_A)
    n1.report(1, 2, DIGEST_A)
    assert_round_ended(n0, 1, RoundStatus.FINAL)

    # With only the minimum live, a deregistration fails the round. (n2 is gone, so the
    # second join is every node still training: it closes the round.)
    join(n0, 2)
    join(n1, 2)
    assert n0.round(2).status == RoundStatus.CLOSED
    tail.take()
    n1.deregister()
    assert names(tail.take()) == ["Deregistered", "Withdrawn", "RoundFailed", "RoundOpened"]
    assert_round_ended(n0, 2, RoundStatus.FAILED, FailReason.TOO_FEW_LIVE)


# ---------------------------------------------------------------------------- finishing
# A node that finished training is counted out of `training`; a round closes once every node
# still training joined (docs/round-protocol.md#finishing).


def test_the_join_that_makes_every_training_node_a_participant_closes(backend: Backend) -> None:
    swarm = deploy(backend, 3)  # max_peers 4: only the count of training nodes closes early
    n0, n1, n2 = swarm.nodes
    assert n0.round(1).training == 3
    assert n0.training_nodes() == swarm.accounts()
    join(n0, 1)
    join(n2, 1)
    assert n0.round(1).status == RoundStatus.OPEN
    tail = EventTail(n0)

    join(n1, 1)

    events = tail.take()
    assert names(events) == ["Joined", "RoundClosed", "AttemptStarted"]
    assert len({e.position[0] for e in events}) == 1  # in the join's own transaction
    assert events[1].args["participants"] == [n0.account, n2.account, n1.account]
    state = n0.round(1)
    assert (state.status, state.joined, state.live, state.attempt) == (RoundStatus.CLOSED, 3, 3, 1)


def test_finish_counts_a_node_out_and_is_refused_twice(backend: Backend) -> None:
    swarm = deploy(backend, 3)
    n0, n1, n2 = swarm.nodes
    stranger = backend.new_ledger()
    tail = EventTail(n0)

    n1.finish()

    events = tail.take()
    assert names(events) == ["Finished"]
    assert events[0].args == {"node": n1.account}
    assert n0.round(1).training == 2
    assert n0.training_nodes() == [n0.account, n2.account]
    # still registered: it serves what it holds to peers catching up
    assert [r.account for r in n0.active_nodes()] == swarm.accounts()
    err = refused("AlreadyFinished", n1.finish)
    assert err.details == {"account": n1.account}
    err = refused("NotRegistered", stranger.finish)
    assert err.details == {"account": stranger.account}
    assert n0.round(1).training == 2


def test_the_last_node_not_joined_finishing_closes_the_round(backend: Backend) -> None:
    swarm = deploy(backend, 3)
    n0, n1, n2 = swarm.nodes
    join(n0, 1)
    join(n1, 1)
    tail = EventTail(n0)

    n2.finish()

    events = tail.take()
    assert names(events) == ["Finished", "RoundClosed", "AttemptStarted"]
    assert events[1].args["participants"] == [n0.account, n1.account]
    state = n0.round(1)
    assert (state.status, state.live, state.training) == (RoundStatus.CLOSED, 2, 2)


def test_finishing_below_min_peers_leaves_the_round_open(backend: Backend) -> None:
    """A node left alone: the round cannot close (min_peers still holds), and the chain shows
    one node training, which is how that node knows no peers are left."""
    swarm = deploy(backend, 3)
    n0, n1, n2 = swarm.nodes
    join(n0, 1)
    n1.finish()
    n2.finish()

    state = n0.round(1)
    assert (state.status, state.joined, state.training) == (RoundStatus.OPEN, 1, 1)
    assert n0.training_nodes() == [n0.account]
    backend.advance_to(state.first_join_at + JOIN_WINDOW)
    refused("TooFewJoined", lambda: n0.close(1))


def test_finishing_while_joined_leaves_the_open_round(backend: Backend) -> None:
    swarm = deploy(backend, 4)
    n0, n1, n2, _ = swarm.nodes
    join(n0, 1)
    join(n1, 1)
    join(n2, 1)
    tail = EventTail(n0)

    n1.finish()  # n0, n2 joined, the fourth still to come: open

    events = tail.take()
    assert names(events) == ["Finished", "Left"]
    assert events[1].args == {"round": 1, "node": n1.account}
    state = n0.round(1)
    assert (state.status, state.participants) == (RoundStatus.OPEN, (n0.account, n2.account))
    assert state.training == 3


def test_finishing_while_live_in_a_closed_round_finishes_that_round(backend: Backend) -> None:
    swarm = closed_swarm(backend, 3)
    n0, n1, n2 = swarm.nodes
    tail = EventTail(n0)

    n2.finish()  # after its last sync, before the round ended: it still reports

    assert names(tail.take()) == ["Finished"]
    state = n0.round(1)
    assert (state.status, state.live, state.attempt) == (RoundStatus.CLOSED, 3, 1)
    n2.report(1, 1, DIGEST_A)
    n0.report(1, 1, DIGEST_A)
    assert_round_ended(n0, 1, RoundStatus.FINAL)
    join(n0, 2)
    join(n1, 2)  # every node still training joined
    assert n0.round(2).status == RoundStatus.CLOSED


def test_a_finished_node_that_joins_trains_again(backend: Backend) -> None:
    swarm = deploy(backend, 3)
    n0, n1, n2 = swarm.nodes
    n2.finish()
    join(n2, 1)
    state = n0.round(1)
    assert (state.training, state.status) == (3, RoundStatus.OPEN)
    assert n0.training_nodes() == swarm.accounts()
    join(n0, 1)
    assert n0.round(1).status == RoundStatus.OPEN  # n1 still to come
    join(n1, 1)
    assert n0.round(1).status == RoundStatus.CLOSED
    n2.finish()  # it may finish again
    assert n0.round(1).training == 2


def test_deregistering_and_registering_again_after_finishing(backend: Backend) -> None:
    swarm = deploy(backend, 3)
    n0, n1, n2 = swarm.nodes
    n2.finish()
    n2.deregister()  # counted out once, not twice
    assert n0.round(1).training == 2
    n2.register("back.swarm.test:1", certificate(2, n2.account))  # trains again
    assert n0.round(1).training == 3
    assert n0.training_nodes() == swarm.accounts()
    n1.deregister()
    assert n0.round(1).training == 2


def test_the_last_node_not_joined_deregistering_closes_the_round(backend: Backend) -> None:
    swarm = deploy(backend, 3)
    n0, n1, n2 = swarm.nodes
    join(n0, 1)
    join(n1, 1)
    tail = EventTail(n0)

    n2.deregister()

    assert names(tail.take()) == ["Deregistered", "RoundClosed", "AttemptStarted"]
    assert n0.round(1).participants == (n0.account, n1.account)


# ---------------------------------------------------------------------------- events


def test_round_event_sequence_and_cursor(backend: Backend) -> None:
    swarm = deploy(backend, 2, max_peers=2)
    n0, n1 = swarm.nodes
    tail = EventTail(n0, from_start=True)
    join(n0, 1)
    join(n1, 1)
    n1.report(1, 1, DIGEST_A)
    n0.report(1, 1, DIGEST_A)

    events = tail.take()
    assert names(events) == [
        "RoundOpened",
        "Registered",
        "Registered",
        "Joined",
        "Joined",
        "RoundClosed",
        "AttemptStarted",
        "Reported",
        "Reported",
        "RoundFinalized",
        "RoundOpened",
    ]
    assert names([e for e in events if e.name in ROUND_EVENTS]) == [
        "RoundOpened",
        "Joined",
        "Joined",
        "RoundClosed",
        "AttemptStarted",
        "Reported",
        "Reported",
        "RoundFinalized",
        "RoundOpened",
    ]
    positions = [e.position for e in events]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    assert events[0].args == {"round": 1}
    assert [e.args["node"] for e in events if e.name == "Reported"] == [n1.account, n0.account]
    assert events[7].args == {"round": 1, "attempt": 1, "node": n1.account, "digest": DIGEST_A}
    assert events[9].args == {"round": 1, "attempt": 1, "digest": DIGEST_A}
    assert events[10].args == {"round": 2}

    assert tail.take() == []  # the returned cursor is past everything seen
    join(n0, 2)
    newer = tail.take()
    assert names(newer) == ["Joined"]
    assert newer[0].args["round"] == 2 and newer[0].position > positions[-1]
    assert tail.take() == []

    # Any handle reads the same history from the start cursor.
    again, _ = n1.events(n1.start_cursor())
    assert [(e.name, e.position) for e in again] == [
        (e.name, e.position) for e in [*events, *newer]
    ]
