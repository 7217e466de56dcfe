"""Full-fidelity simulation: every virtual node is a real SwarmNode in this process.

Each node has its own chain account on the embedded py-evm chain (or, with the scenario's
`chain = "anvil"`, on a private anvil: docs/simulator.md#the-chain), its own TLS identity, a
roster fed from the contract's events, a gRPC server with mutual TLS on 127.0.0.1, and its
own slice of a real data set. The nodes run their rounds in threads, exactly as the daemon
would; every figure reported comes from the nodes' own counters and RoundResults.

A runner (docs/simulator.md#layers): it takes the scenario and the nodes' tasks from the
layers below and gives a SwarmRun (results.py) for the reports above to read.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from typing import Literal

import numpy as np
import numpy.typing as npt
from torch.utils.data import TensorDataset

from swarmnode import canonical
from swarmnode.address import normalize
from swarmnode.exceptions import ConfigError
from swarmnode.ledger.base import Ledger
from swarmnode.ledger.contract import ContractLedger
from swarmnode.node import NodeRound, SwarmNode
from swarmnode.privacy import BudgetSpent
from swarmnode.records import NodeRoundRecord
from swarmnode.round import RoundResult, RoundSettings
from swarmnode.simulation.attacks import ProtocolAttackers, byzantine_hooks
from swarmnode.simulation.chainlog import ChainLog
from swarmnode.simulation.data import Dataset
from swarmnode.simulation.faults import nodes_of
from swarmnode.simulation.injector import FaultInjector, shaped
from swarmnode.simulation.local import (
    LocalPeer,
    LocalSwarm,
    anvil_swarm,
    grpc_swarm,
    memory_swarm,
    run_in_threads,
)
from swarmnode.simulation.results import RoundRecord, SwarmRun
from swarmnode.simulation.scenario import Scenario
from swarmnode.simulation.tasks import node_tasks
from swarmnode.simulation.turns import JoinTurns, OrderedJoins
from swarmnode.training import Data, LocalTrainer, Task

log = logging.getLogger(__name__)

Backend = Literal["grpc", "memory"]
"""Full fidelity (embedded chain, gRPC with mutual TLS) or the in-memory ledger and transport."""


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


def run_tasks(
    scenario: Scenario,
    tasks: list[Task],
    test_set: Data,
    on_round: Callable[[RoundRecord], None] = lambda record: None,
    backend: Backend = "grpc",
) -> SwarmRun:
    """Runs the scenario's rounds with one real SwarmNode per task (a bundled data set's
    slices, or a user's own Task), scoring the swarm's model on `test_set` after each.

    `backend` "grpc" is full fidelity (mutual-TLS gRPC, on the embedded chain or anvil as
    the scenario's `chain` says); "memory" runs the same nodes on the in-memory ledger and
    transport, with a real clock, for sweeps. Joins go in node order on both
    (swarmnode.simulation.turns), so both end with the same bits."""
    initial = LocalTrainer(tasks[0], "cpu", 0, init_seed=scenario.seed).snapshot()
    params = scenario.swarm_params(len(tasks), canonical.digest(initial))
    s = scenario
    liars = ProtocolAttackers(s.attack, len(tasks), s.byzantine, s.attack_scale)
    if backend == "grpc":
        wire = anvil_swarm if scenario.chain == "anvil" else grpc_swarm
        swarm = wire(params, len(tasks), server_workers=4, inboxes=liars.inbox)
    else:
        salt = hashlib.sha256(f"swarmnode simulation {scenario.seed}".encode()).digest()
        swarm = memory_swarm(
            params, len(tasks), clock=time.monotonic, inboxes=liars.inbox, salt=salt
        )
    try:
        run = _Run(scenario, tasks, test_set, swarm, backend, liars)
        run.model_bytes = len(initial) * canonical.ELEMENT_BYTES  # what a node holds
        records: list[RoundRecord] = []
        for k in range(1, scenario.rounds + 1):
            record = run.round(k)
            if record is None:  # every node's privacy budget is spent
                break
            records.append(record)
            on_round(record)
        if not records:
            raise ConfigError(
                f"dp_budget {scenario.dp_budget}: spent before the first round on every node "
                "(one round's training would spend more); raise dp_budget or dp_noise"
            )
        return SwarmRun.of(records)
    finally:
        swarm.close()


class _Run:
    """One in-process swarm's virtual nodes, and how their rounds are run and recorded."""

    def __init__(
        self,
        scenario: Scenario,
        tasks: list[Task],
        test_set: Data,
        swarm: LocalSwarm,
        backend: Backend,
        liars: ProtocolAttackers,
    ) -> None:
        self.scenario = scenario
        self.liars = liars
        self.accounts = [normalize(a) for a in swarm.accounts]
        self.tasks = tasks
        self.test_set = test_set
        self.backend = backend
        self.model_bytes = 0
        self.ledgers = [peer.ledger for peer in swarm.peers]
        self.turns = JoinTurns()
        self.spent: set[int] = set()  # nodes out of privacy budget: they join no more rounds
        self.nodes = [self._make_node(i, peer) for i, peer in enumerate(swarm.peers)]
        self._arm_byzantine()
        # replaces restarted nodes in self.nodes, with _make_node
        self.faults = FaultInjector(scenario, swarm, self.nodes, self._make_node)
        self.chain_log = ChainLog(self.ledgers)

    def _make_node(self, i: int, peer: LocalPeer) -> SwarmNode:
        """Node i on `peer`; a protocol attacker lies in what it pushes and how it merges
        (its inbox, the server side, lies already: the swarm was built with liars.inbox)."""
        transport = self.liars.transport(i, peer.transport)
        node = SwarmNode(
            ledger=OrderedJoins(peer.ledger, self.turns, i),
            transport=shaped(self.scenario, i, transport),  # slow links, stragglers
            inbox=peer.inbox,
            task=self.tasks[i],
            device="cpu",
            seed=self.scenario.seed * 1000 + i,
            init_seed=self.scenario.seed,
            settings=RoundSettings(poll=0.01),
            privacy=self.scenario.privacy(),
            # distributed DP (docs/privacy.md#distributed-dp), its noise seeded as the fast
            # engine's is, so that the two engines draw the same
            mean_privacy=self.scenario.mean_privacy(),
            mean_seed=(self.scenario.seed * 1000 + i) * 2 + 1,
        )
        node.syncer.rule = self.liars.rule(i, node.syncer.rule)
        earlier = getattr(self, "nodes", None)  # a restarted node: its spending goes on
        if node.trainer.privacy is not None and earlier is not None:
            node.trainer.privacy.continue_from(earlier[i].trainer.privacy)
        if node.mean_privacy is not None and earlier is not None:
            node.mean_privacy.continue_from(earlier[i].mean_privacy)
        return node

    def _arm_byzantine(self) -> None:
        """The last `byzantine` nodes send their attack's vector instead of their update."""
        s, n = self.scenario, len(self.nodes)
        hooks = byzantine_hooks(s.attack, n, s.byzantine, seed=s.seed, scale=s.attack_scale)
        for node, hook in zip(self.nodes[n - s.byzantine :], hooks, strict=True):
            node.contribution = hook

    def round(self, k: int) -> RoundRecord | None:
        """The run's k-th round: every node due in it runs it in a thread of its own; None
        when no node may train any more (privacy budgets spent)."""
        mined = _mined(self.ledgers)
        self._check_budgets()
        if len(self.spent) == len(self.nodes):
            return None
        joining = [i for i in self.faults.start_round(k) if i not in self.spent]
        self.turns.expect(joining)  # the nodes that join round k
        if self.scenario.fresh_optimizer:  # a new SGD each round: no momentum carried over
            for node in self.nodes:
                node.trainer.reset_optimizer()
        t0 = time.perf_counter()
        outcomes = run_in_threads(
            [
                self.faults.job(k, i) if i not in self.spent else lambda: None
                for i in range(len(self.nodes))
            ]
        )
        return self._record(k, outcomes, time.perf_counter() - t0, mined)

    def _record(
        self, k: int, outcomes: list[NodeRound | None], seconds: float, mined: tuple[int, int]
    ) -> RoundRecord:
        """What round k did, from the nodes' results (None: away or crashed, faults.status)
        and the chain; the swarm's model scored is the one a node with a digest holds."""
        present = {i: o for i, o in enumerate(outcomes) if o is not None}
        results = [o.result for o in present.values()]
        final = [r for r in results if r.digest is not None]
        lead = next((i for i, o in present.items() if o.result.digest), next(iter(present)))
        number = present[lead].result.round
        evaluation = self.nodes[lead].trainer.evaluate(self.test_set)
        now = _mined(self.ledgers)
        transactions, gas = now[0] - mined[0], now[1] - mined[1]
        if self.backend != "grpc":  # no receipts in memory: the nodes' own counts
            transactions = sum(r.transactions for r in results)
        return RoundRecord(
            round=number,
            participants=len(present[lead].result.participants),
            seconds=seconds,
            bytes_sent_per_node=float(max(r.traffic.sent for r in results)),
            model_bytes=self.model_bytes,
            digest_agreed=len({r.digest for r in final}) == 1 and len(final) == len(results),
            digest=_agreed_digest(results),
            transactions=transactions,
            gas_used=gas,
            accuracy=evaluation["accuracy"],
            loss=evaluation["loss"],
            per_node=self._node_records(number, outcomes),
            checked=sum(o.result.checked for i, o in present.items() if not self.liars.attacks(i)),
            accused=self._accused(present),
            faults=self.faults.summary(k, self.ledgers[0].round(number)),
            events=self.chain_log.events(number),
            calls=self.chain_log.calls(),
        )

    def _check_budgets(self) -> None:
        """A node whose next round would spend past dp_budget stops here, as a daemon does:
        it says so, finishes on chain (rounds stop waiting for it) and keeps its model."""
        for i, node in enumerate(self.nodes):
            if i in self.spent or (node.trainer.privacy is None and node.mean_privacy is None):
                continue
            try:
                if node.trainer.privacy is not None:
                    node.trainer.privacy.check_budget(node.syncer.policy.interval)
                if node.mean_privacy is not None:
                    node.mean_privacy.check_budget()
            except BudgetSpent as spent:
                log.info("node %d: %s", i, spent)
                node.finish()
                self.spent.add(i)

    def _accused(self, present: dict[int, NodeRound]) -> list[int]:
        """The nodes that at least one honest node accused in the round (what it saw itself:
        a wrong merge, silence after a relay, refused rows), whether or not it was voted out."""
        honest = [o.result for i, o in present.items() if not self.liars.attacks(i)]
        return nodes_of(self.accounts, [normalize(a) for r in honest for a in r.accused])

    def _node_records(self, number: int, outcomes: list[NodeRound | None]) -> list[NodeRoundRecord]:
        """Each node's record of round `number`; an away node's says why (faults.status)."""
        return [
            NodeRoundRecord.from_round(o, node=i, epsilon=o.epsilon)
            if o is not None
            else NodeRoundRecord(
                round=number,
                status="budget_spent" if i in self.spent else self.faults.status(i) or "away",
                node=i,
                epsilon=self._epsilon(i),
            )
            for i, o in enumerate(outcomes)
        ]

    def _epsilon(self, i: int) -> float | None:
        return self.nodes[i].epsilon()


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
