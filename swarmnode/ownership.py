"""Who merges and who checks each segment of one attempt (docs/round-protocol.md#owners).

Every segment has two owners: a merger, who sends the merged segment to the others, and a
checker, who merges the same rows and sends only the chunk hashes of its result. Merging is
bit-identical (docs/round-protocol.md#partial-sums), so a node that holds the merger's data
and the checker's hashes checks the segment exactly; to bend a segment unseen, both of its
owners must lie together.

The owners come from a permutation of the attempt's live participants seeded by the hash of
the round's closing block (docs/chain.md#the-round-seed), which no participant chooses: with
owners taken from join order, colluders who joined back to back would own a segment
together. Segment s is merged by the s-th node of the permutation and checked by the next
one, so each node merges one segment and checks another.

Segments are ranges of whole chunks. With the checks on, and wherever Merkle proofs weigh
little beside a segment's values, they are the even split (canonical.segments: sizes
differing by at most one chunk). With the checks off and small segments (a small model
among many nodes: the README demo's 301 chunks at n = 64 are 4.7 chunks a segment, and the
proof of each contributor's row of 8 to 13 hashes outweighed its values), `layout` places
the boundaries where proofs are short: among all cuts into n non-empty ranges, the one that
minimizes the most bytes any owner receives (its rows with their proofs, and the others'
merged data), so a segment may be a chunk or two longer or shorter than even
(docs/canonical-vector.md#segments).

A swarm deployed with the checks off (SwarmParams.checked_merge false, `deploy
--unchecked-merge`) gives each segment one owner: the merger is its own checker, so every
row goes to one node and nobody confirms its merge (docs/trust.md#unchecked-merge).
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from swarmnode import canonical, merkle
from swarmnode.address import normalize

# `layout` searches for short-proof boundaries only where that is cheap and worth it: at
# most this many chunks a segment on average, in a vector of at most this many chunks
# (beyond, a proof is under ~3 % of a segment's values and the even split stands)
LAYOUT_MAX_AVERAGE = 16
LAYOUT_MAX_CHUNKS = 1024


def permutation(participants: Sequence[str], seed: bytes, attempt: int) -> tuple[str, ...]:
    """The participants ordered by SHA-256(seed || attempt || account): a fresh order for
    every attempt of every round, the same on every node."""
    prefix = bytes(seed) + attempt.to_bytes(4, "big")

    def key(account: str) -> bytes:
        return hashlib.sha256(prefix + bytes.fromhex(normalize(account)[2:])).digest()

    return tuple(sorted((normalize(p) for p in participants), key=key))


@dataclass(frozen=True)
class Owners:
    """Segment s's chunks, merger and checker, for every segment of one attempt."""

    order: tuple[str, ...]  # the seeded permutation of the live participants
    chunks: tuple[range, ...]  # segment s's chunk range
    checked: bool = True  # a second owner checks each merge; off: the merger alone owns it

    @classmethod
    def of(
        cls,
        participants: Sequence[str],
        seed: bytes,
        attempt: int,
        numel: int,
        checked: bool = True,
    ) -> Owners:
        order = permutation(participants, seed, attempt)
        return cls(order, layout(numel, len(order), checked), checked)

    @property
    def count(self) -> int:
        return len(self.order)

    def merger(self, segment: int) -> str:
        return self.order[segment]

    def checker(self, segment: int) -> str:
        """Who checks the segment's merge: the next node, or (unchecked) the merger itself."""
        return self.order[(segment + int(self.checked)) % len(self.order)]

    def owners(self, segment: int) -> tuple[str, ...]:
        """The segment's distinct owners, merger first (one node alone is both)."""
        merger, checker = self.merger(segment), self.checker(segment)
        return (merger,) if merger == checker else (merger, checker)

    def merged_by(self, account: str) -> int:
        return self.order.index(normalize(account))

    def checked_by(self, account: str) -> int:
        """The segment `account` checks: the one before its own, or (unchecked) its own."""
        return (self.order.index(normalize(account)) - int(self.checked)) % len(self.order)

    def owned_by(self, account: str) -> dict[int, range]:
        """The segments `account` holds every participant's rows of, merged one first."""
        mine = (self.merged_by(account), self.checked_by(account))
        return {s: self.chunks[s] for s in dict.fromkeys(mine)}


def layout(numel: int, n: int, checked: bool = True) -> tuple[range, ...]:
    """Segment s's chunks for an attempt of n live participants: the even split
    (canonical.segments), except with the checks off and small segments, where the cut
    that minimizes the busiest owner's received bytes is taken (see the module's doc).
    A function of (numel, n, checked) alone, so every node derives the same one."""
    total = canonical.num_chunks(numel)
    if checked or n < 4 or total < n or total > LAYOUT_MAX_CHUNKS or total > LAYOUT_MAX_AVERAGE * n:
        return tuple(canonical.segments(total, n))
    with _SEARCH:  # every node thread of a simulation asks at once: one search, not n
        return _short_proofs(numel, n)


@functools.lru_cache(maxsize=32)
def _short_proofs(numel: int, n: int) -> tuple[range, ...]:
    """The cut into n non-empty ranges, none longer than the even split's longest, that
    minimizes the most any owner receives: n - 1 rows of its segment with their proofs and
    the others' merged data, M + (n - 2) B + (n - 1) H (B the segment's bytes, H its proof's,
    M the vector's). Capping the length at the even split's also caps what a merger sends
    (M + (n - 2) B + the proofs of its rows; longer caps never did better on any size tried).
    Computed once per process and (numel, n)."""
    total = canonical.num_chunks(numel)
    width = -(-total // n)
    cost = {
        (a, b): (n - 2) * len(canonical.element_range(range(a, b), numel)) * canonical.ELEMENT_BYTES
        + (n - 1) * merkle.proof_size(total, range(a, b)) * merkle.HASH_BYTES
        for a in range(total)
        for b in range(a + 1, min(total, a + width) + 1)
    }
    return _least_largest(total, n, width, cost)


_SEARCH = threading.Lock()


def _least_largest(
    total: int, n: int, width: int, cost: dict[tuple[int, int], int]
) -> tuple[range, ...]:
    """The cut of [0, total) into n non-empty ranges of at most `width` chunks (the even
    split fits) whose largest cost is least; ties to the latest cut."""

    def counts(bound: int) -> list[int]:
        reach = [1] + [0] * total  # reach[b]: bit k set when chunks [0, b) cut into k ranges
        for b in range(1, total + 1):
            for a in range(max(0, b - width), b):
                if reach[a] and cost[a, b] <= bound:
                    reach[b] |= reach[a] << 1
        return reach

    bounds = sorted(set(cost.values()))
    lo, hi = 0, len(bounds) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if counts(bounds[mid])[total] >> n & 1:
            hi = mid
        else:
            lo = mid + 1
    bound = bounds[lo]
    reach = counts(bound)
    cuts: list[range] = []
    stop = total
    for k in range(n, 0, -1):
        start = max(
            a
            for a in range(max(0, stop - width), stop)
            if reach[a] >> (k - 1) & 1 and cost[a, stop] <= bound
        )
        cuts.append(range(start, stop))
        stop = start
    return tuple(reversed(cuts))
