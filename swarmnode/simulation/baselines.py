"""The two baselines every swarm is judged against, on the same test set and model:
each node trained alone on its own slice, and one model trained on all the data pooled.

Compute budget: a local node trains exactly the batches it trains inside the swarm; the
pooled model trains the swarm's total (nodes x batches), so no baseline is starved.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from torch.utils.data import TensorDataset

from swarmnode.simulation.data import Dataset
from swarmnode.simulation.engine import make_task
from swarmnode.simulation.scenario import Scenario
from swarmnode.training import LocalTrainer


@dataclass
class Curve:
    """Test accuracy after each round's worth of training; the last value is the result."""

    accuracy: list[float]

    @property
    def final(self) -> float:
        return self.accuracy[-1]


def local_baselines(
    scenario: Scenario, data: Dataset, parts: list[npt.NDArray[np.int64]]
) -> list[Curve]:
    test = TensorDataset(data.x_test, data.y_test)
    curves = []
    for i, part in enumerate(parts):
        trainer = LocalTrainer(
            make_task(scenario, data, part),
            "cpu",
            scenario.seed * 1000 + i,
            init_seed=scenario.seed,
        )
        points = []
        for _ in range(scenario.rounds):
            trainer.train_batches(scenario.local_batches)
            points.append(trainer.evaluate(test)["accuracy"])
        curves.append(Curve(points))
    return curves


def centralized_baseline(
    scenario: Scenario, data: Dataset, parts: list[npt.NDArray[np.int64]]
) -> Curve:
    pooled = np.sort(np.concatenate(parts))
    trainer = LocalTrainer(
        make_task(scenario, data, pooled), "cpu", scenario.seed, init_seed=scenario.seed
    )
    test = TensorDataset(data.x_test, data.y_test)
    points = []
    for _ in range(scenario.rounds):
        trainer.train_batches(scenario.local_batches * len(parts))
        points.append(trainer.evaluate(test)["accuracy"])
    return Curve(points)
