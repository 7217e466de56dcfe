"""The Merkle commitment over chunk hashes (docs/canonical-vector.md#commitments): roots
recomputed here independently with hashlib (the RFC 6962 recursion, not the module's
level-by-level build), and range proofs that verify for every range and fail for any
change to what they cover."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmnode import merkle
from swarmnode.exceptions import PeerError


def _leaves(total: int, seed: int = 0) -> bytes:
    """`total` distinct 32-byte leaves."""
    return b"".join(hashlib.sha256(b"%d/%d" % (seed, i)).digest() for i in range(total))


def _mth(leaves: list[bytes]) -> bytes:
    """The RFC 6962 recursion with the leaf itself as a one-leaf node."""
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + _mth(leaves[:k]) + _mth(leaves[k:])).digest()


def _reference_root(leaves: bytes) -> bytes:
    items = [leaves[i : i + 32] for i in range(0, len(leaves), 32)]
    if not items:
        return hashlib.sha256(b"").digest()
    return hashlib.sha256(b"\x00" + len(items).to_bytes(8, "big") + _mth(items)).digest()


@st.composite
def tree_and_range(draw: st.DrawFn) -> tuple[int, range]:
    total = draw(st.integers(0, 300))
    a = draw(st.integers(0, total))
    b = draw(st.integers(a, total))
    return total, range(a, b)


def test_known_answers() -> None:
    a, b, c = (hashlib.sha256(bytes([i])).digest() for i in range(3))
    top = hashlib.sha256(b"\x01" + hashlib.sha256(b"\x01" + a + b).digest() + c).digest()
    want = hashlib.sha256(b"\x00" + (3).to_bytes(8, "big") + top).digest()
    assert merkle.root(a + b + c) == want
    assert merkle.root(a) == hashlib.sha256(b"\x00" + (1).to_bytes(8, "big") + a).digest()
    assert merkle.root(b"") == hashlib.sha256(b"").digest()
    # the count is bound: the same top over another count is another root
    assert merkle.root(a + b) != hashlib.sha256(b"\x01" + a + b).digest()
    assert merkle.range_proof(a + b + c, range(1, 2)) == a + c
    assert merkle.range_proof(a + b + c, range(0, 0)) == top
    assert merkle.range_proof(a + b + c, range(0, 3)) == b""


@pytest.mark.parametrize("total", [*range(0, 70), 127, 128, 129, 1000])
def test_root_matches_the_rfc_6962_recursion(total: int) -> None:
    leaves = _leaves(total)
    assert merkle.root(leaves) == _reference_root(leaves)
    assert merkle.Tree(leaves).root == _reference_root(leaves)


@settings(max_examples=300, deadline=None)
@given(tree_and_range())
def test_every_range_verifies(case: tuple[int, range]) -> None:
    total, chunks = case
    leaves = _leaves(total)
    proof = merkle.range_proof(leaves, chunks)
    assert len(proof) % 32 == 0 and len(proof) <= 32 * 2 * max(1, total.bit_length())
    part = leaves[chunks.start * 32 : chunks.stop * 32]
    merkle.verify_range(_reference_root(leaves), total, chunks, part, proof)


@settings(max_examples=300, deadline=None)
@given(tree_and_range(), st.data())
def test_any_flipped_byte_is_refused(case: tuple[int, range], data: st.DataObject) -> None:
    total, chunks = case
    leaves = _leaves(total)
    root = merkle.root(leaves)
    part = bytearray(leaves[chunks.start * 32 : chunks.stop * 32])
    proof = bytearray(merkle.range_proof(leaves, chunks))
    target = data.draw(st.sampled_from(["leaves", "proof", "root"]))
    flipped = {"leaves": part, "proof": proof, "root": bytearray(root)}[target]
    if not flipped:  # nothing to flip (an empty range of an empty tree): truncate instead
        with pytest.raises(merkle.ProofError):
            merkle.verify_range(root[:-1], total, chunks, part, proof)
        return
    at = data.draw(st.integers(0, len(flipped) - 1))
    flipped[at] ^= 1 << data.draw(st.integers(0, 7))
    args: dict[str, bytes] = {"leaves": bytes(part), "proof": bytes(proof), "root": root}
    args[target] = bytes(flipped)
    with pytest.raises(merkle.ProofError):
        merkle.verify_range(args["root"], total, chunks, args["leaves"], args["proof"])


@settings(max_examples=300, deadline=None)
@given(tree_and_range(), st.integers(-5, 5).filter(bool))
def test_a_wrong_total_is_refused(case: tuple[int, range], delta: int) -> None:
    total, chunks = case
    leaves = _leaves(total)
    part = leaves[chunks.start * 32 : chunks.stop * 32]
    proof = merkle.range_proof(leaves, chunks)
    with pytest.raises(merkle.ProofError):
        merkle.verify_range(merkle.root(leaves), total + delta, chunks, part, proof)


@settings(max_examples=300, deadline=None)
@given(tree_and_range(), st.integers(-5, 5), st.integers(-3, 3), st.data())
def test_a_wrong_range_is_refused(
    case: tuple[int, range], shift: int, grow: int, data: st.DataObject
) -> None:
    total, chunks = case
    other = range(max(0, chunks.start + shift), max(0, chunks.stop + shift + grow))
    if other == chunks or (not len(other) and not len(chunks)):
        return  # the same claim, or two empty ranges (which prove nothing but the top)
    leaves = _leaves(total)
    part = leaves[chunks.start * 32 : chunks.stop * 32]
    proof = merkle.range_proof(leaves, chunks)
    with pytest.raises(merkle.ProofError):
        merkle.verify_range(merkle.root(leaves), total, other, part, proof)


def test_refusals_name_what_is_wrong() -> None:
    leaves = _leaves(10)
    root = merkle.root(leaves)
    proof = merkle.range_proof(leaves, range(2, 5))
    part = leaves[64:160]
    with pytest.raises(merkle.ProofError, match=r"range\(2, 12\) is not a range of chunks"):
        merkle.verify_range(root, 10, range(2, 12), part, proof)
    with pytest.raises(merkle.ProofError, match=r"2 leaves for chunks 2\.\.4"):
        merkle.verify_range(root, 10, range(2, 5), part[:64], proof)
    with pytest.raises(merkle.ProofError, match="proof is 32 bytes"):
        merkle.verify_range(root, 10, range(2, 5), part, proof[:32])
    with pytest.raises(merkle.ProofError, match="not a multiple of 32"):
        merkle.verify_range(root, 10, range(2, 5), part[:-1], proof)
    with pytest.raises(merkle.ProofError, match="a root is 32 bytes"):
        merkle.verify_range(root[:31], 10, range(2, 5), part, proof)
    with pytest.raises(merkle.ProofError, match="give root"):
        merkle.verify_range(bytes(32), 10, range(2, 5), part, proof)
    assert issubclass(merkle.ProofError, ValueError)
    assert issubclass(merkle.ProofError, PeerError)


@settings(max_examples=150, deadline=None)
@given(tree_and_range(), st.data())
def test_known_proves_any_range_inside_what_it_checked(
    case: tuple[int, range], data: st.DataObject
) -> None:
    total, chunks = case
    leaves = _leaves(total)
    known = merkle.Known(merkle.root(leaves), total)
    part = leaves[chunks.start * 32 : chunks.stop * 32]
    known.add(chunks, part, merkle.range_proof(leaves, chunks))
    a = data.draw(st.integers(chunks.start, chunks.stop))
    b = data.draw(st.integers(a, chunks.stop))
    inner = range(a, b)
    assert known.leaves(inner) == leaves[a * 32 : b * 32]
    assert known.proof(inner) == merkle.range_proof(leaves, inner)
    if chunks.start > 0:  # a leaf never checked is not known
        assert known.leaves(range(chunks.start - 1, chunks.stop)) is None


def test_known_refuses_what_does_not_belong() -> None:
    leaves = _leaves(9)
    known = merkle.Known(merkle.root(leaves), 9)
    proof = merkle.range_proof(leaves, range(3, 6))
    with pytest.raises(merkle.ProofError):
        known.add(range(3, 6), _leaves(9, seed=1)[96:192], proof)
    assert known.leaves(range(3, 6)) is None
    known.add(range(3, 6), leaves[96:192], proof)
    known.add(range(6, 9), leaves[192:], merkle.range_proof(leaves, range(6, 9)))
    assert known.leaves(range(4, 8)) == leaves[128:256]  # stitched from two checked ranges
    assert known.proof(range(4, 8)) == merkle.range_proof(leaves, range(4, 8))
    assert known.proof(range(0, 1)) is None  # needs leaf 1, which no checked range held


def test_frames_carry_proofs_of_their_own_chunks_and_merged_digests_byte_for_byte() -> None:
    """The wire format of docs/canonical-vector.md#commitments and #merged-hashes, written out
    by hand: an UPDATE frame as nodes send it (no chunk hashes, no sender: the proof of its
    own chunks) and the checker's MERGED_HASHES frame (one 32-byte root, no payload)."""
    import numpy as np

    from swarmnode import canonical
    from swarmnode.p2p import frames
    from swarmnode.p2p.messages import Kind

    vector = np.arange(40, dtype=np.float32)  # 3 chunks of 16: 16, 16, 8 elements
    leaves = canonical.chunk_hashes(vector)
    h0, h1, h2 = leaves[:32], leaves[32:64], leaves[64:]
    tree = merkle.Tree(leaves)
    (frame,) = frames.frames_for(
        vector, range(1, 3), kind=Kind.UPDATE, round=7, attempt=1, segment=1, sender="",
        prove=tree.proof,
    )  # fmt: skip
    header = bytes.fromhex("0801 1007 1801 2001 2801 3018 3801 4028") + b"\x5a\x20" + h0
    payload = vector[16:].astype("<f4").tobytes()
    assert frames.encode(frame) == b"\x0a\x32" + header + b"\x12\x60" + payload
    # the proof of chunks 1..2 of three is leaf 0; with the two hashes it gives the root
    merkle.verify_range(canonical.digest(vector), 3, range(1, 3), h1 + h2, h0)

    digest = merkle.root(h1 + h2)
    top = hashlib.sha256(b"\x01" + h1 + h2).digest()
    assert digest == hashlib.sha256(b"\x00" + (2).to_bytes(8, "big") + top).digest()
    check = frames.merged_hashes_frame(
        round=7, attempt=1, segment=1, sender="", chunk_hashes=digest, numel=40
    )
    header = bytes.fromhex("0804 1007 1801 2001 3801 4028") + b"\x4a\x20" + digest
    assert frames.encode(check) == b"\x0a\x2e" + header + b"\x12\x00"


def test_proof_size_counts_the_hashes_a_proof_holds() -> None:
    """What segment layouts weigh (swarmnode/ownership.py): the length of the proof Tree
    gives, for aligned and unaligned ranges; an aligned one is about half as long."""
    leaves = b"".join(hashlib.sha256(bytes([i % 256, i // 256])).digest() for i in range(301))
    tree = merkle.Tree(leaves)
    for chunks in (range(0, 0), range(0, 4), range(3, 8), range(256, 301), range(0, 301)):
        assert merkle.proof_size(301, chunks) * 32 == len(tree.proof(chunks))
    assert merkle.proof_size(301, range(8, 16)) < merkle.proof_size(301, range(7, 15))
    with pytest.raises(merkle.ProofError):
        merkle.proof_size(301, range(300, 302))
