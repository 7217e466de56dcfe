"""The Tasks simulated nodes train: on the bundled data sets, or a user's own.

The in-process engine builds each node's task with `make_task`; a `swarmnode run` daemon of
the process simulator names `dataset_task` in its node.toml, which builds the same one. A
daemon names its task as `module:attribute` with keyword arguments from node.toml's
`task_args`, so one function serves every node of a swarm: each passes the classes (or the
slice) it holds. The model depends only on the data set and `hidden`, never on the slice, so
every node builds the same architecture and the digest of its initial model matches the
one on chain. Part of the simulator's data layer (docs/simulator.md#layers): it reads the
scenario and the data sets, and nothing that runs a swarm.
"""

from __future__ import annotations

from collections.abc import Sequence, Sized
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset
from torch.utils.data import Dataset as TorchDataset

from swarmnode import canonical
from swarmnode.exceptions import ConfigError
from swarmnode.simulation.attacks import flip_labels, trains_on_flipped_labels
from swarmnode.simulation.data import DATASETS, Dataset, load_dataset
from swarmnode.simulation.partition import IndexArray, partition
from swarmnode.simulation.scenario import Scenario
from swarmnode.training import Data, LocalTrainer, Task, accuracy, import_attribute, load_task


class MLP(nn.Module):
    """The simulator's model: small enough for many nodes on two cores, big enough to learn."""

    def __init__(self, features: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


def dataset_task(
    dataset: str = "digits",
    *,
    classes: Sequence[int] | None = None,
    part: int = 0,
    parts: int = 1,
    indices: Sequence[int] | None = None,
    data_seed: int = 0,
    test_fraction: float = 0.2,
    hidden: int = 64,
    batch_size: int = 32,
    learning_rate: float = 0.05,
) -> Task:
    """A node's task: an MLP on the training rows of `dataset` this node holds.

    `classes` keeps only rows of those labels (a label-skewed hospital); `part` of `parts`
    then keeps every parts-th of them (disjoint slices for nodes sharing classes). The
    validation set is the held-out split restricted to the same classes, so the loss a node
    reports on chain measures what it can see; `held_out` gives the whole split for scoring.

    `indices` instead names the training rows one by one: any partition the simulator draws
    (Dirichlet, shards, quantity skew) reaches a `swarmnode run` daemon this way. Such a node
    validates on its own rows, as the in-process simulator's nodes do: there the held-out
    split is the test set every model is scored on, and no node may see it, not even
    through the validation loss it reports on chain.
    """
    if dataset not in DATASETS:
        raise ConfigError(f"dataset {dataset!r}: unknown (known: {', '.join(DATASETS)})")
    if parts < 1 or not 0 <= part < parts:
        raise ConfigError(f"part {part} of {parts}: need 0 <= part < parts")
    if indices is not None and (classes is not None or parts != 1):
        raise ConfigError("indices name the rows themselves: give them without classes or parts")
    data = load_dataset(dataset, test_fraction=test_fraction, seed=data_seed)
    if indices is not None:
        own = _own_rows(data, indices)
        train, val = own, own
    else:
        train, val = _class_rows(data, classes, part, parts)
    return _mlp_task(data, train, val, hidden, batch_size, learning_rate)


def _own_rows(data: Dataset, indices: Sequence[int]) -> TensorDataset:
    keep = _indices(indices, len(data.y_train), data.name)
    return TensorDataset(data.x_train[keep], data.y_train[keep])


def _class_rows(
    data: Dataset, classes: Sequence[int] | None, part: int, parts: int
) -> tuple[TensorDataset, TensorDataset]:
    """The training rows of `classes` this part holds, and the held-out rows of `classes`."""
    keep = _rows(data.y_train, classes, data.classes)[part::parts]
    if len(keep) == 0:
        raise ConfigError(f"classes {list(classes or [])}: no training rows in {data.name}")
    held = _rows(data.y_test, classes, data.classes)
    train = TensorDataset(data.x_train[keep], data.y_train[keep])
    return train, TensorDataset(data.x_test[held], data.y_test[held])


def _mlp_task(
    data: Dataset,
    train: TensorDataset,
    val: TensorDataset,
    hidden: int,
    batch_size: int,
    learning_rate: float,
) -> Task:
    """The simulator's model and optimizer on `train`: built here alone, for the in-process
    engine and a daemon alike, so that every node starts from the same model digest."""

    def make_optimizer(params: Any) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=learning_rate, momentum=0.9)

    return Task(
        model_factory=lambda: MLP(data.features, hidden, data.classes),
        train_data=train,
        val_data=val,
        loss_fn=nn.CrossEntropyLoss(),
        optimizer_factory=make_optimizer,
        batch_size=batch_size,
        metrics={"accuracy": accuracy},
        name=f"{data.name}-mlp",
    )


def held_out(
    dataset: str = "digits",
    *,
    classes: Sequence[int] | None = None,
    data_seed: int = 0,
    test_fraction: float = 0.2,
) -> TensorDataset:
    """The held-out rows (of `classes` only, if given) that no node trains on."""
    data = load_dataset(dataset, test_fraction=test_fraction, seed=data_seed)
    held = _rows(data.y_test, classes, data.classes)
    return TensorDataset(data.x_test[held], data.y_test[held])


def _rows(labels: torch.Tensor, classes: Sequence[int] | None, known: int) -> torch.Tensor:
    if classes is None:
        return torch.arange(len(labels))
    wanted = sorted(set(int(c) for c in classes))
    if not wanted or wanted[0] < 0 or wanted[-1] >= known:
        raise ConfigError(f"classes {list(classes)}: each must be in 0..{known - 1}")
    mask = np.isin(labels.numpy(), wanted)
    return torch.as_tensor(np.flatnonzero(mask), dtype=torch.long)


def _indices(indices: Sequence[int], rows: int, dataset: str) -> torch.Tensor:
    chosen = np.asarray(list(indices), dtype=np.int64)
    if len(chosen) == 0:
        raise ConfigError(f"indices: empty; a node needs training rows of {dataset}")
    if chosen.min() < 0 or chosen.max() >= rows:
        raise ConfigError(f"indices: each must be in 0..{rows - 1}, the training rows of {dataset}")
    if len(np.unique(chosen)) != len(chosen):
        raise ConfigError("indices: a row is named twice")
    return torch.as_tensor(chosen, dtype=torch.long)


# ---------------------------------------------------------------- the simulator's node tasks


def scenario_data(scenario: Scenario) -> tuple[Dataset, list[IndexArray]]:
    """The scenario's bundled data set, and each node's slice of its training rows."""
    data = load_dataset(scenario.dataset, test_fraction=scenario.test_fraction, seed=scenario.seed)
    parts = partition(
        data.y_train.numpy(),
        scenario.nodes,
        scenario.partition,
        seed=scenario.seed,
        alpha=scenario.alpha,
        shards_per_node=scenario.shards_per_node,
    )
    return data, parts


def make_task(
    scenario: Scenario, data: Dataset, indices: npt.NDArray[np.int64], *, flip: bool = False
) -> Task:
    """A node's task: the shared model, its own slice, its slice as validation signal; with
    `flip`, a label-flipping Byzantine node's (its slice with every label flipped)."""
    chosen = torch.as_tensor(indices, dtype=torch.long)
    labels = data.y_train[chosen]
    if flip:
        labels = flip_labels(labels, data.classes)
    own = TensorDataset(data.x_train[chosen], labels)
    s = scenario
    return _mlp_task(data, own, own, s.hidden, s.batch_size, s.learning_rate)


def node_tasks(scenario: Scenario, data: Dataset, parts: list[npt.NDArray[np.int64]]) -> list[Task]:
    """One task per part; the Byzantine nodes are the last ones, and with `label_flip` they
    train on their slices with the labels flipped."""
    flipped = len(parts) - scenario.byzantine if trains_on_flipped_labels(scenario.attack) else None
    return [
        make_task(scenario, data, part, flip=flipped is not None and i >= flipped)
        for i, part in enumerate(parts)
    ]


DATASET_TASK = "swarmnode.simulation.tasks:dataset_task"
"""What a --processes node's node.toml names for a bundled data set."""


def dataset_task_args(
    scenario: Scenario, indices: Sequence[int] | npt.NDArray[np.int64]
) -> dict[str, Any]:
    """node.toml's task_args that make `dataset_task` build the task the in-process engine
    builds for the same slice (make_task): same split, rows, model and optimizer."""
    return {
        "dataset": scenario.dataset,
        "indices": [int(i) for i in indices],
        "data_seed": scenario.seed,
        "test_fraction": scenario.test_fraction,
        "hidden": scenario.hidden,
        "batch_size": scenario.batch_size,
        "learning_rate": scenario.learning_rate,
    }


def own_task_args(node: int, nodes: int, seed: int) -> dict[str, Any]:
    """The keyword arguments a user's task function gets, in process and in a daemon alike."""
    return {"node": node, "nodes": nodes, "seed": seed}


def own_tasks(spec: str, test_spec: str, nodes: int, seed: int) -> tuple[list[Task], Data]:
    """A user's own data set: one Task per node from `spec`, and the held-out test set.

    Loaded by `load_task`, as the daemon loads its own, so a spec that works here works in
    every `swarmnode run` of --processes. Everything the simulator relies on is checked here, before
    a chain or a node starts: each node's Task scores accuracy, every node builds the same
    initial model (else the contract's initial digest cannot match them all), and the
    training data can be pooled for the centralized baseline.
    """
    tasks = [load_task(spec, own_task_args(i, nodes, seed)) for i in range(nodes)]
    first: bytes | None = None
    for i, task in enumerate(tasks):
        if "accuracy" not in task.metrics:
            raise ConfigError(
                f"task {spec}: node {i}'s Task has no 'accuracy' metric, which the simulator "
                "compares (metrics={'accuracy': swarmnode.training.accuracy})"
            )
        if not isinstance(task.train_data, TorchDataset) or isinstance(
            task.train_data, IterableDataset
        ):
            raise ConfigError(
                f"task {spec}: node {i}'s train_data is not a map-style Dataset, so it cannot "
                "be pooled for the centralized baseline"
            )
        digest = canonical.digest(LocalTrainer(task, "cpu", 0, init_seed=seed).snapshot())
        if first is not None and digest != first:
            raise ConfigError(
                f"task {spec}: node {i} builds a different initial model from node 0's; "
                "every node must build the same model"
            )
        first = digest
    return tasks, own_test_set(test_spec, seed)


def own_test_set(spec: str, seed: int) -> Data:
    """`spec` names a Dataset or DataLoader, or a function called as f(seed=seed) for one."""
    value = import_attribute(spec, "test_set")
    if callable(value) and not isinstance(value, TorchDataset | DataLoader):
        try:
            value = value(seed=seed)
        except TypeError as exc:
            raise ConfigError(f"test_set {spec}: {exc}") from None
    if not isinstance(value, TorchDataset | DataLoader):
        raise ConfigError(
            f"test_set {spec}: is a {type(value).__name__}, not a torch Dataset or DataLoader"
        )
    if isinstance(value, Sized) and len(value) == 0:
        raise ConfigError(f"test_set {spec}: is empty")
    return value
