"""`swarmnode simulate`: the scenario, the swarm, the baselines, the report."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from torch.utils.data import TensorDataset

from swarmnode.simulation.baselines import centralized_baseline, local_baselines
from swarmnode.simulation.data import Dataset, load_dataset
from swarmnode.simulation.engine import RoundRecord, make_task, run_swarm, run_tasks
from swarmnode.simulation.partition import IndexArray, partition
from swarmnode.simulation.processes import NodeTask, run_processes
from swarmnode.simulation.report import build_report, progress_bar, write_outputs
from swarmnode.simulation.scenario import Scenario
from swarmnode.simulation.tasks import (
    DATASET_TASK,
    dataset_task_args,
    own_baselines,
    own_task_args,
    own_tasks,
)
from swarmnode.training import Data, Task


@dataclass
class Outcome:
    report: dict[str, Any]
    files: list[Path]


@dataclass
class _Nodes:
    """What the nodes train, whichever way the scenario names it: slices of a bundled data
    set (`data`, `parts`) or a user's own Task (`scenario.task`)."""

    tasks: list[Task]
    test_set: Data
    node_tasks: list[NodeTask]  # what each --processes daemon's node.toml names
    described: str
    data: Dataset | None = None
    parts: list[IndexArray] = field(default_factory=list)


def _nodes(scenario: Scenario) -> _Nodes:
    n, seed = scenario.nodes, scenario.seed
    if scenario.task is not None and scenario.test_set is not None:
        tasks, test_set = own_tasks(scenario.task, scenario.test_set, n, seed)
        node_tasks = [(scenario.task, own_task_args(i, n, seed)) for i in range(n)]
        sizes = [t.num_samples for t in tasks]
        return _Nodes(
            tasks,
            test_set,
            node_tasks,
            f"{n} nodes on {scenario.task} (sizes {min(sizes)}-{max(sizes)}; "
            f"held-out test set {scenario.test_set})",
        )
    data = load_dataset(scenario.dataset, test_fraction=scenario.test_fraction, seed=seed)
    parts = partition(
        data.y_train.numpy(),
        n,
        scenario.partition,
        seed=seed,
        alpha=scenario.alpha,
        shards_per_node=scenario.shards_per_node,
    )
    return _Nodes(
        [make_task(scenario, data, part) for part in parts],
        TensorDataset(data.x_test, data.y_test),
        [(DATASET_TASK, dataset_task_args(scenario, part)) for part in parts],
        f"{n} nodes on {scenario.dataset} ({len(data.y_train)} train / {len(data.y_test)} "
        f"held-out test), {scenario.partition} split "
        f"(sizes {min(len(p) for p in parts)}-{max(len(p) for p in parts)})",
        data,
        parts,
    )


def simulate(scenario: Scenario, out: Path, console: Console | None = None) -> Outcome:
    console = console or Console()
    started = time.perf_counter()
    nodes = _nodes(scenario)
    where = (
        f"{scenario.nodes} `swarmnode run` processes against anvil"
        if scenario.processes
        else "embedded EVM chain"
    )
    console.print(
        f"[bold]{scenario.name}[/]: {nodes.described}, "
        f"{scenario.rounds} rounds of {scenario.local_batches} batches, "
        f"rule {scenario.merge_rule}; {where}, gRPC with mutual TLS over loopback"
    )
    with progress_bar(console) as progress:
        bar = progress.add_task("swarm rounds", total=scenario.rounds, status="")

        def on_round(record: RoundRecord) -> None:
            progress.update(
                bar,
                advance=1,
                status=f"accuracy {record.accuracy:.3f}, {record.seconds:.1f} s, "
                f"digests agree: {record.digest_agreed}",
            )

        if scenario.processes:
            swarm = run_processes(
                scenario, nodes.tasks, nodes.test_set, nodes.node_tasks, out, on_round
            )
        elif nodes.data is not None:
            swarm = run_swarm(scenario, nodes.data, nodes.parts, on_round)
        else:
            swarm = run_tasks(scenario, nodes.tasks, nodes.test_set, on_round)
        progress.update(bar, status="baselines: each node alone, all data pooled")
        if nodes.data is not None:
            local = local_baselines(scenario, nodes.data, nodes.parts)
            pooled = centralized_baseline(scenario, nodes.data, nodes.parts)
        else:
            local, pooled = own_baselines(scenario, nodes.tasks, nodes.test_set)
    wall = time.perf_counter() - started
    report = build_report(scenario, swarm, local, pooled, wall)
    files = write_outputs(out, report, swarm, local, pooled)
    _print_summary(console, report, files)
    return Outcome(report, files)


def _print_summary(console: Console, report: dict[str, Any], files: list[Path]) -> None:
    table = Table(title="test accuracy on the held-out set")
    table.add_column("model")
    table.add_column("accuracy", justify="right")
    table.add_row("swarm (every node holds it)", f"{report['swarm']['accuracy']:.3f}")
    table.add_row("all data pooled (centralized)", f"{report['centralized']['accuracy']:.3f}")
    table.add_row("each node alone: mean", f"{report['local']['mean_accuracy']:.3f}")
    table.add_row("each node alone: best", f"{report['local']['best_accuracy']:.3f}")
    console.print(table)
    rounds = report["rounds"]
    agreed = sum(r["digest_agreed"] for r in rounds)
    ratio = max(r["bytes_sent_per_node"] / r["model_bytes"] for r in rounds)
    console.print(
        f"{len(rounds)} rounds, digests agreed in {agreed}; at most {ratio:.2f} x the model "
        f"sent per node per round; {report['chain']['transactions']} transactions, "
        f"{report['chain']['gas_used']:,} gas; {report['wall_seconds']:.0f} s"
    )
    faults = _fault_table(rounds)
    if faults is not None:
        console.print(faults)
    console.print("wrote " + ", ".join(str(f) for f in files))


_FAULT_COLUMNS = {
    "crashed": "crashed",
    "down": "down",
    "sat_out": "sat out",
    "restarted": "restarted",
    "caught_up": "caught up first",
    "dropped": "voted out",
}


def _fault_table(rounds: list[dict[str, Any]]) -> Table | None:
    """The rounds in which a fault touched someone, by node number; None if none did."""
    touched = [r for r in rounds if any(r.get("faults", {}).get(key) for key in _FAULT_COLUMNS)]
    if not touched:
        return None
    table = Table(title="faults: who, round by round (nodes numbered from 0)")
    for title in ("round", "participants", "attempts", *_FAULT_COLUMNS.values()):
        table.add_column(title)
    for r in touched:
        f = r["faults"]
        cells = [", ".join(str(i) for i in f[key]) for key in _FAULT_COLUMNS]
        table.add_row(str(r["round"]), str(r["participants"]), str(f["attempts"]), *cells)
    return table
