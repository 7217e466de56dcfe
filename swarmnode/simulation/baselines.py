"""The two baselines every swarm is judged against, on the same test set and model:
each node trained alone on its own slice, and one model trained on all the data pooled.

Compute budget: a local node trains exactly the batches it trains inside the swarm; the
pooled model trains the swarm's total (nodes x batches), so no baseline is starved. The
same seeds as the swarm's nodes: node i alone starts where node i starts in the swarm.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import numpy.typing as npt
from torch.utils.data import ConcatDataset, TensorDataset
from torch.utils.data import Dataset as TorchDataset

from swarmnode.simulation.data import Dataset
from swarmnode.simulation.results import Curve
from swarmnode.simulation.scenario import Scenario
from swarmnode.simulation.tasks import make_task
from swarmnode.training import Data, LocalTrainer, Task


def local_baselines(
    scenario: Scenario, data: Dataset, parts: list[npt.NDArray[np.int64]]
) -> list[Curve]:
    """Each node alone, on a bundled data set's slices."""
    tasks = [make_task(scenario, data, part) for part in parts]
    return _alone(scenario, tasks, TensorDataset(data.x_test, data.y_test))


def centralized_baseline(
    scenario: Scenario, data: Dataset, parts: list[npt.NDArray[np.int64]]
) -> Curve:
    """One model on every node's rows of a bundled data set."""
    pooled = make_task(scenario, data, np.sort(np.concatenate(parts)))
    test = TensorDataset(data.x_test, data.y_test)
    return _pooled(scenario, pooled, len(parts), test)


def own_baselines(
    scenario: Scenario, tasks: list[Task], test_set: Data
) -> tuple[list[Curve], Curve]:
    """The two baselines for a user's Tasks: the pooled model is node 0's model, loss and
    optimizer on every node's rows."""
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
    return _alone(scenario, tasks, test_set), _pooled(scenario, pooled, len(tasks), test_set)


def _alone(scenario: Scenario, tasks: list[Task], test_set: Data) -> list[Curve]:
    return [
        _curve(
            scenario,
            LocalTrainer(task, "cpu", scenario.seed * 1000 + i, init_seed=scenario.seed),
            scenario.local_batches,
            test_set,
        )
        for i, task in enumerate(tasks)
    ]


def _pooled(scenario: Scenario, task: Task, nodes: int, test_set: Data) -> Curve:
    trainer = LocalTrainer(task, "cpu", scenario.seed, init_seed=scenario.seed)
    return _curve(scenario, trainer, scenario.local_batches * nodes, test_set)


def _curve(scenario: Scenario, trainer: LocalTrainer, batches: int, test_set: Data) -> Curve:
    """`batches` of training per round, scored on `test_set` after each."""
    points = []
    for _ in range(scenario.rounds):
        trainer.train_batches(batches)
        points.append(trainer.evaluate(test_set)["accuracy"])
    return Curve(points)
