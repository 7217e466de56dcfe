"""Bundled tasks and task_args: what a daemon's node.toml names as its task."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from swarmnode import canonical
from swarmnode.config import NodeConfig
from swarmnode.exceptions import ConfigError
from swarmnode.simulation.tasks import dataset_task, held_out
from swarmnode.training import LocalTrainer, load_task

SPEC = "swarmnode.simulation.tasks:dataset_task"


def test_classes_keep_only_their_labels_and_slices_are_disjoint() -> None:
    low = dataset_task(classes=[0, 1, 2, 3])
    labels = {int(y) for _, y in low.train_data}  # type: ignore[attr-defined]
    assert labels == {0, 1, 2, 3}
    a = dataset_task(classes=[5], part=0, parts=2)
    b = dataset_task(classes=[5], part=1, parts=2)
    rows_a = {tuple(x.tolist()) for x, _ in a.train_data}  # type: ignore[attr-defined]
    rows_b = {tuple(x.tolist()) for x, _ in b.train_data}  # type: ignore[attr-defined]
    assert rows_a and rows_b and not rows_a & rows_b
    assert {int(y) for _, y in held_out(classes=[5])} == {5}  # type: ignore[attr-defined]


def test_every_slice_builds_the_same_initial_model() -> None:
    digests = {
        canonical.digest(LocalTrainer(dataset_task(classes=c), "cpu", 0, init_seed=3).snapshot())
        for c in ([0, 1, 2, 3], [3, 4, 5, 6], None)
    }
    assert len(digests) == 1


def test_task_args_reach_the_function_and_mistakes_are_named(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        f'identity_dir = "."\ndeployment = "d.json"\ntask = "{SPEC}"\n'
        "[task_args]\nclasses = [6, 7, 8, 9]\n"
    )
    loaded = NodeConfig.load(config)
    task = load_task(loaded.task, loaded.task_args)
    assert {int(y) for _, y in task.train_data} == {6, 7, 8, 9}  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="unexpected keyword argument 'clases'"):
        load_task(SPEC, {"clases": [1]})
    with pytest.raises(ConfigError, match=r"classes \[12\]"):
        load_task(SPEC, {"classes": [12]})


def test_a_task_object_takes_no_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("ready_made_tasks")
    module.hospital = dataset_task(classes=[0, 1])  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ready_made_tasks", module)
    assert load_task("ready_made_tasks:hospital").name == "digits-mlp"
    with pytest.raises(ConfigError, match="task_args not allowed"):
        load_task("ready_made_tasks:hospital", {"classes": [1]})
