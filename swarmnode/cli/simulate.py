"""`swarmnode simulate`: many virtual nodes on real data, against baselines."""

from __future__ import annotations

import time
import tomllib
from pathlib import Path
from typing import Any

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
    attack: str | None = typer.Option(
        None, help="none, sign_flip, noise, label_flip or alie (with --byzantine)."
    ),
    processes: bool | None = typer.Option(
        None,
        "--processes/--in-process",
        help="Each node a `swarmnode run` process of its own, against anvil.",
    ),
    task: str | None = typer.Option(
        None, help="Your own data: module:function, called as f(node=, nodes=, seed=) -> Task."
    ),
    test_set: str | None = typer.Option(
        None, help="With --task: module:attribute of the held-out Dataset (or f(seed=))."
    ),
    sweep: bool = typer.Option(
        False, "--sweep", help="Final accuracy per merge rule x attack x seed x data set."
    ),
    rules: str | None = typer.Option(
        None, help="--sweep: merge rules, comma-separated (default: 4 rules)."
    ),
    attacks: str | None = typer.Option(
        None, help="--sweep: attacks, comma-separated (default: none,sign_flip,alie)."
    ),
    seeds: str | None = typer.Option(
        None, help="--sweep: seeds, comma-separated (default: 0,1,2)."
    ),
    datasets: str | None = typer.Option(
        None, help="--sweep: data sets, comma-separated (default: both)."
    ),
    settings: list[str] = typer.Option(
        [],
        "--set",
        help="Any scenario field as FIELD=VALUE, the value in TOML syntax, e.g. --set dropout=0.2 "
        "--set 'crash=[{node=3, round=4, rejoin=6}]'. Repeatable.",
    ),
    full_check: str = typer.Option(
        "first",
        help="--sweep: the cell re-run at full fidelity (DATASET/RULE/ATTACK/SEED), or none.",
    ),
) -> None:
    """Run a swarm of virtual nodes on a real data set and compare it with its baselines."""
    from swarmnode.exceptions import ConfigError
    from swarmnode.simulation.scenario import Scenario

    extra = _parse_settings(settings)

    if sweep:
        # --- the sweep (swarmnode.simulation.sweep); the single run follows below
        from swarmnode.simulation.sweep import parse_grid
        from swarmnode.simulation.sweep import sweep as run_sweep

        for flag, value, instead in (
            ("--merge-rule", merge_rule, "--rules"),
            ("--attack", attack, "--attacks"),
            ("--dataset", dataset, "--datasets"),
            ("--seed", seed, "--seeds"),
            ("--processes", processes, "nothing: a sweep runs in memory"),
            ("--task", task, "nothing: a sweep runs on the bundled data sets"),
        ):
            if value is not None and value is not False:  # --seed 0 counts, --in-process not
                raise ConfigError(f"{flag} sets a single run; with --sweep use {instead}")
        grid = parse_grid(
            datasets=datasets, rules=rules, attacks=attacks, seeds=seeds, byzantine=byzantine
        )
        base = Scenario.load(
            scenario_file,
            {
                "nodes": nodes,
                "partition": partition,
                "alpha": alpha,
                "rounds": rounds,
                "local_batches": local_batches,
                **extra,
            },
        )
        folder = out or Path("runs") / time.strftime(f"%Y%m%d-%H%M%S-{base.name}-sweep")
        run_sweep(base, grid, folder, check=full_check)
        return
    for flag, given in (
        ("--rules", rules),
        ("--attacks", attacks),
        ("--seeds", seeds),
        ("--datasets", datasets),
    ):
        if given is not None:
            raise ConfigError(f"{flag} goes with --sweep")
    from swarmnode.simulation.run import simulate as run

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
            "processes": processes,
            "task": task,
            "test_set": test_set,
            **extra,
        },
    )
    folder = out or Path("runs") / time.strftime(f"%Y%m%d-%H%M%S-{scenario.name}")
    run(scenario, folder)


def _parse_settings(settings: list[str]) -> dict[str, Any]:
    """`--set FIELD=VALUE` pairs: VALUE is read as TOML (numbers, booleans, lists, inline
    tables), or taken as a plain string when it is not TOML, so --set name=trial works."""
    from swarmnode.exceptions import ConfigError

    parsed: dict[str, Any] = {}
    for item in settings:
        field, sep, value = item.partition("=")
        field = field.strip()
        if not sep or not field:
            raise ConfigError(f"--set {item}: write FIELD=VALUE, e.g. --set dropout=0.2")
        try:
            parsed[field] = tomllib.loads(f"value = {value}")["value"]
        except tomllib.TOMLDecodeError:
            parsed[field] = value
    return parsed
