"""Dying on purpose: a Transport that stops its node at one exact point of a round.

Fault tests and the simulator's crash scenarios need a node to die at a given point of its
all-reduce (docs/round-protocol.md#fault-injection). The all-reduce carries no test-only
branch for that: what it sends goes through this wrapper, which lets the sends before the
point through, lets nothing after it out, and raises InjectedCrash out of the send that got
there. The all-reduce gives up its attempt as soon as one of its own sends fails with
anything but a PeerError, so the crash leaves the round at once, never after a transfer
deadline. In a separate process the caller turns InjectedCrash into SIGKILL.

Like ShapedTransport it works per try (around `_push_once`), so it can sit anywhere among
other wrappers: a frame counts once it is handed to the inner transport, a peer as reached
once a try to it returned.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NoReturn

from swarmnode.exceptions import ConfigError, SwarmError
from swarmnode.p2p.frames import Frame
from swarmnode.p2p.messages import Kind, PeerInfo, SecAggMessage
from swarmnode.p2p.transport import FrameSource, Transport


class InjectedCrash(SwarmError):
    """A fault-injection point was reached: this node stops here, as if killed."""

    def __init__(self, message: str, round: int) -> None:
        super().__init__(message)
        self.round = round


@dataclass(frozen=True)
class Fault:
    """Where a node dies: "before_reduce_scatter" (no update frame sent),
    "reduce_scatter:after_frames=N" (N update frames streamed in all, then nothing more) or
    "all_gather:after_peers=K" (the merged segment reaches exactly K peers, or every peer
    it goes to, all but its checker, when there are fewer)."""

    phase: str
    count: int = 0

    PHASES = ("before_reduce_scatter", "reduce_scatter", "all_gather")

    @classmethod
    def parse(cls, text: str) -> Fault:
        phase, _, rest = text.partition(":")
        if phase not in cls.PHASES:
            raise ConfigError(f"die_at: unknown phase {phase!r} (known: {', '.join(cls.PHASES)})")
        expected = {"reduce_scatter": "after_frames", "all_gather": "after_peers"}.get(phase)
        if expected is None:
            if rest:
                raise ConfigError(f"die_at: {phase} takes no setting")
            return cls(phase)
        key, _, value = rest.partition("=")
        if key != expected or not value.isdigit():
            raise ConfigError(f"die_at: write {phase}:{expected}=N")
        return cls(phase, int(value))

    def describe(self) -> str:
        """The point, as the dying node's last log line says it."""
        if self.phase == "reduce_scatter":
            return f"after {self.count} update frames"
        if self.phase == "all_gather":
            return f"after sending its merged segment to {self.count} peers"
        return "before the reduce-scatter"


class FaultyTransport(Transport):
    """`inner` as it is until armed with a Fault; armed, it dies at that point of the next
    round that gets there, and stays dead (every call raises InjectedCrash) until disarmed.

    For "all_gather:after_peers=K" it lets at most K merged-segment tries run at once and
    dies when K of them reached their peer (or as many as its merged segment goes to: every
    peer its update went to in the same attempt but one, the checker of its segment, which
    gets no data); a try that failed frees its place for another peer. A peer counts as
    reached after its MERGED push only: MERGED_HASHES pushes (the checker's hashes) are let
    through while the node lives and counted nowhere; armed for an earlier phase, the node
    dies at them as at a MERGED push. Fetches (FetchUpdate, FetchModel) and Info pass
    through while it lives."""

    def __init__(self, inner: Transport) -> None:
        self.account = inner.account
        self.inner = inner
        self.wire = inner.wire
        self._lock = threading.Condition()  # pushes to several peers run in parallel threads
        self._fault: Fault | None = None
        self._crash: InjectedCrash | None = None
        self._frames_left = 0
        self._scattered: dict[tuple[int, int], set[str]] = {}  # (round, attempt) -> peers
        self._reached: set[str] = set()
        self._trying: set[str] = set()

    def arm(self, fault: Fault) -> None:
        with self._lock:
            self._fault = fault
            self._crash = None
            self._frames_left = fault.count
            self._scattered = {}
            self._reached = set()
            self._trying = set()

    def disarm(self) -> None:
        with self._lock:
            self._fault = None
            self._crash = None
            self._lock.notify_all()

    # ------------------------------------------------------------------ sends

    def _push_once(self, peer: str, frames: FrameSource, timeout: float) -> int:
        fault = self._fault
        first = None if fault is None else next(iter(frames()), None)
        if fault is None or first is None:
            self._raise_if_dead()
            return self.inner._push_once(peer, frames, timeout)
        round, attempt = first.header.round, first.header.attempt
        if first.kind == Kind.UPDATE:
            return self._push_update(fault, peer, frames, timeout, (round, attempt))
        if first.kind == Kind.MERGED_HASHES:
            with self._lock:
                if fault.phase != "all_gather":
                    self._die(fault, round)
                self._raise_if_dead()
            return self.inner._push_once(peer, frames, timeout)
        return self._push_merged(fault, peer, frames, timeout, (round, attempt))

    def _push_update(
        self, fault: Fault, peer: str, frames: FrameSource, timeout: float, at: tuple[int, int]
    ) -> int:
        with self._lock:
            if fault.phase == "before_reduce_scatter":
                self._die(fault, at[0])
            self._raise_if_dead()
            self._scattered.setdefault(at, set()).add(peer)
        if fault.phase == "reduce_scatter":
            frames = self._budgeted(frames, fault, at[0])
        sent = self.inner._push_once(peer, frames, timeout)
        self._raise_if_dead()  # the budget ran out during this stream or another one
        return sent

    def _budgeted(self, frames: FrameSource, fault: Fault, round: int) -> FrameSource:
        """`frames` cut off, across every stream, once the fault's frame budget is spent."""

        def limited() -> Iterator[Frame]:
            for frame in frames():
                with self._lock:
                    if self._crash is not None:
                        return
                    if self._frames_left == 0:
                        self._crash = self._crash_at(fault, round)
                        self._lock.notify_all()
                        return
                    self._frames_left -= 1
                yield frame

        return limited

    def _push_merged(
        self, fault: Fault, peer: str, frames: FrameSource, timeout: float, at: tuple[int, int]
    ) -> int:
        with self._lock:
            if fault.phase != "all_gather":
                self._die(fault, at[0])
            targets = max(len(self._scattered.get(at, ())) - 1, 0)  # all but the checker
            quota = min(fault.count, targets)
            self._lock.wait_for(
                lambda: (
                    self._crash is not None
                    or len(self._reached) >= quota
                    or len(self._reached) + len(self._trying) < quota
                )
            )
            self._raise_if_dead()
            if len(self._reached) >= quota:
                self._die(fault, at[0])
            self._trying.add(peer)
        try:
            sent = self.inner._push_once(peer, frames, timeout)
        finally:
            with self._lock:
                self._trying.discard(peer)
                self._lock.notify_all()
        with self._lock:
            self._reached.add(peer)
            if len(self._reached) >= quota:
                self._die(fault, at[0])
        return sent

    # ------------------------------------------------------------------ the rest

    def _fetch_frames(self, peer: str, round: int, timeout: float) -> Iterable[Frame]:
        self._raise_if_dead()
        return self.inner._fetch_frames(peer, round, timeout)

    def _fetch_update_frames(
        self, peer: str, round: int, sender: str, chunks: range, timeout: float
    ) -> Iterable[Frame]:
        self._raise_if_dead()
        return self.inner._fetch_update_frames(peer, round, sender, chunks, timeout)

    def _secagg_once(self, peer: str, message: SecAggMessage, timeout: float) -> bytes:
        self._raise_if_dead()
        return self.inner._secagg_once(peer, message, timeout)

    def info(self, peer: str, timeout: float, round: int = 0) -> PeerInfo:
        self._raise_if_dead()
        return self.inner.info(peer, timeout, round)

    def close(self) -> None:
        self.inner.close()

    def _crash_at(self, fault: Fault, round: int) -> InjectedCrash:
        return InjectedCrash(f"{self.account} dies {fault.describe()}", round)

    def _die(self, fault: Fault, round: int) -> NoReturn:
        """Dead from now on, if not already. Called with the lock held."""
        if self._crash is None:
            self._crash = self._crash_at(fault, round)
            self._lock.notify_all()
        raise InjectedCrash(str(self._crash), self._crash.round)

    def _raise_if_dead(self) -> None:
        crash = self._crash
        if crash is not None:  # a fresh exception per thread: tracebacks stay apart
            raise InjectedCrash(str(crash), crash.round)
