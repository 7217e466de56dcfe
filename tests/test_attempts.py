"""Messages crossing attempts (docs/round-protocol.md#data-plane): update data outlives an
attempt and is reused, merged data of a past attempt is stale and never the sender's fault,
and a future attempt's data is retried until the receiver gets there."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from swarmnode import canonical, merkle
from swarmnode.address import normalize
from swarmnode.p2p import peer_pb2
from swarmnode.p2p.errors import NotReady, Stale
from swarmnode.p2p.frames import Frame, frames_for
from swarmnode.p2p.inbox import Inbox
from swarmnode.p2p.memory import MemoryNetwork, MemoryTransport
from swarmnode.p2p.roster import PeerRecord, Roster

A, B = "0x" + "0a" * 20, "0x" + "0b" * 20
C = "0x" + "0c" * 20  # the checker of the segments A merges
CHUNK = 16  # a vector this small has chunks of 16 elements
NUMEL = 10 * CHUNK


def setup() -> tuple[MemoryTransport, Inbox]:
    roster = Roster([PeerRecord(A, "m", b"a"), PeerRecord(B, "m", b"b")])
    network = MemoryNetwork(roster)
    inbox = Inbox(B)
    network.attach(inbox)
    network.attach(Inbox(A))
    return MemoryTransport(network, A), inbox


def test_a_new_attempt_mid_stream_makes_the_rest_stale_and_keeps_received_updates() -> None:
    transport, inbox = setup()
    vector = np.random.default_rng(1).standard_normal(NUMEL).astype(np.float32)
    tree = merkle.Tree(canonical.chunk_hashes(vector))
    inbox.expect_updates(1, {1: range(4, 8)}, NUMEL, {A: canonical.digest(vector)}, attempt=1)

    def attempt_one() -> Iterator[Frame]:
        frames = frames_for(
            vector,
            range(4, 8),
            kind=peer_pb2.KIND_UPDATE,
            round=1,
            attempt=1,
            segment=1,
            sender=A,
            chunk_hashes=tree.leaves(range(4, 8)),
            proof=tree.proof(range(4, 8)),
            frame_chunks=2,
        )
        yield next(frames)  # chunks 4-5 arrive in attempt 1
        # a drop lands on chain: attempt 2 starts, and this node now owns chunks 2-5
        inbox.expect_updates(1, {0: range(2, 6)}, NUMEL, {A: canonical.digest(vector)}, attempt=2)
        yield from frames

    with pytest.raises(Stale):
        transport.push(B, attempt_one, timeout=5)
    assert inbox.refused == 0  # stale is never held against the sender

    # attempt 2: only chunks 2-3 are new (with their own hashes and proof); 4-5 were kept
    # from attempt 1
    transport.push(
        B,
        lambda: frames_for(
            vector,
            range(2, 4),
            kind=peer_pb2.KIND_UPDATE,
            round=1,
            attempt=2,
            segment=0,
            sender=A,
            chunk_hashes=tree.leaves(range(2, 4)),
            proof=tree.proof(range(2, 4)),
            frame_chunks=2,
        ),
        timeout=5,
    )
    got = inbox.update(1, A, 0, timeout=1)
    span = canonical.element_range(range(2, 6), NUMEL)
    assert got is not None and np.array_equal(got, vector[span.start : span.stop])


def test_merged_data_of_a_future_attempt_waits_and_of_a_past_one_is_refused() -> None:
    transport, inbox = setup()
    merged = np.arange(NUMEL, dtype=np.float32)

    def frames(attempt: int) -> Iterator[Frame]:
        return frames_for(
            merged,
            range(0, 5),
            kind=peer_pb2.KIND_MERGED,
            round=1,
            attempt=attempt,
            segment=0,
            sender=A,
            frame_chunks=2,
        )

    inbox.expect_merged(1, 1, {0: (A, C, range(0, 5))}, NUMEL)
    with pytest.raises(NotReady):
        transport.push(B, lambda: frames(2), timeout=0.1)

    def first_then_new_attempt() -> Iterator[Frame]:
        stream = frames(1)
        yield next(stream)
        inbox.expect_merged(1, 2, {0: (A, C, range(0, 5))}, NUMEL)
        yield from stream

    with pytest.raises(Stale):
        transport.push(B, first_then_new_attempt, timeout=5)
    assert inbox.merged(1, 2, 0, timeout=0.05) is None  # nothing of attempt 1 leaked into 2
    transport.push(B, lambda: frames(2), timeout=5)
    got = inbox.merged(1, 2, 0, timeout=1)
    assert got is not None and np.array_equal(got, merged[: 5 * CHUNK])
    assert inbox.refused == 0


def test_a_late_expectation_of_an_older_attempt_does_not_undo_the_newer_one() -> None:
    """A transfer the round gave up on may register what it expects after the next attempt
    did: the newer plan stands, so the newer attempt's data is still accepted."""
    transport, inbox = setup()
    merged = np.arange(NUMEL, dtype=np.float32)
    commitment = {A: canonical.digest(merged)}
    inbox.expect_updates(1, {0: range(0, 10)}, NUMEL, commitment, attempt=2)
    inbox.expect_merged(1, 2, {0: (A, C, range(0, 5))}, NUMEL)
    inbox.expect_updates(1, {1: range(5, 10)}, NUMEL, commitment, attempt=1)  # late, older
    inbox.expect_merged(1, 1, {0: (A, C, range(0, 10))}, NUMEL)  # late, older
    transport.push(
        B,
        lambda: frames_for(
            merged,
            range(0, 5),
            kind=peer_pb2.KIND_MERGED,
            round=1,
            attempt=2,
            segment=0,
            sender=A,
            frame_chunks=2,
        ),
        timeout=5,
    )
    got = inbox.merged(1, 2, 0, timeout=1)
    assert got is not None and np.array_equal(got, merged[: 5 * CHUNK])
    assert inbox.waiting_for(1) == [normalize(A)]  # still segment 0 of attempt 2 it waits for
