"""Ready-made Tasks on the bundled data sets, for `swarmnode run` and the process simulator.

A daemon names its task as `module:attribute` with keyword arguments from node.toml's
`task_args`, so one function serves every node of a swarm: each passes the classes (or the
slice) it holds. The model depends only on the data set and `hidden`, never on the slice, so
every node builds the same architecture and the digest of its initial model matches the
one on chain.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from swarmnode.exceptions import ConfigError
from swarmnode.simulation.data import DATASETS, load_dataset
from swarmnode.simulation.engine import MLP
from swarmnode.training import Task, accuracy


def dataset_task(
    dataset: str = "digits",
    *,
    classes: Sequence[int] | None = None,
    part: int = 0,
    parts: int = 1,
    data_seed: int = 0,
    hidden: int = 64,
    batch_size: int = 32,
    learning_rate: float = 0.05,
) -> Task:
    """A node's task: an MLP on the training rows of `dataset` this node holds.

    `classes` keeps only rows of those labels (a label-skewed hospital); `part` of `parts`
    then keeps every parts-th of them (disjoint slices for nodes sharing classes). The
    validation set is the held-out split restricted to the same classes, so the loss a node
    reports on chain measures what it can see; `held_out` gives the whole split for scoring.
    """
    if dataset not in DATASETS:
        raise ConfigError(f"dataset {dataset!r}: unknown (known: {', '.join(DATASETS)})")
    if parts < 1 or not 0 <= part < parts:
        raise ConfigError(f"part {part} of {parts}: need 0 <= part < parts")
    data = load_dataset(dataset, seed=data_seed)
    keep = _rows(data.y_train, classes, data.classes)[part::parts]
    held = _rows(data.y_test, classes, data.classes)
    if len(keep) == 0:
        raise ConfigError(f"classes {list(classes or [])}: no training rows in {dataset}")
    train = TensorDataset(data.x_train[keep], data.y_train[keep])
    val = TensorDataset(data.x_test[held], data.y_test[held])

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
    dataset: str = "digits", *, classes: Sequence[int] | None = None, data_seed: int = 0
) -> TensorDataset:
    """The held-out rows (of `classes` only, if given) that no node trains on."""
    data = load_dataset(dataset, seed=data_seed)
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
