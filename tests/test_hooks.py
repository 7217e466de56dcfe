"""The two other ways in: a hook in your own PyTorch loop, and an unmodified Flower client.

Both run as real swarm nodes (in-memory ledger and transport here) and leave every round
holding the same parameters, with no server anywhere."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from flwr.client import NumPyClient
from torch import nn

from swarmnode import canonical
from swarmnode.flower import FlowerNode
from swarmnode.ledger.base import Ledger
from swarmnode.node import SwarmCallback
from swarmnode.p2p.inbox import Inbox
from swarmnode.p2p.transport import Transport
from swarmnode.round import RoundSettings
from swarmnode.rules import Rule, SwarmParams, SyncPolicyId
from swarmnode.simulation.local import memory_swarm, run_in_threads


def swarm(
    n: int, initial: npt.NDArray[np.float32], every: int
) -> list[tuple[Ledger, Transport, Inbox]]:
    params = SwarmParams(
        min_peers=2,
        max_peers=n,
        sync_policy=Rule(SyncPolicyId.EVERY_N_BATCHES, (every, 0, 0, 0)),
        initial_model_digest=canonical.digest(initial),
    )
    return [(p.ledger, p.transport, p.inbox) for p in memory_swarm(params, n).peers]


def in_threads(jobs: list[Callable[[], Any]]) -> list[Any]:
    return run_in_threads(jobs, timeout=60)


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1), nn.BatchNorm1d(1))


def test_a_hook_in_a_users_own_loop_merges_in_place() -> None:
    nodes = swarm(3, canonical.flatten(model()).numpy(), every=5)
    generator = torch.Generator().manual_seed(1)
    w = torch.randn(4, 1, generator=generator)

    nets = [model() for _ in nodes]  # built here: torch's global RNG is not per thread

    def my_training_loop(i: int) -> tuple[nn.Module, SwarmCallback]:
        ledger, transport, inbox = nodes[i]
        net = nets[i]
        x = torch.randn(80, 4, generator=torch.Generator().manual_seed(10 + i))
        y = x @ w
        optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
        hook = SwarmCallback(
            net,
            ledger=ledger,
            transport=transport,
            inbox=inbox,
            num_samples=len(x),
            val_loss=lambda: nn.functional.mse_loss(net(x), y).item(),
            settings=RoundSettings(poll=0.01),
        )
        for _ in range(2):  # two epochs of 8 batches: syncs after batches 5, 10, 15, then end
            for start in range(0, 80, 10):
                optimizer.zero_grad()
                loss = nn.functional.mse_loss(net(x[start : start + 10]), y[start : start + 10])
                loss.backward()
                optimizer.step()
                hook.on_batch_end()
        hook.on_train_end()
        return net, hook

    trained = in_threads([lambda i=i: my_training_loop(i) for i in range(3)])
    assert [len(hook.rounds) for _, hook in trained] == [4, 4, 4]
    assert all(r.status == "final" for _, hook in trained for r in hook.rounds)
    vectors = {canonical.flatten(net).numpy().tobytes() for net, _ in trained}
    assert len(vectors) == 1  # every node holds the merged model
    counters = {int(net[3].num_batches_tracked) for net, _ in trained}
    # integer buffers keep their local value: 16 training batches plus the 4 val-loss
    # passes this loop made in train mode, never a merged or reset count
    assert counters == {20}


class LinearClient(NumPyClient):  # type: ignore[misc]
    """An ordinary Flower client: least squares by gradient steps on its own data."""

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.x = rng.standard_normal((60, 3)).astype(np.float32)
        self.y = self.x @ np.array([1.0, -2.0, 0.5], dtype=np.float32) + 0.3
        self.w = np.zeros(3, dtype=np.float32)
        self.b = np.zeros(1, dtype=np.float32)
        self.steps = np.zeros(1, dtype=np.int64)  # an integer array: stays local

    def get_parameters(self, config: dict[str, Any]) -> list[npt.NDArray[Any]]:
        return [self.w, self.b, self.steps]

    def fit(
        self, parameters: list[npt.NDArray[Any]], config: dict[str, Any]
    ) -> tuple[list[npt.NDArray[Any]], int, dict[str, Any]]:
        self.w, self.b, self.steps = (np.array(p) for p in parameters)
        for _ in range(int(config.get("steps", 5))):
            error = self.x @ self.w + self.b - self.y
            self.w = self.w - 0.1 * (self.x.T @ error / len(self.x)).astype(np.float32)
            self.b = self.b - 0.1 * np.float32(error.mean())
            self.steps = self.steps + 1
        return [self.w, self.b, self.steps], len(self.x), {"steps": int(self.steps[0])}

    def evaluate(
        self, parameters: list[npt.NDArray[Any]], config: dict[str, Any]
    ) -> tuple[float, int, dict[str, Any]]:
        w, b, _ = parameters
        return float(np.mean((self.x @ w + b - self.y) ** 2)), len(self.x), {}


def test_an_unmodified_flower_client_runs_as_a_swarm_node() -> None:
    clients = [LinearClient(seed) for seed in range(3)]
    initial = canonical.flatten(FlowerNode._state(clients[0].get_parameters({}))).numpy()
    nodes = swarm(3, initial, every=1)
    flower_nodes = [
        FlowerNode(
            c,
            ledger=led,
            transport=t,
            inbox=ib,
            config={"steps": 5},
            settings=RoundSettings(poll=0.01),
        )
        for c, (led, t, ib) in zip(clients, nodes, strict=True)
    ]
    losses = []
    for _ in range(3):
        rounds = in_threads([node.step for node in flower_nodes])
        assert {r.result.status for r in rounds} == {"final"}
        floats = {b"".join(p.tobytes() for p in node.parameters[:2]) for node in flower_nodes}
        assert len(floats) == 1  # the merged w and b are the same everywhere
        losses.append(max(r.loss for r in rounds if r.loss is not None))
    assert losses[-1] < losses[0]
    assert [int(node.parameters[2][0]) for node in flower_nodes] == [15, 15, 15]
