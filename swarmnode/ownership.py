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

A swarm deployed with the checks off (SwarmParams.checked_merge false, `deploy
--unchecked-merge`) gives each segment one owner: the merger is its own checker, so every
row goes to one node and nobody confirms its merge (docs/trust.md#unchecked-merge).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from swarmnode import canonical
from swarmnode.address import normalize


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
        chunks = tuple(canonical.segments(canonical.num_chunks(numel), len(order)))
        return cls(order, chunks, checked)

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
