"""Segment owners: a seeded permutation of the live participants, merger and checker per
segment (docs/round-protocol.md#owners)."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest

from swarmnode import canonical, merkle
from swarmnode.ownership import Owners, layout, permutation

ACCOUNTS = tuple(f"0x{i:040x}" for i in range(1, 9))
NUMEL = 20 * canonical.CHUNK_ELEMENTS


def seed(i: int) -> bytes:
    return hashlib.sha256(f"block {i}".encode()).digest()


@pytest.mark.parametrize("n", [1, 2, 3, 4, 8])
def test_each_node_merges_one_segment_and_checks_another(n: int) -> None:
    owners = Owners.of(ACCOUNTS[:n], seed(0), 1, NUMEL)
    assert sorted(owners.order) == sorted(ACCOUNTS[:n])
    assert Counter(owners.merger(s) for s in range(n)) == Counter(ACCOUNTS[:n])
    assert Counter(owners.checker(s) for s in range(n)) == Counter(ACCOUNTS[:n])
    for s in range(n):
        if n > 1:
            assert owners.merger(s) != owners.checker(s)
        for a in owners.owners(s):
            assert s in owners.owned_by(a)
    for a in ACCOUNTS[:n]:
        assert owners.merger(owners.merged_by(a)) == a
        assert owners.checker(owners.checked_by(a)) == a
        assert len(owners.owned_by(a)) == min(n, 2)
    # the segments tile the vector's chunks in order
    assert [c for r in owners.chunks for c in r] == list(range(canonical.num_chunks(NUMEL)))


def test_the_order_depends_on_the_seed_and_attempt_not_on_join_order() -> None:
    first = permutation(ACCOUNTS, seed(1), 1)
    assert permutation(tuple(reversed(ACCOUNTS)), seed(1), 1) == first
    assert permutation(ACCOUNTS, seed(1), 2) != first
    assert permutation(ACCOUNTS, seed(2), 1) != first
    # accounts compare whatever their spelling
    assert permutation([a.upper().replace("0X", "0x") for a in ACCOUNTS], seed(1), 1) == first


def test_two_neighbours_in_join_order_share_a_segment_about_as_often_as_chance() -> None:
    """Colluders who joined back to back own a segment together with probability 2/(n-1),
    not always: over many seeds that is what the draw gives."""
    a, b = ACCOUNTS[0], ACCOUNTS[1]
    together = 0
    trials = 700
    for i in range(trials):
        owners = Owners.of(ACCOUNTS, seed(i), 1, NUMEL)
        together += any(set(owners.owners(s)) == {a, b} for s in range(len(ACCOUNTS)))
    assert abs(together / trials - 2 / 7) < 0.06


@pytest.mark.parametrize("n", [1, 2, 3, 8])
def test_unchecked_each_segment_has_one_owner_its_merger(n: int) -> None:
    """With the checks off (docs/trust.md#unchecked-merge) the merger is its own checker: every
    node owns exactly the segment it merges, and the draw is the checked one's."""
    checked = Owners.of(ACCOUNTS[:n], seed(3), 1, NUMEL)
    owners = Owners.of(ACCOUNTS[:n], seed(3), 1, NUMEL, checked=False)
    assert owners.order == checked.order and owners.chunks == checked.chunks
    for s in range(n):
        assert owners.checker(s) == owners.merger(s) == checked.merger(s)
        assert owners.owners(s) == (owners.merger(s),)
    for a in ACCOUNTS[:n]:
        assert owners.checked_by(a) == owners.merged_by(a)
        assert owners.owned_by(a) == {owners.merged_by(a): owners.chunks[owners.merged_by(a)]}


def test_unchecked_small_segments_are_cut_where_proofs_are_short() -> None:
    """With the checks off and a few chunks a segment (the README demo's 301 chunks at
    n = 64), the layout trades a chunk of balance for shorter proofs: it still tiles the
    vector with n non-empty ranges, and the busiest node's count (rows and their proofs
    in, or merged data and every row's proof out) is below the even split's."""
    numel, n = 4810, 64
    total = canonical.num_chunks(numel)
    even = tuple(canonical.segments(total, n))
    assert layout(numel, n, checked=True) == even
    cut = layout(numel, n, checked=False)
    assert len(cut) == n and all(len(r) for r in cut)
    assert [c for r in cut for c in r] == list(range(total))

    def busiest(segments: tuple[range, ...]) -> int:
        size = [len(canonical.element_range(r, numel)) * 4 for r in segments]
        proof = [merkle.proof_size(total, r) * merkle.HASH_BYTES for r in segments]
        received = max((n - 2) * b + (n - 1) * h for b, h in zip(size, proof, strict=True))
        sent = max((n - 2) * b + sum(proof) - h for b, h in zip(size, proof, strict=True))
        return max(received, sent)

    assert busiest(cut) < 0.9 * busiest(even)
    assert max(merkle.proof_size(total, r) for r in cut) < max(
        merkle.proof_size(total, r) for r in even
    )
    # large models keep the even split
    assert layout(1 << 20, 8, checked=False) == tuple(
        canonical.segments(canonical.num_chunks(1 << 20), 8)
    )
