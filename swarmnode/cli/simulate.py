"""`swarmnode simulate`: many virtual nodes on real data, against baselines."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from swarmnode.cli.app import app


@app.command()
def simulate(
    scenario_file: Path | None = typer.Argument(
        None, help="Scenario TOML (see simulations/); flags override its fields."
    ),
    out: Path | None = typer.Option(None, "--out", help="Output folder (default: runs/<time>)."),
    nodes: int | None = typer.Option(None, help="Virtual nodes."),
    dataset: str | None = typer.Option(None, help="digits or breast_cancer."),
    partition: str | None = typer.Option(None, help="iid, dirichlet, shards or quantity."),
    alpha: float | None = typer.Option(None, help="Dirichlet concentration (smaller: more skew)."),
    rounds: int | None = typer.Option(None, help="Swarm rounds."),
    local_batches: int | None = typer.Option(None, help="Batches each node trains between syncs."),
    merge_rule: str | None = typer.Option(None, help="mean, median, trimmed_mean, krum, ..."),
    seed: int | None = typer.Option(None, help="Seed of the split, the data order and init."),
    byzantine: int | None = typer.Option(None, help="Nodes that poison their contributions."),
    attack: str | None = typer.Option(None, help="none, sign_flip or noise."),
) -> None:
    """Run a swarm of virtual nodes on a real data set and compare it with its baselines."""
    from swarmnode.simulation.run import simulate as run
    from swarmnode.simulation.scenario import Scenario

    scenario = Scenario.load(
        scenario_file,
        {
            "nodes": nodes,
            "dataset": dataset,
            "partition": partition,
            "alpha": alpha,
            "rounds": rounds,
            "local_batches": local_batches,
            "merge_rule": merge_rule,
            "seed": seed,
            "byzantine": byzantine,
            "attack": attack,
        },
    )
    folder = out or Path("runs") / time.strftime(f"%Y%m%d-%H%M%S-{scenario.name}")
    run(scenario, folder)
