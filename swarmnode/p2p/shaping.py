"""A slow network on purpose: a Transport that adds latency to every call and caps the bytes
per second of what it streams, around either transport (gRPC or in-memory).

For the simulator's network scenarios (slow links, stragglers). Sleeping is the simulated
thing here, not a way to wait for something: a call over a link with latency L starts L
seconds late, and a frame of B bytes over a link capped at R bytes/s takes B / R seconds
longer to go out. The cap is per link (this node to one peer): pushes to different peers run
side by side, as they would over separate links. The pause is added on top of the real
transfer, so the emulation is exact when the cap is far below what loopback carries. What the
wrapper asked to sleep is counted, so that tests check shaping by bytes and requested seconds,
never by the wall clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from swarmnode.exceptions import ConfigError
from swarmnode.p2p.frames import Frame
from swarmnode.p2p.messages import PeerInfo, SecAggMessage
from swarmnode.p2p.transport import FrameSource, Transport


@dataclass
class LinkStats:
    """What the shaping did: calls delayed, bytes paced, and the seconds it asked to sleep."""

    calls: int = 0
    bytes: int = 0
    latency_seconds: float = 0.0
    bandwidth_seconds: float = 0.0


def frame_bytes(frame: Frame) -> int:
    """A frame's size on the wire as the cap counts it: payload plus header."""
    return frame.payload.nbytes + frame.header.ByteSize()


class ShapedTransport(Transport):
    """`inner` as seen through slow links: `latency` seconds per call, at most `bandwidth`
    bytes/s per link (0: no cap), and `send_delay` seconds more before each send of model
    data (a slow sender, the simulator's straggler). A retried call pays its
    delays again, as on a real link."""

    def __init__(
        self,
        inner: Transport,
        *,
        latency: float = 0.0,
        bandwidth: float = 0.0,
        send_delay: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if latency < 0:
            raise ConfigError(f"latency must be at least 0 seconds, got {latency}")
        if send_delay < 0:
            raise ConfigError(f"send_delay must be at least 0 seconds, got {send_delay}")
        if bandwidth < 0:
            raise ConfigError(f"bandwidth must be at least 0 bytes/s (0: no cap), got {bandwidth}")
        self.account = inner.account
        self.inner = inner
        self.wire = inner.wire
        self.latency = latency
        self.bandwidth = bandwidth
        self.send_delay = send_delay
        self.stats = LinkStats()
        self._sleep = sleep
        self._lock = threading.Lock()  # pushes to several peers run in parallel threads

    def _delay(self, send: bool = False) -> None:
        wait = self.latency + (self.send_delay if send else 0.0)
        with self._lock:
            self.stats.calls += 1
            self.stats.latency_seconds += wait
        if wait > 0:
            self._sleep(wait)

    def _pace(self, size: int) -> None:
        wait = size / self.bandwidth if self.bandwidth > 0 else 0.0
        with self._lock:
            self.stats.bytes += size
            self.stats.bandwidth_seconds += wait
        if wait > 0:
            self._sleep(wait)

    def _left(self, timeout: float, send: bool = False) -> float:
        """The inner call's deadline: the delays already spent part of the caller's (a
        sender slower than the deadline fails, as it would on a real link)."""
        return max(timeout - self.latency - (self.send_delay if send else 0.0), 0.001)

    def _push_once(self, peer: str, frames: FrameSource, timeout: float) -> int:
        self._delay(send=True)

        def paced() -> Iterator[Frame]:
            for frame in frames():
                self._pace(frame_bytes(frame))
                yield frame

        return self.inner._push_once(peer, paced, self._left(timeout, send=True))

    def _fetch_frames(self, peer: str, round: int, timeout: float) -> Iterator[Frame]:
        self._delay()
        for frame in self.inner._fetch_frames(peer, round, self._left(timeout)):
            self._pace(frame_bytes(frame))
            yield frame

    def _fetch_update_frames(
        self, peer: str, round: int, sender: str, chunks: range, timeout: float
    ) -> Iterator[Frame]:
        self._delay()
        for frame in self.inner._fetch_update_frames(
            peer, round, sender, chunks, self._left(timeout)
        ):
            self._pace(frame_bytes(frame))
            yield frame

    def _secagg_once(self, peer: str, message: SecAggMessage, timeout: float) -> bytes:
        self._delay()
        self._pace(len(message.body))
        return self.inner._secagg_once(peer, message, self._left(timeout))

    def info(self, peer: str, timeout: float, round: int = 0) -> PeerInfo:
        self._delay()
        return self.inner.info(peer, self._left(timeout), round)

    def close(self) -> None:
        self.inner.close()
