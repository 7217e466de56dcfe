"""What the round layer needs from a transport, whichever carries the bytes.

Two implementations: gRPC with mutual TLS (grpc_transport.py) and in-memory (memory.py,
for the upper layers' unit tests and the simulator's sweeps). Both run every received frame
through the receiver's Inbox, so validation is the same; tests/test_transport.py runs one
behaviour suite against both.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable

import numpy as np
import numpy.typing as npt

from swarmnode.canonical import CHUNK_ELEMENTS, verify_chunks, verify_hash_list
from swarmnode.exceptions import PeerError
from swarmnode.p2p.errors import InvalidMessage, NotReady
from swarmnode.p2p.frames import Frame, payload_array
from swarmnode.p2p.messages import Kind, Partials, PeerInfo

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

    def push_partials(self, peer: str, partials: Partials, timeout: float) -> None:
        def once(remaining: float) -> int:
            self._partials_once(peer, partials, remaining)
            return 0

        self._until_ready(once, timeout)

    def fetch_model(
        self, peer: str, round: int, digest: bytes, numel: int, timeout: float
    ) -> npt.NDArray[np.float32]:
        """A final round's model from `peer`, checked against the digest on chain."""
        vector = np.empty(numel, dtype=np.float32)
        hashes: bytes | None = None
        filled = 0
        for frame in self._fetch_frames(peer, round, timeout):
            header = frame.header
            if frame.kind != Kind.MODEL or header.round != round:
                raise InvalidMessage(
                    f"{peer} answered with kind {header.kind}, round {header.round}"
                )
            if header.vector_elements != numel:
                raise InvalidMessage(f"{peer} sent a {header.vector_elements}-element model")
            if header.chunk_hashes and hashes is None:
                try:
                    verify_hash_list(header.chunk_hashes, digest, numel)
                except PeerError as exc:
                    raise InvalidMessage(f"{peer}: {exc}") from exc
                hashes = bytes(header.chunk_hashes)
            if hashes is None:
                raise InvalidMessage(f"{peer} sent model data before its chunk-hash list")
            values = payload_array(frame)
            try:
                verify_chunks(header.first_chunk, values, hashes, numel)
            except PeerError as exc:
                raise InvalidMessage(f"{peer}: {exc}") from exc
            start = header.first_chunk * CHUNK_ELEMENTS
            vector[start : start + len(values)] = values
            filled += len(values)
        if filled != numel:
            raise InvalidMessage(f"{peer} sent {filled} of the model's {numel} elements")
        return vector

    @abstractmethod
    def info(self, peer: str, timeout: float, round: int = 0) -> PeerInfo:
        """Who `peer` is; with `round`, also whose update segments it still waits for."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def _push_once(self, peer: str, frames: FrameSource, timeout: float) -> int: ...

    @abstractmethod
    def _partials_once(self, peer: str, partials: Partials, timeout: float) -> None: ...

    @abstractmethod
    def _fetch_frames(self, peer: str, round: int, timeout: float) -> Iterable[Frame]: ...

    @staticmethod
    def _until_ready(action: Callable[[float], int], timeout: float) -> int:
        """`action(time left)`, tried again while the receiver answers NotReady (it has not
        seen the round close yet: give it a moment), 20 ms apart and doubling up to 0.5 s,
        as long as the next try still starts before the deadline; then NotReady is raised.

        Hand-written rather than tenacity's Retrying: the same schedule costs about 30 us
        more per call there, against the 50 us an in-memory send of partial sums takes, and
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
