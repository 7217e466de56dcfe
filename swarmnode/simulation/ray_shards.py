"""The fast engine beyond one machine: its nodes split into shards, each shard's round of
training a Ray task (docs/simulator.md#ray).

The driver keeps the whole swarm (fast.Swarm) and does everything a round does but train:
dropout, catch-up, the attacks, the merge with the scenario's rule, scoring. For training it
cuts the n nodes into k contiguous shards and sends each shard's state (stacked weights,
momentum, where each node is in its batch order) to a task, which rebuilds the shard from the
data set (put once in Ray's object store), trains it with fast.train_shard and returns the new
state, its nodes' losses and the Ray node it ran on. Each node keeps its own id, so its seed,
batch order and attacker role are the unsharded run's, and the merged model is the fast
engine's (tests/test_ray_cluster.py). Tasks are stateless: a lost worker costs a retry, not
a node. Ray is imported here only, when --ray is asked for.
"""

from __future__ import annotations

import importlib.util
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from swarmnode.exceptions import ConfigError
from swarmnode.simulation.data import Dataset
from swarmnode.simulation.fast import FastRounds, ShardState, Swarm, run_fast, train_shard
from swarmnode.simulation.results import RoundRecord, SwarmRun
from swarmnode.simulation.scenario import Scenario

EXTRA = "pip install 'swarmnode[ray]'"
SHARD_TIMEOUT_S = 600.0  # one shard's round of training, start-up of its worker included
REACH_TIMEOUT_S = 10.0  # a TCP connection to the head's GCS port


@dataclass
class ShardJob:
    """One shard's round: nodes `ids` of `total`, their data rows and state."""

    ids: list[int]
    total: int
    parts: list[npt.NDArray[np.int64]]
    state: ShardState
    active: list[int]
    batches: int


@dataclass
class ShardResult:
    state: ShardState
    losses: list[float]  # the shard's nodes in `active`, in id order
    host: str  # the Ray node it ran on ("local" in this process)


Runner = Callable[[list[ShardJob]], list[ShardResult]]


def shard_ids(n: int, k: int) -> list[list[int]]:
    """0..n-1 in min(k, n) contiguous shards whose sizes differ by at most one."""
    k = max(1, min(k, n))
    bounds = np.linspace(0, n, k + 1).round().astype(int)
    return [list(range(bounds[j], bounds[j + 1])) for j in range(k)]


def run_here(scenario: Scenario, data: Dataset) -> Runner:
    """Shards trained one after another in this process: the sharding without Ray."""

    def run(jobs: list[ShardJob]) -> list[ShardResult]:
        return [ShardResult(*_train(scenario, data, job), host="local") for job in jobs]

    return run


def _train(scenario: Scenario, data: Dataset, job: ShardJob) -> tuple[ShardState, list[float]]:
    return train_shard(
        scenario, data, job.parts, job.ids, job.total, job.state, job.active, job.batches
    )


class ShardedRounds(FastRounds):
    """FastRounds whose training runs shard by shard through `runner`; `placements` holds,
    for each round, the host that trained each node, and `merged` the round's model."""

    def __init__(
        self, scenario: Scenario, swarm: Swarm, data: Dataset, shards: int, runner: Runner
    ) -> None:
        super().__init__(scenario, swarm, data)
        self.shards = shard_ids(len(swarm.sizes), shards)
        self.runner = runner
        self.placements: list[dict[int, str]] = []
        self.merged: list[torch.Tensor] = []

    def round(self, k: int) -> RoundRecord:
        record = super().round(k)
        self.merged.append(self.reference.clone())
        return record

    def train(self, active: list[int], batches: int) -> list[float]:
        n = len(self.swarm.sizes)
        jobs = [
            ShardJob(
                ids,
                n,
                [self.swarm.parts[i] for i in ids],
                self.swarm.state(ids),
                [i for i in active if ids[0] <= i <= ids[-1]],
                batches,
            )
            for ids in self.shards
        ]
        loss_of: dict[int, float] = {}
        placed: dict[int, str] = {}
        for job, result in zip(jobs, self.runner(jobs), strict=True):
            self.swarm.restore(job.ids, result.state)
            loss_of.update(zip(job.active, result.losses, strict=True))
            placed.update((i, result.host) for i in job.active)
        self.placements.append(placed)
        return [loss_of[i] for i in active]


@dataclass
class ShardedRun:
    run: SwarmRun
    placements: list[dict[int, str]] = field(default_factory=list)
    merged: list[torch.Tensor] = field(default_factory=list)  # each round's canonical vector


def run_sharded(
    scenario: Scenario,
    data: Dataset,
    parts: list[npt.NDArray[np.int64]],
    runner_for: Callable[[Dataset], tuple[Runner, int]],
    on_round: Callable[[RoundRecord], None] = lambda record: None,
    shards: int | None = None,
) -> ShardedRun:
    """The fast engine's rounds with training spread by the runner that `runner_for` makes
    (it also says how many shards suit it, used unless `shards` is given)."""
    runner, suited = runner_for(data)
    built: list[ShardedRounds] = []

    def rounds(s: Scenario, swarm: Swarm, d: Dataset) -> FastRounds:
        built.append(ShardedRounds(s, swarm, d, shards or suited, runner))
        return built[-1]

    run = run_fast(scenario, data, parts, on_round, rounds)
    return ShardedRun(run, built[0].placements, built[0].merged)


def has_ray() -> bool:
    return importlib.util.find_spec("ray") is not None


def require_ray() -> None:
    """A one-line ConfigError naming the extra when Ray is not installed."""
    if not has_ray():
        raise ConfigError(f"--ray needs Ray: {EXTRA}")


def _ray() -> Any:
    require_ray()
    import ray

    return ray


def ray_runner(
    scenario: Scenario, shards: int | None = None
) -> Callable[[Dataset], tuple[Runner, int]]:
    """Runners that send each shard to a Ray task on a connected cluster (ray.init first);
    shard j goes to alive node j mod m (softly: elsewhere if that node is gone), so the
    shards spread over the machines; it suits as many shards as the cluster has CPUs."""
    ray = _ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    def make(data: Dataset) -> tuple[Runner, int]:
        data_ref = ray.put(data)
        task = ray.remote(num_cpus=1)(_ray_task)
        hosts = sorted(node["NodeID"] for node in ray.nodes() if node["Alive"])
        cpus = int(ray.cluster_resources().get("CPU", 1))

        def run(jobs: list[ShardJob]) -> list[ShardResult]:
            refs = [
                task.options(
                    scheduling_strategy=NodeAffinitySchedulingStrategy(
                        hosts[j % len(hosts)], soft=True
                    )
                ).remote(scenario, data_ref, job)
                for j, job in enumerate(jobs)
            ]
            results: list[ShardResult] = ray.get(refs, timeout=SHARD_TIMEOUT_S)
            return results

        return run, max(shards or cpus, 1)

    return make


def _ray_task(scenario: Scenario, data: Dataset, job: ShardJob) -> ShardResult:
    """A shard's round in a Ray worker; it says which Ray node it ran on."""
    import ray

    state, losses = _train(scenario, data, job)
    return ShardResult(state, losses, ray.get_runtime_context().get_node_id())


def check_ray(address: str) -> None:
    """What --ray needs before anything runs: Ray installed and a head at `address`."""
    require_ray()
    check_reachable(address)


def check_reachable(address: str) -> None:
    """A one-line ConfigError when `address` is host:port and nothing answers there within
    REACH_TIMEOUT_S: ray.init would wait minutes for a head that is not there."""
    host, _, port = address.rpartition(":")
    if not host or "://" in address or not port.isdigit():
        return  # auto, local, ray://: Ray's own resolution
    try:
        socket.create_connection((host, int(port)), timeout=REACH_TIMEOUT_S).close()
    except OSError as exc:
        raise ConfigError(f"--ray {address}: no Ray head answers there ({exc})") from None


def run_on_ray(
    scenario: Scenario,
    data: Dataset,
    parts: list[npt.NDArray[np.int64]],
    address: str,
    on_round: Callable[[RoundRecord], None] = lambda record: None,
    shards: int | None = None,
) -> ShardedRun:
    """Connects to the Ray cluster at `address` (unless this process already is), runs the
    scenario's fast-engine rounds with shards as Ray tasks, and disconnects if it connected."""
    ray = _ray()
    if scenario.engine != "fast":
        raise ConfigError("--ray spreads the fast engine's shards: use it with --engine fast")
    connected = ray.is_initialized()
    if not connected:
        check_reachable(address)
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"--ray {address}: cannot join the Ray cluster ({exc})") from None
    try:
        return run_sharded(scenario, data, parts, ray_runner(scenario, shards), on_round, shards)
    finally:
        if not connected:
            ray.shutdown()
