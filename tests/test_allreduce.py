"""The segmented all-reduce with two owners per segment: every participant ends with the same
bits, for every rule, and moves about (3n-4)/n x the model each way; nothing a peer sends
besides its rows changes an owner's merge."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest
import torch

from swarmnode import canonical, merkle
from swarmnode.allreduce import AllReduceResult, AllReduceRunner, Attempt
from swarmnode.merge import make_rule
from swarmnode.p2p.errors import InvalidMessage
from swarmnode.p2p.frames import Frame, frames_for
from swarmnode.p2p.inbox import Inbox
from swarmnode.p2p.memory import MemoryNetwork, MemoryTransport
from swarmnode.p2p.messages import Kind
from swarmnode.p2p.roster import PeerRecord, Roster
from swarmnode.p2p.transport import FrameSource, Transport
from swarmnode.rules import MergeRuleId, Rule

NUMEL = 9 * canonical.CHUNK_ELEMENTS + 777

RULES = {
    "mean": Rule(MergeRuleId.MEAN),
    "median": Rule(MergeRuleId.MEDIAN),
    "trimmed_mean": Rule(MergeRuleId.TRIMMED_MEAN, (200_000, 0, 0, 0)),
    "krum": Rule(MergeRuleId.KRUM, (1, 0, 0, 0)),
    "multi_krum": Rule(MergeRuleId.KRUM, (1, 3, 0, 0)),
    "geometric_median": Rule(MergeRuleId.GEOMETRIC_MEDIAN, (1000, 50, 0, 0)),
    "centered_clip": Rule(MergeRuleId.CENTERED_CLIP, (500_000, 3, 0, 0)),
}


Updates = list[npt.NDArray[np.float32]]
TransportFor = Callable[[MemoryNetwork, str], Transport]


def run(
    n: int,
    rule: Rule,
    numel: int = NUMEL,
    seed: int = 0,
    given: Updates | None = None,
    transport_for: TransportFor = MemoryTransport,
    frame_chunks: int | None = 3,
) -> tuple[list[AllReduceResult], Updates, npt.NDArray[np.float32]]:
    """One attempt of n in-memory nodes; `given` replaces the random updates, and
    `transport_for` builds each node's transport (a lying one, for attacks); frames of 3
    chunks by default, so that streams are many frames (None: the protocol's 2 MiB)."""
    rng = np.random.default_rng(seed)
    accounts = [f"0x{i:040x}" for i in range(1, n + 1)]
    roster = Roster(PeerRecord(a, "memory", a.encode()) for a in accounts)
    network = MemoryNetwork(roster)
    inboxes = [Inbox(a) for a in accounts]
    for inbox in inboxes:
        network.attach(inbox)
    updates = given or [rng.standard_normal(numel).astype(np.float32) for _ in accounts]
    reference = rng.standard_normal(numel).astype(np.float32)
    hashes = [canonical.chunk_hashes(u) for u in updates]
    attempt = Attempt(
        round=1,
        attempt=1,
        participants=tuple(accounts),
        weights=tuple(10 + 5 * i for i in range(n)),
        commitments={
            a: canonical.digest_from_chunk_hashes(h) for a, h in zip(accounts, hashes, strict=True)
        },
        seed=bytes([seed]) * 32,
    )
    merge = make_rule(rule)
    results: list[AllReduceResult | None] = [None] * n
    # counted from before any node starts, as the round layer counts from its join: a first
    # frame may wait in a node's Inbox before that node runs (docs/round-protocol.md#not-ready)
    marks = [network.wire(a).split() for a in accounts]
    errors: list[BaseException] = []

    def node(i: int) -> None:
        try:
            results[i] = AllReduceRunner(
                me=accounts[i],
                attempt=attempt,
                update=updates[i],
                hashes=hashes[i],
                rule=merge,
                transport=transport_for(network, accounts[i]),
                inbox=inboxes[i],
                reference=reference,
                timeout=30,
                frame_chunks=frame_chunks,
                counted_from=marks[i],
            ).run()
        except BaseException as exc:  # collected and asserted by the caller
            errors.append(exc)

    threads = [threading.Thread(target=node, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    done = [r for r in results if r is not None]
    assert len(done) == n
    return done, updates, reference


@pytest.mark.parametrize("name", sorted(RULES))
def test_every_participant_ends_with_the_same_bits(name: str) -> None:
    results, updates, reference = run(5, RULES[name])
    first = results[0]
    for other in results[1:]:
        assert other.digest == first.digest
        assert other.merged.tobytes() == first.merged.tobytes()
    for result in results:  # the hash list, assembled from checked segments, is the vector's
        assert result.hashes == canonical.chunk_hashes(result.merged)
        assert result.digest == canonical.digest(result.merged)
    # and it is the rule's merge of each owner's segment
    np.testing.assert_allclose(first.merged, per_segment(RULES[name], updates, reference))


def per_segment(
    rule: Rule, updates: Updates, reference: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """The rule's merge of each segment on its own, as the owners compute it."""
    numel = updates[0].size
    spans = [
        canonical.element_range(s, numel)
        for s in canonical.segments(canonical.num_chunks(numel), len(updates))
    ]
    stacked, ref = torch.from_numpy(np.stack(updates)), torch.from_numpy(reference)
    merge = make_rule(rule)
    pieces = merge.merge_segments(
        [stacked[:, s.start : s.stop] for s in spans],
        [10 + 5 * i for i in range(len(updates))],
        [ref[s.start : s.stop] for s in spans] if merge.uses_reference else None,
    )
    out: npt.NDArray[np.float32] = torch.cat(pieces).numpy()
    return out


@pytest.mark.parametrize("n", [2, 4, 8])
def test_each_node_moves_about_3n_minus_4_over_n_model_sizes(n: int) -> None:
    """Rows to both owners of every segment (2(n-1)/n), the merged segment to all but its
    checker ((n-2)/n), a 32-byte digest for the checked one: docs/round-protocol.md#data-plane.
    The counts are the transport's, on the wire: a node that starts before a peer is ready
    sends its first frame again after the peer's NotReady, so what early nodes send may
    exceed the estimate; what each receives in its attempt, and what the last node to start
    sends, do not."""
    numel = 64 * 4096  # 1 MiB: 1024 chunks of 256 elements
    results, _, _ = run(n, RULES["mean"], numel=numel, frame_chunks=None)
    model_bytes = numel * 4
    # a segment is one frame here, with one proof of a few hashes; no hash list travels,
    # and the checker sends one 32-byte digest per segment
    expected = (3 * n - 4) / n
    for r in results:
        assert r.accused == {} and r.checked == 0
        ratio = r.traffic.received / model_bytes
        assert expected <= ratio <= expected + 0.01, ratio  # framing, proofs, digests
        assert r.traffic.received_split.hashes < 0.005 * model_bytes
        assert r.traffic.sent / model_bytes >= expected - 0.02
    least = min(r.traffic.sent for r in results) / model_bytes
    assert expected <= least <= expected + 0.01, least


def test_fewer_chunks_than_participants_leaves_some_segments_empty() -> None:
    assert canonical.num_chunks(2 * 16 + 5) == 3  # chunks of 16
    results, updates, _ = run(5, RULES["median"], numel=2 * 16 + 5)
    assert len({r.digest for r in results}) == 1
    np.testing.assert_array_equal(results[0].merged, np.median(np.stack(updates), axis=0))


class _Recording(MemoryTransport):
    """A memory transport that notes every UPDATE frame it pushes: (peer, chunks, proof
    hashes)."""

    def __init__(self, network: MemoryNetwork, account: str) -> None:
        super().__init__(network, account)
        self.sent: list[tuple[str, range, int]] = []

    def push(self, peer: str, frames: FrameSource, timeout: float) -> int:
        held = list(frames())
        for f in held:
            if f.kind == Kind.UPDATE:
                first = f.header.first_chunk
                count = -(-f.header.elements // canonical.chunk_elements(DEMO))
                proof = len(f.header.proof) // merkle.HASH_BYTES
                self.sent.append((peer, range(first, first + count), proof))
        return super().push(peer, lambda: held, timeout)


DEMO = 4810  # the README demo's model: 301 chunks of 16 elements


def test_an_owner_gets_its_two_segments_of_each_contributor_in_one_proved_frame() -> None:
    """Checked: a node owns segments s - 1 (checks) and s (merges), which follow each other,
    so each contributor sends it both rows as one run, in one frame with one proof of the
    run (docs/round-protocol.md#data-plane); the owner of segments n - 1 and 0 gets two."""
    n = 8
    made: list[_Recording] = []

    def recording(network: MemoryNetwork, account: str) -> Transport:
        made.append(_Recording(network, account))
        return made[-1]

    results, updates, reference = run(
        n, RULES["mean"], numel=DEMO, transport_for=recording, frame_chunks=None
    )
    assert len({r.digest for r in results}) == 1 and all(r.checked == 0 for r in results)
    np.testing.assert_allclose(results[0].merged, per_segment(RULES["mean"], updates, reference))
    total = canonical.num_chunks(DEMO)
    for transport in made:
        spanning = [chunks for _, chunks, _ in transport.sent if len(chunks) > 40]
        assert len({peer for peer, _, _ in transport.sent}) == n - 1
        # the first of the permutation owns n - 1 and 0: two runs to it, unless it sends
        assert (len(transport.sent), len(spanning)) in ((n, n - 2), (n - 1, n - 1))
        for _, chunks, proof in transport.sent:
            assert proof == merkle.proof_size(total, chunks)


def test_a_run_is_taken_only_across_segments_the_owner_holds_back_to_back() -> None:
    """The Inbox stores a proved run in each segment it covers, and refuses one that runs
    past the owner's segments or into one that does not follow on."""
    me, other = "0x" + "1" * 40, "0x" + "2" * 40
    values = np.random.default_rng(1).standard_normal(DEMO).astype(np.float32)
    tree = merkle.Tree(canonical.chunk_hashes(values))

    def frame(chunks: range, segment: int) -> Frame:
        return next(
            frames_for(
                values,
                chunks,
                kind=Kind.UPDATE,
                round=1,
                attempt=1,
                segment=segment,
                sender="",
                prove=tree.proof,
            )
        )

    inbox = Inbox(me)
    inbox.expect_updates(
        1, {1: range(10, 20), 2: range(20, 25), 5: range(40, 50)}, DEMO, {other: tree.root}
    )
    assert inbox.receive(frame(range(10, 25), 1), other) == 15 * 16
    for segment, chunks in ((1, range(10, 20)), (2, range(20, 25))):
        row = inbox.update(1, other, segment, 1.0)
        assert row is not None
        np.testing.assert_array_equal(row, values[chunks.start * 16 : chunks.stop * 16])
    for chunks, segment in ((range(20, 26), 2), (range(15, 41), 1), (range(45, 51), 5)):
        with pytest.raises(InvalidMessage, match=r"outside|inside"):
            inbox.receive(frame(chunks, segment), other)
