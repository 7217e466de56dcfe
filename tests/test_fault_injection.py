"""The fault-injection transport stops a node at exactly its die_at point, and the crash
leaves the all-reduce at once, not after the transfer deadline (in-memory transport)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator

import numpy as np
import pytest

from swarmnode import canonical
from swarmnode.address import normalize
from swarmnode.allreduce import AllReduceRunner, Attempt
from swarmnode.merge import make_rule
from swarmnode.ownership import Owners
from swarmnode.p2p.faults import Fault, FaultyTransport, InjectedCrash
from swarmnode.p2p.frames import Frame
from swarmnode.p2p.inbox import Inbox
from swarmnode.p2p.memory import MemoryNetwork, MemoryTransport
from swarmnode.p2p.messages import Kind, PeerInfo
from swarmnode.p2p.roster import PeerRecord, Roster
from swarmnode.p2p.transport import FrameSource, Transport
from swarmnode.rules import MergeRuleId, Rule

N = 5
NUMEL = 12 * 16 + 5  # 13 chunks of 16, the last one short
TIMEOUT = 2.0  # the survivors wait this long for the victim
# The victim's own bound: far longer, so a victim that waited for anything instead of dying
# at its point would take over half of it, while a loaded machine's delays stay far below
VICTIM_TIMEOUT = 60.0
ACCOUNTS = [f"0x{i:040x}" for i in range(1, N + 1)]  # the victim is the last one
OWNERS = Owners.of(ACCOUNTS, b"", 1, NUMEL)  # attempt 1 of a round with no seed
VICTIM_MERGES = OWNERS.chunks[OWNERS.merged_by(ACCOUNTS[-1])]
# one chunk per frame, to every owner of each segment but the victim itself
UPDATE_FRAMES = sum(
    len(OWNERS.chunks[s]) * sum(1 for o in OWNERS.owners(s) if o != normalize(ACCOUNTS[-1]))
    for s in range(OWNERS.count)
)


class Tap(Transport):
    """Records every frame handed to the transport below, with the peer it goes to."""

    def __init__(self, inner: Transport) -> None:
        self.account = inner.account
        self.inner = inner
        self.wire = inner.wire
        self.sent: list[tuple[Kind | None, str]] = []

    def _push_once(self, peer: str, frames: FrameSource, timeout: float) -> int:
        def tapped() -> Iterator[Frame]:
            for frame in frames():
                self.sent.append((frame.kind, peer))
                yield frame

        return self.inner._push_once(peer, tapped, timeout)

    def _fetch_frames(self, peer: str, round: int, timeout: float) -> Iterable[Frame]:
        return self.inner._fetch_frames(peer, round, timeout)

    def _fetch_update_frames(
        self, peer: str, round: int, sender: str, chunks: range, timeout: float
    ) -> Iterable[Frame]:
        return self.inner._fetch_update_frames(peer, round, sender, chunks, timeout)

    def info(self, peer: str, timeout: float, round: int = 0) -> PeerInfo:
        return self.inner.info(peer, timeout, round)

    def close(self) -> None:
        self.inner.close()


def run(die_at: str, rule: Rule | None = None) -> tuple[Tap, BaseException, float]:
    """All N nodes run one attempt; the last one dies at `die_at`. Returns what it sent, how
    it ended, and how long it took to end."""
    accounts = ACCOUNTS
    network = MemoryNetwork(Roster(PeerRecord(a, "memory", a.encode()) for a in accounts))
    inboxes = [Inbox(a) for a in accounts]
    for inbox in inboxes:
        network.attach(inbox)
    rng = np.random.default_rng(0)
    updates = [rng.standard_normal(NUMEL).astype(np.float32) for _ in accounts]
    hashes = [canonical.chunk_hashes(u) for u in updates]
    attempt = Attempt(
        1,
        1,
        tuple(accounts),
        (1,) * N,
        {a: canonical.digest_from_chunk_hashes(h) for a, h in zip(accounts, hashes, strict=True)},
    )
    tap = Tap(MemoryTransport(network, accounts[-1]))
    victim = FaultyTransport(tap)
    victim.arm(Fault.parse(die_at))
    transports: list[Transport] = [MemoryTransport(network, a) for a in accounts[:-1]]
    transports.append(victim)
    ended: list[BaseException | None] = [None] * N
    took = [0.0] * N

    def node(i: int) -> None:
        started = time.monotonic()
        try:
            AllReduceRunner(
                me=accounts[i],
                attempt=attempt,
                update=updates[i],
                hashes=hashes[i],
                rule=make_rule(rule or Rule(MergeRuleId.MEAN)),
                transport=transports[i],
                inbox=inboxes[i],
                reference=np.zeros(NUMEL, dtype=np.float32),
                timeout=VICTIM_TIMEOUT if i == N - 1 else TIMEOUT,
                frame_chunks=1,
            ).run()
        except BaseException as exc:  # the caller looks at the victim's
            ended[i] = exc
        took[i] = time.monotonic() - started

    threads = [threading.Thread(target=node, args=(i,)) for i in range(N)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=VICTIM_TIMEOUT + 30)
    crash = ended[-1]
    assert crash is not None
    return tap, crash, took[-1]


def kinds(tap: Tap, kind: Kind) -> list[str]:
    return [peer for k, peer in tap.sent if k == kind]


def test_before_the_reduce_scatter_nothing_is_sent() -> None:
    tap, crash, took = run("before_reduce_scatter")
    assert isinstance(crash, InjectedCrash) and "dies before the reduce-scatter" in str(crash)
    assert tap.sent == []
    assert crash.round == 1 and took < VICTIM_TIMEOUT / 2


@pytest.mark.parametrize("frames", [0, 1, 7])
def test_after_n_frames_exactly_n_update_frames_go_out(frames: int) -> None:
    tap, crash, took = run(f"reduce_scatter:after_frames={frames}")
    assert isinstance(crash, InjectedCrash) and f"after {frames} update frames" in str(crash)
    assert len(kinds(tap, Kind.UPDATE)) == frames and kinds(tap, Kind.MERGED) == []
    assert took < VICTIM_TIMEOUT / 2


def test_a_budget_larger_than_the_update_dies_before_sending_anything_else() -> None:
    krum = Rule(MergeRuleId.KRUM, (1, 0, 0, 0))
    tap, crash, _ = run("reduce_scatter:after_frames=1000", krum)
    assert isinstance(crash, InjectedCrash)
    assert len(kinds(tap, Kind.UPDATE)) == UPDATE_FRAMES
    assert kinds(tap, Kind.MERGED) == []


@pytest.mark.parametrize("peers", [0, 1, 3, N - 1, N + 3])
def test_after_k_peers_the_merged_segment_reaches_exactly_k(peers: int) -> None:
    tap, crash, took = run(f"all_gather:after_peers={peers}")
    assert isinstance(crash, InjectedCrash) and f"segment to {peers} peers" in str(crash)
    reached = kinds(tap, Kind.MERGED)
    targets = N - 2  # the merged segment goes to every peer but its checker
    assert len(set(reached)) == min(peers, targets)
    assert len(reached) == len(VICTIM_MERGES) * min(peers, targets)  # the whole segment to each
    assert took < VICTIM_TIMEOUT / 2
