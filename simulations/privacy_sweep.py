"""Accuracy against epsilon: no DP, local DP-SGD and distributed DP, on the bundled data sets.

Run: .venv/bin/python simulations/privacy_sweep.py [--datasets digits,breast_cancer]
     [--local-noise 0.5,1,2] [--mean-noise 1,2,4] [--seeds 0,1,2] [--json out.json]

Every row is one data set, one privacy mode and one noise multiplier, with the epsilon the
nodes spent by the last round (at --delta) and the merged model's accuracy on the held-out
test set after it (docs/privacy.md#accuracy-against-epsilon):

- none: no DP, on the fast engine, the mean over --seeds.
- local: DP-SGD with Opacus on every node (per-sample clipping --local-clip, Poisson
  batches), epsilon per training row. It needs per-sample gradients, which the fast engine
  does not compute, so it runs full fidelity (SwarmNodes on the in-memory ledger and
  transport), over the first --local-seeds seeds (default 3: all of the default seeds).
- distributed: distributed DP for the mean on secure aggregation (each node clips its
  round's update to --mean-clip and adds its share of the noise), epsilon per node's whole
  update, on the fast engine (which sums in fixed point as the masked sum does), the mean
  over --seeds. Its m, the fewest participants a round may finish with, is --min-peers
  (default: every node, so the noise is shared out over them all; docs/privacy.md says what
  a smaller m costs).

Both epsilons are at the same delta but of different units (a row, a node): the table says
which. Every node takes part in every round (no dropout), IID partition by default.
The default grid takes about three minutes on a two-core machine at load 5.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from swarmnode.exceptions import ConfigError

if TYPE_CHECKING:
    from swarmnode.simulation.results import SwarmRun
    from swarmnode.simulation.scenario import Scenario

MODES = ("none", "local", "distributed")
UNITS = {"none": "", "local": "row", "distributed": "node"}


@dataclass(frozen=True)
class Settings:
    """The grid and what every run shares."""

    datasets: tuple[str, ...] = ("digits", "breast_cancer")
    local_noise: tuple[float, ...] = (0.5, 1.0, 2.0)
    mean_noise: tuple[float, ...] = (1.0, 2.0, 4.0)
    seeds: tuple[int, ...] = (0, 1, 2)
    local_seeds: int = 3
    nodes: int = 8
    rounds: int = 10
    local_batches: int = 10
    partition: str = "iid"
    local_clip: float = 1.0
    mean_clip: float = 0.5
    colluders: int = 1
    min_peers: int | None = None  # None: every node
    delta: float = 1e-5


@dataclass
class Row:
    """One cell's result: the accuracy the mean over its seeds, epsilon their largest."""

    dataset: str
    mode: str
    engine: str
    noise: float | None
    epsilon: float | None
    delta: float | None
    accuracy: float
    accuracies: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def unit(self) -> str:
        return UNITS[self.mode]


def scenario(
    settings: Settings, dataset: str, mode: str, noise: float | None, seed: int
) -> Scenario:
    """The scenario of one run; ConfigError (one line) for settings it refuses."""
    from swarmnode.simulation.scenario import Scenario  # here: --help loads no torch

    fields: dict[str, Any] = {
        "dataset": dataset,
        "nodes": settings.nodes,
        "rounds": settings.rounds,
        "local_batches": settings.local_batches,
        "partition": settings.partition,
        "seed": seed,
        "engine": "full" if mode == "local" else "fast",
    }
    if mode == "local":
        fields.update(dp_noise=noise, dp_clip=settings.local_clip, dp_delta=settings.delta)
    elif mode == "distributed":
        fields.update(
            secure_aggregation=True,
            min_peers=settings.min_peers or settings.nodes,
            dp_mean_noise=noise,
            dp_mean_clip=settings.mean_clip,
            dp_colluders=settings.colluders,
            dp_delta=settings.delta,
        )
    return Scenario.load(None, fields)


def run_one(s: Scenario) -> SwarmRun:
    """The swarm's rounds only (no baselines): the fast engine, or full fidelity in memory."""
    from torch.utils.data import TensorDataset

    from swarmnode.simulation.engine import run_tasks
    from swarmnode.simulation.fast import run_fast
    from swarmnode.simulation.tasks import node_tasks, scenario_data

    data, parts = scenario_data(s)
    if s.engine == "fast":
        return run_fast(s, data, parts)
    test = TensorDataset(data.x_test, data.y_test)
    return run_tasks(s, node_tasks(s, data, parts), test, backend="memory")


def run_cell(settings: Settings, dataset: str, mode: str, noise: float | None) -> Row:
    seeds = settings.seeds[: settings.local_seeds] if mode == "local" else settings.seeds
    started = time.perf_counter()
    accuracies: list[float] = []
    spent: list[float] = []
    engine = "fast"
    for seed in seeds:
        s = scenario(settings, dataset, mode, noise, seed)
        engine = s.engine
        run = run_one(s)
        last = run.rounds[-1]
        accuracies.append(last.accuracy)
        spent += [n.epsilon for n in last.per_node if n.epsilon is not None]
    return Row(
        dataset=dataset,
        mode=mode,
        engine=engine,
        noise=noise,
        epsilon=max(spent) if spent else None,
        delta=None if mode == "none" else settings.delta,
        accuracy=statistics.fmean(accuracies),
        accuracies=accuracies,
        seconds=time.perf_counter() - started,
    )


def cells(settings: Settings) -> list[tuple[str, str, float | None]]:
    """(data set, mode, noise) of every row, in the table's order."""
    out: list[tuple[str, str, float | None]] = []
    for dataset in settings.datasets:
        out.append((dataset, "none", None))
        out += [(dataset, "local", noise) for noise in settings.local_noise]
        out += [(dataset, "distributed", noise) for noise in settings.mean_noise]
    return out


def sweep(settings: Settings, on_row: Callable[[Row], None] = lambda row: None) -> list[Row]:
    """Every cell, checked first (a refused setting fails before the first run)."""
    grid = cells(settings)
    for dataset, mode, noise in grid:
        scenario(settings, dataset, mode, noise, settings.seeds[0])
    rows = []
    for dataset, mode, noise in grid:
        rows.append(run_cell(settings, dataset, mode, noise))
        on_row(rows[-1])
    return rows


def table(rows: Sequence[Row]) -> Table:
    out = Table(title="accuracy against epsilon")
    for name in ("data set", "mode", "engine", "noise", "epsilon", "unit", "accuracy", "seeds"):
        justify = "left" if name in ("data set", "mode", "engine", "unit") else "right"
        out.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        out.add_row(
            row.dataset,
            row.mode,
            row.engine,
            "-" if row.noise is None else f"{row.noise:g}",
            "-" if row.epsilon is None else f"{row.epsilon:.2f}",
            row.unit or "-",
            f"{row.accuracy:.3f}",
            str(len(row.accuracies)),
        )
    return out


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def parse(argv: Sequence[str] | None = None) -> tuple[Settings, str | None]:
    d = Settings()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default=",".join(d.datasets))
    p.add_argument("--local-noise", default=",".join(f"{v:g}" for v in d.local_noise))
    p.add_argument("--mean-noise", default=",".join(f"{v:g}" for v in d.mean_noise))
    p.add_argument("--seeds", default=",".join(str(v) for v in d.seeds))
    p.add_argument("--local-seeds", type=int, default=d.local_seeds)
    p.add_argument("--nodes", type=int, default=d.nodes)
    p.add_argument("--rounds", type=int, default=d.rounds)
    p.add_argument("--local-batches", type=int, default=d.local_batches)
    p.add_argument("--partition", default=d.partition)
    p.add_argument("--local-clip", type=float, default=d.local_clip)
    p.add_argument("--mean-clip", type=float, default=d.mean_clip)
    p.add_argument("--colluders", type=int, default=d.colluders)
    p.add_argument("--min-peers", type=int, default=None, help="m (default: every node)")
    p.add_argument("--delta", type=float, default=d.delta)
    p.add_argument("--json", default=None, help="also write the rows to this file")
    a = p.parse_args(argv)
    try:
        settings = Settings(
            datasets=tuple(v for v in a.datasets.split(",") if v),
            local_noise=_floats(a.local_noise),
            mean_noise=_floats(a.mean_noise),
            seeds=_ints(a.seeds),
            local_seeds=a.local_seeds,
            nodes=a.nodes,
            rounds=a.rounds,
            local_batches=a.local_batches,
            partition=a.partition,
            local_clip=a.local_clip,
            mean_clip=a.mean_clip,
            colluders=a.colluders,
            min_peers=a.min_peers,
            delta=a.delta,
        )
    except ValueError as exc:
        p.error(str(exc))
    if not settings.seeds or settings.local_seeds < 1:
        p.error("give at least one seed, and --local-seeds of at least 1")
    return settings, a.json


def main(argv: Sequence[str] | None = None) -> int:
    settings, out = parse(argv)
    console = Console(width=max(Console().width, 100))  # the table's names unclipped
    load = os.getloadavg()
    console.print(
        f"{settings.nodes} nodes, {settings.rounds} rounds of {settings.local_batches} "
        f"batches, {settings.partition}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    started = time.perf_counter()

    def progress(row: Row) -> None:
        noise = "" if row.noise is None else f" noise {row.noise:g}"
        console.print(f"  {row.dataset} {row.mode}{noise}: {row.seconds:.1f} s", style="dim")

    try:
        rows = sweep(settings, progress)
    except ConfigError as exc:
        console.print(f"refused: {exc}", style="red", highlight=False, soft_wrap=True)
        return 2
    console.print(table(rows))
    after = os.getloadavg()
    console.print(
        f"{time.perf_counter() - started:.0f} s; load average at the end {after[0]:.2f}; "
        "epsilon: the most any node spent, per row (local) or per node (distributed)"
    )
    if out is not None:
        payload = {"settings": asdict(settings), "load": load, "rows": [asdict(r) for r in rows]}
        with open(out, "w") as f:
            json.dump(payload, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
