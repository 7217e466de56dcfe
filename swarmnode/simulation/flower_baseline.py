"""The same FedAvg run through Flower's own simulation engine (Ray), for side-by-side runs.

Flower is the reference a researcher compares a simulator with, so the comparison runs the
very computation swarmnode's engines run (docs/simulator.md#flower-side-by-side): the same
split, initial model and test set; each client trains `local_batches` batches a round in
LocalTrainer's order (epoch e of node i shuffled by the seed (seed * 1000 + i, e), epochs
running on across rounds), with a fresh SGD with momentum each round (a Flower client is
rebuilt for every fit, so it keeps no momentum; swarmnode's engines match it with the
scenario's `fresh_optimizer`), and FedAvg's sample-weighted mean. Whatever differs between
the engines' final models is then float summation order, not the recipe.

Ray runs with usage stats off, bound to 127.0.0.1, without its dashboard, and is shut down
afterwards whatever happened. Needs the `swarmnode[flower]` extra (flwr[simulation], which
pins ray). A runner (docs/simulator.md#layers): it takes a scenario and gives a Curve.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from swarmnode.exceptions import ConfigError
from swarmnode.simulation.data import Dataset
from swarmnode.simulation.results import Curve
from swarmnode.simulation.scenario import Scenario
from swarmnode.simulation.tasks import make_task
from swarmnode.training import LocalTrainer, _mix

Arrays = list[npt.NDArray[Any]]
MOMENTUM = 0.9  # tasks.make_task's optimizer: SGD(lr, momentum=0.9)
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",  # Ray asks nothing of the network and sends no stats
    "FLWR_TELEMETRY_ENABLED": "0",  # nor does Flower
    "RAY_DEDUP_LOGS": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",  # no GPU asked for: leave the variables alone
}


@dataclass
class FlowerRun:
    """Flower's FedAvg: accuracy of the global model after each round, and the wall time
    from the call that starts the engine (Ray included) to the final model."""

    curve: Curve
    seconds: float
    vector: npt.NDArray[np.float32]  # the final global model, parameters in state_dict order


def has_flower_simulation() -> bool:
    """Whether flwr's simulation extra (ray) is importable here."""
    return importlib.util.find_spec("ray") is not None


def check_comparable(scenario: Scenario) -> None:
    """Flower's side runs honest FedAvg with every node every round: refuse what it lacks."""
    refused = [
        name
        for name, on in (
            (f"merge rule {scenario.merge_rule}", scenario.merge_rule != "mean"),
            ("byzantine nodes", bool(scenario.byzantine)),
            ("dropout", bool(scenario.dropout)),
            ("crash", bool(scenario.crash)),
            ("stragglers", bool(scenario.stragglers)),
            ("task", scenario.task is not None),
            ("processes", scenario.processes),
            ("dp_noise (Flower's side trains without DP)", scenario.dp_noise is not None),
            ("dp_mean_noise (Flower's side merges without DP)", scenario.dp_mean_noise is not None),
        )
        if on
    ]
    if refused:
        raise ConfigError(
            f"--compare flower runs honest FedAvg on a bundled data set: drop {', '.join(refused)}"
        )


def batch_rows(size: int, seed: int, batch_size: int, number: int) -> npt.NDArray[np.int64]:
    """The rows (into the node's own slice) of a node's batch `number` (from 0, counting
    across rounds): LocalTrainer's order, each epoch shuffled by its own generator."""
    per_epoch = math.ceil(size / batch_size)
    epoch, position = divmod(number, per_epoch)
    generator = torch.Generator().manual_seed(_mix(seed, epoch))
    order = torch.randperm(size, generator=generator).numpy()
    return order[position * batch_size : (position + 1) * batch_size]


def _vector(model: nn.Module) -> Arrays:
    return [p.detach().numpy().copy() for p in model.state_dict().values()]


def _load(model: nn.Module, arrays: Arrays) -> None:
    state = {
        k: torch.from_numpy(np.asarray(a)) for k, a in zip(model.state_dict(), arrays, strict=True)
    }
    model.load_state_dict(state, strict=True)


class _Node:
    """One Flower client's computation: its rows, its batch order, a fresh SGD each fit."""

    def __init__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int, scenario: Scenario
    ) -> None:
        self.model, self.x, self.y, self.seed = model, x, y, seed
        self.batches = scenario.local_batches
        self.batch_size = scenario.batch_size
        self.lr = scenario.learning_rate

    def fit(self, arrays: Arrays, server_round: int) -> tuple[Arrays, int]:
        _load(self.model, arrays)
        optimizer = torch.optim.SGD(self.model.parameters(), lr=self.lr, momentum=MOMENTUM)
        loss_fn = nn.CrossEntropyLoss()
        first = (server_round - 1) * self.batches
        self.model.train()
        for number in range(first, first + self.batches):
            rows = torch.from_numpy(batch_rows(len(self.y), self.seed, self.batch_size, number))
            optimizer.zero_grad(set_to_none=True)
            loss_fn(self.model(self.x[rows]), self.y[rows]).backward()
            optimizer.step()
        return _vector(self.model), len(self.y)


def run_flower(
    scenario: Scenario,
    data: Dataset,
    parts: list[npt.NDArray[np.int64]],
    *,
    client_cpus: float = 1.0,
) -> FlowerRun:
    """The scenario's rounds as Flower's FedAvg on its simulation engine (Ray, one virtual
    SuperNode per part); the global model scored on the test set after each round."""
    check_comparable(scenario)
    if not has_flower_simulation():
        raise ConfigError("Flower's simulation engine needs Ray: pip install 'swarmnode[flower]'")
    os.environ.update(RAY_ENV)
    # here, not at the top: flwr's simulation and Ray take seconds to import
    import ray
    from flwr.client import ClientApp, NumPyClient
    from flwr.common import Context, ndarrays_to_parameters
    from flwr.server import ServerApp, ServerAppComponents, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.simulation import run_simulation

    initial_model = LocalTrainer(
        make_task(scenario, data, parts[0]), "cpu", 0, init_seed=scenario.seed
    ).model
    initial = _vector(initial_model)
    slices = [(data.x_train[torch.as_tensor(p)], data.y_train[torch.as_tensor(p)]) for p in parts]
    x_test, y_test = data.x_test, data.y_test
    seed = scenario.seed
    accuracies: list[float] = []
    final: list[Arrays] = []

    class Client(NumPyClient):
        def __init__(self, node: _Node) -> None:
            self.node = node

        def fit(
            self, parameters: Arrays, config: dict[str, Any]
        ) -> tuple[Arrays, int, dict[str, Any]]:
            arrays, rows = self.node.fit(parameters, int(config["server_round"]))
            return arrays, rows, {}

    def client_fn(context: Context) -> Any:
        torch.set_num_threads(1)  # one CPU per client, as client_resources says
        i = int(context.node_config["partition-id"])
        x, y = slices[i]
        model = make_task(scenario, data, parts[i]).model_factory()
        return Client(_Node(model, x, y, seed * 1000 + i, scenario)).to_client()

    def evaluate(server_round: int, parameters: Arrays, config: dict[str, Any]) -> Any:
        if server_round == 0:
            return None
        model = initial_model
        _load(model, parameters)
        with torch.no_grad():
            out = model(x_test)
            loss = float(nn.functional.cross_entropy(out, y_test))
            accuracy = float((out.argmax(dim=-1) == y_test).float().mean())
        accuracies.append(accuracy)
        if server_round == scenario.rounds:
            final.append([np.array(a) for a in parameters])
        return loss, {"accuracy": accuracy}

    def server_fn(context: Context) -> ServerAppComponents:
        n = len(parts)
        strategy = FedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=n,
            min_available_clients=n,
            initial_parameters=ndarrays_to_parameters(initial),
            evaluate_fn=evaluate,
            on_fit_config_fn=lambda server_round: {"server_round": server_round},
        )
        return ServerAppComponents(strategy=strategy, config=ServerConfig(scenario.rounds))

    backend = {
        "client_resources": {"num_cpus": client_cpus, "num_gpus": 0.0},
        "init_args": {
            "include_dashboard": False,
            "_node_ip_address": "127.0.0.1",
            "num_cpus": os.cpu_count() or 1,
            "logging_level": logging.ERROR,
            "log_to_driver": False,
        },
    }
    logging.getLogger("flwr").setLevel(logging.ERROR)
    t0 = time.perf_counter()
    try:
        run_simulation(
            server_app=ServerApp(server_fn=server_fn),
            client_app=ClientApp(client_fn=client_fn),
            num_supernodes=len(parts),
            backend_config=backend,  # type: ignore[arg-type]
        )
        seconds = time.perf_counter() - t0
    finally:
        if ray.is_initialized():
            ray.shutdown()
    if len(accuracies) != scenario.rounds or not final:
        raise RuntimeError(
            f"Flower's simulation ended after {len(accuracies)} of {scenario.rounds} rounds"
        )
    vector = np.concatenate([a.ravel() for a in final[0]]).astype(np.float32)
    return FlowerRun(Curve(accuracies), seconds, vector)
