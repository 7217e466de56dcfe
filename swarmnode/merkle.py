"""Merkle roots over chunk hashes, and proofs that a range of chunks belongs to a root.

A commitment on chain is the root of a Merkle tree whose leaves are a vector's chunk hashes
(docs/canonical-vector.md#commitments). A segment owner then checks a contributor's segment
with that segment's chunk hashes plus a proof of about 2 log2(chunks) hashes, instead of
the whole hash list, which for a small model among many participants was most of the bytes.

The tree (any change is a protocol change; tests/test_merkle.py recomputes it with hashlib):

- leaves are the 32-byte chunk hashes themselves, in chunk order;
- the shape is RFC 6962's: a node over leaves [lo, hi) with more than one leaf splits at
  lo + k, k the largest power of two below hi - lo; an internal node is
  SHA-256(0x01 || left || right); a one-leaf node is the leaf;
- root = SHA-256(0x00 || leaf count as 8 bytes big-endian || top node), so a root also fixes
  how many chunks there are; the root of no leaves is SHA-256(b"").

A range proof for chunks [a, b) is the hashes of the maximal subtrees that hold no leaf of
the range, left to right: with them and the range's leaves the verifier recomputes the top.
An empty range's proof is the top node itself. Built bottom-up, level by level (an odd last
node moves up unchanged), the same tree comes out, which is how Tree builds it.

Imports nothing of swarmnode but its exceptions: canonical builds on it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from swarmnode.exceptions import PeerError

__all__ = [
    "EMPTY_ROOT",
    "HASH_BYTES",
    "Known",
    "ProofError",
    "Tree",
    "proof_size",
    "range_proof",
    "root",
]

HASH_BYTES = 32
"""Leaf, node, proof entry and root size."""
EMPTY_ROOT = hashlib.sha256(b"").digest()
"""The root of a tree without leaves (a vector with no elements)."""

_NODE = b"\x01"
_ROOT = b"\x00"

Bytes = bytes | bytearray | memoryview


class ProofError(PeerError, ValueError):
    """Leaves and a proof that do not give the root they were checked against (or are not
    the shape a proof of that range has), naming what is wrong. A PeerError, since what
    fails a proof came from a peer."""


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE + left + right).digest()


def _seal(count: int, top: bytes) -> bytes:
    return hashlib.sha256(_ROOT + count.to_bytes(8, "big") + top).digest()


def _split(size: int) -> int:
    """The left subtree's leaf count for a node over `size` > 1 leaves."""
    return 1 << ((size - 1).bit_length() - 1)


def _split_leaves(leaves: Bytes, what: str = "leaves") -> list[bytes]:
    data = bytes(leaves)
    if len(data) % HASH_BYTES:
        raise ProofError(f"{what} are {len(data)} bytes, not a multiple of {HASH_BYTES}")
    return [data[i : i + HASH_BYTES] for i in range(0, len(data), HASH_BYTES)]


def _levels(leaves: list[bytes]) -> list[list[bytes]]:
    """Every level of the tree, leaves first; an odd last node moves up unchanged."""
    levels = [leaves]
    level = leaves
    while len(level) > 1:
        up = [_node(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            up.append(level[-1])
        levels.append(up)
        level = up
    return levels


def _top(leaves: list[bytes]) -> bytes:
    return _levels(leaves)[-1][0]


def _check_range(chunks: range, total: int) -> None:
    if chunks.step != 1 or not 0 <= chunks.start <= chunks.stop <= total:
        raise ProofError(f"{chunks} is not a range of chunks of a {total}-chunk tree")


def _proof_positions(lo: int, hi: int, chunks: range) -> Iterator[tuple[int, int]]:
    """The subtrees [lo', hi') a proof of `chunks` holds, left to right, inside [lo, hi)."""
    a, b = chunks.start, chunks.stop
    if a >= b or b <= lo or hi <= a:
        yield lo, hi
        return
    if a <= lo and hi <= b:
        return
    k = _split(hi - lo)
    yield from _proof_positions(lo, lo + k, chunks)
    yield from _proof_positions(lo + k, hi, chunks)


def proof_size(total: int, chunks: range) -> int:
    """How many hashes a proof of `chunks` in a `total`-leaf tree holds (what a segment
    layout weighs: swarmnode/ownership.py)."""
    _check_range(chunks, total)
    return sum(1 for _ in _proof_positions(0, total, chunks)) if total else 0


class Tree:
    """The whole tree of one hash list, built once: its root, and a proof of any range in
    O(log n) (an all-reduce proves every segment of its own update from one Tree)."""

    def __init__(self, leaves: Bytes) -> None:
        self.total = len(leaves) // HASH_BYTES
        self._levels = _levels(_split_leaves(leaves)) if self.total else [[]]
        self.root = _seal(self.total, self._levels[-1][0]) if self.total else EMPTY_ROOT

    def node(self, lo: int, hi: int) -> bytes:
        """The node over leaves [lo, hi) (a node of this tree's shape)."""
        level = (hi - lo - 1).bit_length()
        return self._levels[level][lo >> level]

    def leaves(self, chunks: range) -> bytes:
        """The leaves of `chunks`, concatenated."""
        _check_range(chunks, self.total)
        return b"".join(self._levels[0][chunks.start : chunks.stop])

    def proof(self, chunks: range) -> bytes:
        """The proof of `chunks` (a ProofError for a range outside the tree)."""
        _check_range(chunks, self.total)
        if not self.total:
            return b""
        return b"".join(self.node(lo, hi) for lo, hi in _proof_positions(0, self.total, chunks))


def root(leaves: Bytes) -> bytes:
    """The root over concatenated 32-byte leaves."""
    leaf_list = _split_leaves(leaves)
    if not leaf_list:
        return EMPTY_ROOT
    return _seal(len(leaf_list), _top(leaf_list))


def range_proof(leaves: Bytes, chunks: range) -> bytes:
    """The proof that leaves `chunks` of the tree over `leaves` (all of them, concatenated)
    belong to its root: the concatenated hashes of the subtrees outside the range."""
    return Tree(leaves).proof(chunks)


def _fold(lo: int, hi: int, chunks: range, leaves: list[bytes], proof: Iterator[bytes]) -> bytes:
    """The node over [lo, hi) from the range's leaves and the proof's hashes, in order."""
    a, b = chunks.start, chunks.stop
    if a >= b or b <= lo or hi <= a:
        return next(proof)
    if a <= lo and hi <= b:
        return _top(leaves[lo - a : hi - a])
    k = _split(hi - lo)
    left = _fold(lo, lo + k, chunks, leaves, proof)
    return _node(left, _fold(lo + k, hi, chunks, leaves, proof))


def verify_range(root: Bytes, total: int, chunks: range, leaves: Bytes, proof: Bytes) -> None:
    """Checks that `leaves` are leaves `chunks` of a `total`-leaf tree whose root is `root`,
    with `proof` (range_proof's output). Raises ProofError naming what is wrong: a range
    outside the tree, leaves or proof of the wrong length, or a root that does not match."""
    if len(root) != HASH_BYTES:
        raise ProofError(f"a root is {HASH_BYTES} bytes, got {len(root)}")
    if total < 0:
        raise ProofError(f"a tree cannot have {total} leaves")
    _check_range(chunks, total)
    leaf_list = _split_leaves(leaves)
    if len(leaf_list) != len(chunks):
        raise ProofError(
            f"{len(leaf_list)} leaves for chunks {chunks.start}..{chunks.stop - 1} "
            f"({len(chunks)} chunks)"
        )
    want = sum(1 for _ in _proof_positions(0, total, chunks)) if total else 0
    if len(proof) != want * HASH_BYTES:
        raise ProofError(
            f"proof is {len(proof)} bytes; one of chunks {chunks.start}..{chunks.stop - 1} "
            f"of a {total}-chunk tree is {want * HASH_BYTES}"
        )
    if total == 0:
        got = EMPTY_ROOT
    else:
        entries = iter(_split_leaves(proof, "proof"))
        got = _seal(total, _fold(0, total, chunks, leaf_list, entries))
    if got != bytes(root):
        raise ProofError(
            f"chunks {chunks.start}..{chunks.stop - 1} and their proof give root "
            f"{got.hex()}, not {bytes(root).hex()} ({total} chunks)"
        )


class Known:
    """What has been proved so far about one committed tree: the leaves of the ranges
    checked against its root, and those ranges' proof nodes. It answers the leaves of any
    range it holds and a proof of any range inside what it holds, so an owner can serve a
    row it received (FetchUpdate) with a proof it never got as such. Only checked ranges
    enter, so what it holds is bounded by the tree."""

    def __init__(self, root: Bytes, total: int) -> None:
        self.root = bytes(root)
        self.total = total
        self._pieces: list[tuple[range, bytes]] = []
        self._nodes: dict[tuple[int, int], bytes] = {}

    def add(self, chunks: range, leaves: Bytes, proof: Bytes, *, check: bool = True) -> None:
        """Checks `leaves` of `chunks` with `proof` against the root (ProofError if they do
        not belong to it) and keeps them. `check=False` only for what was checked already
        (a node re-serving rows it verified when they came)."""
        if check:
            verify_range(self.root, self.total, chunks, leaves, proof)
        if not self.total:
            return
        if len(chunks) and self.leaves(chunks) is None:
            self._pieces.append((chunks, bytes(leaves)))
        positions = _proof_positions(0, self.total, chunks)
        for at, entry in zip(positions, _split_leaves(proof, "proof"), strict=True):
            self._nodes[at] = entry

    def leaves(self, chunks: range) -> bytes | None:
        """The leaves of `chunks`, or None unless every one of them has been checked."""
        out: list[bytes] = []
        at = chunks.start
        while at < chunks.stop:
            piece = next(((r, data) for r, data in self._pieces if r.start <= at < r.stop), None)
            if piece is None:
                return None
            span, data = piece
            stop = min(span.stop, chunks.stop)
            out.append(data[(at - span.start) * HASH_BYTES : (stop - span.start) * HASH_BYTES])
            at = stop
        return b"".join(out)

    def proof(self, chunks: range) -> bytes | None:
        """A proof of `chunks`, or None unless what is known suffices (it does for any
        range inside the checked ones)."""
        if chunks.step != 1 or not 0 <= chunks.start <= chunks.stop <= self.total:
            return None
        if not self.total:
            return b""
        out: list[bytes] = []
        for lo, hi in _proof_positions(0, self.total, chunks):
            node = self._node(lo, hi)
            if node is None:
                return None
            out.append(node)
        return b"".join(out)

    def _node(self, lo: int, hi: int) -> bytes | None:
        known = self._nodes.get((lo, hi))
        if known is not None:
            return known
        leaves = self.leaves(range(lo, hi))
        if leaves is not None:
            return _top(_split_leaves(leaves))
        if hi - lo == 1:
            return None
        k = _split(hi - lo)
        left = self._node(lo, lo + k)
        right = None if left is None else self._node(lo + k, hi)
        return None if left is None or right is None else _node(left, right)
