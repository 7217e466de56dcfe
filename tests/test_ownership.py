"""Segment owners: a seeded permutation of the live participants, merger and checker per
segment (docs/round-protocol.md#owners)."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest

from swarmnode import canonical
from swarmnode.ownership import Owners, permutation

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
