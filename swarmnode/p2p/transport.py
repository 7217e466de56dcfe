"""What the round layer needs from a transport, whichever carries the bytes.

Two implementations: gRPC with mutual TLS (grpc_transport.py) and in-memory (memory.py,
for the upper layers' unit tests and the simulator's sweeps). Both run every received frame
through the receiver's Inbox, so validation is the same; tests/test_transport.py runs one
behaviour suite against both.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Iterable

import numpy as np
import numpy.typing as npt

from swarmnode.canonical import CHUNK_ELEMENTS, num_chunks, verify_chunks, verify_hash_list
from swarmnode.canonical import digest as canonical_digest
from swarmnode.exceptions import PeerError
from swarmnode.p2p.errors import InvalidMessage, NotReady
from swarmnode.p2p.frames import Frame, payload_array
from swarmnode.p2p.messages import Kind, PeerInfo

FrameSource = Callable[[], Iterable[Frame]]


class Transport(ABC):
    """One node's client side: pushes to peers, fetches from them. Every call has a deadline."""

    account: str

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
        """A final round's model from `peer`, checked against the digest on chain: every chunk
        against the peer's hash list, each chunk index exactly once, then the whole vector
        (docs/trust.md#checks-on-received-data). A peer that sends a chunk twice, skips one
        or stops early is refused (InvalidMessage), so catch-up asks the next peer."""
        model = _ModelAssembly(peer, round, digest, numel)
        frames = iter(self._fetch_frames(peer, round, timeout))
        try:
            for frame in frames:
                model.take(frame)
        finally:
            if isinstance(frames, Generator):  # a refused stream: end the call now
                frames.close()
        return model.finished()

    @abstractmethod
    def info(self, peer: str, timeout: float, round: int = 0) -> PeerInfo:
        """Who `peer` is; with `round`, also whose update segments it still waits for."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def _push_once(self, peer: str, frames: FrameSource, timeout: float) -> int: ...

    @abstractmethod
    def _fetch_frames(self, peer: str, round: int, timeout: float) -> Iterable[Frame]: ...

    @staticmethod
    def _until_ready(action: Callable[[float], int], timeout: float) -> int:
        """`action(time left)`, tried again while the receiver answers NotReady (it has not
        seen the round close yet: give it a moment), 20 ms apart and doubling up to 0.5 s,
        as long as the next try still starts before the deadline; then NotReady is raised.

        Hand-written rather than tenacity's Retrying: the same schedule costs about 30 us
        more per call there, against the 50 us a small in-memory send takes, and
        an all-reduce of five nodes makes a hundred such calls."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            remaining = deadline - time.monotonic()
            try:
                return action(max(remaining, 0.001))
            except NotReady:
                if time.monotonic() + delay >= deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


class _ModelAssembly:
    """One model fetch: the peer's hash list, checked once against the chain's digest, and
    which chunks have arrived. Frames are checked as they come, so a wrong chunk is refused
    before the rest is read; the vector is handed out only once every chunk came exactly
    once and the whole of it digests to the chain's value (docs/round-protocol.md#catch-up)."""

    def __init__(self, peer: str, round: int, digest: bytes, numel: int) -> None:
        self.peer, self.round, self.digest, self.numel = peer, round, digest, numel
        self.vector = np.empty(numel, dtype=np.float32)
        self.seen = np.zeros(num_chunks(numel), dtype=bool)
        self.hashes: bytes | None = None

    def take(self, frame: Frame) -> None:
        header = frame.header
        if frame.kind != Kind.MODEL or header.round != self.round:
            raise self._refused(f"answered with kind {header.kind}, round {header.round}")
        if header.vector_elements != self.numel:
            raise self._refused(f"sent a {header.vector_elements}-element model")
        if header.chunk_hashes:
            self._take_hash_list(bytes(header.chunk_hashes))
        hashes = self.hashes
        if hashes is None:
            raise self._refused("sent model data before its chunk-hash list")
        values = payload_array(frame)
        self._checked(lambda: verify_chunks(header.first_chunk, values, hashes, self.numel))
        self._mark_once(header.first_chunk, -(-len(values) // CHUNK_ELEMENTS))
        start = header.first_chunk * CHUNK_ELEMENTS
        self.vector[start : start + len(values)] = values

    def finished(self) -> npt.NDArray[np.float32]:
        """The model, once nothing is missing and the whole vector matches the chain."""
        missing = np.flatnonzero(~self.seen)
        if len(missing):
            raise self._refused(
                f"stopped with {len(missing)} of the model's {len(self.seen)} chunks missing "
                f"(the first is chunk {missing[0]})"
            )
        got = canonical_digest(self.vector)
        if got != self.digest:  # unreachable when every chunk checked: kept as the last word
            raise self._refused(
                f"model digests to {got.hex()}, not the chain's {self.digest.hex()}"
            )
        return self.vector

    def _take_hash_list(self, hashes: bytes) -> None:
        """The first list is checked against the chain; a later one must be the same list."""
        if self.hashes is None:
            self._checked(lambda: verify_hash_list(hashes, self.digest, self.numel))
            self.hashes = hashes
        elif hashes != self.hashes:
            raise self._refused("sent a second, different chunk-hash list")

    def _mark_once(self, first: int, count: int) -> None:
        """Each chunk index once: a repeated or overlapping frame is refused, never summed."""
        span = self.seen[first : first + count]
        if span.any():
            again = first + int(np.flatnonzero(span)[0])
            raise self._refused(f"sent chunk {again} twice")
        span[:] = True

    def _checked(self, check: Callable[[], None]) -> None:
        try:
            check()
        except PeerError as exc:
            raise self._refused(str(exc)) from exc

    def _refused(self, reason: str) -> InvalidMessage:
        return InvalidMessage(f"{self.peer}: model of round {self.round}: {reason}")
