"""Checkpoints survive crashes: atomic writes, and a bad file is set aside, never loaded."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from swarmnode import canonical
from swarmnode.checkpoint import Checkpoint, CheckpointStore, read


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
