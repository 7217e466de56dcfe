"""Ready-made Tasks on the bundled data sets, for `swarmnode run` and the process simulator.

A daemon names its task as `module:attribute` with keyword arguments from node.toml's
`task_args`, so one function serves every node of a swarm: each passes the classes (or the
slice) it holds. The model depends only on the data set and `hidden`, never on the slice, so
every node builds the same architecture and the digest of its initial model matches the
one on chain.
"""

from __future__ import annotations

from collections.abc import Sequence, Sized
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import ConcatDataset, DataLoader, IterableDataset, TensorDataset
from torch.utils.data import Dataset as TorchDataset

from swarmnode import canonical
from swarmnode.exceptions import ConfigError
from swarmnode.simulation.baselines import Curve
from swarmnode.simulation.data import DATASETS, load_dataset
from swarmnode.simulation.engine import MLP
from swarmnode.simulation.scenario import Scenario
from swarmnode.training import Data, LocalTrainer, Task, accuracy, import_attribute


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
        keep = _indices(indices, len(data.y_train), dataset)
        held = keep
        val_x, val_y = data.x_train, data.y_train
    else:
        keep = _rows(data.y_train, classes, data.classes)[part::parts]
        held = _rows(data.y_test, classes, data.classes)
        val_x, val_y = data.x_test, data.y_test
    if len(keep) == 0:
        raise ConfigError(f"classes {list(classes or [])}: no training rows in {dataset}")
    train = TensorDataset(data.x_train[keep], data.y_train[keep])
    val = TensorDataset(val_x[held], val_y[held])

    def make_model() -> torch.nn.Module:
        return MLP(data.features, hidden, data.classes)

    def make_optimizer(params: Any) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=learning_rate, momentum=0.9)

    return Task(
        model_factory=make_model,
        train_data=train,
        val_data=val,
        loss_fn=torch.nn.CrossEntropyLoss(),
        optimizer_factory=make_optimizer,
        batch_size=batch_size,
        metrics={"accuracy": accuracy},
        name=f"{dataset}-mlp",
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

DATASET_TASK = "swarmnode.simulation.tasks:dataset_task"
"""What a --processes node's node.toml names for a bundled data set."""


def dataset_task_args(
    scenario: Scenario, indices: Sequence[int] | npt.NDArray[np.int64]
) -> dict[str, Any]:
    """node.toml's task_args that make `dataset_task` build the task the in-process engine
    builds for the same slice (engine.make_task): same split, rows, model and optimizer."""
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
    from swarmnode.training import load_task

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


def own_baselines(
    scenario: Scenario, tasks: list[Task], test_set: Data
) -> tuple[list[Curve], Curve]:
    """baselines.py's two baselines for a user's Tasks, with the same seeds and budget: each
    node alone trains its swarm batches, the pooled model (every node's rows, node 0's model,
    loss and optimizer) trains all the nodes' batches together, round by round."""
    local = []
    for i, task in enumerate(tasks):
        trainer = LocalTrainer(task, "cpu", scenario.seed * 1000 + i, init_seed=scenario.seed)
        points = []
        for _ in range(scenario.rounds):
            trainer.train_batches(scenario.local_batches)
            points.append(trainer.evaluate(test_set)["accuracy"])
        local.append(Curve(points))
    model = tasks[0]
    pooled = Task(
        model_factory=model.model_factory,
        train_data=ConcatDataset([cast(TorchDataset[Any], t.train_data) for t in tasks]),
        loss_fn=model.loss_fn,
        optimizer_factory=model.optimizer_factory,
        batch_size=model.batch_size,
        metrics=model.metrics,
        drop_last=model.drop_last,
        name=f"{model.name}-pooled",
    )
    trainer = LocalTrainer(pooled, "cpu", scenario.seed, init_seed=scenario.seed)
    points = []
    for _ in range(scenario.rounds):
        trainer.train_batches(scenario.local_batches * len(tasks))
        points.append(trainer.evaluate(test_set)["accuracy"])
    return local, Curve(points)
