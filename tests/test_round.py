"""Whole rounds: join, close, all-reduce, report, final; on the in-memory ledger and transport,
and on the embedded chain with real gRPC and mutual TLS; and a peer that never delivers."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest

from swarmnode import canonical
from swarmnode.ledger.base import Ledger
from swarmnode.ledger.types import RoundStatus
from swarmnode.merge import make_rule
from swarmnode.p2p.inbox import Inbox
from swarmnode.p2p.transport import Transport
from swarmnode.round import Round, RoundResult, RoundSettings
from swarmnode.rules import MergeRuleId, Rule, SwarmParams
from swarmnode.simulation.local import grpc_swarm, memory_swarm, run_in_threads

NUMEL = 6 * 16 + 9  # 7 chunks of 16, the last one short


def vectors(n: int) -> list[npt.NDArray[np.float32]]:
    rng = np.random.default_rng(3)
    return [rng.standard_normal(NUMEL).astype(np.float32) for _ in range(n)]


def in_threads(jobs: list[Callable[[], RoundResult]]) -> list[RoundResult]:
    return run_in_threads(jobs, timeout=120)


def memory_parts(
    n: int, params: SwarmParams, clock: Callable[[], float] | None = None
) -> tuple[list[Ledger], list[Inbox], list[Transport]]:
    swarm = memory_swarm(params, n, clock=clock)
    return (
        [p.ledger for p in swarm.peers],
        [p.inbox for p in swarm.peers],
        [p.transport for p in swarm.peers],
    )


@pytest.mark.parametrize(
    "rule",
    [Rule(MergeRuleId.MEAN), Rule(MergeRuleId.CENTERED_CLIP, (1_000_000, 2, 0, 0))],
    ids=["mean", "centered_clip"],
)
def test_a_round_on_the_memory_ledger_ends_final_with_one_digest(rule: Rule) -> None:
    params = SwarmParams(min_peers=2, max_peers=4, merge_rule=rule)
    ledgers, inboxes, transports = memory_parts(4, params)
    updates = vectors(4)
    reference = np.zeros(NUMEL, dtype=np.float32)
    merge = make_rule(rule)
    results = in_threads(
        [
            lambda i=i: Round(
                ledger=ledgers[i],
                transport=transports[i],
                inbox=inboxes[i],
                vector=updates[i],
                weight=100 + i,
                val_loss=0.5,
                rule=merge,
                reference=reference,
                settings=RoundSettings(poll=0.01),
            ).run()
            for i in range(4)
        ]
    )
    state = ledgers[0].round(1)
    assert state.status == RoundStatus.FINAL
    assert {r.status for r in results} == {"final"}
    assert {r.digest for r in results} == {state.final_digest}
    assert all(
        r.merged is not None and r.merged.tobytes() == results[0].merged.tobytes() for r in results
    )  # type: ignore[union-attr]
    assert ledgers[0].current_round() == 2
    assert {r.gas for r in results} == {0}  # no gas without a chain


def test_a_peer_that_never_delivers_is_voted_out_and_the_rest_finish() -> None:
    params = SwarmParams(
        min_peers=2, max_peers=4, join_window=5, transfer_deadline=2, round_deadline=30
    )
    ledgers, inboxes, transports = memory_parts(4, params, clock=time.time)
    updates = vectors(4)
    silent = ledgers[3]
    merge = make_rule(params.merge_rule)

    def crashed_after_join() -> RoundResult:
        silent.join(1, canonical.digest(updates[3]), 10, 1)
        return RoundResult(1, 1, "crashed", (), None, None)

    jobs: list[Callable[[], RoundResult]] = [
        lambda i=i: Round(
            ledger=ledgers[i],
            transport=transports[i],
            inbox=inboxes[i],
            vector=updates[i],
            weight=10,
            val_loss=0.5,
            rule=merge,
            settings=RoundSettings(poll=0.02),
        ).run()
        for i in range(3)
    ]
    results = in_threads([*jobs, crashed_after_join])
    state = ledgers[0].round(1)
    assert state.status == RoundStatus.FINAL
    assert state.attempt == 2  # the first attempt lost the silent peer
    assert set(state.live_participants) == {led.account for led in ledgers[:3]}
    assert silent.account not in state.live_participants
    survivors = [r for r in results if r.status != "crashed"]
    assert {r.status for r in survivors} == {"final"}
    assert {r.digest for r in survivors} == {state.final_digest}
    expected = np.mean(np.stack(updates[:3]), axis=0)
    np.testing.assert_allclose(survivors[0].merged, expected, rtol=1e-6, atol=1e-6)  # type: ignore[arg-type]


@pytest.mark.chain
def test_a_round_on_the_embedded_chain_over_grpc_with_mutual_tls() -> None:
    params = SwarmParams(min_peers=2, max_peers=3, transfer_deadline=30, round_deadline=120)
    swarm = grpc_swarm(params, 3)
    peers = swarm.peers
    try:
        updates = vectors(3)
        merge = make_rule(params.merge_rule)
        logged = [len(peer.ledger.gas_log) for peer in peers]  # type: ignore[attr-defined]
        results = in_threads(
            [
                lambda i=i: Round(
                    ledger=peers[i].ledger,
                    transport=peers[i].transport,
                    inbox=peers[i].inbox,
                    vector=updates[i],
                    weight=10 * (i + 1),
                    val_loss=0.25,
                    rule=merge,
                    settings=RoundSettings(poll=0.02, frame_chunks=2),
                ).run()
                for i in range(3)
            ]
        )
        state = peers[0].ledger.round(1)
        assert state.status == RoundStatus.FINAL
        assert {r.digest for r in results} == {state.final_digest}
        weights = np.array([10, 20, 30], dtype=np.float64)
        expected = (np.stack(updates).astype(np.float64) * weights[:, None]).sum(0) / weights.sum()
        np.testing.assert_allclose(results[0].merged, expected, rtol=1e-5, atol=1e-6)  # type: ignore[arg-type]
        reports = 0
        for r, peer, before in zip(results, peers, logged, strict=True):
            assert r.traffic.sent > 0 and r.transactions >= 1
            # gas from this round's receipts, a late report that reverted included (it is
            # paid for even though it did nothing)
            log = peer.ledger.gas_log[before:]  # type: ignore[attr-defined]
            assert r.gas == sum(gas for _, gas in log) > 0
            assert "join" in {name for name, _ in log}
            reports += sum(name == "report" for name, _ in log)
        assert reports >= 2
    finally:
        swarm.close()


def test_catch_up_refuses_a_wrong_model_and_takes_the_next_peer() -> None:
    from swarmnode.exceptions import PeerError
    from swarmnode.round import catch_up

    params = SwarmParams(min_peers=2, max_peers=4)
    ledgers, inboxes, transports = memory_parts(3, params)
    final, forged = vectors(2)
    inboxes[1].publish_model(5, forged, canonical.chunk_hashes(forged))
    inboxes[2].publish_model(5, final, canonical.chunk_hashes(final))
    digest = canonical.digest(final)
    peers = [ledgers[1].account, ledgers[2].account]
    got = catch_up(transports[0], 5, digest, NUMEL, peers)
    assert got.tobytes() == final.tobytes()
    with pytest.raises(PeerError, match="no peer had round 5"):
        catch_up(transports[0], 5, digest, NUMEL, peers[:1])


def test_a_peer_whose_segments_fail_validation_is_dropped_like_a_silent_one() -> None:
    from swarmnode.allreduce import AllReduceRunner, Attempt
    from swarmnode.exceptions import SwarmError

    params = SwarmParams(
        min_peers=2, max_peers=4, join_window=5, transfer_deadline=2, round_deadline=30
    )
    ledgers, inboxes, transports = memory_parts(4, params, clock=time.time)
    updates = vectors(4)
    committed, sent = updates[3], -updates[3]  # commits to one vector, streams another
    byzantine = ledgers[3]
    merge = make_rule(params.merge_rule)

    def lying() -> RoundResult:
        byzantine.join(1, canonical.digest(committed), 10, 1)
        while (state := byzantine.round(1)).status == RoundStatus.OPEN:
            time.sleep(0.02)
        seats = {s.account: s for s in state.seats}
        attempt = Attempt(
            1,
            state.attempt,
            state.live_participants,
            tuple(seats[p].weight for p in state.live_participants),
            {p: seats[p].commitment for p in state.live_participants},
        )
        with contextlib.suppress(SwarmError):  # its peers refuse it: that is the point
            AllReduceRunner(
                me=byzantine.account,
                attempt=attempt,
                update=sent,
                hashes=canonical.chunk_hashes(committed),
                rule=merge,
                transport=transports[3],
                inbox=inboxes[3],
                timeout=2,
            ).run()
        return RoundResult(1, 1, "byzantine", (), None, None)

    jobs: list[Callable[[], RoundResult]] = [
        lambda i=i: Round(
            ledger=ledgers[i],
            transport=transports[i],
            inbox=inboxes[i],
            vector=updates[i],
            weight=10,
            val_loss=0.5,
            rule=merge,
            settings=RoundSettings(poll=0.02),
        ).run()
        for i in range(3)
    ]
    results = in_threads([*jobs, lying])
    state = ledgers[0].round(1)
    assert state.status == RoundStatus.FINAL
    assert byzantine.account not in state.live_participants
    honest = [r for r in results if r.status != "byzantine"]
    assert {r.digest for r in honest} == {state.final_digest}
    assert sum(inbox.refused for inbox in inboxes[:3]) >= 1
    np.testing.assert_allclose(honest[0].merged, np.mean(np.stack(updates[:3]), axis=0), atol=1e-6)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("die_at", "attempt", "merged_from"),
    [
        ("before_reduce_scatter", 2, 3),
        ("reduce_scatter:after_frames=1", 2, 3),
        # its rows reached both owners of every segment before it died: the survivors check
        # its segments themselves and finish in the first attempt, its update merged in
        ("all_gather:after_peers=1", 1, 4),
    ],
)
def test_a_peer_dying_mid_round_is_dropped_and_the_survivors_agree(
    die_at: str, attempt: int, merged_from: int
) -> None:
    from swarmnode.p2p.faults import Fault, FaultyTransport, InjectedCrash

    params = SwarmParams(
        min_peers=2, max_peers=4, join_window=5, transfer_deadline=1, round_deadline=30
    )
    swarm = memory_swarm(params, 4, clock=time.time)
    ledgers = [p.ledger for p in swarm.peers]
    inboxes = [p.inbox for p in swarm.peers]
    transports: list[Transport] = [p.transport for p in swarm.peers]
    updates = vectors(4)
    merge = make_rule(params.merge_rule)
    victim = FaultyTransport(transports[3])
    victim.arm(Fault.parse(die_at))
    transports[3] = victim

    def node(i: int) -> RoundResult:
        try:
            return Round(
                ledger=ledgers[i],
                transport=transports[i],
                inbox=inboxes[i],
                vector=updates[i],
                weight=10,
                val_loss=0.5,
                rule=merge,
                settings=RoundSettings(poll=0.02, frame_chunks=1),
            ).run()
        except InjectedCrash:  # what a killed process leaves: no server either
            swarm.extra["network"].detach(ledgers[i].account)
            return RoundResult(1, 0, "crashed", (), None, None)

    results = in_threads([lambda i=i: node(i) for i in range(4)])
    state = ledgers[0].round(1)
    assert state.status == RoundStatus.FINAL
    if state.attempt != attempt and attempt == 1:
        # on a loaded machine the 1 s deadline can pass before its rows reach an owner:
        # then it is voted out like the others, and the round merges without it
        attempt, merged_from = state.attempt, 3
    assert state.attempt == attempt
    assert (ledgers[3].account in state.live_participants) == (attempt == 1)
    survivors = [r for r in results if r.status != "crashed"]
    assert len(survivors) == 3 and {r.status for r in survivors} == {"final"}
    assert {r.digest for r in survivors} == {state.final_digest}
    assert len({r.merged.tobytes() for r in survivors if r.merged is not None}) == 1
    np.testing.assert_allclose(
        survivors[0].merged, np.mean(np.stack(updates[:merged_from]), axis=0), atol=1e-6
    )  # type: ignore[arg-type]


def test_with_fewer_chunks_than_nodes_the_dead_peer_is_blamed_not_the_owner_it_starves() -> None:
    """One chunk among five nodes: two owners of it, four empty segments. A peer dying before
    the reduce-scatter (its server gone with it) starves both owners, so the others check the
    segment themselves, find the dead peer's rows unobtainable, and that peer alone is voted
    out; nobody votes out the owners it starved."""
    from swarmnode.p2p.faults import Fault, FaultyTransport, InjectedCrash

    params = SwarmParams(
        min_peers=2, max_peers=5, join_window=5, transfer_deadline=1, round_deadline=30
    )
    swarm = memory_swarm(params, 5, clock=time.time)
    ledgers = [p.ledger for p in swarm.peers]
    inboxes = [p.inbox for p in swarm.peers]
    transports = [p.transport for p in swarm.peers]
    victim = FaultyTransport(transports[4])
    victim.arm(Fault.parse("before_reduce_scatter"))
    transports[4] = victim
    rng = np.random.default_rng(5)
    updates = [rng.standard_normal(100).astype(np.float32) for _ in range(5)]
    merge = make_rule(params.merge_rule)

    def node(i: int) -> RoundResult:
        try:
            return Round(
                ledger=ledgers[i],
                transport=transports[i],
                inbox=inboxes[i],
                vector=updates[i],
                weight=10,
                val_loss=0.5,
                rule=merge,
                settings=RoundSettings(poll=0.02),
            ).run()
        except InjectedCrash:  # what a killed process leaves: no server either
            swarm.extra["network"].detach(ledgers[i].account)
            return RoundResult(1, 0, "crashed", (), None, None)

    results = in_threads([lambda i=i: node(i) for i in range(5)])
    state = ledgers[0].round(1)
    assert state.status == RoundStatus.FINAL and state.attempt == 2
    assert set(state.participants) - set(state.live_participants) == {ledgers[4].account}
    assert {r.status for r in results[:4]} == {"final"}
    assert {r.digest for r in results[:4]} == {state.final_digest}
    np.testing.assert_allclose(results[0].merged, np.mean(np.stack(updates[:4]), axis=0), atol=1e-6)  # type: ignore[arg-type]


def test_die_at_settings_are_checked() -> None:
    from swarmnode.exceptions import ConfigError
    from swarmnode.p2p.faults import Fault

    assert Fault.parse("reduce_scatter:after_frames=3") == Fault("reduce_scatter", 3)
    for bad in (
        "sometime",
        "all_gather:after_frames=1",
        "reduce_scatter:after_frames=x",
        "before_reduce_scatter:after_peers=1",
    ):
        with pytest.raises(ConfigError, match="die_at"):
            Fault.parse(bad)


def test_a_node_that_finds_a_round_under_way_waits_it_out_and_takes_its_model() -> None:
    """Nodes 0 and 1 close round 1 without node 2; node 2 asks to sync meanwhile. It does
    not knock on the closed round: it waits, fetches round 1's final model from a
    participant (checked against the digest on chain) and returns caught_up, unjoined."""
    params = SwarmParams(
        min_peers=2, max_peers=3, join_window=1, transfer_deadline=20, round_deadline=60
    )
    ledgers, inboxes, transports = memory_parts(3, params, clock=time.time)
    updates = vectors(3)
    merge = make_rule(params.merge_rule)
    late_is_waiting = threading.Event()  # node 2 has seen round 1 under way and waits

    def waits_for_the_late_node() -> None:
        # round 1 must not end before node 2 has seen it under way: a node that first
        # looks after the round ended has nothing to wait out and joins round 2 instead
        assert late_is_waiting.wait(30), "node 2 never started waiting round 1 out"

    def late_sleep(seconds: float) -> None:
        late_is_waiting.set()
        time.sleep(seconds)

    def node(i: int) -> RoundResult:
        if i == 2:  # comes late: round 1 has closed with the other two
            deadline = time.monotonic() + 30
            while ledgers[2].round(1).status == RoundStatus.OPEN:
                assert time.monotonic() < deadline
                time.sleep(0.01)  # polls the ledger's state
            settings = RoundSettings(poll=0.01, sleep=late_sleep)
        else:
            settings = RoundSettings(poll=0.01, on_closed=waits_for_the_late_node)
        return Round(
            ledger=ledgers[i],
            transport=transports[i],
            inbox=inboxes[i],
            vector=updates[i],
            weight=10,
            val_loss=0.5,
            rule=merge,
            settings=settings,
        ).run()

    results = in_threads([lambda i=i: node(i) for i in range(3)])
    state = ledgers[0].round(1)
    assert state.status == RoundStatus.FINAL
    assert ledgers[2].account not in state.participants
    assert [r.status for r in results] == ["final", "final", "caught_up"]
    late = results[2]
    assert late.round == 1 and late.digest == state.final_digest
    assert late.merged is not None and late.merged.tobytes() == results[0].merged.tobytes()  # type: ignore[union-attr]
    assert ledgers[0].round(2).joined == 0  # it returned to train before joining round 2


def test_an_outcome_is_written_and_logged_as_its_plain_string() -> None:
    import dataclasses
    import json
    import logging

    from swarmnode.round import RoundOutcome

    assert {o.value for o in RoundOutcome} == {
        "final",
        "caught_up",
        "lost",
        "failed_too_few",
        "failed_disagreed",
        "expired",
        "not_admitted",
        "stopped",
        "left",
        "withdrawn",
        "dropped",
        "no_peers",
    }
    assert RoundOutcome.CAUGHT_UP == "caught_up"
    assert json.dumps({"status": RoundOutcome.CAUGHT_UP}) == '{"status": "caught_up"}'
    assert f"{RoundOutcome.FINAL}" == str(RoundOutcome.FINAL) == "final"
    assert repr([RoundOutcome.FINAL, RoundOutcome.LEFT]) == "['final', 'left']"
    logged = logging.LogRecord("r", logging.INFO, "", 0, "round %s", (RoundOutcome.LEFT,), None)
    assert logged.getMessage() == "round left"
    with pytest.raises(dataclasses.FrozenInstanceError):
        RoundSettings().poll = 1.0  # type: ignore[misc]
