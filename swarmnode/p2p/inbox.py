"""The receiving side of a node: what it expects, every check on what arrives, and the buffers.

Both transports (gRPC and in-memory) hand each received frame to an Inbox, so the checks
are the same whichever carried it. The round layer above declares what it expects once the
round's participants are fixed on chain (who sends which segment, with which commitment);
the Inbox then accepts exactly that:

- UPDATE data (reduce-scatter) is keyed by (round, sender) and outlives an attempt: chunks
  received for an earlier attempt's segment are carried over when ownership moves. Its
  chunk-hash list must digest to the sender's commitment, and every chunk must match the
  list, so a segment is checked alone. Frames carry the attempt they were sent for, so
  the rest of a stream cut by a new attempt is refused as Stale, never blamed.
- MERGED data (all-gather) is keyed by (round, attempt, owner): a frame for a future attempt
  is NotReady (the sender retries), one for a past attempt is Stale (never its fault).
- Every payload must be float32, finite, inside the expected chunk range, within the size
  limits. A bad frame is refused with InvalidMessage and never reaches a buffer.
- Nothing else is taken: no merge rule exchanges partial sums, so there is no message for
  them (docs/round-protocol.md#partial-sums). Memory therefore stays bounded whatever a
  peer sends: `held_bytes` accounts every buffer, per peer and in total.

Data is copied once, from the received bytes into a buffer preallocated for the segment.
Accounts are normalized where they enter the Inbox (its callers' arguments, the sender a
frame claims) and compared with `==` inside (docs/architecture.md#addresses); every check is
listed in docs/trust.md#checks-on-received-data.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from swarmnode.address import is_address, normalize
from swarmnode.canonical import (
    CHUNK_ELEMENTS,
    check_finite,
    element_range,
    verify_chunks,
    verify_hash_list,
)
from swarmnode.exceptions import PeerError
from swarmnode.p2p import peer_pb2
from swarmnode.p2p.errors import InvalidMessage, NotReady, Stale, Unauthorized
from swarmnode.p2p.frames import MAX_FRAME_ELEMENTS, MAX_VECTOR_ELEMENTS, Frame, payload_array
from swarmnode.p2p.messages import Kind, wire_account

DEFAULT_MAX_VECTOR_ELEMENTS = MAX_VECTOR_ELEMENTS
DEFAULT_MAX_FRAME_ELEMENTS = MAX_FRAME_ELEMENTS


@dataclass
class _Segment:
    """One expected stream's destination, preallocated."""

    chunks: range
    numel: int
    hashes: bytes | None = None  # verified chunk-hash list (UPDATE only)
    buffer: npt.NDArray[np.float32] = field(init=False)
    start: int = field(init=False)
    seen: bytearray = field(init=False)
    missing: int = field(init=False)
    done: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        span = element_range(self.chunks, self.numel)
        self.start = span.start
        self.buffer = np.empty(len(span), dtype=np.float32)
        self.seen = bytearray(len(self.chunks))
        self.missing = len(self.chunks)
        if self.missing == 0:
            self.done.set()

    def moved_to(self, chunks: range) -> _Segment:
        """A buffer for `chunks` holding whatever of them this one already received."""
        moved = _Segment(chunks, self.numel, self.hashes)
        for chunk in range(
            max(chunks.start, self.chunks.start), min(chunks.stop, self.chunks.stop)
        ):
            if self.seen[chunk - self.chunks.start]:
                span = element_range(range(chunk, chunk + 1), self.numel)
                values = self.buffer[span.start - self.start : span.stop - self.start]
                moved.store(chunk, values)
        return moved

    def store(self, first_chunk: int, values: npt.NDArray[np.float32]) -> None:
        offset = first_chunk * CHUNK_ELEMENTS - self.start
        self.buffer[offset : offset + len(values)] = values
        count = -(-len(values) // CHUNK_ELEMENTS)
        for i in range(first_chunk - self.chunks.start, first_chunk - self.chunks.start + count):
            if not self.seen[i]:
                self.seen[i] = 1
                self.missing -= 1
        if self.missing == 0:
            self.done.set()


@dataclass
class _UpdateRound:
    attempt: int
    segment: int
    chunks: range
    numel: int
    commitments: dict[str, bytes]
    streams: dict[str, _Segment] = field(default_factory=dict)


@dataclass
class _MergedAttempt:
    attempt: int
    numel: int
    owners: dict[str, tuple[int, range]]  # owner account -> (segment index, chunks)
    streams: dict[str, _Segment] = field(default_factory=dict)


class Inbox:
    """Expectations, checks and buffers for one node. Thread-safe."""

    def __init__(
        self,
        account: str,
        *,
        max_vector_elements: int = DEFAULT_MAX_VECTOR_ELEMENTS,
        max_frame_elements: int = DEFAULT_MAX_FRAME_ELEMENTS,
    ) -> None:
        self.account = normalize(account)
        self.max_vector_elements = max_vector_elements
        self.max_frame_elements = max_frame_elements
        self._lock = threading.Condition()
        self._floor = 0  # rounds below this are over for this node
        self._updates: dict[int, _UpdateRound] = {}
        self._merged: dict[int, _MergedAttempt] = {}
        self._models: dict[int, tuple[npt.NDArray[np.float32], bytes]] = {}
        self.refused = 0  # frames refused as invalid, for tests and metrics

    # ------------------------------------------------------------------ expectations

    def expect_updates(
        self,
        round: int,
        segment: int,
        chunks: range,
        numel: int,
        commitments: Mapping[str, bytes],
        attempt: int = 1,
    ) -> None:
        """This node owns `segment` (`chunks`) in this attempt of `round`: accept those
        senders' updates. Update data stays valid across attempts (it is checked against the
        sender's commitment), so chunks already received for an earlier attempt's segment
        are carried over when ownership moves."""
        with self._lock:
            key = {normalize(account): bytes(c) for account, c in commitments.items()}
            fresh = _UpdateRound(attempt, segment, chunks, numel, key)
            old = self._updates.get(round)
            if old is not None and old.attempt > attempt:
                return  # a transfer given up on, late: the newer attempt's plan stands
            if old is not None:
                for sender, stream in old.streams.items():
                    if sender in key and stream.hashes is not None:
                        fresh.streams[sender] = stream.moved_to(chunks)
            self._updates[round] = fresh
            self._lock.notify_all()

    def expect_merged(
        self,
        round: int,
        attempt: int,
        owners: Mapping[str, tuple[int, range]],
        numel: int,
    ) -> None:
        """In this attempt, `owners` send their merged segments. Earlier attempts are over:
        their buffers are dropped."""
        with self._lock:
            current = self._merged.get(round)
            if current is not None and current.attempt > attempt:
                return  # a transfer given up on, late: the newer attempt's plan stands
            key = {normalize(account): spec for account, spec in owners.items()}
            self._merged[round] = _MergedAttempt(attempt, numel, key)
            self._lock.notify_all()

    def finish_round(self, round: int) -> None:
        """Drops a round's buffers; later messages for it (or before it) are Stale."""
        with self._lock:
            self._floor = max(self._floor, round + 1)
            for table in (self._updates, self._merged):
                for old in [r for r in table if r <= round]:
                    del table[old]
            self._lock.notify_all()

    def held_bytes(self, peer: str | None = None) -> int:
        """Bytes this Inbox holds for `peer` (every peer when None): its update and merged
        segment buffers, the numbers the limits above are about."""
        who = None if peer is None else _lookup(peer)
        if peer is not None and who is None:
            return 0
        with self._lock:
            return sum(size for sender, size in self._holdings() if who is None or sender == who)

    def _holdings(self) -> list[tuple[str, int]]:
        """(sender, bytes) of every buffer held; the caller holds the lock."""
        return [
            (sender, stream.buffer.nbytes)
            for table in (self._updates, self._merged)
            for expected in table.values()
            for sender, stream in expected.streams.items()
        ]

    def publish_model(self, round: int, vector: npt.NDArray[np.float32], hashes: bytes) -> None:
        """Keeps a final round's model for peers that catch up (only the newest is kept)."""
        with self._lock:
            self._models = {round: (vector, hashes)}

    def model(self, round: int) -> tuple[npt.NDArray[np.float32], bytes] | None:
        with self._lock:
            return self._models.get(round)

    # ------------------------------------------------------------------ receiving

    def receive(self, frame: Frame, sender: str) -> int:
        """Checks one frame from the authenticated `sender` and stores it; returns elements."""
        try:
            return self._receive(frame, normalize(sender))
        except InvalidMessage:
            with self._lock:
                self.refused += 1
            raise

    def _receive(self, frame: Frame, sender: str) -> int:
        header = frame.header
        _check_claim("frame", header.sender, sender)
        if header.elements > self.max_frame_elements:
            raise InvalidMessage(
                f"frame of {header.elements} elements exceeds the limit of "
                f"{self.max_frame_elements}"
            )
        if header.vector_elements > self.max_vector_elements:
            raise InvalidMessage(
                f"vector of {header.vector_elements} elements exceeds the limit of "
                f"{self.max_vector_elements}"
            )
        values = payload_array(frame)
        if frame.kind == Kind.UPDATE:
            return self._receive_update(header, values, sender)
        if frame.kind == Kind.MERGED:
            return self._receive_merged(header, values, sender)
        raise InvalidMessage(f"frames of kind {header.kind} cannot be pushed")

    def _round_check(self, round: int, known: bool) -> None:
        if round < self._floor:
            raise Stale(f"round {round} is over here")
        if not known:
            raise NotReady(f"round {round} has not closed here yet")

    def _receive_update(
        self, header: peer_pb2.FrameHeader, values: npt.NDArray[np.float32], sender: str
    ) -> int:
        with self._lock:
            expected = self._updates.get(header.round)
            self._round_check(header.round, expected is not None)
            assert expected is not None
            _attempt_check(header.round, header.attempt, expected.attempt)
            commitment = expected.commitments.get(sender)
            if commitment is None:
                raise InvalidMessage(f"{sender} is not a participant of round {header.round}")
            if header.segment != expected.segment:
                raise InvalidMessage(
                    f"segment {header.segment} sent to the owner of segment {expected.segment}"
                )
            if header.vector_elements != expected.numel:
                raise InvalidMessage(
                    f"vector of {header.vector_elements} elements, the model has {expected.numel}"
                )
            stream = expected.streams.get(sender)
            if stream is None:
                stream = _Segment(expected.chunks, expected.numel)
                expected.streams[sender] = stream
            if header.chunk_hashes:  # checked whenever sent: a stream may be retried
                try:
                    verify_hash_list(header.chunk_hashes, commitment, expected.numel)
                except PeerError as exc:
                    raise InvalidMessage(str(exc)) from exc
                stream.hashes = bytes(header.chunk_hashes)
            hashes = stream.hashes
        if hashes is None:
            raise InvalidMessage("update frames arrived before the chunk-hash list")
        self._check_range(header, values, stream.chunks)
        try:
            verify_chunks(header.first_chunk, values, hashes, header.vector_elements)
        except PeerError as exc:
            raise InvalidMessage(str(exc)) from exc
        with self._lock:
            stream.store(header.first_chunk, values)
            self._lock.notify_all()
        return len(values)

    def _receive_merged(
        self, header: peer_pb2.FrameHeader, values: npt.NDArray[np.float32], sender: str
    ) -> int:
        with self._lock:
            expected = self._merged.get(header.round)
            self._round_check(header.round, expected is not None)
            assert expected is not None
            _attempt_check(header.round, header.attempt, expected.attempt)
            spec = expected.owners.get(sender)
            if spec is None or spec[0] != header.segment:
                raise InvalidMessage(
                    f"{sender} does not own segment {header.segment} in attempt {header.attempt}"
                )
            if header.vector_elements != expected.numel:
                raise InvalidMessage(
                    f"vector of {header.vector_elements} elements, the model has {expected.numel}"
                )
            stream = expected.streams.get(sender)
            if stream is None:
                stream = _Segment(spec[1], expected.numel)
                expected.streams[sender] = stream
        self._check_range(header, values, stream.chunks)
        try:
            check_finite(values, what="merged segment", offset=header.first_chunk * CHUNK_ELEMENTS)
        except PeerError as exc:
            raise InvalidMessage(str(exc)) from exc
        with self._lock:
            stream.store(header.first_chunk, values)
            self._lock.notify_all()
        return len(values)

    @staticmethod
    def _check_range(
        header: peer_pb2.FrameHeader, values: npt.NDArray[np.float32], chunks: range
    ) -> None:
        count = -(-len(values) // CHUNK_ELEMENTS)
        last = header.first_chunk + count
        if len(values) == 0:
            return
        if header.first_chunk < chunks.start or last > chunks.stop:
            raise InvalidMessage(
                f"chunks {header.first_chunk}..{last - 1} are outside the segment's "
                f"chunks {chunks.start}..{chunks.stop - 1}"
            )
        span = element_range(range(header.first_chunk, last), header.vector_elements)
        if len(span) != len(values):
            raise InvalidMessage(
                f"{len(values)} elements from chunk {header.first_chunk} are not whole chunks"
            )

    # ------------------------------------------------------------------ waiting

    def waiting_for(self, round: int) -> list[str]:
        """Senders whose update segment for `round` this node, as an owner, still lacks:
        what a peer missing this node's merged segment needs to know whom to blame."""
        with self._lock:
            expected = self._updates.get(round)
            if expected is None:
                return []
            return [
                sender
                for sender in expected.commitments
                if sender != self.account
                and ((stream := expected.streams.get(sender)) is None or not stream.done.is_set())
            ]

    def update(self, round: int, sender: str, timeout: float) -> npt.NDArray[np.float32] | None:
        """`sender`'s whole update segment for this node, or None if it did not arrive in time."""
        key = _lookup(sender)
        return self._wait_stream(
            lambda: None if key is None else self._update_stream(round, key), timeout
        )

    def merged(
        self, round: int, attempt: int, owner: str, timeout: float
    ) -> npt.NDArray[np.float32] | None:
        """`owner`'s merged segment of this attempt, or None if it did not arrive in time."""
        key = _lookup(owner)
        return self._wait_stream(
            lambda: None if key is None else self._merged_stream(round, attempt, key), timeout
        )

    def _update_stream(self, round: int, sender: str) -> _Segment | None:
        expected = self._updates.get(round)
        if expected is None:
            return None
        stream = expected.streams.get(sender)
        if stream is None and sender in expected.commitments:
            stream = _Segment(expected.chunks, expected.numel)
            expected.streams[sender] = stream
        return stream

    def _merged_stream(self, round: int, attempt: int, owner: str) -> _Segment | None:
        expected = self._merged.get(round)
        if expected is None or expected.attempt != attempt or owner not in expected.owners:
            return None
        stream = expected.streams.get(owner)
        if stream is None:
            stream = _Segment(expected.owners[owner][1], expected.numel)
            expected.streams[owner] = stream
        return stream

    def _wait_stream(
        self, find: Callable[[], _Segment | None], timeout: float
    ) -> npt.NDArray[np.float32] | None:
        with self._lock:
            stream = find()
        if stream is None:
            return None
        if not stream.done.wait(timeout):
            return None
        return stream.buffer


def _lookup(account: str) -> str | None:
    """`account` as the Inbox keys it; None (nobody's data) if it is not an address."""
    return normalize(account) if is_address(account) else None


def _check_claim(what: str, claimed: str, sender: str) -> None:
    """The sender a message names must be the account its certificate belongs to; a name
    that is not an address names nobody, so it is refused the same way."""
    try:
        named: str | None = wire_account(claimed)
    except InvalidMessage:
        named = None
    if named != sender:
        shown = claimed[:50] or "(none)"
        raise Unauthorized(f"{what} claims sender {shown}, the certificate is {sender}")


def _attempt_check(round: int, given: int, current: int) -> None:
    """A past attempt's data is Stale (never the sender's fault); a future one is NotReady."""
    if given < current:
        raise Stale(f"attempt {given} of round {round} is over here")
    if given > current:
        raise NotReady(f"attempt {given} of round {round} not started here")
