"""Frames: segments cut into pieces of whole canonical chunks, encoded without copies.

A protobuf `bytes` field would copy the payload twice (into the message, then out of it).
Here a Frame is written by hand as the protobuf encoding of
`Frame{header = 1; payload = 2}`: tag, length, the serialized header, tag, length, then the
payload's memoryview, joined once. Decoding parses the same two fields and hands back a
memoryview of the payload inside the received bytes, so the only copy on the receiving side
is the one into the preallocated segment buffer. Anything else on the wire is refused as
malformed; a standard protobuf decoder reads these frames as ordinary Frame messages.

Payloads hold float32 values, or (UPDATE rows with secure aggregation) 4- or 8-byte words
(elements.py); the header's dtype says which, a chunk is the same number of elements either
way, and a frame about FRAME_BYTES of payload, so a frame of 8-byte words holds half the
elements.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from swarmnode.canonical import (
    ELEMENT_BYTES,
    HASH_BYTES,
    chunk_elements,
    element_range,
    num_chunks,
)
from swarmnode.p2p import peer_pb2
from swarmnode.p2p.elements import (
    FLOAT32,
    dtype_name,
    le_bytes,
    numpy_dtype,
    wire_dtype,
)
from swarmnode.p2p.errors import InvalidMessage
from swarmnode.p2p.messages import Kind

FRAME_BYTES = 2 << 20  # payload per frame, whatever the chunk size (frame_chunks_for)
DEFAULT_FRAME_CHUNKS = 128  # 128 x 16 KiB = FRAME_BYTES per frame of a large model
MAX_VECTOR_ELEMENTS = 1 << 30  # 4 GiB of float32: the largest model a node accepts by default
MAX_FRAME_ELEMENTS = 1 << 20  # 4 MiB of float32 per frame; the limit is in bytes (elements.py)
# The first frame of a MODEL stream carries the whole chunk-hash list (32 bytes per chunk):
# 8 MiB for the largest model, plus room for the other header fields. An UPDATE frame
# carries only the Merkle proof of its own chunks, about 2 log2(chunks) hashes.
MAX_HEADER_BYTES = HASH_BYTES * num_chunks(MAX_VECTOR_ELEMENTS) + (64 << 10)

_F = TypeVar("_F")
Prover = Callable[[range], bytes]
"""The Merkle range proof of any range of chunks of one committed vector (merkle.Tree.proof)."""

_HEADER_TAG = 0x0A  # field 1, length-delimited
_PAYLOAD_TAG = 0x12  # field 2, length-delimited


@dataclass(frozen=True)
class Frame:
    header: peer_pb2.FrameHeader
    payload: memoryview  # little-endian bytes of header.dtype's elements

    @property
    def kind(self) -> Kind | None:
        """What the frame carries; None for a kind this node does not know."""
        try:
            return Kind(self.header.kind)
        except ValueError:
            return None


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: memoryview, pos: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise InvalidMessage("malformed frame: truncated or overlong length")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def encode(frame: Frame) -> bytes:
    header = frame.header.SerializeToString()
    return b"".join(
        (
            bytes((_HEADER_TAG,)),
            _varint(len(header)),
            header,
            bytes((_PAYLOAD_TAG,)),
            _varint(len(frame.payload)),
            frame.payload,
        )
    )


def decode(data: bytes) -> Frame:
    """The frame in `data`; InvalidMessage if it is not exactly header then payload."""
    view = memoryview(data)
    if len(view) < 2 or view[0] != _HEADER_TAG:
        raise InvalidMessage("malformed frame: it does not start with a header")
    size, pos = _read_varint(view, 1)
    if size > MAX_HEADER_BYTES or pos + size > len(view):
        raise InvalidMessage(f"malformed frame: header of {size} bytes does not fit")
    try:
        header = peer_pb2.FrameHeader.FromString(view[pos : pos + size].tobytes())
    except Exception as exc:  # protobuf's DecodeError and friends
        raise InvalidMessage(f"malformed frame header: {exc}") from exc
    pos += size
    if pos == len(view):
        payload = view[pos:pos]
    else:
        if view[pos] != _PAYLOAD_TAG:
            raise InvalidMessage("malformed frame: unexpected field after the header")
        length, pos = _read_varint(view, pos + 1)
        if pos + length != len(view):
            raise InvalidMessage(
                f"malformed frame: payload says {length} bytes, {len(view) - pos} arrived"
            )
        payload = view[pos : pos + length]
    return Frame(header, payload)


def decode_lenient(data: bytes) -> Frame | InvalidMessage:
    """decode() for a server: a malformed frame becomes a value the handler raises, so the
    caller gets INVALID_ARGUMENT naming the problem instead of gRPC's opaque INTERNAL."""
    try:
        return decode(data)
    except InvalidMessage as exc:
        return exc


def frames_for(
    vector: npt.NDArray[Any],
    chunks: range,
    *,
    kind: Kind,
    round: int,
    attempt: int,
    segment: int,
    sender: str,
    chunk_hashes: bytes = b"",
    proof: bytes = b"",
    prove: Prover | None = None,
    frame_chunks: int | None = None,
) -> Iterator[Frame]:
    """Frames covering `chunks` of the whole `vector`, produced lazily (the sender never
    buffers more than gRPC's flow-control window), of about FRAME_BYTES of payload each
    unless `frame_chunks` says how many chunks. With `prove` (UPDATE), every frame carries
    the Merkle proof of its own chunks and no hashes: the receiver hashes the frame's chunks
    and checks it alone (implied_hashes). Otherwise `chunk_hashes` (a MODEL's whole list)
    and `proof` ride in the first frame. `sender` too rides in the first frame only; later
    frames leave it empty and the receiver takes the first frame's (an empty one on the
    first frame means the caller). An empty range still yields one empty frame, so the
    receiver learns it has everything. `vector` holds float32 values or (secure
    aggregation's masked rows) uint32 or uint64 words; the frames say which."""
    return _frames(
        le_bytes(vector),
        0,
        chunks,
        len(vector),
        dtype=_dtype_of(vector),
        kind=kind,
        round=round,
        attempt=attempt,
        segment=segment,
        sender=sender,
        chunk_hashes=chunk_hashes,
        proof=proof,
        prove=prove,
        frame_chunks=frame_chunks,
    )


def frames_for_row(
    row: npt.NDArray[Any],
    chunks: range,
    numel: int,
    *,
    kind: Kind,
    round: int,
    attempt: int,
    segment: int,
    sender: str,
    chunk_hashes: bytes = b"",
    proof: bytes = b"",
    prove: Prover | None = None,
    frame_chunks: int | None = None,
) -> Iterator[Frame]:
    """frames_for() for a row held alone: `row` holds the values of `chunks` only (what an
    owner keeps of a contributor's update), the headers still count the whole vector's
    `numel`. For relays and FetchUpdate answers: `sender` names the contributor."""
    span = element_range(chunks, numel)
    if len(row) != len(span):
        raise ValueError(f"a row of {len(row)} elements for chunks holding {len(span)}")
    return _frames(
        le_bytes(row),
        span.start,
        chunks,
        numel,
        dtype=_dtype_of(row),
        kind=kind,
        round=round,
        attempt=attempt,
        segment=segment,
        sender=sender,
        chunk_hashes=chunk_hashes,
        proof=proof,
        prove=prove,
        frame_chunks=frame_chunks,
    )


def frame_chunks_for(numel: int, element_bytes: int = ELEMENT_BYTES) -> int:
    """Chunks per frame for a vector of `numel` elements of `element_bytes` each: about
    FRAME_BYTES of payload, so that a small model's small chunks do not make small frames
    (each frame costs a header, a proof and gRPC's prefix)."""
    return max(1, FRAME_BYTES // (chunk_elements(numel) * element_bytes))


def _dtype_of(values: Any) -> int:
    """The wire's DType of a vector about to be framed: its numpy type's, float32 for
    anything else (a tensor: canonical.to_le_bytes checks it is float32)."""
    return wire_dtype(values.dtype) if isinstance(values, np.ndarray) else peer_pb2.DTYPE_FLOAT32


def merged_hashes_frame(
    *, round: int, attempt: int, segment: int, sender: str, chunk_hashes: bytes, numel: int
) -> Frame:
    """The checker's one MERGED_HASHES frame: no payload; `chunk_hashes` holds the 32-byte
    Merkle root of its own merge of `segment`, the segment's chunk hashes taken as a tree of
    their own (docs/canonical-vector.md#merged-hashes). `sender` may be empty: the caller."""
    header = peer_pb2.FrameHeader(
        kind=Kind.MERGED_HASHES,  # type: ignore[arg-type]
        round=round,
        attempt=attempt,
        segment=segment,
        elements=0,
        dtype=peer_pb2.DTYPE_FLOAT32,
        vector_elements=numel,
        chunk_hashes=chunk_hashes,
        sender=sender,
    )
    return Frame(header, memoryview(b""))


def _frames(
    data: memoryview,
    base: int,
    chunks: range,
    numel: int,
    *,
    dtype: int,
    kind: Kind,
    round: int,
    attempt: int,
    segment: int,
    sender: str,
    chunk_hashes: bytes,
    proof: bytes,
    prove: Prover | None,
    frame_chunks: int | None,
) -> Iterator[Frame]:
    """The frames of `chunks`; `data` holds the vector's bytes (elements of the wire's
    `dtype`) from element `base` on."""
    first = True
    size = numpy_dtype(dtype).itemsize
    if frame_chunks is None:
        frame_chunks = frame_chunks_for(numel, size)
    starts = range(chunks.start, chunks.stop, frame_chunks) if len(chunks) else [chunks.start]
    if proof and len(starts) == 1:
        # one frame holds every chunk the hashes are of: the receiver hashes them itself and
        # checks those hashes with the proof, so they need not travel (implied_hashes)
        chunk_hashes = b""
    for start in starts:
        stop = min(start + frame_chunks, chunks.stop)
        span = element_range(range(start, stop), numel)
        # with `prove`, each frame proves its own chunks (implied_hashes)
        own_proof = prove(range(start, stop)) if prove is not None else proof if first else b""
        header = peer_pb2.FrameHeader(
            kind=kind,  # type: ignore[arg-type]
            round=round,
            attempt=attempt,
            segment=segment,
            first_chunk=start,
            elements=len(span),
            dtype=dtype,  # type: ignore[arg-type]
            vector_elements=numel,
            chunk_hashes=chunk_hashes if first else b"",
            proof=own_proof,
            sender=sender if first else "",
        )
        first = False
        lo, hi = (span.start - base) * size, (span.stop - base) * size
        yield Frame(header, data[lo:hi])


def implied_hashes(frame: Frame) -> bool:
    """Whether a frame proves itself: a Merkle proof and no chunk hashes, as every UPDATE
    frame is sent (frames_for with `prove`). The receiver hashes the payload's chunks and
    checks those hashes with the proof against the contributor's commitment, so the frame
    is checked alone, before it is stored, whatever came before it in its stream. (A frame
    of the whole vector has an empty proof: receivers take an UPDATE frame without hashes
    whose chunks they hold no hashes of as proving itself too.)"""
    return bool(frame.header.proof) and not frame.header.chunk_hashes


def inherit_sender(frames: Iterable[_F]) -> Iterator[_F]:
    """The frames of one stream, each naming the sender its first frame named: senders
    write it in the first frame only (frames_for), so a receiver fills it in before it
    checks a frame. A later frame that names a sender keeps its own (and is checked so).
    Anything in the stream that is not a Frame (a decoding error) passes unchanged."""
    sender = ""
    for frame in frames:
        if isinstance(frame, Frame):
            if frame.header.sender:
                sender = sender or frame.header.sender
            elif sender:
                frame.header.sender = sender
        yield frame


def payload_array(frame: Frame, dtype: npt.DTypeLike | None = FLOAT32) -> npt.NDArray[Any]:
    """The payload as values of the header's dtype, without copying; checks dtype and size
    first. `dtype`: the only type the caller takes (a frame of another is refused by name),
    float32 unless said; None: any of the three (the caller checks which)."""
    header = frame.header
    found = numpy_dtype(header.dtype)
    if dtype is not None and found != np.dtype(dtype).newbyteorder("<"):
        raise InvalidMessage(
            f"a frame of {dtype_name(header.dtype)} elements where {np.dtype(dtype).name} "
            "is expected"
        )
    if len(frame.payload) != header.elements * found.itemsize:
        raise InvalidMessage(
            f"payload holds {len(frame.payload)} bytes, header says {header.elements} "
            f"{dtype_name(header.dtype)}"
        )
    if header.elements and header.first_chunk >= num_chunks(header.vector_elements):
        raise InvalidMessage(f"first chunk {header.first_chunk} is past the vector's end")
    return np.frombuffer(frame.payload, dtype=found)
