"""Checkpoints a node can trust after kill -9: written atomically, checked before use.

A checkpoint holds the merged model of a final round (its canonical vector), the round
number, the digest the chain agreed on, small JSON state (the sync policy's, the trainer's
counters) and, optionally, opaque bytes after the vector (an optimizer's state, as a hook
user's callback gives it; their length and SHA-256 are in the metadata). It is written to a
temporary file in the same folder, fsynced and renamed over the old one, then the folder is
fsynced: a crash leaves either the old checkpoint or the new one, never half of one. On load
the vector's digest must match the digest stored beside it; a corrupt or truncated file is
moved aside with a warning and never loaded, and the node falls back to the previous good
one (or to catching up from peers).

The header names the hash scheme its digest was computed with (the chunk hash, the chunk
size rule and the commitment over the chunk hashes), so that a change of any (BLAKE3 chunk
hashes, then per-size chunks and Merkle roots, came that way) does not make every
existing checkpoint look corrupt (docs/canonical-vector.md#checkpoints). A checkpoint of
another scheme is whole, so it is left in place, named with both schemes in a warning and not
loaded; it is not re-hashed: its digest is the one the chain agreed on for that round, and a
re-hashed digest is one no chain ever agreed on, so the resume check against the chain
could not pass, and re-hashing would mean keeping every old hash to verify the file first.
A header without a scheme was written before it had one, under LEGACY.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from swarmnode import canonical

log = logging.getLogger(__name__)

MAGIC = b"SWARMCK1"
_HEADER = struct.Struct("<8sQI")  # magic, vector elements, metadata bytes
KEEP = 2  # the newest checkpoints kept: the previous one is the fallback for a corrupt one


@dataclass(frozen=True)
class HashScheme:
    """How a digest was computed from a vector: which chunk hash, over chunks of which size
    (a fixed count of elements, or the name of a rule), combined how."""

    chunk_hash: str
    chunk_elements: int | str
    commitment: str = "sha256-list"  # files that name none: SHA-256 of the whole list

    def __str__(self) -> str:
        return f"{self.chunk_hash} over {_size(self.chunk_elements)} chunks, {self.commitment}"


def _size(chunk_elements: int | str) -> str:
    return f"{chunk_elements}-element" if isinstance(chunk_elements, int) else chunk_elements


CURRENT = HashScheme(canonical.CHUNK_HASH, canonical.CHUNK_RULE, canonical.COMMITMENT)
LEGACY = HashScheme("sha256", 4096)  # fixed: the scheme of files whose header names none


class OtherHashScheme(ValueError):
    """A whole checkpoint whose digest was computed under another scheme than this node's.

    A ValueError, so that callers that skip unreadable files skip it too; CheckpointStore
    tells it apart from a corrupt file."""

    def __init__(self, scheme: HashScheme) -> None:
        self.scheme = scheme
        super().__init__(_refusal(scheme))


def _refusal(scheme: HashScheme) -> str:
    """One line naming what differs between a file's scheme and this node's."""
    parts = []
    if scheme.chunk_hash != CURRENT.chunk_hash:
        parts.append(
            f"written with {scheme.chunk_hash} chunk hashes; this node uses {CURRENT.chunk_hash}"
        )
    if scheme.chunk_elements != CURRENT.chunk_elements:
        parts.append(
            f"written over {_size(scheme.chunk_elements)} chunks; this node uses "
            f"{_size(CURRENT.chunk_elements)} chunks"
        )
    if scheme.commitment != CURRENT.commitment:
        parts.append(
            f"written with a {scheme.commitment} commitment; this node uses {CURRENT.commitment}"
        )
    return "; ".join(parts) or f"written with {scheme}"


@dataclass(frozen=True)
class Checkpoint:
    round: int
    digest: bytes
    vector: npt.NDArray[np.float32]
    state: dict[str, Any] = field(default_factory=dict)
    extra: bytes = b""  # opaque to swarmnode, e.g. a torch.save of an optimizer's state


class CheckpointStore:
    """The checkpoints of one node, in one folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path_for(self, round: int) -> Path:
        return self.folder / f"round-{round:08d}.ckpt"

    def save(self, checkpoint: Checkpoint) -> Path:
        """Writes atomically; refuses a checkpoint whose vector does not match its digest."""
        vector = np.ascontiguousarray(checkpoint.vector, dtype="<f4")
        if canonical.digest(vector) != checkpoint.digest:
            raise ValueError(f"round {checkpoint.round}: the vector does not match its digest")
        meta = json.dumps(
            {
                "round": checkpoint.round,
                "digest": checkpoint.digest.hex(),
                "chunk_hash": CURRENT.chunk_hash,
                "chunk_elements": CURRENT.chunk_elements,
                "commitment": CURRENT.commitment,
                "state": checkpoint.state,
                **_extra_meta(checkpoint.extra),
            },
            sort_keys=True,
        ).encode()
        target = self.path_for(checkpoint.round)
        temporary = target.with_suffix(f".tmp-{os.getpid()}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(_HEADER.pack(MAGIC, len(vector), len(meta)))
                out.write(meta)
                out.write(vector.tobytes())
                out.write(checkpoint.extra)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, target)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        _fsync_folder(self.folder)
        for old in self._files()[:-KEEP]:
            old.unlink(missing_ok=True)
        return target

    def latest(self) -> Checkpoint | None:
        """The newest checkpoint that reads back whole; bad ones are set aside, never loaded."""
        for path in reversed(self._files()):
            try:
                return read(path)
            except OtherHashScheme as exc:
                log.warning("checkpoint %s not loaded (%s): left in place", path, exc)
            except (OSError, ValueError) as exc:
                aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
                path.rename(aside)
                log.warning("checkpoint %s is unusable (%s): moved to %s", path, exc, aside.name)
        return None

    def _files(self) -> list[Path]:
        return sorted(self.folder.glob("round-*.ckpt"))


def read(path: Path) -> Checkpoint:
    """Reads and checks one checkpoint file; ValueError says what is wrong with it.

    OtherHashScheme says instead that the file is whole but hashed another way."""
    data = path.read_bytes()
    meta, vector_offset = _metadata(data)
    try:
        size = meta.get("chunk_elements", LEGACY.chunk_elements)
        scheme = HashScheme(
            str(meta.get("chunk_hash", LEGACY.chunk_hash)),
            size if isinstance(size, str) else int(size),
            str(meta.get("commitment", LEGACY.commitment)),
        )
        digest = bytes.fromhex(meta["digest"])
        round_number = int(meta["round"])
        state = dict(meta.get("state", {}))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"unreadable metadata ({exc})") from exc
    if scheme != CURRENT:
        raise OtherHashScheme(scheme)
    extra_offset = len(data) - int(meta.get("extra_bytes", 0))
    count = (extra_offset - vector_offset) // canonical.ELEMENT_BYTES
    vector = np.frombuffer(data, dtype="<f4", count=count, offset=vector_offset)
    vector = vector.astype(np.float32)
    if canonical.digest(vector) != digest:
        raise ValueError("the model does not match the digest stored beside it")
    extra = data[extra_offset:]
    if extra and hashlib.sha256(extra).hexdigest() != meta.get("extra_sha256"):
        raise ValueError("the bytes after the model do not match their SHA-256")
    return Checkpoint(round_number, digest, vector, state, extra)


def _metadata(data: bytes) -> tuple[dict[str, Any], int]:
    """The header's JSON metadata and where the vector starts, once the sizes add up."""
    if len(data) < _HEADER.size:
        raise ValueError("truncated header")
    magic, elements, meta_size = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ValueError("not a swarmnode checkpoint")
    vector_offset = _HEADER.size + meta_size
    if len(data) < vector_offset:
        raise ValueError(f"{len(data)} bytes where the header promises at least {vector_offset}")
    try:
        meta = json.loads(data[_HEADER.size : vector_offset])
    except ValueError as exc:
        raise ValueError(f"unreadable metadata ({exc})") from exc
    if not isinstance(meta, dict):
        raise ValueError("unreadable metadata (not a JSON object)")
    extra = meta.get("extra_bytes", 0)
    if not isinstance(extra, int) or extra < 0:
        raise ValueError("unreadable metadata (extra_bytes)")
    expected = vector_offset + elements * canonical.ELEMENT_BYTES + extra
    if len(data) != expected:
        raise ValueError(f"{len(data)} bytes where the header promises {expected}")
    return meta, vector_offset


def _extra_meta(extra: bytes) -> dict[str, Any]:
    """What the metadata says of the bytes after the vector (nothing when there are none,
    so that a checkpoint without any reads as before)."""
    if not extra:
        return {}
    return {"extra_bytes": len(extra), "extra_sha256": hashlib.sha256(extra).hexdigest()}


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
