"""Faults in the simulator, each carried out through the real node code, and the 3-node
traffic and receipts check of a full-fidelity run.

The swarm tests run real SwarmNodes on the embedded chain over gRPC with mutual TLS; what
they check comes from the contract's events, the transactions' receipts and the nodes' own
RoundResults, as the report gives them. The slow-link wrapper is checked by the bytes it
paced and the sleep it asked for, never by the wall clock.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from swarmnode import canonical, merkle
from swarmnode.exceptions import ConfigError
from swarmnode.p2p import peer_pb2
from swarmnode.p2p.frames import Frame, frames_for
from swarmnode.p2p.shaping import ShapedTransport, frame_bytes
from swarmnode.simulation.faults import FaultPlan
from swarmnode.simulation.results import RoundRecord, SwarmRun
from swarmnode.simulation.scenario import Scenario
from tests.test_transport import (
    NUMEL,
    ROUND,
    SEGMENTS,
    Cluster,
    expect_segment_one,
    model,
    update_frames,
)


@pytest.fixture(params=["memory", "grpc"])
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    built = Cluster(request.param, 3)
    yield built
    built.stop()


# -- slow links: the Transport wrapper, over both transports


def test_a_bandwidth_cap_paces_each_frame_in_proportion_to_its_bytes(cluster: Cluster) -> None:
    a, owner, c = cluster.nodes
    vectors = {n.account: model(i) for i, n in enumerate(cluster.nodes)}
    expect_segment_one(cluster, vectors)
    span = canonical.element_range(SEGMENTS[1], NUMEL)
    pauses: dict[str, list[float]] = {}
    for sender, cap in ((a, 1_000_000.0), (c, 250_000.0)):
        asked = pauses.setdefault(sender.account, [])
        link = ShapedTransport(sender.transport, bandwidth=cap, sleep=asked.append)
        frames = update_frames(sender, vectors[sender.account], SEGMENTS[1])
        assert link.push(owner.account, partial(list, frames), timeout=10) == len(span)
        got = owner.inbox.update(ROUND, sender.account, 1, timeout=5)
        assert got is not None  # the data went through, intact
        np.testing.assert_array_equal(got, vectors[sender.account][span.start : span.stop])
        sizes = [frame_bytes(f) for f in frames]
        assert sizes[0] > sizes[1]  # the first frame carries the chunk-hash list
        assert link.stats.bytes == sum(sizes) > len(span) * canonical.ELEMENT_BYTES
        assert asked == pytest.approx([size / cap for size in sizes])
        assert link.stats.bandwidth_seconds == pytest.approx(sum(sizes) / cap)
        assert link.stats.latency_seconds == 0.0
    # the same bytes over a link with a quarter of the bandwidth take four times as long
    assert sum(pauses[c.account]) == pytest.approx(4 * sum(pauses[a.account]))


def test_latency_is_added_to_every_call_and_a_send_delay_only_to_sends(cluster: Cluster) -> None:
    a, owner, b = cluster.nodes
    vectors = {n.account: model(i) for i, n in enumerate(cluster.nodes)}
    expect_segment_one(cluster, vectors)
    final = model(9)
    b.inbox.publish_model(ROUND, final, canonical.chunk_hashes(final))
    asked: list[float] = []
    link = ShapedTransport(a.transport, latency=0.05, send_delay=0.5, sleep=asked.append)

    assert link.info(owner.account, timeout=5).account.lower() == owner.account.lower()
    assert asked == [0.05]
    frames = update_frames(a, vectors[a.account], SEGMENTS[1])
    link.push(owner.account, lambda: frames, timeout=10)
    assert asked[1:] == [0.55]  # a send: latency and the straggler's delay
    got = link.fetch_model(b.account, ROUND, canonical.digest(final), NUMEL, timeout=10)
    assert np.array_equal(got, final)
    assert asked[2:] == [0.05]
    assert link.stats.calls == 3
    assert link.stats.latency_seconds == pytest.approx(0.65)
    served = model_frames(b.account, final)  # what the peer streams back, as it builds them
    assert link.stats.bytes == sum(frame_bytes(f) for f in [*frames, *served])


def model_frames(peer: str, final: npt.NDArray[np.float32]) -> list[Frame]:
    return list(
        frames_for(
            final,
            range(canonical.num_chunks(len(final))),
            kind=peer_pb2.KIND_MODEL,
            round=ROUND,
            attempt=0,
            segment=0,
            sender=peer,
            prove=merkle.Tree(canonical.chunk_hashes(final)).proof,  # as a peer serves it
        )
    )


def test_a_link_refuses_negative_settings() -> None:
    cluster = Cluster("memory", 1)
    transport = cluster.nodes[0].transport
    with pytest.raises(ConfigError, match="bandwidth must be at least 0"):
        ShapedTransport(transport, bandwidth=-1)
    with pytest.raises(ConfigError, match="latency must be at least 0"):
        ShapedTransport(transport, latency=-0.1)


# -- the plan: who is where in each round


def scenario(**fields: Any) -> Scenario:
    base: dict[str, Any] = {
        "nodes": 3,
        "partition": "iid",
        "local_batches": 5,
        "join_window": 3,  # a round missing a node closes this long after its first join
        "transfer_deadline": 3,  # survivors vote a silent peer out this long into an attempt
    }
    return Scenario.load(None, {**base, **fields})


def test_dropout_is_drawn_per_round_from_the_seed_and_leaves_two_nodes_in() -> None:
    plan = FaultPlan(scenario(nodes=5, rounds=40, dropout=0.6, join_window=5))
    again = FaultPlan(scenario(nodes=5, rounds=40, dropout=0.6, join_window=5))
    other = FaultPlan(scenario(nodes=5, rounds=40, dropout=0.6, join_window=5, seed=1))
    away = [r.sitting_out for r in plan.rounds]
    assert away == [r.sitting_out for r in again.rounds]
    assert away != [r.sitting_out for r in other.rounds]
    assert all(5 - len(out) >= 2 for out in away)
    assert max(len(out) for out in away) == 3  # the draw was cut down to keep two in
    assert 0.3 < sum(len(out) for out in away) / (5 * 40) < 0.6
    for before, now in zip(plan.rounds, plan.rounds[1:], strict=False):
        assert now.returning == before.sitting_out - now.sitting_out
    assert not any(r.sitting_out for r in FaultPlan(scenario(rounds=10)).rounds)


def test_a_crashed_node_stays_down_until_it_rejoins_and_never_draws_a_dropout() -> None:
    crash = {"node": 1, "round": 2, "at": "all_gather:after_peers=1", "rejoin": 5}
    plan = FaultPlan(scenario(nodes=4, rounds=6, join_window=4, dropout=0.9, crash=[crash]))
    assert dict(plan.round(2).crashing) == {1: "all_gather:after_peers=1"}
    assert [k for k in range(1, 7) if 1 in plan.round(k).down] == [3, 4]
    assert plan.round(5).restarting == {1}
    assert all(1 not in plan.round(k).sitting_out for k in (2, 3, 4, 5))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"crash": [{"node": 3, "round": 1}]}, "node 3 does not exist"),
        ({"crash": [{"node": 1, "round": 2, "at": "sideways"}]}, r"crash\.0\.at: .*unknown phase"),
        ({"crash": [{"node": 1, "round": 2, "at": "reduce_scatter:frames=1"}]}, "after_frames=N"),
        ({"crash": [{"node": 1, "round": 3, "rejoin": 2}]}, "must rejoin after round 3"),
        ({"crash": [{"node": 1, "round": 9}]}, "after the last"),
        ({"crash": [{"node": 1, "round": 1, "when": 2}]}, r"crash\.0\.when: Extra inputs"),
        (
            {"crash": [{"node": 0, "round": 2}, {"node": 1, "round": 2, "rejoin": 3}]},
            "round 2 would keep fewer than 2",
        ),
        (
            {"crash": [{"node": 0, "round": 1, "rejoin": 3}, {"node": 0, "round": 2}]},
            "node 0 crashes in round 2 while down",
        ),
        ({"stragglers": [{"node": 1, "delay": 1}, {"node": 1, "delay": 2}]}, "listed twice"),
        ({"stragglers": [{"node": 1, "delay": 0}]}, r"stragglers\.0\.delay"),
        ({"dropout": 1.0}, "field dropout"),
        ({"bandwidth": -5}, "field bandwidth"),
        ({"join_window": 2}, "join_window must be at least nodes"),
        ({"processes": True, "latency": 0.1}, "fault settings run in process only"),
    ],
)
def test_wrong_fault_settings_are_refused_in_one_line(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as refused:
        scenario(rounds=4, **fields)
    assert "\n" not in str(refused.value)


# -- full fidelity: real nodes, the embedded chain, gRPC with mutual TLS


def run(**fields: Any) -> SwarmRun:
    from swarmnode.simulation.data import load_dataset
    from swarmnode.simulation.engine import run_swarm
    from swarmnode.simulation.partition import partition

    chosen = scenario(**fields)
    data = load_dataset(chosen.dataset, test_fraction=chosen.test_fraction, seed=chosen.seed)
    parts = partition(data.y_train.numpy(), chosen.nodes, chosen.partition, seed=chosen.seed)
    return run_swarm(chosen, data, parts)


def statuses(record: RoundRecord) -> list[str]:
    return [line.status for line in record.per_node]


def digests(record: RoundRecord) -> set[str]:
    return {line.digest for line in record.per_node if line.digest}


@pytest.mark.chain
@pytest.mark.slow
def test_three_nodes_two_rounds_joins_reports_one_finalization_and_about_5_3_of_the_model() -> None:
    swarm = run(rounds=2, hidden=512, join_window=60, transfer_deadline=60)
    assert len(swarm.rounds) == 2
    for r in swarm.rounds:
        chunks = canonical.num_chunks(r.model_bytes // canonical.ELEMENT_BYTES)
        assert chunks >= 3 * 3  # enough chunks that the segments are near a third each
        assert r.events["Joined"] == r.participants == 3
        assert r.events["Reported"] >= max(2, r.participants // 2 + 1)  # a quorum, mined
        assert r.events["RoundFinalized"] == 1 and "RoundFailed" not in r.events
        # (3n-4)/n = 1.67 of the model as payload, counted on the wire, each byte with its
        # chunk's share of a 32-byte hash, plus proofs and framing; an early push waits for
        # its receiver instead of being sent again (docs/round-protocol.md#not-ready)
        chunk = canonical.chunk_elements(r.model_bytes // canonical.ELEMENT_BYTES)
        share = canonical.HASH_BYTES / (chunk * canonical.ELEMENT_BYTES)
        ratio = r.bytes_sent_per_node / r.model_bytes
        assert 5 / 3 - 0.05 <= ratio <= 5 / 3 * (1 + share) + 0.25, ratio
        # the round's transactions and gas are its receipts: one join each, the reports
        assert r.calls["join"] == r.events["Joined"]
        assert r.calls["report"] >= r.events["Reported"]
        assert r.transactions == sum(r.calls.values())
        assert r.gas_used > 100_000 * r.participants
        assert r.digest_agreed and len(digests(r)) == 1
    assert swarm.rounds[1].round == swarm.rounds[0].round + 1
    assert swarm.transactions == sum(r.transactions for r in swarm.rounds)


@pytest.mark.chain
@pytest.mark.slow
def test_a_crashed_node_is_voted_out_then_rejoins_on_the_same_digest() -> None:
    crash = {"node": 2, "round": 2, "at": "reduce_scatter:after_frames=1", "rejoin": 4}
    first, crashed, down, back = run(rounds=4, crash=[crash]).rounds

    assert first.participants == 3 and statuses(first) == ["final"] * 3
    # the crash: the survivors wait out the transfer deadline, vote it out, finish without it
    assert crashed.faults["crashed"] == [2] and crashed.faults["dropped"] == [2]
    assert crashed.faults["attempts"] == 2 and crashed.events["Dropped"] == 1
    assert crashed.participants == 2 and crashed.events["RoundFinalized"] == 1
    assert statuses(crashed) == ["final", "final", "crashed"] and crashed.digest_agreed
    # away: the round closes on its join window with the two others
    assert down.faults["down"] == [2] and statuses(down) == ["final", "final", "down"]
    assert down.participants == 2 and down.events["Joined"] == 2 and down.digest_agreed
    # back: a fresh process, new endpoint on chain, the last model fetched, then a full round
    assert back.faults["restarted"] == [2] and back.faults["caught_up"] == [2]
    assert back.calls["updateEndpoint"] == 1
    assert back.participants == 3 and statuses(back) == ["final"] * 3
    assert len(digests(back)) == 1 and back.digest == digests(back).pop()


@pytest.mark.chain
@pytest.mark.slow
def test_nodes_that_sit_a_round_out_leave_fewer_participants_and_catch_up_after() -> None:
    fields: dict[str, Any] = {"rounds": 3, "dropout": 0.3, "seed": 2}
    plan = FaultPlan(scenario(**fields))
    assert any(r.sitting_out for r in plan.rounds[:-1])  # the seed makes someone sit out
    rounds = run(**fields).rounds
    for r, planned in zip(rounds, plan.rounds, strict=True):
        assert r.faults["sat_out"] == sorted(planned.sitting_out)
        assert r.participants == 3 - len(planned.sitting_out) == r.events["Joined"]
        assert [i for i, s in enumerate(statuses(r)) if s == "sat_out"] == r.faults["sat_out"]
        assert r.events["RoundFinalized"] == 1 and r.digest_agreed
        assert r.faults["caught_up"] == sorted(planned.returning)
    returned = [r for r in rounds if r.faults["caught_up"]]
    assert returned and all(statuses(r) == ["final"] * 3 for r in returned)


@pytest.mark.chain
@pytest.mark.slow
def test_a_straggler_beyond_the_deadline_is_not_waited_for_and_its_update_still_counts() -> None:
    """A node whose sends lag past the deadline still serves what it committed: the owners
    fetch its rows at a quarter of the attempt, the others check its segments themselves at
    half (docs/round-protocol.md#relays), so the round finalizes in its first attempt with
    its update merged and nobody dropped; it ends on the swarm's model."""
    (r,) = run(rounds=1, stragglers=[{"node": 2, "delay": 5}]).rounds
    assert r.faults["dropped"] == [] and "Dropped" not in r.events
    assert r.faults["attempts"] == 1 and r.participants == 3
    assert r.events["RoundFinalized"] == 1 and "RoundFailed" not in r.events
    assert r.checked > 0  # its segments were checked by the others, not waited for
    assert set(statuses(r)) <= {"final", "caught_up"}
    assert r.digest_agreed and len(digests(r)) == 1
