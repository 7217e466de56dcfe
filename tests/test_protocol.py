"""The committed gRPC stubs are exactly what protocol/generate.py makes of the .proto files,
and the hand-written frame encoding is a valid protobuf Frame."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from swarmnode.p2p import frames, peer_pb2
from swarmnode.p2p.errors import InvalidMessage

ROOT = Path(__file__).resolve().parent.parent


def test_generated_stubs_match_the_proto() -> None:
    result = subprocess.run(
        [sys.executable, "protocol/generate.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_frames_are_valid_protobuf_both_ways() -> None:
    values = np.arange(16 + 7, dtype=np.float32)  # two chunks: 16 elements, then 7
    frame = next(
        frames.frames_for(
            values,
            range(0, 2),
            kind=peer_pb2.KIND_MODEL,
            round=3,
            attempt=0,
            segment=0,
            sender="0xabc",
            chunk_hashes=b"\x01" * 64,
        )
    )
    wire = frames.encode(frame)
    parsed = peer_pb2.Frame.FromString(wire)  # a standard protobuf decoder reads it
    assert parsed.header.round == 3 and parsed.header.elements == 16 + 7
    assert parsed.payload == values.astype("<f4").tobytes()
    back = frames.decode(parsed.SerializeToString())  # and we read standard encodings
    assert back.header == frame.header and bytes(back.payload) == bytes(frame.payload)


@pytest.mark.parametrize(
    "wire",
    [
        b"",
        b"\x0a",
        b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
        b"\x12\x00",
        b"\x0a\x00\x12\x05abc",
        b"\x0a\x00\x1a\x00",
        b"\x0a\x03\xff\xff\xff",
    ],
)
def test_malformed_frames_are_refused_by_name(wire: bytes) -> None:
    with pytest.raises(InvalidMessage, match="malformed"):
        frames.decode(wire)


def test_the_first_frame_of_a_model_over_512_mib_fits_its_hash_list() -> None:
    # 2 GiB of float32 = 131072 chunks: a 4 MiB hash list rides in the first frame's header
    header = peer_pb2.FrameHeader(
        kind=peer_pb2.KIND_UPDATE,
        round=1,
        attempt=1,
        elements=0,
        vector_elements=1 << 29,
        dtype=peer_pb2.DTYPE_FLOAT32,
        chunk_hashes=bytes(32 * (1 << 29) // 4096),
        sender="0xabc",
    )
    frame = frames.Frame(header, memoryview(b""))
    assert frames.decode(frames.encode(frame)).header.chunk_hashes == header.chunk_hashes
    assert frames.MAX_HEADER_BYTES >= 32 * frames.MAX_VECTOR_ELEMENTS // 4096
