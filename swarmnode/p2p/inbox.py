"""The receiving side of a node: what it expects, every check on what arrives, and the buffers.

Both transports (gRPC and in-memory) hand each received frame to an Inbox, so the checks
are the same whichever carried it. The round layer above declares what it expects once the
round's participants are fixed on chain (who sends which segment, with which commitment);
the Inbox then accepts exactly that:

- UPDATE data (reduce-scatter) is keyed by (round, contributor, segment); a node owns one
  or two segments per attempt (as merger and as checker). It outlives an attempt: verified
  chunks received for an earlier attempt's segments are carried over wherever the new
  segments overlap them. A stream's first frame carries the chunk hashes of its segment
  and their Merkle proof, which must give the contributor's commitment, and every chunk must
  match its hash, so a segment is checked alone, whoever carried it:
  a frame names its contributor, and a relay (another participant) may deliver it. Frames
  carry the attempt they were sent for, so the rest of a stream cut by a new attempt is
  refused as Stale, never blamed.
- MERGED data and MERGED_HASHES (all-gather) are keyed by (round, attempt, segment), and
  taken only from that segment's merger and checker respectively: a frame for a future
  attempt waits a while (ready_wait) for this node to declare it, and only then is
  NotReady (the sender retries); one for a past attempt is Stale (never its fault).
- FetchUpdate answers come from here too (serve_update): this node's own offered update,
  or rows it holds as an owner, to participants of the round only.
- Every payload must be of the expected element type (float32; UPDATE rows with secure
  aggregation: the round's masked words), finite where it is float32, inside the expected
  chunk range, within the size limits (in bytes). A bad frame is refused with
  InvalidMessage and never reaches a buffer.
- Secure-aggregation messages (SecAgg) go to the handler their round registered
  (serve_secagg); the Inbox routes them by round and never reads their bodies
  (docs/round-protocol.md#secure-aggregation-messages).
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
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from swarmnode import merkle
from swarmnode.address import is_address, normalize
from swarmnode.canonical import (
    HASH_BYTES,
    check_finite,
    chunk_elements,
    element_range,
    num_chunks,
)
from swarmnode.exceptions import PeerError
from swarmnode.p2p import peer_pb2
from swarmnode.p2p.buffers import receive_buffer
from swarmnode.p2p.elements import (
    FLOAT32,
    chunk_hashes,
    dtype_name,
    numpy_dtype,
    verify_chunks,
    wire_dtype,
)
from swarmnode.p2p.errors import InvalidMessage, NotFound, NotReady, Stale, Unauthorized
from swarmnode.p2p.frames import (
    MAX_FRAME_ELEMENTS,
    MAX_VECTOR_ELEMENTS,
    Frame,
    frames_for_row,
    payload_array,
)
from swarmnode.p2p.messages import Kind, SecAggMessage, wire_account

DEFAULT_MAX_VECTOR_ELEMENTS = MAX_VECTOR_ELEMENTS
DEFAULT_MAX_FRAME_ELEMENTS = MAX_FRAME_ELEMENTS
# How long a push that arrives before this node has declared its round/attempt waits here
# for that declaration before it is refused NotReady: long enough for the usual skew between
# nodes seeing a round close, so its first frame is kept, not read again after a retry
# (docs/round-protocol.md#not-ready).
DEFAULT_READY_WAIT = 5.0

SecAggHandler = Callable[[str, SecAggMessage, float], bytes]
"""A round's secure-aggregation handler: (caller's account, message, deadline) -> the reply
body. The deadline is a time.monotonic() instant by which it must have answered (or raised
NotReady), a moment before the caller's own; it may be past already when the server is
crowded. It raises InvalidMessage, NotReady or Refused to refuse (serve_secagg)."""


@dataclass
class _Segment:
    """One expected stream's destination, preallocated."""

    chunks: range
    numel: int
    checked: bool = False  # UPDATE: hashes of some of its chunks were proved (_UpdateRound.trees)
    dtype: np.dtype[Any] = FLOAT32  # UPDATE with secure aggregation: the round's words
    buffer: npt.NDArray[Any] = field(init=False)
    start: int = field(init=False)
    seen: bytearray = field(init=False)
    missing: int = field(init=False)
    done: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        span = element_range(self.chunks, self.numel)
        self.start = span.start
        self.buffer = receive_buffer(len(span), self.dtype)  # mapped in now, not frame by frame
        self.seen = bytearray(len(self.chunks))
        self.missing = len(self.chunks)
        if self.missing == 0:
            self.done.set()

    def carry_from(self, old: _Segment) -> None:
        """Takes whatever of this segment's chunks `old` (verified data of the same
        contributor, from an earlier attempt) already received."""
        for chunk in range(
            max(self.chunks.start, old.chunks.start), min(self.chunks.stop, old.chunks.stop)
        ):
            if old.seen[chunk - old.chunks.start] and not self.seen[chunk - self.chunks.start]:
                self.store(chunk, old.values(range(chunk, chunk + 1)))

    def values(self, chunks: range) -> npt.NDArray[Any]:
        """The buffer's values of `chunks` (inside this segment), without copying."""
        span = element_range(chunks, self.numel)
        return self.buffer[span.start - self.start : span.stop - self.start]

    def store(self, first_chunk: int, values: npt.NDArray[Any]) -> None:
        chunk = chunk_elements(self.numel)
        offset = first_chunk * chunk - self.start
        self.buffer[offset : offset + len(values)] = values
        count = -(-len(values) // chunk)
        for i in range(first_chunk - self.chunks.start, first_chunk - self.chunks.start + count):
            if not self.seen[i]:
                self.seen[i] = 1
                self.missing -= 1
        if self.missing == 0:
            self.done.set()


@dataclass
class _UpdateRound:
    attempt: int
    segments: dict[int, range]  # the segments this node owns in this attempt
    numel: int
    commitments: dict[str, bytes]
    streams: dict[tuple[str, int], _Segment] = field(default_factory=dict)
    # contributor -> what its segments' hashes and proofs proved of its Merkle tree: checks
    # later frames, carries over to new segments, and serves FetchUpdate with proofs
    trees: dict[str, merkle.Known] = field(default_factory=dict)
    dtype: np.dtype[Any] = FLOAT32  # the rows' element type: float32, or masked words


@dataclass
class _MergedAttempt:
    attempt: int
    numel: int
    segments: dict[int, tuple[str, str, range]]  # segment -> (merger, checker, chunks)
    streams: dict[int, _Segment] = field(default_factory=dict)
    hashes: dict[int, bytes] = field(default_factory=dict)  # segment -> checker's hashes


class Inbox:
    """Expectations, checks and buffers for one node. Thread-safe."""

    def __init__(
        self,
        account: str,
        *,
        max_vector_elements: int = DEFAULT_MAX_VECTOR_ELEMENTS,
        max_frame_elements: int = DEFAULT_MAX_FRAME_ELEMENTS,
        ready_wait: float = DEFAULT_READY_WAIT,
    ) -> None:
        self.account = normalize(account)
        self.max_vector_elements = max_vector_elements
        self.max_frame_elements = max_frame_elements
        self.ready_wait = ready_wait
        self._lock = threading.Condition()
        self._floor = 0  # rounds below this are over for this node
        self._updates: dict[int, _UpdateRound] = {}
        self._merged: dict[int, _MergedAttempt] = {}
        self._models: dict[int, tuple[npt.NDArray[np.float32], bytes]] = {}
        self._offered: dict[int, tuple[npt.NDArray[Any], merkle.Tree]] = {}
        self._secagg: dict[int, SecAggHandler] = {}  # round -> its secure-aggregation handler
        self.refused = 0  # frames refused as invalid, for tests and metrics
        self._early = 0  # pushed frames waiting now for this node to declare their round

    # ------------------------------------------------------------------ expectations

    def expect_updates(
        self,
        round: int,
        segments: Mapping[int, range],
        numel: int,
        commitments: Mapping[str, bytes],
        attempt: int = 1,
        *,
        dtype: npt.DTypeLike = FLOAT32,
    ) -> None:
        """This node owns `segments` (segment index -> chunks: as merger and as checker,
        one or two entries) in this attempt of `round`: accept the participants' (the
        `commitments`' accounts) updates for them. Update data stays valid across attempts
        (it is checked against the contributor's commitment), so verified chunks received
        for an earlier attempt's segments are carried into the new ones wherever they
        overlap. `dtype`: the rows' element type, float32 or (secure aggregation's masked
        rows) uint32 or uint64; UPDATE frames of another type are refused by name."""
        words = np.dtype(dtype).newbyteorder("<")
        wire_dtype(words)  # one of the three, or ConfigError
        with self._lock:
            key = {normalize(account): bytes(c) for account, c in commitments.items()}
            fresh = _UpdateRound(attempt, dict(segments), numel, key, dtype=words)
            old = self._updates.get(round)
            if old is not None and old.attempt > attempt:
                return  # a transfer given up on, late: the newer attempt's plan stands
            if old is not None and old.dtype == words:
                fresh.trees = {w: t for w, t in old.trees.items() if t.root == key.get(w)}
                for (sender, _), stream in old.streams.items():
                    if sender not in key or not stream.checked or not any(stream.seen):
                        continue
                    for index, chunks in fresh.segments.items():
                        if chunks.start >= stream.chunks.stop or stream.chunks.start >= chunks.stop:
                            continue
                        moved = fresh.streams.get((sender, index))
                        if moved is None:
                            moved = _Segment(chunks, numel, sender in fresh.trees, words)
                            fresh.streams[(sender, index)] = moved
                        moved.carry_from(stream)
            self._updates[round] = fresh
            self._lock.notify_all()

    def expect_merged(
        self,
        round: int,
        attempt: int,
        segments: Mapping[int, tuple[str, str, range]],
        numel: int,
    ) -> None:
        """In this attempt, every segment this node needs from others (segment -> (merger,
        checker, chunks)): MERGED data comes from the merger, MERGED_HASHES from the
        checker, nobody else. Earlier attempts are over: their buffers are dropped."""
        with self._lock:
            current = self._merged.get(round)
            if current is not None and current.attempt > attempt:
                return  # a transfer given up on, late: the newer attempt's plan stands
            key = {
                index: (normalize(merger), normalize(checker), chunks)
                for index, (merger, checker, chunks) in segments.items()
            }
            self._merged[round] = _MergedAttempt(attempt, numel, key)
            self._lock.notify_all()

    def offer_update(self, round: int, vector: npt.NDArray[Any], hashes: bytes) -> None:
        """This node's own committed update for `round` (and its chunk-hash list): what
        FetchUpdate serves when asked for this node's own update, until finish_round. Its
        float32 values, or with secure aggregation its masked words (and their hashes)."""
        tree = merkle.Tree(hashes)  # proves any range asked for in O(log n)
        with self._lock:
            self._offered[round] = (vector, tree)

    def finish_round(self, round: int) -> None:
        """Drops a round's buffers; later messages for it (or before it) are Stale."""
        with self._lock:
            self._floor = max(self._floor, round + 1)
            for table in (self._updates, self._merged, self._offered, self._secagg):
                for old in [r for r in table if r <= round]:
                    del table[old]
            self._lock.notify_all()

    def held_bytes(self, peer: str | None = None) -> int:
        """Bytes this Inbox holds for `peer` (every peer when None): the update rows kept
        for each contributor, merged segments and checkers' hashes, the numbers the limits
        above are about. This node's own offered update is not counted: no peer sent it."""
        who = None if peer is None else _lookup(peer)
        if peer is not None and who is None:
            return 0
        with self._lock:
            return sum(size for sender, size in self._holdings() if who is None or sender == who)

    def _holdings(self) -> list[tuple[str, int]]:
        """(account, bytes) of every buffer held; the caller holds the lock."""
        held = [
            (sender, stream.buffer.nbytes)
            for expected in self._updates.values()
            for (sender, _), stream in expected.streams.items()
        ]
        for merged in self._merged.values():
            held += [
                (merged.segments[index][0], stream.buffer.nbytes)
                for index, stream in merged.streams.items()
            ]
            held += [
                (merged.segments[index][1], len(hashes)) for index, hashes in merged.hashes.items()
            ]
        return held

    def publish_model(self, round: int, vector: npt.NDArray[np.float32], hashes: bytes) -> None:
        """Keeps a final round's model for peers that catch up (only the newest is kept)."""
        with self._lock:
            self._models = {round: (vector, hashes)}

    def model(self, round: int) -> tuple[npt.NDArray[np.float32], bytes] | None:
        with self._lock:
            return self._models.get(round)

    # ------------------------------------------------------------------ secure aggregation

    def serve_secagg(self, round: int, handler: SecAggHandler) -> None:
        """Answers `round`'s secure-aggregation messages with `handler` until finish_round
        (again for the same round: the new handler replaces the old). Messages that came
        first are waiting for it and are handed to it now. The Inbox only routes: the
        handler reads and checks the body (swarmnode/secagg/wire.py)."""
        with self._lock:
            if round < self._floor:
                return  # over here: its messages are refused as stale whatever is served
            self._secagg[round] = handler
            self._lock.notify_all()

    def secagg(self, caller: str, message: SecAggMessage, wait: float, deadline: float) -> bytes:
        """One secure-aggregation message from the authenticated `caller`, answered by its
        round's handler. A message for a round with no handler yet waits up to `wait`
        seconds for one, as an early frame waits for its declaration
        (docs/round-protocol.md#not-ready), then is NotReady; one for a finished round is
        Stale. What the handler raises reaches the caller (InvalidMessage, NotReady,
        Refused); `deadline` (time.monotonic()) is when it must have answered."""
        who = normalize(caller)
        limit = time.monotonic() + max(0.0, wait)
        with self._lock:
            handler = self._secagg.get(message.round)
            if handler is None and message.round >= self._floor:
                self._early += 1
                self._lock.notify_all()  # for early_frames()
                try:
                    while (handler := self._secagg.get(message.round)) is None:
                        left = limit - time.monotonic()
                        if left <= 0 or message.round < self._floor:
                            break
                        self._lock.wait(left)
                finally:
                    self._early -= 1
            if message.round < self._floor:
                raise Stale(f"round {message.round} is over here")
            if handler is None:
                raise NotReady(
                    f"no secure-aggregation {message.kind.name} taken for round "
                    f"{message.round} here yet"
                )
        return handler(who, message, deadline)

    # ------------------------------------------------------------------ serving updates

    def check_fetch(self, round: int, caller: str) -> None:
        """May `caller` fetch updates of `round` here? Only the round's participants may:
        Unauthorized for anyone else, NotReady before this node knows them (its expect_updates
        for the round), Stale once the round is over here."""
        who = normalize(caller)
        with self._lock:
            expected = self._updates.get(round)
            self._round_check(round, expected is not None)
            assert expected is not None
            if who not in expected.commitments:
                raise Unauthorized(f"{who} is not a participant of round {round}")

    def serve_update(
        self, round: int, sender: str, chunks: range
    ) -> tuple[npt.NDArray[Any], bytes, bytes] | None:
        """`sender`'s values of exactly `chunks` (contiguous, of the round's element type),
        their chunk hashes and the Merkle proof of those, or None when not held: this node's
        own offered update, or a contributor's rows it received (verified) as an owner,
        every one of those chunks (the proof comes from what the segments' proofs proved).
        A range outside the model is InvalidMessage, refused before anything is allocated."""
        who = _lookup(sender)
        if who is None:
            raise InvalidMessage(f"not an account address: {sender[:50]!r}")
        with self._lock:
            if who == self.account:
                offered = self._offered.get(round)
                if offered is None:
                    return None
                vector, tree = offered
                span = _checked_span(chunks, len(vector))
                return vector[span.start : span.stop], tree.leaves(chunks), tree.proof(chunks)
            expected = self._updates.get(round)
            if expected is None:
                return None
            span = _checked_span(chunks, expected.numel)
            held = [
                stream
                for (contributor, _), stream in expected.streams.items()
                if contributor == who and stream.checked
            ]
            known = expected.trees.get(who)
            leaves = None if known is None else known.leaves(chunks)
            proof = None if known is None else known.proof(chunks)
            if not held or leaves is None or proof is None:
                return None
            pieces: list[tuple[int, npt.NDArray[Any]]] = []
            chunk = chunks.start
            while chunk < chunks.stop:  # at most two streams: merger's and checker's
                stream = next(
                    (
                        s
                        for s in held
                        if s.chunks.start <= chunk < s.chunks.stop
                        and s.seen[chunk - s.chunks.start]
                    ),
                    None,
                )
                if stream is None:
                    return None
                stop = chunk + 1
                while (
                    stop < min(chunks.stop, stream.chunks.stop)
                    and stream.seen[stop - stream.chunks.start]
                ):
                    stop += 1
                pieces.append((chunk, stream.values(range(chunk, stop))))
                chunk = stop
            out = np.empty(len(span), dtype=expected.dtype)  # held data: bounded by the buffers
            for first, values in pieces:
                offset = element_range(range(first, first), expected.numel).start - span.start
                out[offset : offset + len(values)] = values
            return out, leaves, proof

    def update_frames(
        self,
        round: int,
        caller: str,
        sender: str,
        first_chunk: int,
        chunks: int,
        frame_chunks: int | None = None,
    ) -> Iterator[Frame]:
        """A FetchUpdate answer, the same for both transports' servers: checks the caller
        (check_fetch) and the request, then UPDATE frames of `sender`'s chunks
        [first_chunk, first_chunk + chunks), each with the Merkle proof of its own chunks
        (as a push), header.sender = `sender`. NotFound when not held."""
        self.check_fetch(round, caller)
        wanted = range(first_chunk, first_chunk + chunks)
        found = self.serve_update(round, sender, wanted)
        if found is None:
            raise NotFound(
                f"no update of {sender[:50]} for chunks {first_chunk}..{first_chunk + chunks - 1}"
                f" of round {round} here"
            )
        values, hashes, proof = found
        numel = self._numel(round, sender)
        known = merkle.Known(b"\0" * HASH_BYTES, num_chunks(numel))  # proofs of sub-ranges
        known.add(wanted, hashes, proof, check=False)  # checked when they came (or our own)

        def prove(part: range) -> bytes:
            got = known.proof(part)
            assert got is not None  # inside the range whose leaves and proof it holds
            return got

        return frames_for_row(
            values,
            wanted,
            numel,
            kind=Kind.UPDATE,
            round=round,
            attempt=0,
            segment=0,
            sender=normalize(sender),
            prove=prove,
            frame_chunks=frame_chunks,
        )

    def _numel(self, round: int, sender: str) -> int:
        with self._lock:
            if normalize(sender) == self.account and round in self._offered:
                return len(self._offered[round][0])
            expected = self._updates.get(round)
            if expected is None:  # finished while the answer was being prepared
                raise Stale(f"round {round} is over here")
            return expected.numel

    # ------------------------------------------------------------------ receiving

    def receive(self, frame: Frame, sender: str, wait: float | None = None) -> int:
        """Checks one frame from the authenticated `sender` (the caller) and stores it;
        returns elements. A frame for a round or attempt this node has not declared yet waits
        up to `wait` seconds (the Inbox's ready_wait when None) for that declaration before it
        is refused NotReady, so the frame already read is not sent again."""
        patience = self.ready_wait if wait is None else max(0.0, wait)
        try:
            return self._receive(frame, normalize(sender), patience)
        except InvalidMessage:
            with self._lock:
                self.refused += 1
            raise

    def _receive(self, frame: Frame, sender: str, wait: float) -> int:
        header = frame.header
        if frame.kind != Kind.UPDATE and header.sender:  # a relay may carry an update only
            _check_claim("frame", header.sender, sender)  # (an empty sender is the caller)
        size = numpy_dtype(header.dtype).itemsize  # an unknown type refused by name
        if header.elements * size > self.max_frame_elements * FLOAT32.itemsize:
            raise InvalidMessage(  # the limit is in bytes: a frame of 8-byte words holds half
                f"frame of {header.elements} {dtype_name(header.dtype)} elements exceeds the "
                f"limit of {self.max_frame_elements * FLOAT32.itemsize // size}"
            )
        if header.vector_elements > self.max_vector_elements:
            raise InvalidMessage(
                f"vector of {header.vector_elements} elements exceeds the limit of "
                f"{self.max_vector_elements}"
            )
        if frame.kind == Kind.MERGED_HASHES:
            return self._receive_merged_hashes(frame, sender, wait)
        # UPDATE rows are float32 or the round's words, checked once the round is known
        values = payload_array(frame, None if frame.kind == Kind.UPDATE else FLOAT32)
        if frame.kind == Kind.UPDATE:
            return self._receive_update(header, values, sender, wait)
        if frame.kind == Kind.MERGED:
            return self._receive_merged(header, values, sender, wait)
        raise InvalidMessage(f"frames of kind {header.kind} cannot be pushed")

    def _await_declared(
        self,
        round: int,
        attempt: int,
        declared: Mapping[int, _UpdateRound | _MergedAttempt],
        wait: float,
    ) -> None:
        """Waits (the caller holds the lock; the Condition lets it go meanwhile) at most
        `wait` seconds for this node to declare `round` at `attempt` or later in `declared`
        (its expect_updates or expect_merged table), or to finish the round. A frame that
        comes first is held here rather than refused, so its sender need not read it out
        again (docs/round-protocol.md#not-ready); the checks after this say what is still
        wrong when the wait ends."""
        deadline = time.monotonic() + wait

        def settled() -> bool:
            if round < self._floor:
                return True
            current = declared.get(round)
            return current is not None and current.attempt >= attempt

        if settled():
            return
        self._early += 1
        self._lock.notify_all()  # for early_frames()
        try:
            while not settled():
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._lock.wait(left)
        finally:
            self._early -= 1

    def early_frames(self, at_least: int, timeout: float) -> bool:
        """Waits up to `timeout` seconds until at least `at_least` pushed frames (and
        secure-aggregation messages) are held waiting for this node to declare their round
        or attempt (or serve their round); whether they are. For tests and metrics: what
        arrived early and was kept rather than refused."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._early < at_least:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
            return True

    def _round_check(self, round: int, known: bool) -> None:
        if round < self._floor:
            raise Stale(f"round {round} is over here")
        if not known:
            raise NotReady(f"round {round} has not closed here yet")

    def _contributor(self, claimed: str, caller: str, round: int, expected: _UpdateRound) -> str:
        """The contributor an UPDATE frame names. The caller itself, or (a relay) another
        participant when the caller is one too: the data is checked against the named
        contributor's commitment, so who carried it does not matter. Anyone else speaking
        for another account is Unauthorized, as for every other message."""
        if not claimed or _lookup(claimed) == caller:  # an empty claim names the caller
            return caller
        if caller not in expected.commitments:
            _check_claim("frame", claimed, caller)  # raises: a stranger speaking for another
        named = _lookup(claimed)
        if named is None or named not in expected.commitments:
            shown = claimed[:50] or "(none)"
            raise Unauthorized(
                f"frame claims sender {shown}, the certificate is {caller}: a relay must name "
                f"a participant of round {round}"
            )
        return named

    def _receive_update(
        self,
        header: peer_pb2.FrameHeader,
        values: npt.NDArray[Any],
        caller: str,
        wait: float,
    ) -> int:
        # the hashes of a frame that proves itself, computed before taking the lock: hashing
        # is most of a frame's check, and frames from many peers are checked in parallel
        computed = (
            chunk_hashes(values, numel=header.vector_elements)
            if not header.chunk_hashes and len(values) and header.vector_elements
            else None
        )
        with self._lock:
            self._await_declared(header.round, header.attempt, self._updates, wait)
            expected = self._updates.get(header.round)
            self._round_check(header.round, expected is not None)
            assert expected is not None
            _attempt_check(header.round, header.attempt, expected.attempt)
            if values.dtype != expected.dtype:
                raise InvalidMessage(
                    f"an UPDATE frame of {dtype_name(header.dtype)} elements; round "
                    f"{header.round}'s rows are {expected.dtype.name}"
                )
            sender = self._contributor(header.sender, caller, header.round, expected)
            commitment = expected.commitments.get(sender)
            if commitment is None:
                raise InvalidMessage(f"{sender} is not a participant of round {header.round}")
            chunks = expected.segments.get(header.segment)
            if chunks is None:
                owned = ", ".join(map(str, sorted(expected.segments))) or "none"
                raise InvalidMessage(
                    f"segment {header.segment} sent to the owner of segment {owned}"
                )
            if header.vector_elements != expected.numel:
                raise InvalidMessage(
                    f"vector of {header.vector_elements} elements, the model has {expected.numel}"
                )
            stream = expected.streams.get((sender, header.segment))
            # a frame without hashes proves its own chunks (frames.implied_hashes; its proof
            # is empty only when it holds the whole vector), unless it is a later frame of a
            # stream whose first frame brought the hashes of its chunks
            tree = expected.trees.get(sender)
            count = -(-len(values) // chunk_elements(expected.numel))
            covered = range(header.first_chunk, header.first_chunk + count)
            held = None if tree is None or not count else tree.leaves(covered)
            proves = not header.chunk_hashes and (bool(header.proof) or held is None)
            # a frame that proves itself may run on into the segment this node owns right
            # after `header.segment` (a contributor's rows of both, one proof:
            # docs/round-protocol.md#data-plane); each part is stored in its own segment
            parts = _owned_parts(expected.segments, header.segment, covered) if proves else {}
            span = range(chunks.start, max([chunks.stop, *(r.stop for r in parts.values())]))
            if header.chunk_hashes or proves:  # checked whenever sent: a retried stream
                self._prove(header, values, span, sender, commitment, expected, computed)
                for index, part in (parts or {header.segment: chunks}).items():
                    moved = expected.streams.get((sender, index))
                    if moved is None:
                        moved = _Segment(part, expected.numel, dtype=expected.dtype)
                        expected.streams[(sender, index)] = moved
                    moved.checked = True
                stream = expected.streams[(sender, header.segment)]
        if stream is None or not stream.checked:
            raise InvalidMessage("update frames arrived before their chunk hashes")
        self._check_range(header, values, span if proves else stream.chunks)
        if proves:  # the frame's chunks gave the hashes its proof proved: nothing more to check
            base = element_range(covered, expected.numel).start
            with self._lock:
                for index, part in parts.items():
                    inside = range(max(part.start, covered.start), min(part.stop, covered.stop))
                    if len(inside):
                        elements = element_range(inside, expected.numel)
                        piece = values[elements.start - base : elements.stop - base]
                        expected.streams[(sender, index)].store(inside.start, piece)
                self._lock.notify_all()
            return len(values)
        count = -(-len(values) // chunk_elements(header.vector_elements))
        covered = range(header.first_chunk, header.first_chunk + count)
        with self._lock:
            tree = expected.trees.get(sender)
            own = None if tree is None else tree.leaves(covered)
        if own is None:
            raise InvalidMessage(
                f"update frames of chunks {header.first_chunk}..{header.first_chunk + count - 1} "
                "arrived before their chunk hashes"
            )
        try:
            verify_chunks(header.first_chunk, values, own, header.vector_elements)
        except PeerError as exc:
            raise InvalidMessage(str(exc)) from exc
        with self._lock:
            stream.store(header.first_chunk, values)
            self._lock.notify_all()
        return len(values)

    @staticmethod
    def _prove(
        header: peer_pb2.FrameHeader,
        values: npt.NDArray[Any],
        chunks: range,
        sender: str,
        commitment: bytes,
        expected: _UpdateRound,
        computed: bytes | None = None,
    ) -> None:
        """Checks a frame's proof: the hashes of the chunks from header.first_chunk on,
        inside the segment's `chunks`, with their Merkle proof against the contributor's
        commitment (docs/canonical-vector.md#commitments); keeps them in the contributor's
        tree. As senders send them, frames carry no hashes (frames.implied_hashes): they are
        those of the frame's own payload's chunks, computed here, so the frame is checked
        alone (`computed`: those hashes, if the caller has them). A first frame that carries
        hashes (of more chunks than its own) is checked the same way. The caller holds the
        lock."""
        hashes = header.chunk_hashes
        if not hashes:
            count = -(-len(values) // chunk_elements(expected.numel))
            covered = range(header.first_chunk, header.first_chunk + count)
            if not chunks.start <= covered.start <= covered.stop <= chunks.stop or len(
                element_range(covered, expected.numel)
            ) != len(values):
                raise InvalidMessage(
                    f"{len(values)} elements from chunk {header.first_chunk} are not whole "
                    f"chunks inside the segment's chunks {chunks.start}..{chunks.stop - 1}"
                )
            if computed is None:
                computed = chunk_hashes(values, numel=expected.numel)
            hashes = computed
        covered = range(header.first_chunk, header.first_chunk + len(hashes) // HASH_BYTES)
        if len(hashes) % HASH_BYTES or not (
            chunks.start <= covered.start <= covered.stop <= chunks.stop
        ):
            raise InvalidMessage(
                f"{len(hashes)} bytes of chunk hashes from chunk {header.first_chunk}: not "
                f"whole, or outside the segment's chunks {chunks.start}..{chunks.stop - 1}"
            )
        tree = expected.trees.get(sender) or merkle.Known(commitment, num_chunks(expected.numel))
        try:
            tree.add(covered, hashes, header.proof)
        except PeerError as exc:
            raise InvalidMessage(f"segment {header.segment}'s chunk hashes: {exc}") from exc
        expected.trees[sender] = tree

    def _merged_spec(
        self, header: peer_pb2.FrameHeader, wait: float
    ) -> tuple[_MergedAttempt, tuple[str, str, range]]:
        """The attempt and segment a MERGED or MERGED_HASHES frame is for; the caller holds
        the lock."""
        self._await_declared(header.round, header.attempt, self._merged, wait)
        expected = self._merged.get(header.round)
        self._round_check(header.round, expected is not None)
        assert expected is not None
        _attempt_check(header.round, header.attempt, expected.attempt)
        spec = expected.segments.get(header.segment)
        if spec is None:
            raise InvalidMessage(
                f"segment {header.segment} is not expected from others in attempt {header.attempt}"
            )
        return expected, spec

    def _receive_merged(
        self,
        header: peer_pb2.FrameHeader,
        values: npt.NDArray[np.float32],
        sender: str,
        wait: float,
    ) -> int:
        with self._lock:
            expected, (merger, _, chunks) = self._merged_spec(header, wait)
            if merger != sender:
                raise InvalidMessage(
                    f"{sender} does not own segment {header.segment} in attempt {header.attempt}"
                )
            if header.vector_elements != expected.numel:
                raise InvalidMessage(
                    f"vector of {header.vector_elements} elements, the model has {expected.numel}"
                )
            stream = expected.streams.get(header.segment)
            if stream is None:
                stream = _Segment(chunks, expected.numel)
                expected.streams[header.segment] = stream
        self._check_range(header, values, stream.chunks)
        try:
            offset = header.first_chunk * chunk_elements(header.vector_elements)
            check_finite(values, what="merged segment", offset=offset)
        except PeerError as exc:
            raise InvalidMessage(str(exc)) from exc
        with self._lock:
            stream.store(header.first_chunk, values)
            self._lock.notify_all()
        return len(values)

    def _receive_merged_hashes(self, frame: Frame, sender: str, wait: float) -> int:
        """The checker's digest of its merge of one segment: one 32-byte Merkle root (the
        segment's chunk hashes as a tree of their own), no payload. Nothing is allocated
        before the length is checked."""
        header = frame.header
        if header.elements or len(frame.payload):
            raise InvalidMessage("a MERGED_HASHES frame carries no payload")
        with self._lock:
            expected, (_, checker, _) = self._merged_spec(header, wait)
            if checker != sender:
                raise InvalidMessage(
                    f"{sender} does not check segment {header.segment} in attempt {header.attempt}"
                )
            if len(header.chunk_hashes) != HASH_BYTES:
                raise InvalidMessage(
                    f"{len(header.chunk_hashes)} bytes of hashes for segment {header.segment}, "
                    f"its merged digest takes {HASH_BYTES}"
                )
            held = expected.hashes.get(header.segment)
            if held is not None and held != header.chunk_hashes:
                raise InvalidMessage(f"a second, different digest for segment {header.segment}")
            expected.hashes[header.segment] = bytes(header.chunk_hashes)
            self._lock.notify_all()
        return 0

    @staticmethod
    def _check_range(header: peer_pb2.FrameHeader, values: npt.NDArray[Any], chunks: range) -> None:
        count = -(-len(values) // chunk_elements(header.vector_elements))
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
        """Contributors whose row for any segment this node owns in `round` is still
        incomplete: what a peer missing this node's merged segment needs to know whom to
        blame (and whose rows to relay here)."""
        with self._lock:
            expected = self._updates.get(round)
            if expected is None:
                return []
            return [
                sender
                for sender in expected.commitments
                if sender != self.account
                and any(
                    (stream := expected.streams.get((sender, index))) is None
                    or not stream.done.is_set()
                    for index in expected.segments
                )
            ]

    def update(
        self, round: int, sender: str, segment: int, timeout: float
    ) -> npt.NDArray[Any] | None:
        """`sender`'s row for `segment` (one this node owns), in the round's element type
        (expect_updates), or None if it did not arrive in time."""
        key = _lookup(sender)
        return self._wait_stream(
            lambda: None if key is None else self._update_stream(round, key, segment), timeout
        )

    def merged(
        self, round: int, attempt: int, segment: int, timeout: float
    ) -> npt.NDArray[np.float32] | None:
        """The merger's data of `segment` in this attempt, or None if it did not arrive in
        time."""
        return self._wait_stream(lambda: self._merged_stream(round, attempt, segment), timeout)

    def merged_hashes(self, round: int, attempt: int, segment: int, timeout: float) -> bytes | None:
        """The checker's digest of its merge of `segment` in this attempt (MERGED_HASHES),
        or None if it did not arrive in time."""
        deadline = time.monotonic() + timeout

        def found() -> bytes | None:
            expected = self._merged.get(round)
            if expected is None or expected.attempt != attempt:
                return None
            return expected.hashes.get(segment)

        with self._lock:
            while (hashes := found()) is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._lock.wait(left)
            return hashes

    def _update_stream(self, round: int, sender: str, segment: int) -> _Segment | None:
        expected = self._updates.get(round)
        if expected is None or segment not in expected.segments:
            return None
        stream = expected.streams.get((sender, segment))
        if stream is None and sender in expected.commitments:
            stream = _Segment(expected.segments[segment], expected.numel, dtype=expected.dtype)
            expected.streams[(sender, segment)] = stream
        return stream

    def _merged_stream(self, round: int, attempt: int, segment: int) -> _Segment | None:
        expected = self._merged.get(round)
        if expected is None or expected.attempt != attempt or segment not in expected.segments:
            return None
        stream = expected.streams.get(segment)
        if stream is None:
            stream = _Segment(expected.segments[segment][2], expected.numel)
            expected.streams[segment] = stream
        return stream

    def _wait_stream(
        self, find: Callable[[], _Segment | None], timeout: float
    ) -> npt.NDArray[Any] | None:
        with self._lock:
            stream = find()
        if stream is None:
            return None
        if not stream.done.wait(timeout):
            return None
        return stream.buffer


def _owned_parts(segments: Mapping[int, range], first: int, covered: range) -> dict[int, range]:
    """The owned segments a frame's chunks `covered` fall in, from segment `first` on: it,
    then the owned segment that starts where it stops, while the frame runs on (a frame
    that runs past what this node owns fails the range check after)."""
    parts = {first: segments[first]}
    stop = segments[first].stop
    while covered.stop > stop:
        following = next(
            (i for i, r in segments.items() if r.start == stop and len(r) and i not in parts),
            None,
        )
        if following is None:
            break
        parts[following] = segments[following]
        stop = segments[following].stop
    return parts


def _checked_span(chunks: range, numel: int) -> range:
    """The elements of `chunks`; InvalidMessage for a range outside the model."""
    total = num_chunks(numel)
    if chunks.step != 1 or not 0 <= chunks.start <= chunks.stop <= total:
        raise InvalidMessage(
            f"chunks {chunks.start}..{chunks.stop - 1} are outside the model's {total} chunks"
        )
    return element_range(chunks, numel)


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
