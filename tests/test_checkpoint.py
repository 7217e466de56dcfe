"""Checkpoints survive crashes: atomic writes, and a bad file is set aside, never loaded."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from swarmnode import canonical
from swarmnode.checkpoint import (
    CURRENT,
    MAGIC,
    Checkpoint,
    CheckpointStore,
    HashScheme,
    OtherHashScheme,
    read,
)


def checkpoint(round: int, seed: int = 0) -> Checkpoint:
    vector = np.random.default_rng(seed).standard_normal(5000).astype(np.float32)
    return Checkpoint(round, canonical.digest(vector), vector, {"sync": {"interval": 8}})


def test_round_trip_keeps_the_newest_two_owner_only(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "ck")
    for r in (1, 2, 3):
        store.save(checkpoint(r, seed=r))
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        "round-00000002.ckpt",
        "round-00000003.ckpt",
    ]
    latest = store.latest()
    assert latest is not None and latest.round == 3
    assert latest.vector.tobytes() == checkpoint(3, seed=3).vector.tobytes()
    assert latest.state == {"sync": {"interval": 8}}
    assert os.stat(store.path_for(3)).st_mode & 0o777 == 0o600


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_a_damaged_checkpoint_is_set_aside_and_the_previous_one_used(
    tmp_path: Path, damage: str
) -> None:
    store = CheckpointStore(tmp_path)
    store.save(checkpoint(1, seed=1))
    path = store.save(checkpoint(2, seed=2))
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[-10] ^= 0xFF
    else:
        data = bytearray(b"not a checkpoint at all")
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError):
        read(path)
    latest = store.latest()
    assert latest is not None and latest.round == 1  # never the damaged round 2
    assert not path.exists()
    assert len(list(tmp_path.glob("round-00000002.ckpt.corrupt-*"))) == 1


def test_bytes_after_the_model_round_trip_and_a_changed_byte_sets_the_file_aside(
    tmp_path: Path,
) -> None:
    """What a hook user's optimizer state travels in (SwarmCallback.from_node_dir): opaque
    bytes after the vector, checked by their SHA-256 like the vector by its digest."""
    store = CheckpointStore(tmp_path / "ck")
    plain = checkpoint(1, seed=1)
    store.save(plain)
    with_extra = checkpoint(2, seed=2)
    extra = b"optimizer state \x00\xff" * 100
    path = store.save(Checkpoint(2, with_extra.digest, with_extra.vector, {}, extra))
    latest = store.latest()
    assert latest is not None and latest.round == 2 and latest.extra == extra
    np.testing.assert_array_equal(latest.vector, with_extra.vector)
    assert read(store.path_for(1)).extra == b""  # a checkpoint without any reads as before

    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # one bit of the extra bytes
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256"):
        read(path)
    fallback = store.latest()  # set aside; the previous good one is used
    assert fallback is not None and fallback.round == 1


def test_a_vector_that_does_not_match_its_digest_is_never_written(tmp_path: Path) -> None:
    good = checkpoint(4)
    with pytest.raises(ValueError, match="does not match"):
        CheckpointStore(tmp_path).save(Checkpoint(4, b"\x00" * 32, good.vector))
    assert list(tmp_path.iterdir()) == []


def test_a_crash_before_the_rename_leaves_the_old_checkpoint(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save(checkpoint(1, seed=1))
    (tmp_path / "round-00000002.tmp-999").write_bytes(b"half a checkpoint")  # killed mid-write
    latest = store.latest()
    assert latest is not None and latest.round == 1


def write_by_hand(path: Path, meta: dict[str, Any], vector: np.ndarray[Any, Any]) -> None:
    """A checkpoint file laid out byte by byte, so the test does not depend on save()."""
    encoded = json.dumps(meta).encode()
    header = MAGIC + len(vector).to_bytes(8, "little") + len(encoded).to_bytes(4, "little")
    path.write_bytes(header + encoded + vector.astype("<f4").tobytes())


def test_the_header_names_the_hash_scheme(tmp_path: Path) -> None:
    path = CheckpointStore(tmp_path).save(checkpoint(1))
    text = path.read_bytes()
    assert b'"chunk_hash": "blake3"' in text
    assert b'"chunk_elements": "pow2(numel/1024) in 16..4096"' in text
    assert b'"commitment": "merkle"' in text


def test_the_scheme_name_is_canonicals_chunk_hash() -> None:
    """If canonical.py changes its chunk hash, canonical.CHUNK_HASH (what checkpoint headers
    record) must say so: the name is checked against the blake3 package directly."""
    from blake3 import blake3

    one_chunk = np.arange(16, dtype="<f4")  # a vector this small is one chunk of 16
    assert canonical.CHUNK_HASH == "blake3" and canonical.COMMITMENT == "merkle"
    assert canonical.chunk_hashes(one_chunk) == blake3(one_chunk.tobytes()).digest()
    assert HashScheme("blake3", canonical.CHUNK_RULE, "merkle") == CURRENT


def list_digest(vector: np.ndarray[Any, Any], chunk_hash: str = "sha256") -> bytes:
    """The digest the schemes before Merkle roots gave a vector, by hand: SHA-256 of the
    concatenated chunk hashes (SHA-256 or BLAKE3) of 4096-element chunks."""
    from blake3 import blake3

    data = vector.astype("<f4").tobytes()
    size = 4096 * 4

    def hashed(part: bytes) -> bytes:
        return hashlib.sha256(part).digest() if chunk_hash == "sha256" else blake3(part).digest()

    return hashlib.sha256(
        b"".join(hashed(data[i : i + size]) for i in range(0, len(data), size))
    ).digest()


def assert_left_in_place(store: CheckpointStore, path: Path) -> None:
    latest = store.latest()
    assert latest is not None and latest.round == 1  # the other scheme's round 2 is skipped
    assert path.exists()
    assert list(store.folder.glob("*.corrupt-*")) == []


@pytest.mark.parametrize(
    ("chunk_hash", "chunk_elements", "message"),
    [
        ("sha256", 4096, "written with sha256 chunk hashes; this node uses blake3"),
        (
            "blake3",
            1024,
            "written over 1024-element chunks; this node uses pow2(numel/1024) in 16..4096",
        ),
        ("sha256", 1024, "written with sha256 chunk hashes; this node uses blake3; written over"),
        ("blake3", "pow2(numel/1024) in 16..4096", "written with a sha256-list commitment"),
    ],
)
def test_a_checkpoint_of_another_scheme_is_named_not_set_aside_as_corrupt(
    tmp_path: Path,
    chunk_hash: str,
    chunk_elements: int | str,
    message: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = CheckpointStore(tmp_path)
    store.save(checkpoint(1, seed=1))
    other = checkpoint(2, seed=2)
    meta = {
        "round": 2,
        "digest": "ab" * 32,  # whatever the other scheme made of it: never checked here
        "chunk_hash": chunk_hash,
        "chunk_elements": chunk_elements,
    }
    path = store.path_for(2)
    write_by_hand(path, meta, other.vector)
    with pytest.raises(OtherHashScheme) as named:
        read(path)
    assert named.value.scheme == HashScheme(chunk_hash, chunk_elements)
    assert message in str(named.value) and "\n" not in str(named.value)
    with caplog.at_level(logging.WARNING, logger="swarmnode.checkpoint"):
        assert_left_in_place(store, path)
    assert "left in place" in caplog.text and "corrupt" not in caplog.text


def test_after_the_change_to_blake3_an_old_sha256_checkpoint_is_another_scheme(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The case the header exists for: files written before the change to BLAKE3, with or
    without the scheme field, whole and with their true SHA-256-scheme digest, are refused by
    name as sha256 files, not set aside as corrupt ones."""
    store = CheckpointStore(tmp_path)
    for number, named in ((1, True), (2, False)):
        old = checkpoint(number, seed=number)
        meta: dict[str, Any] = {"round": number, "digest": list_digest(old.vector).hex()}
        if named:
            meta |= {"chunk_hash": "sha256", "chunk_elements": 4096}
        write_by_hand(store.path_for(number), meta, old.vector)
        with pytest.raises(OtherHashScheme) as refused:
            read(store.path_for(number))
        assert str(refused.value).startswith(
            "written with sha256 chunk hashes; this node uses blake3; written over 4096-element "
            "chunks; this node uses pow2(numel/1024) in 16..4096 chunks; written with a "
            "sha256-list commitment; this node uses merkle"
        )
        assert refused.value.scheme == HashScheme("sha256", 4096, "sha256-list")
    with caplog.at_level(logging.WARNING, logger="swarmnode.checkpoint"):
        assert store.latest() is None  # every file is sha256: catch up from peers instead
    assert "written with sha256 chunk hashes; this node uses blake3" in caplog.text
    assert "corrupt" not in caplog.text
    assert len(list(tmp_path.glob("round-*.ckpt"))) == 2
    assert list(tmp_path.glob("*.corrupt-*")) == []


def test_after_the_change_to_merkle_roots_a_blake3_list_checkpoint_is_another_scheme(
    tmp_path: Path,
) -> None:
    """Files of the scheme just before (BLAKE3 over 4096-element chunks, the digest SHA-256 of
    the list, no commitment field) are whole: refused by name, never set aside as corrupt."""
    store = CheckpointStore(tmp_path)
    old = checkpoint(1, seed=1)
    meta = {
        "round": 1,
        "digest": list_digest(old.vector, "blake3").hex(),
        "chunk_hash": "blake3",
        "chunk_elements": 4096,
    }
    write_by_hand(store.path_for(1), meta, old.vector)
    with pytest.raises(OtherHashScheme) as refused:
        read(store.path_for(1))
    assert refused.value.scheme == HashScheme("blake3", 4096, "sha256-list")
    assert str(refused.value) == (
        "written over 4096-element chunks; this node uses pow2(numel/1024) in 16..4096 chunks; "
        "written with a sha256-list commitment; this node uses merkle"
    )
    assert store.latest() is None and store.path_for(1).exists()
    assert list(tmp_path.glob("*.corrupt-*")) == []
