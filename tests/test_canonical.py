"""The canonical vector: known answers computed independently, layouts, segments, checks.

Expected hashes here are built with struct, the blake3 package and hashlib from hand-written
values, never with the module under test (the chunk size and the Merkle root are recomputed
here too), and a few literal digests pin the definition: if one of them changes, the
protocol changed (every node of a swarm must then run the same version).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from swarmnode import merkle
from swarmnode.canonical import (
    CHUNK_ELEMENTS,
    EMPTY_DIGEST,
    HASH_BYTES,
    Layout,
    check_finite,
    chunk_elements,
    chunk_hashes,
    digest,
    digest_from_chunk_hashes,
    element_range,
    flatten,
    from_le_bytes,
    layout_of,
    num_chunks,
    segments,
    to_le_bytes,
    unflatten_into,
    verify_chunks,
    verify_hash_list,
    verify_segment_hashes,
)
from swarmnode.exceptions import ConfigError, PeerError

# --------------------------------------------------------------------------------------------
# Independent reference: struct + blake3 (chunk hashes) + hashlib (Merkle root) over Python
# floats


def ref_chunk_size(n: int) -> int:
    """The largest power of two p with p * 1024 <= n, kept within 16..4096."""
    size = 16
    while size * 2 <= 4096 and size * 2 * 1024 <= n:
        size *= 2
    return size


def ref_chunk_hashes(values: list[float]) -> list[bytes]:
    """BLAKE3 of each chunk packed as little-endian float32, by hand (blake3 is imported
    here, not at the top: the GPU machine, which runs this file's CUDA test, lacks it)."""
    from blake3 import blake3

    k = ref_chunk_size(len(values))
    return [
        blake3(struct.pack(f"<{len(part)}f", *part)).digest()
        for part in (values[i : i + k] for i in range(0, len(values), k))
    ]


def ref_top(leaves: list[bytes]) -> bytes:
    """RFC 6962's recursion: split at the largest power of two below the count."""
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + ref_top(leaves[:k]) + ref_top(leaves[k:])).digest()


def ref_root(leaves: list[bytes]) -> bytes:
    if not leaves:
        return hashlib.sha256(b"").digest()
    return hashlib.sha256(b"\x00" + len(leaves).to_bytes(8, "big") + ref_top(leaves)).digest()


def ref_digest(values: list[float]) -> bytes:
    return ref_root(ref_chunk_hashes(values))


def f16(value: float) -> float:
    """The float16 nearest to value, as a Python float (struct's 'e' rounds to nearest)."""
    result: float = struct.unpack("<e", struct.pack("<e", value))[0]
    return result


def f32(value: float) -> float:
    result: float = struct.unpack("<f", struct.pack("<f", value))[0]
    return result


class Net(nn.Module):
    """A Linear, a BatchNorm1d (with its integer counter) and a float16 buffer."""

    scale: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.bn = nn.BatchNorm1d(2)
        self.register_buffer("scale", torch.zeros(3, dtype=torch.float16))


LIN_WEIGHT = [[0.5, -1.0, 2.0], [0.25, 3.0, -0.125]]
LIN_BIAS = [1.5, -2.5]
BN_WEIGHT = [1.0, 2.0]
BN_BIAS = [-0.5, 0.75]
BN_MEAN = [0.1, -0.2]
BN_VAR = [1.25, 4.0]
SCALE = [0.1, 1 / 3, -65504.0]


def make_net() -> Net:
    net = Net()
    state = net.state_dict()  # its tensors are the module's own storage
    state["lin.weight"].copy_(torch.tensor(LIN_WEIGHT))
    state["lin.bias"].copy_(torch.tensor(LIN_BIAS))
    state["bn.weight"].copy_(torch.tensor(BN_WEIGHT))
    state["bn.bias"].copy_(torch.tensor(BN_BIAS))
    state["bn.running_mean"].copy_(torch.tensor(BN_MEAN))
    state["bn.running_var"].copy_(torch.tensor(BN_VAR))
    state["bn.num_batches_tracked"].fill_(7)
    state["scale"].copy_(torch.tensor(SCALE))
    return net


def batches_tracked(net: nn.Module) -> int:
    return int(net.state_dict()["bn.num_batches_tracked"].item())


def net_values() -> list[float]:
    """The Net's vector by hand: state_dict order, row-major, float16 widened exactly.

    state_dict order puts a module's own parameters and buffers before its children's, so
    the float16 buffer registered last comes first.
    """
    return [f16(v) for v in SCALE] + [
        f32(v)
        for v in [x for row in LIN_WEIGHT for x in row]
        + LIN_BIAS
        + BN_WEIGHT
        + BN_BIAS
        + BN_MEAN
        + BN_VAR
    ]


def net_values_tensor() -> torch.Tensor:
    return torch.tensor(net_values(), dtype=torch.float32)


# the root over two chunk hashes, blake3(pack("<16f", *net_values()[:16])) and
# blake3(pack("<3f", *net_values()[16:])): 19 values make chunks of 16
MODEL_DIGEST_HEX = "49a24d765bc1a7d2de3f71e5c6d97947e12c38678ee9399b13a887a2b45cc714"


def arange_values(n: int) -> list[float]:
    return [i * 0.5 - 1000.0 for i in range(n)]  # exact in float32 for n below 2**24


# --------------------------------------------------------------------------------------------
# Known answers


@pytest.mark.parametrize(("n", "chunks"), [(4096 * 2 + 5, 513), (40_000, 1250), (70_000, 1094)])
def test_chunk_hashes_and_digest_match_struct_reference(n: int, chunks: int) -> None:
    vector = torch.arange(n, dtype=torch.float32) * 0.5 - 1000.0
    expected = ref_chunk_hashes(arange_values(n))
    assert len(expected) == chunks == num_chunks(n)
    hashes = chunk_hashes(vector)
    assert hashes == b"".join(expected)
    assert digest(vector) == ref_digest(arange_values(n))
    assert digest_from_chunk_hashes(hashes) == digest(vector)
    assert digest_from_chunk_hashes(expected) == digest(vector)


def test_literal_digests_pin_the_definition() -> None:
    tiny = torch.tensor([1.0, -2.0, 0.5])
    # blake3(pack("<3f", 1.0, -2.0, 0.5)): the chunk hash is BLAKE3 with its 32-byte output
    assert chunk_hashes(tiny).hex() == (
        "403e23dd22092210852a34a61feb5593524b65daf7250a30426bf53a5608a34e"
    )
    # sha256(0x00 || 1 as 8 bytes big-endian || blake3(pack("<3f", 1.0, -2.0, 0.5))): the
    # Merkle root of one leaf binds the count
    assert digest(tiny).hex() == "fd3857de2cba93263fe94399f79baf252b6b9fddb90fbc582d8ad487de973472"
    assert digest(torch.empty(0)) == EMPTY_DIGEST
    assert EMPTY_DIGEST.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert chunk_hashes(torch.empty(0)) == b""


def test_chunk_size_follows_the_vector_size() -> None:
    """A power of two near numel / 1024, from 16 to 4096: the same on every node."""
    cases = {0: 16, 1: 16, 16_383: 16, 32_767: 16, 32_768: 32, 262_144: 256, 1 << 20: 1024}
    cases |= {(4 << 20) - 1: 2048, 4 << 20: 4096, 1 << 30: 4096}
    for numel, size in cases.items():
        assert chunk_elements(numel) == size == ref_chunk_size(numel), numel
    assert CHUNK_ELEMENTS == 4096  # the largest, which bounds use
    assert num_chunks(4800) == 300  # a 19 KB model: 300 chunks of 16
    assert num_chunks(262_144) == 1024  # a 1 MB model: 1024 chunks of 256
    assert num_chunks(4 << 20) == 1024 and num_chunks(1 << 30) == 262_144
    with pytest.raises(ConfigError):
        chunk_elements(-1)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=1 << 32))
def test_chunk_size_rule_properties(numel: int) -> None:
    size = chunk_elements(numel)
    assert size == ref_chunk_size(numel) and size & (size - 1) == 0
    assert 16 <= size <= 4096
    assert size == 16 or size * 1024 <= numel
    assert size == 4096 or numel < size * 2 * 1024


def test_model_vector_known_answer() -> None:
    net = make_net()
    vector = flatten(net)
    assert vector.dtype == torch.float32 and vector.device.type == "cpu"
    assert vector.is_contiguous() and vector.dim() == 1
    assert vector.tolist() == net_values()
    assert digest(flatten(net)) == ref_digest(net_values())
    assert digest(vector).hex() == MODEL_DIGEST_HEX


# --------------------------------------------------------------------------------------------
# Layout, order, dtypes


def test_layout_excludes_integer_buffers_and_records_offsets() -> None:
    layout = layout_of(make_net())
    assert layout.names == (
        "scale",
        "lin.weight",
        "lin.bias",
        "bn.weight",
        "bn.bias",
        "bn.running_mean",
        "bn.running_var",
    )
    assert layout.local == ("bn.num_batches_tracked",)
    assert [e.offset for e in layout.entries] == [0, 3, 9, 11, 13, 15, 17]
    assert layout.entries[1].shape == (2, 3)
    assert layout.entries[0].dtype == torch.float16
    assert layout.numel == 19 and layout.num_chunks == 2  # chunks of 16


def test_state_dict_order_not_name_order() -> None:
    class Backwards(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.zeta = nn.Parameter(torch.tensor([9.0, 8.0]))
            self.alpha = nn.Parameter(torch.tensor([1.0]))

    model = Backwards()
    assert layout_of(model).names == ("zeta", "alpha")
    assert flatten(model).tolist() == [9.0, 8.0, 1.0]


def test_dtype_conversions() -> None:
    state = {
        "f64": torch.tensor([0.1, 1e-30, -3.0], dtype=torch.float64),
        "bf16": torch.tensor([3.140625, -0.5], dtype=torch.bfloat16),
        "f16": torch.tensor([1 / 3], dtype=torch.float16),
        "flag": torch.tensor([True]),
        "count": torch.tensor(5, dtype=torch.int64),
    }
    vector = flatten(state)
    expected = [f32(0.1), f32(1e-30), -3.0, 3.140625, -0.5, f16(1 / 3)]
    assert vector.tolist() == expected
    assert to_le_bytes(vector).tobytes() == struct.pack("<6f", *expected)
    assert layout_of(state).local == ("flag", "count")


def test_non_contiguous_tensors_are_flattened_row_major() -> None:
    base = torch.arange(6, dtype=torch.float32).view(2, 3)
    state = {"t": base.t(), "s": torch.tensor(4.5)}  # a transposed view and a 0-d tensor
    assert flatten(state).tolist() == [0.0, 3.0, 1.0, 4.0, 2.0, 5.0, 4.5]
    unflatten_into(torch.arange(7, dtype=torch.float32), state)
    assert base.tolist() == [[0.0, 2.0, 4.0], [1.0, 3.0, 5.0]]
    assert state["s"].item() == 6.0


def test_extra_state_and_unsupported_tensors() -> None:
    assert layout_of({"w": torch.ones(2), "_extra_state": {"epoch": 3}}).local == ("_extra_state",)
    with pytest.raises(ConfigError, match="complex"):
        layout_of({"c": torch.ones(2, dtype=torch.complex64)})
    with pytest.raises(ConfigError, match="dense"):
        layout_of({"s": torch.ones(2).to_sparse()})
    with pytest.raises(ConfigError, match="meta"):
        layout_of({"m": torch.empty(2, device="meta")})


def test_fingerprint_ignores_dtype_but_not_shape() -> None:
    base = layout_of({"a": torch.zeros(2, 3), "b": torch.zeros(4)})
    half = layout_of({"a": torch.zeros(2, 3, dtype=torch.float16), "b": torch.zeros(4)})
    reshaped = layout_of({"a": torch.zeros(3, 2), "b": torch.zeros(4)})
    assert base.fingerprint == half.fingerprint
    assert base.fingerprint != reshaped.fingerprint
    assert base.numel == reshaped.numel


def test_check_vector_refuses_wrong_size_as_peer_error() -> None:
    layout = layout_of(make_net())
    layout.check_vector(net_values_tensor())
    layout.check_vector(struct.pack("<19f", *range(19)))
    with pytest.raises(PeerError, match="has 18 elements, expected 19"):
        layout.check_vector(torch.zeros(18))
    with pytest.raises(PeerError, match="whole number"):
        layout.check_vector(b"\x00" * 75)


# --------------------------------------------------------------------------------------------
# Unflatten


def test_round_trip_is_exact_and_integer_buffers_keep_local_value() -> None:
    net = make_net()
    weight = net.lin.weight
    pointer = weight.data_ptr()
    original = flatten(net)
    new = torch.arange(19, dtype=torch.float32) - 9.5
    unflatten_into(new, net)
    assert net.lin.weight is weight and weight.data_ptr() == pointer  # written in place
    assert net.scale.dtype == torch.float16 and net.scale.tolist() == [-9.5, -8.5, -7.5]
    assert net.lin.weight.tolist() == [[-6.5, -5.5, -4.5], [-3.5, -2.5, -1.5]]
    assert batches_tracked(net) == 7
    assert torch.equal(flatten(net), new)
    unflatten_into(original, net)
    assert torch.equal(flatten(net), original)
    assert digest(flatten(net)).hex() == MODEL_DIGEST_HEX


def test_unflatten_into_state_dict_mapping() -> None:
    state = {"w": torch.zeros(2, 2, dtype=torch.float64), "n": torch.tensor(3)}
    unflatten_into(torch.tensor([1.0, 2.0, 3.0, 4.0]), state)
    assert state["w"].dtype == torch.float64
    assert state["w"].tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert state["n"].item() == 3


def test_unflatten_refuses_misuse() -> None:
    net = make_net()
    with pytest.raises(ConfigError, match="18 elements"):
        unflatten_into(torch.zeros(18), net)
    with pytest.raises(ConfigError, match="float32"):
        unflatten_into(torch.zeros(19, dtype=torch.float64), net)
    scale = torch.zeros(3, dtype=torch.float16)
    transposed = layout_of({"scale": scale, "lin.weight": torch.zeros(3, 2)})
    with pytest.raises(ConfigError, match=r"entry 1: expected 'lin.weight' \[3, 2\]"):
        unflatten_into(torch.zeros(19), net, transposed)
    with pytest.raises(ConfigError, match="has 7 floating-point tensors, expected 1"):
        flatten(net, layout_of({"scale": scale}))
    flatten(net, layout_of(make_net()))  # the same layout is accepted


# --------------------------------------------------------------------------------------------
# Bytes and byte order


def test_wire_bytes_round_trip_and_big_endian_input() -> None:
    vector = torch.arange(4096 + 3, dtype=torch.float32) * 0.25
    raw = to_le_bytes(vector)
    assert raw.nbytes == vector.numel() * 4
    back = from_le_bytes(bytes(raw))
    assert torch.equal(back, vector)
    back[0] = 99.0  # a fresh, writable tensor
    assert vector[0].item() == 0.0
    # A big-endian array (what a big-endian host holds) hashes to the same little-endian bytes.
    big = vector.numpy().astype(">f4")
    assert chunk_hashes(big) == chunk_hashes(vector) == chunk_hashes(bytes(raw))
    assert to_le_bytes(big).tobytes() == bytes(raw)
    with pytest.raises(PeerError, match="whole number"):
        from_le_bytes(b"\x00" * 7)


@pytest.mark.skipif(sys.byteorder != "little", reason="zero-copy holds on little-endian hosts")
def test_to_le_bytes_is_zero_copy() -> None:
    vector = torch.zeros(4)
    view = to_le_bytes(vector)
    vector[1] = 1.0
    assert struct.unpack("<4f", view.tobytes())[1] == 1.0


def test_threaded_hashing_matches_single_thread() -> None:
    small = torch.arange(10 * 4096 + 1, dtype=torch.float32)
    assert chunk_hashes(small[:640], numel=len(small)) == chunk_hashes(small)[: 20 * 32]
    assert chunk_hashes(small, workers=3) == chunk_hashes(small, workers=1)
    big = torch.arange(2_200_000, dtype=torch.float32)  # 8.8 MB: the automatic path threads
    assert chunk_hashes(big) == chunk_hashes(big, workers=1)
    with pytest.raises(ConfigError):
        chunk_hashes(small, workers=0)


# --------------------------------------------------------------------------------------------
# Segments


def test_segments_examples() -> None:
    assert segments(6, 4) == [range(0, 2), range(2, 4), range(4, 5), range(5, 6)]
    assert segments(2, 4) == [range(0, 1), range(1, 2), range(2, 2), range(2, 2)]
    assert segments(0, 3) == [range(0, 0)] * 3
    assert segments(5, 1) == [range(0, 5)]
    with pytest.raises(ConfigError):
        segments(5, 0)
    with pytest.raises(ConfigError):
        segments(-1, 2)


@given(st.integers(min_value=0, max_value=100_000), st.integers(min_value=1, max_value=300))
def test_segments_properties(chunks: int, n: int) -> None:
    parts = segments(chunks, n)
    assert len(parts) == n
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)  # the larger ones come first
    assert sum(sizes) == chunks
    position = 0
    for part in parts:
        assert part.step == 1 and part.start == position
        position = part.stop
    assert position == chunks
    if chunks < n:
        assert sizes.count(0) == n - chunks


def test_element_range() -> None:
    numel = 16 * 2 + 5
    assert num_chunks(numel) == 3 and num_chunks(0) == 0 and num_chunks(16) == 1
    assert element_range(range(0, 2), numel) == range(0, 32)
    assert element_range(range(2, 3), numel) == range(32, 37)
    assert element_range(range(3, 3), numel) == range(37, 37)
    with pytest.raises(ConfigError):
        element_range(range(0, 4), numel)
    with pytest.raises(ConfigError):
        element_range(range(0, 3, 2), numel)
    big = 4096 * 1024 * 2 + 5  # chunks of 4096
    assert num_chunks(big) == 2049
    assert element_range(range(1, 2049), big) == range(4096, big)


@given(st.integers(min_value=0, max_value=1 << 24), st.integers(min_value=1, max_value=40))
def test_segment_elements_tile_the_vector(numel: int, n: int) -> None:
    spans = [element_range(part, numel) for part in segments(num_chunks(numel), n)]
    size = ref_chunk_size(numel)
    position = 0
    for span in spans:  # the segments tile the vector in order
        assert span.start == position
        position = span.stop
        # every segment starts on a chunk boundary (or is empty at the end) and is whole
        # chunks, except the one holding the vector's short tail
        assert span.start % size == 0 or span.start == numel
        assert len(span) % size == 0 or span.stop == numel
    assert position == numel


# --------------------------------------------------------------------------------------------
# Checking what a peer sent


def sender(numel: int, seed: int = 0) -> tuple[torch.Tensor, bytes, bytes]:
    vector = torch.from_numpy(np.random.default_rng(seed).standard_normal(numel, dtype=np.float32))
    hashes = chunk_hashes(vector)
    return vector, hashes, digest(vector)


def test_hash_list_checked_against_commitment() -> None:
    numel = 16 * 5 + 4  # six chunks of 16, the last one short
    _, hashes, commitment = sender(numel)
    verify_hash_list(hashes, commitment, numel)
    with pytest.raises(PeerError, match="committed to"):
        verify_hash_list(hashes, hashlib.sha256(b"other").digest(), numel)
    forged = bytearray(hashes)
    forged[40] ^= 1
    with pytest.raises(PeerError, match="committed to"):
        verify_hash_list(bytes(forged), commitment, numel)
    with pytest.raises(PeerError, match="expected 192"):
        verify_hash_list(hashes[:-HASH_BYTES], commitment, numel)
    with pytest.raises(PeerError, match="expected 224"):
        verify_hash_list(hashes, commitment, numel + 16)


def _of(hashes: bytes, chunks: range) -> bytes:
    return hashes[chunks.start * HASH_BYTES : chunks.stop * HASH_BYTES]


def test_each_segment_verifies_alone_in_every_form() -> None:
    numel = 16 * 5 + 4
    vector, hashes, commitment = sender(numel)
    for part in segments(num_chunks(numel), 4):
        span = element_range(part, numel)
        piece = vector[span.start : span.stop]
        own = _of(hashes, part)  # the segment's hashes only, proved against the commitment
        verify_segment_hashes(part, own, merkle.range_proof(hashes, part), commitment, numel)
        verify_chunks(part.start, piece, own, numel)
        verify_chunks(part.start, bytes(to_le_bytes(piece)), own, numel)
        verify_chunks(part.start, piece.numpy().astype(">f4"), own, numel)
    verify_chunks(num_chunks(numel), b"", b"", numel)  # an empty trailing segment


def test_segment_hashes_are_refused_unless_proved() -> None:
    numel = 16 * 5 + 4
    _, hashes, commitment = sender(numel)
    part = range(2, 4)
    proof = merkle.range_proof(hashes, part)
    with pytest.raises(PeerError, match=r"segment hashes: .* give root"):
        verify_segment_hashes(part, _of(hashes, range(3, 5)), proof, commitment, numel)
    with pytest.raises(PeerError, match="segment hashes: proof is"):
        verify_segment_hashes(part, _of(hashes, part), proof[:-1], commitment, numel)
    with pytest.raises(PeerError, match=r"segment hashes: .* give root"):
        verify_segment_hashes(part, _of(hashes, part), proof, commitment, numel + 16)


def test_flipped_byte_is_caught_and_named() -> None:
    numel = 16 * 5 + 4
    vector, hashes, _ = sender(numel)
    span = element_range(range(2, 4), numel)
    raw = bytearray(to_le_bytes(vector[span.start : span.stop]))
    raw[16 * 4 + 12] ^= 0x10  # inside chunk 3, the segment's second chunk
    with pytest.raises(PeerError, match=r"chunk 3 \(elements 48\.\.63\)"):
        verify_chunks(2, bytes(raw), _of(hashes, range(2, 4)), numel)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_any_flipped_bit_is_named_by_its_chunk(data: st.DataObject) -> None:
    numel = data.draw(st.integers(min_value=1, max_value=40_000))
    vector, hashes, _ = sender(numel, seed=numel)
    raw = bytearray(to_le_bytes(vector))
    position = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    raw[position] ^= 1 << data.draw(st.integers(min_value=0, max_value=7))
    chunk_bytes = ref_chunk_size(numel) * 4
    with pytest.raises(PeerError, match=rf"^chunk {position // chunk_bytes} "):
        verify_chunks(0, bytes(raw), hashes, numel, finite=False)


def test_wrong_sizes_and_ranges_refused() -> None:
    numel = 16 * 5 + 4
    vector, hashes, _ = sender(numel)
    with pytest.raises(PeerError, match="not a whole range"):
        verify_chunks(0, vector[: 16 - 1], hashes[:32], numel)  # a short chunk mid-vector
    with pytest.raises(PeerError, match="not a whole range"):
        verify_chunks(5, vector[16 * 4 :], hashes[160:], numel)  # runs past the end
    with pytest.raises(PeerError, match="not a whole range"):
        verify_chunks(5, vector[16 * 5 : -1], hashes[160:], numel)  # the short tail, shorter
    with pytest.raises(PeerError, match="outside"):
        verify_chunks(7, b"", b"", numel)
    with pytest.raises(PeerError, match="bytes of chunk hashes for 6 chunks"):
        verify_chunks(0, vector, hashes + b"\x00" * HASH_BYTES, numel)
    with pytest.raises(PeerError, match="whole number"):
        verify_chunks(0, b"\x00" * 6, hashes, numel)


def test_non_finite_values_named_even_when_committed() -> None:
    numel = 16 * 3 + 7
    vector, _, _ = sender(numel)
    vector[16 * 2 + 17] = float("nan")
    hashes = chunk_hashes(vector)  # the sender committed to the NaN
    piece = vector[16 * 2 :]
    with pytest.raises(PeerError, match="non-finite value \\(nan\\) at element 49"):
        verify_chunks(2, piece, hashes[64:], numel)
    verify_chunks(2, piece, hashes[64:], numel, finite=False)
    with pytest.raises(PeerError, match="inf"):
        check_finite(torch.tensor([1.0, float("-inf")]))
    check_finite(torch.tensor([1.0, -0.0]))


def test_layout_from_state_dict_equals_layout_of_module() -> None:
    net = make_net()
    assert Layout.from_state_dict(net.state_dict()) == layout_of(net)


# --------------------------------------------------------------------------------------------
# CUDA

HAVE_BLAKE3 = importlib.util.find_spec("blake3") is not None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_model_has_the_cpu_digest() -> None:
    cpu_net = make_net()
    extra = torch.from_numpy(np.random.default_rng(1).standard_normal(5000))  # float64
    cpu_net.register_buffer("f64", extra.clone())
    cpu_net.register_buffer("bf16", extra[:100].to(torch.bfloat16))
    cuda_net = copy.deepcopy(cpu_net).cuda()

    cpu_vector = flatten(cpu_net)
    cuda_vector = flatten(cuda_net)
    assert cuda_vector.device.type == "cpu"
    assert torch.equal(cuda_vector, cpu_vector)  # float64 -> float32 rounds alike on both
    # the digest's input, byte for byte (the GPU machine may lack blake3 to hash it)
    assert bytes(to_le_bytes(cpu_vector.cuda())) == bytes(to_le_bytes(cpu_vector))
    if HAVE_BLAKE3:
        assert digest(cuda_vector) == digest(cpu_vector) == digest(cpu_vector.cuda())

    new = torch.from_numpy(np.random.default_rng(2).standard_normal(cpu_vector.numel()))
    new = new.to(torch.float32)
    unflatten_into(new, cpu_net)
    unflatten_into(new, cuda_net)
    assert cuda_net.lin.weight.device.type == "cuda"
    assert cuda_net.scale.dtype == torch.float16
    assert batches_tracked(cuda_net) == 7
    assert torch.equal(flatten(cuda_net), flatten(cpu_net))
    unflatten_into(new.cuda(), cuda_net)  # a vector already on the device works too
    assert torch.equal(flatten(cuda_net), flatten(cpu_net))


# --------------------------------------------------------------------------------------------
# blake3 is imported lazily


def run_python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_training_code_imports_without_loading_blake3() -> None:
    """The GPU machine has no blake3: importing the canonical vector and the training code
    must not load it; only hashing does."""
    out = run_python(
        "import sys\n"
        "import swarmnode.canonical, swarmnode.training\n"
        "print('blake3' in sys.modules)\n"
        "swarmnode.canonical.chunk_hashes(b'\\0' * 16)\n"
        "print('blake3' in sys.modules)\n"
    )
    assert out.split() == ["False", "True"]


def test_hashing_without_blake3_says_what_is_missing() -> None:
    out = run_python(
        "import sys\n"
        "sys.modules['blake3'] = None  # as if not installed\n"
        "import swarmnode.canonical as c\n"
        "from swarmnode.exceptions import ConfigError\n"
        "try:\n"
        "    c.chunk_hashes(b'\\0' * 16)\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    assert "needs the blake3 package" in out
