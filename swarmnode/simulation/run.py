"""`swarmnode simulate` and `swarmnode simulate sweep`: a command's runners, then its report.

The top of the simulator (docs/simulator.md#layers): the only module that knows both the
runners (engine, processes, baselines, sweep) and the reports (report, sweep_report).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress, TaskID
from torch.utils.data import TensorDataset

from swarmnode.exceptions import ConfigError
from swarmnode.simulation import report as run_report
from swarmnode.simulation import sweep_report
from swarmnode.simulation.baselines import centralized_baseline, local_baselines, own_baselines
from swarmnode.simulation.data import Dataset
from swarmnode.simulation.engine import run_swarm, run_tasks
from swarmnode.simulation.fast import fast_local_baselines, run_fast
from swarmnode.simulation.flower_baseline import check_comparable, run_flower
from swarmnode.simulation.partition import IndexArray
from swarmnode.simulation.processes import NodeTask, run_processes
from swarmnode.simulation.ray_shards import check_ray, run_on_ray
from swarmnode.simulation.report import progress_bar
from swarmnode.simulation.results import Curve, RoundRecord, SwarmRun
from swarmnode.simulation.scenario import Scenario
from swarmnode.simulation.sweep import (
    Cell,
    CellResult,
    Grid,
    cell_scenario,
    checked_cell,
    full_fidelity,
    grid_cells,
    one_torch_thread,
    run_cells,
)
from swarmnode.simulation.tasks import (
    DATASET_TASK,
    dataset_task_args,
    make_task,
    own_task_args,
    own_tasks,
    scenario_data,
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
    data, parts = scenario_data(scenario)
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


def simulate(
    scenario: Scenario,
    out: Path,
    console: Console | None = None,
    compare: str | None = None,
    ray: str | None = None,
    ray_shards: int | None = None,
) -> Outcome:
    """The swarm, its two baselines, and the report of the three in `out`; with `compare`
    "flower", Flower's FedAvg on its own engine too, each client with a fresh optimizer a
    round, so the swarm gets one as well (docs/simulator.md#flower-side-by-side). With `ray`,
    a Ray cluster's address, the fast engine trains its nodes in `ray_shards` shards (default:
    one a CPU) as Ray tasks there (docs/simulator.md#ray)."""
    console = console or Console()
    started = time.perf_counter()
    if ray is not None and scenario.engine != "fast":
        raise ConfigError("--ray spreads the fast engine's shards: use it with --engine fast")
    if ray is not None:
        check_ray(ray)
    if compare == "flower":
        check_comparable(scenario)
        scenario = scenario.model_copy(update={"fresh_optimizer": True})
    elif compare is not None:
        raise ConfigError(f"--compare {compare}: unknown (known: flower)")
    nodes = _nodes(scenario)
    where = (
        f"{scenario.nodes} `swarmnode run` processes against anvil"
        if scenario.processes
        else "a private anvil chain"
        if scenario.chain == "anvil"
        else "embedded EVM chain"
    )
    wire = f"{where}, gRPC with mutual TLS over loopback"
    if scenario.engine == "fast":
        wire = "fast engine: the nodes' models trained as one batched computation, no chain"
    if ray is not None:
        wire = f"fast engine, its nodes trained in shards as Ray tasks on {ray}, no chain"
    console.print(
        f"[bold]{scenario.name}[/]: {nodes.described}, "
        f"{scenario.rounds} rounds of {scenario.local_batches} batches, "
        f"rule {scenario.merge_rule}"
        f"{' under secure aggregation' if scenario.secure_aggregation else ''}; {wire}"
    )
    with progress_bar(console) as progress:
        bar = progress.add_task("swarm rounds", total=scenario.rounds, status="")
        swarm = _swarm(scenario, nodes, out, _round_status(progress, bar), ray, ray_shards)
        progress.update(bar, status="baselines: each node alone, all data pooled")
        local, pooled = _baselines(scenario, nodes)
        flower = None
        if compare == "flower" and nodes.data is not None:
            progress.update(bar, status="Flower's FedAvg on its simulation engine (Ray)")
            flower = run_flower(scenario, nodes.data, nodes.parts)
    wall = time.perf_counter() - started
    versus = None if flower is None else (flower.curve, flower.seconds)
    report = run_report.build_report(scenario, swarm, local, pooled, wall, versus)
    files = run_report.write_outputs(
        out, report, swarm, local, pooled, None if flower is None else flower.curve
    )
    run_report.print_summary(console, report, files)
    return Outcome(report, files)


def _swarm(
    scenario: Scenario,
    nodes: _Nodes,
    out: Path,
    on_round: Callable[[RoundRecord], None],
    ray: str | None = None,
    ray_shards: int | None = None,
) -> SwarmRun:
    """The swarm's run: daemons (--processes), fast-engine shards on a Ray cluster (`ray`),
    or virtual nodes in this process."""
    if ray is not None and nodes.data is not None:
        return run_on_ray(scenario, nodes.data, nodes.parts, ray, on_round, ray_shards).run
    if scenario.processes:
        return run_processes(scenario, nodes.tasks, nodes.test_set, nodes.node_tasks, out, on_round)
    if scenario.engine == "fast" and nodes.data is not None:
        return run_fast(scenario, nodes.data, nodes.parts, on_round)
    if nodes.data is not None:
        return run_swarm(scenario, nodes.data, nodes.parts, on_round)
    return run_tasks(scenario, nodes.tasks, nodes.test_set, on_round)


def _baselines(scenario: Scenario, nodes: _Nodes) -> tuple[list[Curve], Curve]:
    if nodes.data is not None:
        alone = fast_local_baselines if scenario.engine == "fast" else local_baselines
        local = alone(scenario, nodes.data, nodes.parts)
        return local, centralized_baseline(scenario, nodes.data, nodes.parts)
    return own_baselines(scenario, nodes.tasks, nodes.test_set)


def _round_status(progress: Progress, bar: TaskID) -> Callable[[RoundRecord], None]:
    def on_round(record: RoundRecord) -> None:
        progress.update(
            bar,
            advance=1,
            status=f"accuracy {record.accuracy:.3f}, {record.seconds:.1f} s, "
            f"digests agree: {record.digest_agreed}",
        )

    return on_round


def sweep(
    base: Scenario,
    grid: Grid,
    out: Path,
    *,
    check: str = "first",
    console: Console | None = None,
) -> dict[str, Any]:
    """Runs every cell of `grid` on its engine (sweep.cell_engine) and `check` ("first",
    "none" or a cell label) at full fidelity; writes sweep.json and sweep.png into `out`.

    A fast-engine sweep runs on one torch thread (sweep.one_torch_thread). The full-fidelity
    run goes after the cells, not beside them in a thread: measured on the loaded 2-core
    machine, beside them it took 196 s instead of 95 s and the sweep 197 s instead of 179 s
    (its nodes share the interpreter lock with the cells)."""
    console = console or Console()
    started = time.perf_counter()
    # every refusal before any run
    scenarios = {cell: cell_scenario(base, grid, cell) for cell in grid_cells(grid)}
    checked = checked_cell(check, grid)
    console.print(_sweep_header(base, grid, len(scenarios), checked))
    with progress_bar(console) as progress, ExitStack() as beside:
        bar = progress.add_task("sweep", total=len(scenarios), status="")
        if grid.engine == "fast":
            beside.enter_context(one_torch_thread())
        results = run_cells(scenarios, _cell_status(progress, bar))
        # the cells' results on disk first: a full-fidelity run that fails loses none of them
        ran = time.perf_counter() - started
        sweep_report.write_outputs(
            out, sweep_report.build_report(base, grid, results, None, ran), grid
        )
        check_report = None
        if checked is not None:
            progress.update(bar, status=f"{checked.label} at full fidelity (embedded chain, gRPC)")
            swept = next(r for r in results if r.cell == checked)
            check_report = full_fidelity(scenarios[checked], swept)
    wall = time.perf_counter() - started
    report = sweep_report.build_report(base, grid, results, check_report, wall)
    files = sweep_report.write_outputs(out, report, grid)
    sweep_report.print_tables(console, report, grid)
    console.print("wrote " + ", ".join(str(f) for f in files))
    return report


def _sweep_header(base: Scenario, grid: Grid, runs: int, checked: Cell | None) -> str:
    return (
        f"[bold]sweep[/]: {len(grid.rules)} rules x {len(grid.attacks)} attacks x "
        f"{len(grid.seeds)} seeds x {len(grid.datasets)} data sets = {runs} runs of "
        f"{base.nodes} nodes ({grid.byzantine} Byzantine under attack), {base.rounds} rounds "
        "each, "
        + (
            "fast engine (protocol attacks: real nodes in memory)"
            if grid.engine == "fast"
            else "real nodes on the in-memory ledger and transport"
        )
        + (f"; {checked.label} again at full fidelity" if checked else "")
    )


def _cell_status(progress: Progress, bar: TaskID) -> Callable[[Cell, CellResult | None], None]:
    def on_cell(cell: Cell, result: CellResult | None) -> None:
        if result is None:
            progress.update(bar, status=cell.label)
        else:
            progress.update(bar, advance=1, status=f"{cell.label}: {result.accuracy:.3f}")

    return on_cell
