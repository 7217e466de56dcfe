"""ReadAhead (swarmnode/p2p/grpc_transport.py): a pushed stream's next frame is received
while the current one is checked (docs/architecture.md#transfer-speed). Items keep their
order, an error comes after the items before it, the reader stays at most one item ahead
and ends when the consumer stops, also over real gRPC when a frame mid-stream is refused."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest

from swarmnode import canonical
from swarmnode.p2p.errors import InvalidMessage
from swarmnode.p2p.grpc_transport import ReadAhead
from tests.test_transport import (
    NUMEL,
    ROUND,
    SEGMENTS,
    Cluster,
    expect_segment_one,
    flipped,
    model,
    own_frames,
)

WAIT = 10.0  # seconds a thread gets to end once nothing holds it


class Counted:
    """A source that counts what the reader took from it and can fail after `fail_after`."""

    def __init__(self, items: int, fail_after: int | None = None) -> None:
        self.items = items
        self.fail_after = fail_after
        self.pulled = 0
        self._lock = threading.Lock()

    def __iter__(self) -> Iterator[int]:
        for value in range(self.items):
            if value == self.fail_after:
                raise ValueError(f"bad item {value}")
            with self._lock:
                self.pulled += 1
            yield value


def test_items_come_in_order_and_the_reader_stays_one_ahead() -> None:
    source = Counted(50)
    got = []
    with ReadAhead(iter(source)) as ahead:
        for value in ahead:
            got.append(value)
            # taken: len(got); one waiting in the slot, one in the reader's hand at most
            assert source.pulled <= len(got) + 2
    assert got == list(range(50))


def test_an_error_of_the_source_follows_the_items_before_it() -> None:
    got = []
    with pytest.raises(ValueError, match="bad item 3"), ReadAhead(iter(Counted(9, 3))) as ahead:
        for value in ahead:
            got.append(value)
    assert got == [0, 1, 2]


def test_closing_ends_a_reader_that_waits_for_room() -> None:
    def endless() -> Iterator[int]:
        value = 0
        while True:
            yield value
            value += 1

    ahead = ReadAhead(endless())
    assert next(iter(ahead)) == 0
    ahead.close()  # the reader holds or soon holds an item it has no room for
    ahead._thread.join(WAIT)
    assert not ahead._thread.is_alive(), "the reader kept waiting after close()"


def _read_ahead_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "peer-read-ahead"]


def test_a_refused_frame_mid_stream_over_grpc_ends_the_reader() -> None:
    """A frame in the middle of a pushed stream fails its check: the push is refused by name,
    the frames before it are kept, and the server's reader thread ends with the call."""
    cluster = Cluster("grpc", 3)
    try:
        a, owner, _ = cluster.nodes
        vector = model(5)
        expect_segment_one(cluster, {a.account: vector})
        frames = own_frames(vector)
        cut = [*frames[:3], flipped(frames[3])]
        with pytest.raises(InvalidMessage, match="give root"):
            a.transport.push(owner.account, lambda: cut, timeout=10)
        kept = range(SEGMENTS[1].start, SEGMENTS[1].start + 3)
        held = owner.inbox.serve_update(ROUND, a.account, kept)
        span = canonical.element_range(kept, NUMEL)
        assert held is not None and np.array_equal(held[0], vector[span.start : span.stop])
        for thread in _read_ahead_threads():
            thread.join(WAIT)
        assert not _read_ahead_threads(), "a reader outlived its refused call"
    finally:
        cluster.stop()
