"""Full-fidelity simulation: every virtual node is a real SwarmNode in this process.

Each node has its own chain account on the embedded py-evm chain, its own TLS identity, a
roster fed from the contract's events, a gRPC server with mutual TLS on 127.0.0.1, and its
own slice of a real data set. The nodes run their rounds in threads, exactly as the daemon
would; every figure reported comes from the nodes' own counters and RoundResults.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.utils.data import TensorDataset

from swarmnode import canonical
from swarmnode.ledger.contract import ContractLedger
from swarmnode.node import SwarmNode
from swarmnode.rules import Rule, SwarmParams, SyncPolicyId
from swarmnode.simulation.attacks import make_attack
from swarmnode.simulation.data import Dataset
from swarmnode.simulation.local import grpc_swarm, run_in_threads
from swarmnode.simulation.scenario import Scenario
from swarmnode.training import LocalTrainer, Task, accuracy


class MLP(nn.Module):
    """The simulator's model: small enough for many nodes on two cores, big enough to learn."""

    def __init__(self, features: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


def make_task(scenario: Scenario, data: Dataset, indices: npt.NDArray[np.int64]) -> Task:
    """A node's task: the shared model, its own slice, its slice as validation signal."""
    chosen = torch.as_tensor(indices, dtype=torch.long)
    own = TensorDataset(data.x_train[chosen], data.y_train[chosen])
    lr = scenario.learning_rate

    def optimizer(params: Any) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=lr, momentum=0.9)

    return Task(
        model_factory=lambda: MLP(data.features, scenario.hidden, data.classes),
        train_data=own,
        val_data=own,
        loss_fn=nn.CrossEntropyLoss(),
        optimizer_factory=optimizer,
        batch_size=scenario.batch_size,
        metrics={"accuracy": accuracy},
        name=f"{data.name}-mlp",
    )


@dataclass
class RoundRecord:
    round: int
    participants: int
    seconds: float
    bytes_sent_per_node: float
    model_bytes: int
    digest_agreed: bool
    transactions: int
    gas_used: int
    accuracy: float
    loss: float
    per_node: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class SwarmRun:
    rounds: list[RoundRecord]
    accuracy: float
    loss: float
    transactions: int
    gas_used: int


def run_swarm(
    scenario: Scenario,
    data: Dataset,
    parts: list[npt.NDArray[np.int64]],
    on_round: Callable[[RoundRecord], None] = lambda record: None,
) -> SwarmRun:
    """Runs the scenario's rounds with one real SwarmNode per part."""
    tasks = [make_task(scenario, data, part) for part in parts]
    initial = LocalTrainer(tasks[0], "cpu", 0, init_seed=scenario.seed).snapshot()
    params = SwarmParams(
        min_peers=2,
        max_peers=len(parts),
        # every node joins each round, and the last join closes it: the window only
        # matters if a node falls behind, which it may on two busy cores
        join_window=60,
        transfer_deadline=60,
        round_deadline=300,
        merge_rule=scenario.rule(),
        sync_policy=Rule(SyncPolicyId.EVERY_N_BATCHES, (scenario.local_batches, 0, 0, 0)),
        initial_model_digest=canonical.digest(initial),
    )
    swarm = grpc_swarm(params, len(parts), server_workers=4)
    ledgers = [cast(ContractLedger, peer.ledger) for peer in swarm.peers]
    test_set = TensorDataset(data.x_test, data.y_test)
    try:
        nodes = [
            SwarmNode(
                ledger=peer.ledger,
                transport=peer.transport,
                inbox=peer.inbox,
                task=task,
                device="cpu",
                seed=scenario.seed * 1000 + i,
                init_seed=scenario.seed,
                poll=0.01,
            )
            for i, (peer, task) in enumerate(zip(swarm.peers, tasks, strict=True))
        ]
        for i, node in enumerate(nodes[len(nodes) - scenario.byzantine :]):
            node.contribution = make_attack(
                scenario.attack, seed=scenario.seed * 1000 + i, scale=scenario.attack_scale
            )
        model_bytes = len(initial) * canonical.ELEMENT_BYTES
        records: list[RoundRecord] = []
        for _ in range(scenario.rounds):
            gas_before = [sum(g for _, g in led.gas_log) for led in ledgers]
            tx_before = [len(led.gas_log) for led in ledgers]
            t0 = time.perf_counter()
            outcomes = run_in_threads([node.step for node in nodes])
            seconds = time.perf_counter() - t0
            results = [o.result for o in outcomes]
            final = [r for r in results if r.digest is not None]
            evaluation = nodes[0].trainer.evaluate(test_set)
            record = RoundRecord(
                round=results[0].round,
                participants=len(results[0].participants),
                seconds=seconds,
                bytes_sent_per_node=float(max(r.traffic.sent for r in results)),
                model_bytes=model_bytes,
                digest_agreed=len({r.digest for r in final}) == 1 and len(final) == len(nodes),
                transactions=sum(
                    len(led.gas_log) - b for led, b in zip(ledgers, tx_before, strict=True)
                ),
                gas_used=sum(
                    sum(g for _, g in led.gas_log) - b
                    for led, b in zip(ledgers, gas_before, strict=True)
                ),
                accuracy=evaluation["accuracy"],
                loss=evaluation["loss"],
                per_node=[
                    {
                        "node": i,
                        "status": o.result.status,
                        "batches": o.batches,
                        "val_loss": o.val_loss,
                        "bytes_sent": o.result.traffic.sent,
                        "bytes_received": o.result.traffic.received,
                        "transactions": o.result.transactions,
                        "seconds": o.result.seconds,
                    }
                    for i, o in enumerate(outcomes)
                ],
            )
            records.append(record)
            on_round(record)
        last = records[-1]
        return SwarmRun(
            rounds=records,
            accuracy=last.accuracy,
            loss=last.loss,
            transactions=sum(r.transactions for r in records),
            gas_used=sum(r.gas_used for r in records),
        )
    finally:
        swarm.close()
