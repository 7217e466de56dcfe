"""One attempt's data plane: segmented reduce-scatter, partial-sum exchanges, all-gather.

Every live participant j of the attempt owns segment j of the canonical vector (whole-chunk
ranges, sizes differing by at most one chunk). Reduce-scatter: each node streams segment j
of its update to participant j. Owner j merges its segment from all contributions with the
swarm's rule; rules that need global quantities exchange per-segment partial sums, and every
node adds them up in participant order, so every owner takes the same decisions. All-gather:
each owner streams its merged segment to every other node. Each node thus sends and receives
about 2(n-1)/n x the model, whatever n, and nobody waits on a leader.

Nothing here talks to the chain: the round layer hands in the attempt's live participants,
weights and commitments as the contract fixed them.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import numpy.typing as npt
import torch

from swarmnode import canonical
from swarmnode.exceptions import ConfigError, PeerError, SwarmError
from swarmnode.merge import MergeRule
from swarmnode.p2p import peer_pb2
from swarmnode.p2p.frames import Frame, frames_for
from swarmnode.p2p.inbox import Inbox
from swarmnode.p2p.transport import FrameSource, Transport


class InjectedCrash(SwarmError):
    """A fault-injection point was reached: this node stops here, as if killed."""

    def __init__(self, message: str, round: int) -> None:
        super().__init__(message)
        self.round = round


@dataclass(frozen=True)
class Fault:
    """Where a node dies on purpose, for fault tests and the simulator's crash scenarios.

    Parsed from "before_reduce_scatter", "reduce_scatter:after_frames=N" (N frames streamed
    in all, then nothing more) or "all_gather:after_peers=K" (the merged segment reaches
    exactly K peers). In a separate process the caller turns InjectedCrash into os._exit.
    """

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


class _FrameBudget:
    """Counts frames across a node's concurrent pushes and cuts them off at the budget."""

    def __init__(self, limit: int) -> None:
        self._left = limit
        self._lock = threading.Lock()
        self.exhausted = threading.Event()

    def wrap(self, source: FrameSource) -> FrameSource:
        def limited() -> Iterator[Frame]:
            for frame in source():
                with self._lock:
                    if self._left <= 0:
                        self.exhausted.set()
                        return
                    self._left -= 1
                yield frame

        return limited


class MissingContributions(PeerError):
    """Some peers' data did not arrive in time: the round layer votes to drop `peers`, the
    ones to blame (`why` says when they are not the ones whose data is missing)."""

    def __init__(self, phase: str, peers: Sequence[str], why: str = "") -> None:
        self.phase = phase
        self.peers = tuple(peers)
        super().__init__(f"{phase}: nothing complete from {why or ', '.join(self.peers)} in time")


BLAME_TIMEOUT = 2.0  # seconds to ask a silent owner what it waits for


def _blame(
    me: str, attempt: Attempt, silent: Sequence[str], transport: Transport
) -> tuple[list[str], str]:
    """Whom to vote out for the owners whose merged segments (or partial sums) are missing.

    An owner cannot merge, so cannot send, while a contribution to its segment is missing:
    blaming the owner would drop a live node for another's fault, and with fewer segments
    than nodes the dead peer's own contributors may be too few to outvote it. So each
    silent owner is asked whom it still waits for; those are blamed instead. An owner that
    does not answer, or waits for nobody, is the one to blame. (A crashed or slow owner is
    what this protocol defends against; a lying one is outside DESIGN.md's threat model.)
    """
    spelled = {p.lower(): p for p in attempt.participants}
    blamed: list[str] = []
    reasons: list[str] = []
    for owner in silent:
        try:
            reply = transport.info(owner, BLAME_TIMEOUT, round=attempt.round)
        except PeerError:
            reply = None
        waiting = [spelled[p] for p in reply.waiting_for if p in spelled] if reply else []
        others = [p for p in waiting if p.lower() != me.lower()]
        if not waiting:
            culprits = [owner]
            reasons.append(owner)
        else:
            culprits = others  # empty if only ours is missing there: others will blame us
            reasons.append(f"{owner} (waits for {', '.join(waiting)})")
        blamed.extend(c for c in culprits if c.lower() not in {b.lower() for b in blamed})
    return blamed, ", ".join(reasons)


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
    """What the chain fixed for this attempt, in the contract's participant order."""

    round: int
    attempt: int
    participants: tuple[str, ...]  # live participants, contract order
    weights: tuple[int, ...]
    commitments: Mapping[str, bytes]

    def index_of(self, account: str) -> int:
        lowered = [p.lower() for p in self.participants]
        return lowered.index(account.lower())


def all_reduce(
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
    fault: Fault | None = None,
) -> AllReduceResult:
    """Runs this node's part of one attempt and returns the whole merged vector.

    `update` is the canonical vector this node committed to at join, `hashes` its chunk-hash
    list. Raises MissingContributions naming the peers whose data did not arrive before
    `timeout`, so that the round layer can vote them out.
    """
    numel = len(update)
    n = len(attempt.participants)
    mine = attempt.index_of(me)
    owned = canonical.segments(canonical.num_chunks(numel), n)
    others = [p for j, p in enumerate(attempt.participants) if j != mine]
    traffic = Traffic()
    seconds: dict[str, float] = {}

    inbox.expect_updates(
        attempt.round,
        mine,
        owned[mine],
        numel,
        {p: attempt.commitments[p] for p in others},
        attempt=attempt.attempt,
    )
    inbox.expect_merged(
        attempt.round,
        attempt.attempt,
        {p: (j, owned[j]) for j, p in enumerate(attempt.participants) if j != mine},
        numel,
    )

    if fault is not None and fault.phase == "before_reduce_scatter":
        raise InjectedCrash(f"{me} dies before the reduce-scatter", attempt.round)
    budget = _FrameBudget(fault.count) if fault and fault.phase == "reduce_scatter" else None

    with ThreadPoolExecutor(max_workers=max(1, min(8, n - 1))) as pool:
        # reduce-scatter
        t0 = time.perf_counter()
        pushes = [
            _push(
                pool,
                transport,
                p,
                traffic,
                timeout,
                _limited(
                    budget,
                    partial(
                        frames_for,
                        update,
                        owned[j],
                        kind=peer_pb2.KIND_UPDATE,
                        round=attempt.round,
                        attempt=attempt.attempt,
                        segment=j,
                        sender=me,
                        chunk_hashes=hashes,
                        frame_chunks=frame_chunks,
                    ),
                ),
                extra=len(hashes),
            )
            for j, p in enumerate(attempt.participants)
            if j != mine
        ]
        span = canonical.element_range(owned[mine], numel)
        rows: list[npt.NDArray[np.float32]] = []
        missing: list[str] = []
        deadline = time.monotonic() + timeout
        for j, p in enumerate(attempt.participants):
            if j == mine:
                rows.append(update[span.start : span.stop])
                continue
            got = inbox.update(attempt.round, p, max(0.0, deadline - time.monotonic()))
            if got is None:
                missing.append(p)
            else:
                rows.append(got)
                traffic.received += got.nbytes + len(hashes)
        _settle(pushes)
        if budget is not None:
            raise InjectedCrash(
                f"{me} dies after {fault.count if fault else 0} update frames", attempt.round
            )
        if missing:
            raise MissingContributions("reduce-scatter", missing)
        seconds["reduce_scatter"] = time.perf_counter() - t0

        # merge, with partial-sum exchanges where the rule needs them
        t0 = time.perf_counter()
        contributions = torch.from_numpy(np.stack(rows)) if rows[0].size else torch.zeros((n, 0))
        ref = None
        if reference is not None:
            ref = torch.from_numpy(np.ascontiguousarray(reference[span.start : span.stop]))
        state = rule.begin(contributions, list(attempt.weights), ref)
        step = 0
        while not state.done:
            state.advance(
                _exchange_partials(
                    me, attempt, mine, step, state.partials(), transport, inbox, traffic, timeout
                )
            )
            step += 1
        merged_mine = state.result().detach().to("cpu", torch.float32).numpy()
        seconds["merge"] = time.perf_counter() - t0

        # all-gather
        t0 = time.perf_counter()
        merged = np.empty(numel, dtype=np.float32)
        merged[span.start : span.stop] = merged_mine
        pushes = [
            _push(
                pool,
                transport,
                p,
                traffic,
                timeout,
                partial(
                    frames_for,
                    merged,
                    owned[mine],
                    kind=peer_pb2.KIND_MERGED,
                    round=attempt.round,
                    attempt=attempt.attempt,
                    segment=mine,
                    sender=me,
                    frame_chunks=frame_chunks,
                ),
            )
            for p in (others[: fault.count] if fault and fault.phase == "all_gather" else others)
        ]
        if fault is not None and fault.phase == "all_gather":
            _settle(pushes)
            raise InjectedCrash(
                f"{me} dies after sending its merged segment to {fault.count} peers",
                attempt.round,
            )
        deadline = time.monotonic() + timeout
        for j, p in enumerate(attempt.participants):
            if j == mine:
                continue
            got = inbox.merged(
                attempt.round, attempt.attempt, p, max(0.0, deadline - time.monotonic())
            )
            if got is None:
                missing.append(p)
                continue
            theirs = canonical.element_range(owned[j], numel)
            merged[theirs.start : theirs.stop] = got
            traffic.received += got.nbytes
        _settle(pushes)
        if missing:
            raise MissingContributions("all-gather", *_blame(me, attempt, missing, transport))
        seconds["all_gather"] = time.perf_counter() - t0
    merged_hashes = canonical.chunk_hashes(merged)
    digest = canonical.digest_from_chunk_hashes(merged_hashes)
    return AllReduceResult(merged, digest, merged_hashes, traffic, seconds)


def _limited(budget: _FrameBudget | None, source: FrameSource) -> FrameSource:
    return source if budget is None else budget.wrap(source)


def _push(
    pool: ThreadPoolExecutor,
    transport: Transport,
    peer: str,
    traffic: Traffic,
    timeout: float,
    frames: FrameSource,
    extra: int = 0,
) -> Future[None]:
    def run() -> None:
        elements = transport.push(peer, frames, timeout)
        traffic.sent += elements * canonical.ELEMENT_BYTES + extra

    return pool.submit(run)


def _settle(pushes: Sequence[Future[None]]) -> None:
    """Waits for this node's own sends; a peer that refused or vanished shows up as missing
    data on its side, so failures here are not fatal to this node's merge."""
    for push in pushes:
        with contextlib.suppress(PeerError):
            push.result()


def _exchange_partials(
    me: str,
    attempt: Attempt,
    mine: int,
    step: int,
    partials: torch.Tensor,
    transport: Transport,
    inbox: Inbox,
    traffic: Traffic,
    timeout: float,
) -> torch.Tensor:
    """Sends this segment's partial sums to every peer, gathers theirs, and adds all of them
    in participant order, so that every owner gets the same bits."""
    from swarmnode.merge import combine_partials

    values = partials.detach().to("cpu", torch.float64).reshape(-1)
    message = peer_pb2.Partials(
        round=attempt.round,
        attempt=attempt.attempt,
        step=step,
        segment=mine,
        values=values.tolist(),
        sender=me,
    )
    for j, p in enumerate(attempt.participants):
        if j != mine:
            transport.push_partials(p, message, timeout)
            traffic.sent += values.numel() * 8
    gathered: list[torch.Tensor] = []
    missing: list[str] = []
    for j, p in enumerate(attempt.participants):
        if j == mine:
            gathered.append(partials.detach().to("cpu", torch.float64))
            continue
        got = inbox.partials(attempt.round, attempt.attempt, step, p, timeout)
        if got is None:
            missing.append(p)
            continue
        if got.size != values.numel():
            raise PeerError(
                f"{p} sent {got.size} partial sums for step {step}, expected {values.numel()}"
            )
        traffic.received += got.nbytes
        gathered.append(torch.from_numpy(got).reshape(partials.shape))
    if missing:
        raise MissingContributions(
            f"partial sums, step {step}", *_blame(me, attempt, missing, transport)
        )
    return combine_partials(gathered)
