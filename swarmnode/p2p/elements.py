"""The element types a frame's payload may hold, and chunk hashes for each of them.

Model values travel as float32. With secure aggregation a contributor's row is its masked
vector instead: k-bit integers modulo 2^k in 4- or 8-byte little-endian words
(swarmnode/secagg/fixedpoint.py). They travel exactly as float32 rows do: a chunk is the
same number of ELEMENTS whatever their size (canonical.chunk_elements of the vector's
length), and a chunk's hash is BLAKE3 over its little-endian bytes, so the Merkle
commitments, proofs and carry-over work unchanged
(docs/round-protocol.md#secure-aggregation-messages).
Words have no finiteness check: every bit pattern is a valid word.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from swarmnode import canonical
from swarmnode.canonical import HASH_BYTES, chunk_elements, element_range, num_chunks
from swarmnode.exceptions import ConfigError, PeerError
from swarmnode.p2p import peer_pb2
from swarmnode.p2p.errors import InvalidMessage

FLOAT32 = np.dtype("<f4")
WIRE_DTYPES: dict[int, np.dtype[Any]] = {
    peer_pb2.DTYPE_FLOAT32: FLOAT32,
    peer_pb2.DTYPE_UINT32: np.dtype("<u4"),
    peer_pb2.DTYPE_UINT64: np.dtype("<u8"),
}
"""The wire's DType values and the numpy types they name (little-endian)."""
NAMES: dict[int, str] = {
    peer_pb2.DTYPE_FLOAT32: "float32",
    peer_pb2.DTYPE_UINT32: "uint32",
    peer_pb2.DTYPE_UINT64: "uint64",
}


def wire_dtype(dtype: npt.DTypeLike) -> int:
    """The wire's DType value for a numpy type; ConfigError for any other type."""
    wanted = np.dtype(dtype).newbyteorder("<")
    for value, known in WIRE_DTYPES.items():
        if known == wanted:
            return value
    raise ConfigError(f"frames carry float32, uint32 or uint64 elements, not {np.dtype(dtype)}")


def dtype_name(value: int) -> str:
    """A DType value as a message names it: its type and its number."""
    name = NAMES.get(value)
    return f"dtype {value}" if name is None else f"{name} (dtype {value})"


def numpy_dtype(value: int) -> np.dtype[Any]:
    """The numpy type a frame's DType value names; InvalidMessage for an unknown one."""
    found = WIRE_DTYPES.get(value)
    if found is None:
        raise InvalidMessage(f"dtype {value} is not float32, uint32 or uint64")
    return found


def le_array(values: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """A 1-D array of one of the three types as little-endian elements, without a copy on a
    little-endian host; ConfigError for anything else."""
    if not isinstance(values, np.ndarray) or values.ndim != 1:
        raise ConfigError("frames carry 1-D arrays")
    wanted = WIRE_DTYPES[wire_dtype(values.dtype)]
    return np.ascontiguousarray(values, dtype=wanted)


def le_bytes(values: Any) -> memoryview:
    """The wire bytes of a vector: float32 as canonical.to_le_bytes takes it (tensors too),
    words as their little-endian bytes; zero-copy where the memory allows."""
    if isinstance(values, np.ndarray) and values.dtype.kind == "u":
        return le_array(values).view(np.uint8).data
    return canonical.to_le_bytes(values)


def chunk_hashes(
    values: npt.NDArray[Any], *, numel: int | None = None, workers: int | None = None
) -> bytes:
    """The chunk hashes of a range of whole chunks of a vector of `numel` elements (the
    whole vector when None), concatenated: BLAKE3 over each chunk's little-endian bytes.
    For float32 this is canonical.chunk_hashes (hashed on several threads when large)."""
    if not isinstance(values, np.ndarray) or values.dtype.kind != "u":
        return canonical.chunk_hashes(values, numel=numel, workers=workers)
    return canonical.word_chunk_hashes(le_array(values), numel=numel, workers=workers)


def verify_chunks(first_chunk: int, values: npt.NDArray[Any], hashes: bytes, numel: int) -> None:
    """canonical.verify_chunks for any of the three types: `values` are whole chunks from
    `first_chunk` on, each must match its hash; float32 must also be finite, words need
    not. PeerError naming the first chunk that does not match."""
    if values.dtype.kind != "u":
        canonical.verify_chunks(first_chunk, values, hashes, numel)
        return
    total, chunk = num_chunks(numel), chunk_elements(numel)
    count = -(-len(values) // chunk)
    if not 0 <= first_chunk <= first_chunk + count <= total or len(values) != len(
        element_range(range(first_chunk, first_chunk + count), numel)
    ):
        raise PeerError(
            f"received {len(values)} words starting at chunk {first_chunk}: not a whole "
            f"range of chunks of a {numel}-element vector ({total} chunks)"
        )
    if len(hashes) != count * HASH_BYTES:
        raise PeerError(
            f"{len(hashes)} bytes of chunk hashes for {count} chunks from chunk {first_chunk}"
        )
    got = chunk_hashes(values, numel=numel)
    if got != bytes(hashes):
        at = [slice(i * HASH_BYTES, (i + 1) * HASH_BYTES) for i in range(count)]
        bad = next(i for i in range(count) if got[at[i]] != bytes(hashes[at[i]]))
        start = (first_chunk + bad) * chunk
        raise PeerError(
            f"chunk {first_chunk + bad} (elements {start}..{min(start + chunk, numel) - 1}) "
            "does not match the sender's chunk hash"
        )
