"""One attempt's data plane: segmented reduce-scatter, a local merge per segment, all-gather.

Every live participant j of the attempt owns segment j of the canonical vector (whole-chunk
ranges, sizes differing by at most one chunk). Reduce-scatter: each node streams segment j
of its update to participant j. Owner j merges its segment from all contributions with the
swarm's rule, deciding from the rows it holds only: no rule exchanges partial sums, so no peer
can steer an owner's decision by lying about them (docs/trust.md#threat-model). All-gather:
each owner streams its merged segment to every other node. Each node thus sends and receives
about 2(n-1)/n x the model, whatever n, and nobody waits on a leader
(docs/round-protocol.md#data-plane, docs/round-protocol.md#partial-sums).

Nothing here talks to the chain: the round layer hands in the attempt's live participants,
weights and commitments as the contract fixed them. Nothing here is protobuf either: the
transport speaks swarmnode.p2p.messages' types.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import torch

from swarmnode import canonical
from swarmnode.address import normalize
from swarmnode.exceptions import PeerError
from swarmnode.merge import MergeRule
from swarmnode.p2p.frames import frames_for
from swarmnode.p2p.inbox import Inbox
from swarmnode.p2p.messages import Kind
from swarmnode.p2p.transport import FrameSource, Transport

T = TypeVar("T")

BLAME_TIMEOUT = 2.0  # seconds to ask a silent owner what it waits for
LOOK = 0.05  # seconds between looks at this node's own sends while it waits for data


class MissingContributions(PeerError):
    """Some peers' data did not arrive in time: the round layer votes to drop `peers`, the
    ones to blame (`why` says when they are not the ones whose data is missing)."""

    def __init__(self, phase: str, peers: Sequence[str], why: str = "") -> None:
        self.phase = phase
        self.peers = tuple(peers)
        super().__init__(f"{phase}: nothing complete from {why or ', '.join(self.peers)} in time")


@dataclass
class Traffic:
    """Payload bytes this node moved, by direction (hash lists and headers included)."""

    sent: int = 0
    received: int = 0


@dataclass
class AllReduceResult:
    merged: npt.NDArray[np.float32]
    digest: bytes
    hashes: bytes  # the merged vector's chunk hashes: its digest, and what catch-up serves
    traffic: Traffic
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Attempt:
    """What the chain fixed for this attempt, in the contract's participant order.

    Accounts are normalized here, the all-reduce's one way in, so that whoever built the
    attempt (the round from the ledger, a test by hand) everything below compares with `==`
    (docs/architecture.md#addresses)."""

    round: int
    attempt: int
    participants: tuple[str, ...]  # live participants, contract order
    weights: tuple[int, ...]
    commitments: Mapping[str, bytes]

    def __post_init__(self) -> None:
        object.__setattr__(self, "participants", tuple(normalize(p) for p in self.participants))
        commitments = {normalize(p): c for p, c in self.commitments.items()}
        object.__setattr__(self, "commitments", commitments)

    def index_of(self, account: str) -> int:
        return self.participants.index(normalize(account))


class AllReduceRunner:
    """One node's part of one attempt, phase by phase: reduce-scatter, merge (from this
    owner's rows alone), all-gather. Each phase raises MissingContributions when data
    does not arrive within `timeout`; a send that fails with anything but a PeerError (an
    InjectedCrash from swarmnode.p2p.faults, a bug) ends the attempt at once."""

    def __init__(
        self,
        *,
        me: str,
        attempt: Attempt,
        update: npt.NDArray[np.float32],
        hashes: bytes,
        rule: MergeRule,
        transport: Transport,
        inbox: Inbox,
        reference: npt.NDArray[np.float32] | None = None,
        timeout: float = 60.0,
        frame_chunks: int = 128,
    ) -> None:
        self.me = normalize(me)
        self.attempt = attempt
        self.update = update
        self.hashes = hashes
        self.rule = rule
        self.transport = transport
        self.inbox = inbox
        self.reference = reference
        self.timeout = timeout
        self.frame_chunks = frame_chunks
        self.numel = len(update)
        self.mine = attempt.index_of(self.me)
        count = len(attempt.participants)
        self.owned = canonical.segments(canonical.num_chunks(self.numel), count)
        self.span = canonical.element_range(self.owned[self.mine], self.numel)
        self.others = [(j, p) for j, p in enumerate(attempt.participants) if j != self.mine]
        self.traffic = Traffic()
        self.seconds: dict[str, float] = {}
        self._failure: BaseException | None = None  # set by a send's worker, read by waits

    def run(self) -> AllReduceResult:
        self._expect()
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(self.others)))) as pool:
            rows = self._timed("reduce_scatter", lambda: self.reduce_scatter(pool))
            segment = self._timed("merge", lambda: self.merge(rows))
            merged = self._timed("all_gather", lambda: self.all_gather(pool, segment))
        hashes = canonical.chunk_hashes(merged)  # once: the digest, and what catch-up serves
        digest = canonical.digest_from_chunk_hashes(hashes)
        return AllReduceResult(merged, digest, hashes, self.traffic, self.seconds)

    def _expect(self) -> None:
        """Declares what this node accepts in this attempt, before anything can block: peers
        that get there first are told NotReady and retry until then."""
        round, attempt = self.attempt.round, self.attempt.attempt
        commitments = {p: self.attempt.commitments[p] for _, p in self.others}
        owned = self.owned[self.mine]
        self.inbox.expect_updates(round, self.mine, owned, self.numel, commitments, attempt)
        owners = {p: (j, self.owned[j]) for j, p in self.others}
        self.inbox.expect_merged(round, attempt, owners, self.numel)

    # ------------------------------------------------------------------ phases

    def reduce_scatter(self, pool: ThreadPoolExecutor) -> list[npt.NDArray[np.float32]]:
        """Streams segment j of this node's update to owner j; returns every participant's
        contribution to this node's segment, in participant order."""
        pushes = [
            self._push(pool, p, self._frames(self.update, j, Kind.UPDATE), extra=len(self.hashes))
            for j, p in self.others
        ]
        rows: list[npt.NDArray[np.float32]] = []
        missing: list[str] = []
        deadline = time.monotonic() + self.timeout
        for j, p in enumerate(self.attempt.participants):
            if j == self.mine:
                rows.append(self.update[self.span.start : self.span.stop])
                continue
            got = self._await(partial(self.inbox.update, self.attempt.round, p), deadline)
            if got is None:
                missing.append(p)
                continue
            rows.append(got)
            self.traffic.received += got.nbytes + len(self.hashes)
        self.traffic.sent += self._settle(pushes)
        if missing:
            raise MissingContributions("reduce-scatter", missing)
        return rows

    def merge(self, rows: list[npt.NDArray[np.float32]]) -> npt.NDArray[np.float32]:
        """This node's segment merged with the swarm's rule from the rows it holds only: no
        peer's partial sums enter the decision (docs/round-protocol.md#partial-sums)."""
        n = len(rows)
        contributions = torch.from_numpy(np.stack(rows)) if rows[0].size else torch.zeros((n, 0))
        ref = None
        if self.reference is not None:
            ours = self.reference[self.span.start : self.span.stop]
            ref = torch.from_numpy(np.ascontiguousarray(ours))
        merged = self.rule.merge_segment(contributions, list(self.attempt.weights), ref)
        return merged.detach().to("cpu", torch.float32).numpy()

    def all_gather(
        self, pool: ThreadPoolExecutor, segment: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float32]:
        """Streams this node's merged segment to every peer; returns the whole merged vector
        once every owner's segment arrived."""
        merged = np.empty(self.numel, dtype=np.float32)
        merged[self.span.start : self.span.stop] = segment
        pushes = [
            self._push(pool, p, self._frames(merged, self.mine, Kind.MERGED))
            for _, p in self.others
        ]
        missing: list[str] = []
        deadline = time.monotonic() + self.timeout
        round, attempt = self.attempt.round, self.attempt.attempt
        for j, p in self.others:
            got = self._await(partial(self.inbox.merged, round, attempt, p), deadline)
            if got is None:
                missing.append(p)
                continue
            theirs = canonical.element_range(self.owned[j], self.numel)
            merged[theirs.start : theirs.stop] = got
            self.traffic.received += got.nbytes
        self.traffic.sent += self._settle(pushes)
        if missing:
            raise MissingContributions("all-gather", *self._blame(missing))
        return merged

    # ------------------------------------------------------------------ parts

    def _frames(self, vector: npt.NDArray[np.float32], segment: int, kind: Kind) -> FrameSource:
        """Segment `segment` of `vector` as frames; an update's first frame carries this
        node's chunk-hash list, which the owner checks against its commitment."""
        return partial(
            frames_for,
            vector,
            self.owned[segment],
            kind=kind,
            round=self.attempt.round,
            attempt=self.attempt.attempt,
            segment=segment,
            sender=self.me,
            chunk_hashes=self.hashes if kind == Kind.UPDATE else b"",
            frame_chunks=self.frame_chunks,
        )

    def _push(
        self, pool: ThreadPoolExecutor, peer: str, frames: FrameSource, extra: int = 0
    ) -> Future[int]:
        """Sends in a worker thread; the future's result is the bytes sent."""

        def send() -> int:
            elements = self.transport.push(peer, frames, self.timeout)
            return elements * canonical.ELEMENT_BYTES + extra

        future = pool.submit(send)
        future.add_done_callback(self._watch)
        return future

    def _watch(self, push: Future[int]) -> None:
        """Notes a send that failed for a reason of this node's own, for the waits to raise."""
        error = push.exception()
        if error is not None and not isinstance(error, PeerError) and self._failure is None:
            self._failure = error

    def _await(self, fetch: Callable[[float], T | None], deadline: float) -> T | None:
        """`fetch(seconds)` until it returns data or `deadline` passes, looking between tries
        whether one of this node's own sends failed for good: that ends the wait at once."""
        while True:
            left = deadline - time.monotonic()
            got = fetch(max(0.0, min(left, LOOK)))
            if got is not None:
                return got
            if self._failure is not None:
                raise self._failure
            if left <= LOOK:
                return None

    @staticmethod
    def _settle(pushes: Sequence[Future[int]]) -> int:
        """Waits for this node's own sends and adds up the bytes they sent; a peer that
        refused or vanished shows up as missing data on its side, so failures here are not
        fatal to this node's merge."""
        sent = 0
        for push in pushes:
            with contextlib.suppress(PeerError):
                sent += push.result()
        return sent

    def _blame(self, silent: Sequence[str]) -> tuple[list[str], str]:
        """Whom to vote out for the owners whose merged segments are
        missing, and why (docs/round-protocol.md#faults-and-votes).

        An owner cannot merge, so cannot send, while a contribution to its segment is
        missing: blaming the owner would drop a live node for another's fault, and with fewer
        segments than nodes the dead peer's own contributors may be too few to outvote it. So
        each silent owner is asked whom it still waits for; those are blamed instead. An
        owner that does not answer, or waits for nobody, is the one to blame. (A crashed or
        slow owner is what this protocol defends against; a lying one is outside the threat
        model, docs/trust.md#threat-model.)
        """
        blamed: list[str] = []
        reasons: list[str] = []
        for owner in silent:
            try:
                reply = self.transport.info(owner, BLAME_TIMEOUT, round=self.attempt.round)
            except PeerError:
                reply = None
            known = self.attempt.participants
            waiting = [p for p in reply.waiting_for if p in known] if reply else []
            if not waiting:
                culprits = [owner]
                reasons.append(owner)
            else:  # empty if only ours is missing there: the others will blame us
                culprits = [p for p in waiting if p != self.me]
                reasons.append(f"{owner} (waits for {', '.join(waiting)})")
            blamed.extend(c for c in culprits if c not in blamed)
        return blamed, ", ".join(reasons)

    def _timed(self, phase: str, run: Callable[[], T]) -> T:
        started = time.perf_counter()
        result = run()
        self.seconds[phase] = time.perf_counter() - started
        return result
