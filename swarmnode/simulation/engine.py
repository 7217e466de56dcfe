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
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.utils.data import TensorDataset

from swarmnode import canonical
from swarmnode.ledger.base import Ledger
from swarmnode.ledger.contract import ContractLedger
from swarmnode.node import SwarmNode
from swarmnode.round import RoundResult, RoundSettings
from swarmnode.rules import Rule, SwarmParams, SyncPolicyId
from swarmnode.simulation.attacks import byzantine_hooks, flip_labels, trains_on_flipped_labels
from swarmnode.simulation.chainlog import ChainLog
from swarmnode.simulation.data import Dataset
from swarmnode.simulation.injector import FaultInjector, shaped
from swarmnode.simulation.local import LocalPeer, grpc_swarm, memory_swarm, run_in_threads
from swarmnode.simulation.scenario import Scenario
from swarmnode.simulation.turns import JoinTurns, OrderedJoins
from swarmnode.training import Data, LocalTrainer, Task, accuracy

Backend = Literal["grpc", "memory"]
"""Full fidelity (embedded chain, gRPC with mutual TLS) or the in-memory ledger and transport."""


class MLP(nn.Module):
    """The simulator's model: small enough for many nodes on two cores, big enough to learn."""

    def __init__(self, features: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


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
    digest: str = ""  # the round's final digest (hex) when every node holds it, else ""
    # faults: who crashed, was down, sat out, restarted, caught up, was voted out (chain)
    faults: dict[str, Any] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)  # the contract's, for this round
    calls: dict[str, int] = field(default_factory=dict)  # mined transactions, from receipts


@dataclass
class SwarmRun:
    rounds: list[RoundRecord]
    accuracy: float
    loss: float
    transactions: int
    gas_used: int

    @property
    def digest(self) -> str:
        """The last round's final digest (hex); "" if the nodes did not all end holding it."""
        return self.rounds[-1].digest if self.rounds else ""


def run_swarm(
    scenario: Scenario,
    data: Dataset,
    parts: list[npt.NDArray[np.int64]],
    on_round: Callable[[RoundRecord], None] = lambda record: None,
    backend: Backend = "grpc",
) -> SwarmRun:
    """Runs the scenario's rounds with one real SwarmNode per part."""
    test_set = TensorDataset(data.x_test, data.y_test)
    return run_tasks(scenario, node_tasks(scenario, data, parts), test_set, on_round, backend)


def node_tasks(scenario: Scenario, data: Dataset, parts: list[npt.NDArray[np.int64]]) -> list[Task]:
    """One task per part; the Byzantine nodes are the last ones, and with `label_flip` they
    train on their slices with the labels flipped."""
    flipped = len(parts) - scenario.byzantine if trains_on_flipped_labels(scenario.attack) else None
    return [
        make_task(scenario, data, part, flip=flipped is not None and i >= flipped)
        for i, part in enumerate(parts)
    ]


def swarm_params(scenario: Scenario, nodes: int, initial: npt.NDArray[np.float32]) -> SwarmParams:
    """The contract's parameters for a scenario: the same in-process and with --processes."""
    return SwarmParams(
        min_peers=2,
        max_peers=nodes,
        # every node joins each round, and the last join closes it: the window only
        # matters if a node falls behind, which it may on two busy cores, or is away (faults)
        join_window=scenario.join_window,
        transfer_deadline=scenario.transfer_deadline,
        round_deadline=max(300, 2 * scenario.transfer_deadline + 1, scenario.join_window + 1),
        merge_rule=scenario.rule(),
        sync_policy=Rule(SyncPolicyId.EVERY_N_BATCHES, (scenario.local_batches, 0, 0, 0)),
        initial_model_digest=canonical.digest(initial),
    )


def run_tasks(
    scenario: Scenario,
    tasks: list[Task],
    test_set: Data,
    on_round: Callable[[RoundRecord], None] = lambda record: None,
    backend: Backend = "grpc",
) -> SwarmRun:
    """Runs the scenario's rounds with one real SwarmNode per task (a bundled data set's
    slices, or a user's own Task), scoring the swarm's model on `test_set` after each.

    `backend` "grpc" is full fidelity (embedded chain, mutual-TLS gRPC); "memory" runs the
    same nodes on the in-memory ledger and transport, with a real clock, for sweeps. Joins
    go in node order on both (swarmnode.simulation.turns), so both end with the same bits."""
    initial = LocalTrainer(tasks[0], "cpu", 0, init_seed=scenario.seed).snapshot()
    params = swarm_params(scenario, len(tasks), initial)
    if backend == "grpc":
        swarm = grpc_swarm(params, len(tasks), server_workers=4)
    else:
        swarm = memory_swarm(params, len(tasks), clock=time.monotonic)
    ledgers = [peer.ledger for peer in swarm.peers]
    turns = JoinTurns()
    try:

        def make_node(i: int, peer: LocalPeer) -> SwarmNode:
            return SwarmNode(
                ledger=OrderedJoins(peer.ledger, turns, i),
                transport=shaped(scenario, i, peer.transport),  # slow links, stragglers
                inbox=peer.inbox,
                task=tasks[i],
                device="cpu",
                seed=scenario.seed * 1000 + i,
                init_seed=scenario.seed,
                settings=RoundSettings(poll=0.01),
            )

        nodes = [make_node(i, peer) for i, peer in enumerate(swarm.peers)]
        hooks = byzantine_hooks(
            scenario.attack,
            len(nodes),
            scenario.byzantine,
            seed=scenario.seed,
            scale=scenario.attack_scale,
        )
        for node, hook in zip(nodes[len(nodes) - scenario.byzantine :], hooks, strict=True):
            node.contribution = hook
        model_bytes = len(initial) * canonical.ELEMENT_BYTES
        records: list[RoundRecord] = []
        faults = FaultInjector(scenario, swarm, nodes, make_node)  # replaces restarted nodes
        chain_log = ChainLog(ledgers)
        for k in range(1, scenario.rounds + 1):
            tx_before, gas_before = _mined(ledgers)
            turns.expect(faults.start_round(k))  # the nodes that join round k
            t0 = time.perf_counter()
            outcomes = run_in_threads([faults.job(k, i) for i in range(len(nodes))])
            seconds = time.perf_counter() - t0
            # None: away or crashed (faults.status); the others' results, in node order
            present = {i: o for i, o in enumerate(outcomes) if o is not None}
            results = [o.result for o in present.values()]
            final = [r for r in results if r.digest is not None]
            lead = next((i for i, o in present.items() if o.result.digest), next(iter(present)))
            lead_result = present[lead].result
            evaluation = nodes[lead].trainer.evaluate(test_set)
            record = RoundRecord(
                round=lead_result.round,
                participants=len(lead_result.participants),
                seconds=seconds,
                bytes_sent_per_node=float(max(r.traffic.sent for r in results)),
                model_bytes=model_bytes,
                digest_agreed=len({r.digest for r in final}) == 1 and len(final) == len(results),
                digest=_agreed_digest(results),
                transactions=(
                    _mined(ledgers)[0] - tx_before
                    if backend == "grpc"
                    else sum(r.transactions for r in results)  # no receipts in memory
                ),
                gas_used=_mined(ledgers)[1] - gas_before,
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
                        "digest": (o.result.digest or b"").hex(),
                    }
                    if o is not None
                    else {"node": i, "status": faults.status(i)}
                    for i, o in enumerate(outcomes)
                ],
                faults=faults.summary(k, ledgers[0].round(lead_result.round)),
                events=chain_log.events(lead_result.round),
                calls=chain_log.calls(),
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


def _mined(ledgers: list[Ledger]) -> tuple[int, int]:
    """(transactions, gas) that the handles' receipts show so far; the in-memory ledger has
    no receipts and shows (0, 0)."""
    logs = [led.gas_log for led in ledgers if isinstance(led, ContractLedger)]
    return sum(len(log) for log in logs), sum(gas for log in logs for _, gas in log)


def _agreed_digest(results: list[RoundResult]) -> str:
    """The final digest (hex) when every node ended the round holding it, else ""."""
    first = results[0].digest
    if first is None or any(r.digest != first for r in results):
        return ""
    return first.hex()
