"""What the round layer needs from a transport, whichever carries the bytes.

Two implementations: gRPC with mutual TLS (grpc_transport.py) and in-memory (memory.py,
for the upper layers' unit tests and the simulator's sweeps). Both run every received frame
through the receiver's Inbox, so validation is the same; tests/test_transport.py runs one
behaviour suite against both.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from swarmnode import merkle
from swarmnode.address import is_address, normalize
from swarmnode.canonical import (
    HASH_BYTES,
    chunk_elements,
    element_range,
    num_chunks,
    verify_hash_list,
    verify_segment_hashes,
)
from swarmnode.canonical import digest as canonical_digest
from swarmnode.exceptions import PeerError
from swarmnode.p2p.elements import FLOAT32, chunk_hashes, verify_chunks
from swarmnode.p2p.errors import InvalidMessage, NotReady
from swarmnode.p2p.frames import Frame, implied_hashes, inherit_sender, payload_array
from swarmnode.p2p.messages import Kind, PeerInfo, SecAggMessage

FrameSource = Callable[[], Iterable[Frame]]
T = TypeVar("T")

# gRPC's length-prefixed message: a one-byte compressed flag and a four-byte length before
# every serialized message, unary or streamed
MESSAGE_PREFIX = 5
# A push waiting in the receiver's Inbox for it to declare the round stops this long (at most
# half the time left) before the caller's deadline, so the caller hears NotReady, not a
# deadline (docs/round-protocol.md#not-ready).
READY_MARGIN = 0.25


@dataclass(frozen=True)
class ByteSplit:
    """Counted bytes in three parts that sum to the total: `payload`, the float32 values
    frames carry; `hashes`, the chunk hashes and Merkle proofs in frame headers (UPDATE and
    MODEL first frames, MERGED_HASHES); `framing`, everything else (the rest of each
    header, requests, acks, Info, protobuf tags and lengths, gRPC's 5-byte prefixes)."""

    payload: int = 0
    hashes: int = 0
    framing: int = 0

    @property
    def total(self) -> int:
        return self.payload + self.hashes + self.framing

    def __add__(self, other: ByteSplit) -> ByteSplit:
        return ByteSplit(
            self.payload + other.payload, self.hashes + other.hashes, self.framing + other.framing
        )

    def __sub__(self, other: ByteSplit) -> ByteSplit:
        return ByteSplit(
            self.payload - other.payload, self.hashes - other.hashes, self.framing - other.framing
        )


def message_parts(message: object) -> tuple[int, int]:
    """(payload, hashes) bytes of a message as ByteSplit splits them: a Frame's payload, and
    its chunk hashes and proof; (0, 0) for anything else (all framing)."""
    if not isinstance(message, Frame):
        return 0, 0
    header = message.header
    proof = getattr(header, "proof", b"")  # the Merkle range proof, where the protocol has one
    return len(message.payload), len(header.chunk_hashes) + len(proof)


class WireCount:
    """The bytes one node put on the wire and took off it, both as caller and as server:
    every serialized message (frames with their hashes and proofs, requests, acks, Info)
    plus gRPC's 5-byte message prefix, split into payload, hashes and framing (ByteSplit).
    grpcio exposes no HTTP/2 or TLS byte counts, so those layers' framing is not in here
    (tests/test_wire_bytes.py measures how little it adds). One per node, shared by its
    transport and its server, added to from any thread; the all-reduce reads it before and
    after an attempt."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sent = ByteSplit()
        self._received = ByteSplit()

    @staticmethod
    def _split(message: bytes, parts: tuple[int, int]) -> ByteSplit:
        payload, hashes = parts
        return ByteSplit(payload, hashes, len(message) + MESSAGE_PREFIX - payload - hashes)

    def sent(self, message: bytes, parts: tuple[int, int] = (0, 0)) -> bytes:
        """Counts `message` as sent and hands it on (a serializer's last step); `parts`:
        its (payload, hashes) bytes (message_parts), the rest is framing."""
        split = self._split(message, parts)
        with self._lock:
            self._sent += split
        return message

    def received(self, message: bytes, parts: tuple[int, int] = (0, 0)) -> bytes:
        """Counts `message` as received and hands it on; `parts` as for sent()."""
        split = self._split(message, parts)
        with self._lock:
            self._received += split
        return message

    def totals(self) -> tuple[int, int]:
        """(sent, received) so far."""
        with self._lock:
            return self._sent.total, self._received.total

    def split(self) -> tuple[ByteSplit, ByteSplit]:
        """(sent, received) so far, each split into payload, hashes and framing."""
        with self._lock:
            return self._sent, self._received


class Transport(ABC):
    """One node's client side: pushes to peers, fetches from them. Every call has a deadline."""

    account: str
    wire: WireCount  # what this node's calls and its server moved (a wrapper shares inner's)

    def push(self, peer: str, frames: FrameSource, timeout: float) -> int:
        """Streams the frames to `peer` (UPDATE or MERGED, by their header); returns the
        elements the peer accepted. A peer that is not ready yet is retried until `timeout`;
        a refusal (InvalidMessage, Stale, Unauthorized) is raised at once."""
        return self._until_ready(
            lambda remaining: self._push_once(peer, frames, remaining), timeout
        )

    def fetch_model(
        self, peer: str, round: int, digest: bytes, numel: int, timeout: float
    ) -> npt.NDArray[np.float32]:
        """A final round's model from `peer`, checked against the digest on chain: every frame
        with its Merkle proof (or every chunk against a whole hash list in the first frame,
        as older peers send it), each chunk index exactly once, then the whole vector
        (docs/trust.md#checks-on-received-data). A peer that sends a chunk twice, skips one
        or stops early is refused (InvalidMessage), so catch-up asks the next peer."""
        model = _Assembly(peer, f"model of round {round}", Kind.MODEL, round, numel, digest)
        _assemble(model, self._fetch_frames(peer, round, timeout))
        values, _, _ = model.finished()
        got = canonical_digest(values)
        if got != digest:  # unreachable when every chunk checked: kept as the last word
            raise model.refused(f"model digests to {got.hex()}, not the chain's {digest.hex()}")
        return values

    def fetch_update(
        self,
        peer: str,
        round: int,
        sender: str,
        chunks: range,
        numel: int,
        commitment: bytes,
        timeout: float,
        *,
        dtype: npt.DTypeLike = FLOAT32,
    ) -> tuple[npt.NDArray[Any], bytes, bytes]:
        """Chunks `chunks` of contributor `sender`'s committed update of `round`, from `peer`
        (the contributor itself, or an owner holding its rows): the values of exactly those
        chunks, their chunk hashes and the Merkle proof of those hashes (what a relay
        forwards). Checked like a model fetch: the hashes with the proof against
        `commitment`, every chunk against its hash, each chunk exactly once, all of `chunks`
        and nothing outside them; else InvalidMessage naming the peer. Any other
        refusal (NotFound, NotReady, Unauthorized, a dead peer) is the PeerError it is: no
        retry here, the caller asks someone else. `chunks` outside the model is the caller's
        mistake: ConfigError, before anything is sent. `dtype`: the round's row type,
        float32 or (secure aggregation) uint32/uint64 words; frames of another are refused."""
        who = normalize(sender)
        update = _Assembly(
            peer,
            f"update of {who}, round {round}",
            Kind.UPDATE,
            round,
            numel,
            commitment,
            chunks=chunks,
            contributor=who,
            dtype=dtype,
        )
        _assemble(update, self._fetch_update_frames(peer, round, who, chunks, timeout))
        return update.finished()

    def secagg(self, peer: str, message: SecAggMessage, timeout: float) -> bytes:
        """Sends one secure-aggregation message to `peer` and returns its reply body. A
        peer that is not ready (no handler for the round yet, or its handler said NotReady)
        is asked again until `timeout`, as push does; a refusal is raised at once:
        InvalidMessage, Refused (the handler will not answer: its reason), Stale (a round
        the peer has finished), Unauthorized."""
        return self._until_ready(
            lambda remaining: self._secagg_once(peer, message, remaining), timeout
        )

    def _secagg_once(self, peer: str, message: SecAggMessage, timeout: float) -> bytes:
        """One try of secagg(); a transport that carries no such messages says so."""
        raise PeerError(f"{type(self).__name__} carries no secure-aggregation messages")

    @abstractmethod
    def info(self, peer: str, timeout: float, round: int = 0) -> PeerInfo:
        """Who `peer` is; with `round`, also whose update segments it still waits for."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def _push_once(self, peer: str, frames: FrameSource, timeout: float) -> int: ...

    @abstractmethod
    def _fetch_frames(self, peer: str, round: int, timeout: float) -> Iterable[Frame]: ...

    @abstractmethod
    def _fetch_update_frames(
        self, peer: str, round: int, sender: str, chunks: range, timeout: float
    ) -> Iterable[Frame]:
        """The raw FetchUpdate answer of `peer`, unchecked (fetch_update checks it)."""

    @staticmethod
    def _until_ready(action: Callable[[float], T], timeout: float) -> T:
        """`action(time left)`, tried again while the receiver answers NotReady (it has not
        seen the round close yet: give it a moment), 20 ms apart and doubling up to 0.5 s,
        as long as the next try still starts before the deadline; then NotReady is raised.

        Hand-written rather than tenacity's Retrying: the same schedule costs about 30 us
        more per call there, against the 50 us a small in-memory send takes, and
        an all-reduce of five nodes makes a hundred such calls."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        not_ready: NotReady | None = None
        while True:
            remaining = deadline - time.monotonic()
            try:
                return action(max(remaining, 0.001))
            except NotReady as exc:
                not_ready = exc
                if time.monotonic() + delay >= deadline:
                    raise
            except PeerError:
                # a retry that ran out of time (a deadline while the receiver still waited
                # for the round) ends as what the receiver last said: not ready
                if not_ready is not None and time.monotonic() >= deadline:
                    raise not_ready from None
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


def _assemble(assembly: _Assembly, source: Iterable[Frame]) -> None:
    """Feeds a fetch's frames to its assembly; a refused stream ends the call at once."""
    frames = iter(source)
    try:
        for frame in inherit_sender(frames):
            assembly.take(frame)
    finally:
        if isinstance(frames, Generator):
            frames.close()


class _Assembly:
    """One verified fetch (a final model, or chunks of a contributor's update): the chunk
    hashes of exactly the chunks asked for, with their Merkle proof (empty for a whole
    model: its hashes give the root alone), checked once against the digest on chain (the
    model's digest, the contributor's commitment), and which chunks have arrived. Frames
    are checked as they come, so a wrong chunk is refused before the rest is read; the
    values are handed out only once every chunk of `chunks` came exactly once
    (docs/round-protocol.md#catch-up)."""

    def __init__(
        self,
        peer: str,
        what: str,
        kind: Kind,
        round: int,
        numel: int,
        digest: bytes,
        *,
        chunks: range | None = None,
        contributor: str | None = None,
        dtype: npt.DTypeLike = FLOAT32,
    ) -> None:
        self.peer, self.what, self.kind, self.round = peer, what, kind, round
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.numel, self.digest, self.contributor = numel, digest, contributor
        self.chunks = range(num_chunks(numel)) if chunks is None else chunks
        span = element_range(self.chunks, numel)  # ConfigError for a range outside the model
        self.start = span.start
        self.vector = np.empty(len(span), dtype=self.dtype)
        self.seen = np.zeros(len(self.chunks), dtype=bool)
        self.chunk = chunk_elements(numel)
        self.hashes: bytes | None = None  # of self.chunks, checked
        self.proof = b""
        # frames that prove themselves (implied_hashes): what their proofs proved, and the
        # hashes of the chunks they brought, in place
        self.known = merkle.Known(digest, num_chunks(numel))
        self.leaves = bytearray(len(self.chunks) * HASH_BYTES)

    def take(self, frame: Frame) -> None:
        header = frame.header
        if frame.kind != self.kind or header.round != self.round:
            raise self.refused(f"answered with kind {header.kind}, round {header.round}")
        if header.vector_elements != self.numel:
            raise self.refused(f"sent a {header.vector_elements}-element vector")
        if self.contributor is not None and header.sender != self.contributor:
            named = _named(header.sender)
            if named != self.contributor:
                raise self.refused(f"sent frames of {header.sender[:50] or '(none)'}")
        if not header.chunk_hashes and self.hashes is None:
            self._take_proved(frame)  # a frame that proves itself (frames.implied_hashes)
            return
        if header.chunk_hashes or header.proof:
            given = self._implied(frame) if implied_hashes(frame) else bytes(header.chunk_hashes)
            self._take_hashes(given, bytes(header.proof))
        hashes = self.hashes
        if hashes is None:
            raise self.refused("sent data before its chunk hashes")
        values = self._values(frame)
        count = -(-len(values) // self.chunk)
        first = header.first_chunk
        if count and (first < self.chunks.start or first + count > self.chunks.stop):
            raise self.refused(
                f"sent chunks {first}..{first + count - 1}, outside the chunks asked for "
                f"{self.chunks.start}..{self.chunks.stop - 1}"
            )
        at = (first - self.chunks.start) * HASH_BYTES
        mine = hashes[at : at + count * HASH_BYTES] if count else b""
        self._checked(lambda: verify_chunks(first, values, mine, self.numel))
        self._mark_once(first - self.chunks.start, count)
        start = first * self.chunk - self.start
        self.vector[start : start + len(values)] = values

    def _take_proved(self, frame: Frame) -> None:
        """A frame that proves its own chunks: their hashes, computed here, with the frame's
        proof against the digest, then stored; nothing of it is kept unless that holds."""
        header = frame.header
        values = self._values(frame)
        count = -(-len(values) // self.chunk)
        first = header.first_chunk
        covered = range(first, first + count)
        if not self.chunks.start <= first <= first + count <= self.chunks.stop:
            raise self.refused(
                f"sent chunks {first}..{first + count - 1}, outside the chunks asked for "
                f"{self.chunks.start}..{self.chunks.stop - 1}"
            )
        if len(element_range(covered, self.numel)) != len(values):
            raise self.refused(f"sent {len(values)} elements from chunk {first}: not whole chunks")
        hashes = chunk_hashes(values, numel=self.numel)
        self._checked(lambda: self.known.add(covered, hashes, bytes(header.proof)))
        self._mark_once(first - self.chunks.start, count)
        at = (first - self.chunks.start) * HASH_BYTES
        self.leaves[at : at + len(hashes)] = hashes
        start = first * self.chunk - self.start
        self.vector[start : start + len(values)] = values

    def _values(self, frame: Frame) -> npt.NDArray[Any]:
        """The frame's payload, which must be of the type asked for (InvalidMessage)."""
        try:
            return payload_array(frame, self.dtype)
        except InvalidMessage as exc:
            raise self.refused(str(exc)) from exc

    def finished(self) -> tuple[npt.NDArray[Any], bytes, bytes]:
        """The values, their chunk hashes and the proof, once nothing is missing."""
        missing = np.flatnonzero(~self.seen)
        if len(missing):
            raise self.refused(
                f"stopped with {len(missing)} of the {len(self.seen)} chunks asked for missing "
                f"(the first is chunk {self.chunks.start + int(missing[0])})"
            )
        if self.hashes is None:  # frames that proved themselves, or none at all
            proof = self.known.proof(self.chunks) if self.seen.all() else None
            if proof is None:
                raise self.refused("sent no chunk hashes")
            return self.vector, bytes(self.leaves), proof
        return self.vector, self.hashes, self.proof

    def _implied(self, frame: Frame) -> bytes:
        """The hashes a stream's only frame left out: those of its payload's chunks, which
        must then be every chunk asked for (frames.implied_hashes)."""
        values = self._values(frame)
        if frame.header.first_chunk != self.chunks.start or len(values) != len(
            element_range(self.chunks, self.numel)
        ):
            raise self.refused("sent one frame without chunk hashes that is not every chunk")
        return chunk_hashes(values, numel=self.numel)

    def _take_hashes(self, hashes: bytes, proof: bytes) -> None:
        """The first hashes are checked with their proof against the chain; later ones must
        be the same."""
        if self.hashes is None:
            if self.chunks == range(num_chunks(self.numel)) and not proof:  # a whole list
                self._checked(lambda: verify_hash_list(hashes, self.digest, self.numel))
            else:
                self._checked(
                    lambda: verify_segment_hashes(
                        self.chunks, hashes, proof, self.digest, self.numel
                    )
                )
            self.hashes, self.proof = hashes, proof
        elif hashes != self.hashes:
            raise self.refused("sent second, different chunk hashes")

    def _mark_once(self, first: int, count: int) -> None:
        """Each chunk index once: a repeated or overlapping frame is refused, never summed."""
        span = self.seen[first : first + count]
        if span.any():
            again = self.chunks.start + first + int(np.flatnonzero(span)[0])
            raise self.refused(f"sent chunk {again} twice")
        span[:] = True

    def _checked(self, check: Callable[[], None]) -> None:
        try:
            check()
        except PeerError as exc:
            raise self.refused(str(exc)) from exc

    def refused(self, reason: str) -> InvalidMessage:
        return InvalidMessage(f"{self.peer}: {self.what}: {reason}")


def _named(claimed: str) -> str | None:
    """The account a frame names, normalized; None if it names none."""
    return normalize(claimed) if is_address(claimed) else None
