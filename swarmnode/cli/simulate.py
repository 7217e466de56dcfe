"""`swarmnode simulate [run]` and `swarmnode simulate sweep`: virtual swarms on real data.

`simulate` is a group whose default command is `run`, so that `swarmnode simulate
scenario.toml --nodes 4` runs one scenario as it always did, and `swarmnode simulate sweep`
is a command of its own with only the sweep's flags. An option given to the wrong one of
the two is named in one line with the command it belongs to.
"""

from __future__ import annotations

import time
import tomllib
from pathlib import Path
from typing import Any

import click
import typer
from typer.core import TyperGroup

from swarmnode.cli import output
from swarmnode.exceptions import ConfigError

DEFAULT_COMMAND = "run"
OLD_SWEEP_FLAG = "--sweep"  # `simulate --sweep`: an alias of `simulate sweep` for one release


class SimulateGroup(TyperGroup):
    """`simulate` with `run` as its default command, and the old `--sweep` flag as an alias."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if OLD_SWEEP_FLAG in args:
            typer.echo(
                "swarmnode: `simulate --sweep` is now `simulate sweep`; the old flag still "
                "works in this release and goes in the next",
                err=True,
            )
            args = ["sweep", *(a for a in args if a != OLD_SWEEP_FLAG)]
        elif not args or (args[0] not in self.commands and args[0] not in ctx.help_option_names):
            args = [DEFAULT_COMMAND, *args]
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.NoSuchOption as exc:
            raise self._elsewhere(exc) from None

    def _elsewhere(self, exc: click.NoSuchOption) -> click.ClickException | ConfigError:
        """The one-line error for an option of the other command; click's own otherwise."""
        given = exc.ctx.info_name if exc.ctx is not None else None
        owners = [
            name
            for name, command in self.commands.items()
            if name != given and any(exc.option_name in p.opts for p in command.params)
        ]
        if not owners:
            return exc
        if owners[0] == DEFAULT_COMMAND:
            hint = f"; a sweep takes {exc.possibilities[0]}" if exc.possibilities else ""
            return ConfigError(f"{exc.option_name} sets a single run, not a sweep{hint}")
        return ConfigError(f"{exc.option_name} goes with `swarmnode simulate {owners[0]}`")


ScenarioArgument = typer.Argument(
    None, help="Scenario TOML (see simulations/); flags override its fields."
)
OutOption = typer.Option(None, "--out", help="Output folder (default: runs/<time>).")
NodesOption = typer.Option(None, help="Virtual nodes.")
PartitionOption = typer.Option(None, help="iid, dirichlet, shards or quantity.")
AlphaOption = typer.Option(None, help="Dirichlet concentration (smaller: more skew).")
RoundsOption = typer.Option(None, help="Swarm rounds.")
LocalBatchesOption = typer.Option(None, help="Batches each node trains between syncs.")
SetOption = typer.Option(
    [],
    "--set",
    help="Any scenario field as FIELD=VALUE, the value in TOML syntax, e.g. --set dropout=0.2 "
    "--set 'crash=[{node=3, round=4, rejoin=6}]'. Repeatable.",
)
JsonOption = typer.Option(
    False,
    "--json",
    help="Print the report (what the output folder's JSON file holds) on stdout as JSON; the "
    "progress and tables go to stderr.",
)


def run(
    scenario_file: Path | None = ScenarioArgument,
    out: Path | None = OutOption,
    nodes: int | None = NodesOption,
    dataset: str | None = typer.Option(None, help="digits, breast_cancer or diamonds."),
    engine: str | None = typer.Option(
        None,
        help="full (real nodes, chain and gRPC; up to 256 nodes) or fast (the nodes' models "
        "trained as one batched computation; up to 10,000).",
    ),
    partition: str | None = PartitionOption,
    alpha: float | None = AlphaOption,
    rounds: int | None = RoundsOption,
    local_batches: int | None = LocalBatchesOption,
    merge_rule: str | None = typer.Option(None, help="mean, median, trimmed_mean, krum, ..."),
    seed: int | None = typer.Option(None, help="Seed of the split, the data order and init."),
    byzantine: int | None = typer.Option(None, help="The last nodes, which run --attack."),
    attack: str | None = typer.Option(
        None,
        help="With --byzantine: poisoned contributions (sign_flip, noise, label_flip, alie, "
        "ipm) or lies in messages (forge_partials, lying_owner, false_blame, withhold_one).",
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
    settings: list[str] = SetOption,
    compare: str | None = typer.Option(
        None,
        help="flower: also run the same FedAvg through Flower's own simulation engine (Ray; "
        "pip install 'swarmnode[flower]') and put its curve on the plot.",
    ),
    ray: str | None = typer.Option(
        None,
        "--ray",
        metavar="ADDRESS",
        help="Train the fast engine's nodes in shards as Ray tasks on the cluster at ADDRESS "
        "(host:port, or auto); implies --engine fast. pip install 'swarmnode[ray]'.",
    ),
    ray_shards: int | None = typer.Option(
        None, min=1, help="With --ray: how many shards (default: one per CPU of the cluster)."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Run a swarm of virtual nodes on a real data set and compare it with its baselines.

    The default command: `swarmnode simulate SCENARIO` is `swarmnode simulate run SCENARIO`.
    """
    # here, not at the top: the simulator loads torch, seconds that other commands skip
    from swarmnode.simulation.run import simulate
    from swarmnode.simulation.scenario import Scenario

    fields = {
        "nodes": nodes,
        "dataset": dataset,
        "engine": engine or ("fast" if ray is not None else None),
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
    }
    scenario = Scenario.load(scenario_file, {**fields, **_parse_settings(settings)})
    folder = out or Path("runs") / time.strftime(f"%Y%m%d-%H%M%S-{scenario.name}")
    outcome = simulate(
        scenario,
        folder,
        console=output.console(stderr=as_json),
        compare=compare,
        ray=ray,
        ray_shards=ray_shards,
    )
    if as_json:
        output.print_json(outcome.report)


def sweep(
    scenario_file: Path | None = ScenarioArgument,
    out: Path | None = OutOption,
    nodes: int | None = NodesOption,
    partition: str | None = PartitionOption,
    alpha: float | None = AlphaOption,
    rounds: int | None = RoundsOption,
    local_batches: int | None = LocalBatchesOption,
    byzantine: int | None = typer.Option(None, help="Byzantine nodes in each attacked cell."),
    rules: str | None = typer.Option(None, help="Merge rules, comma-separated (default: 4)."),
    attacks: str | None = typer.Option(
        None,
        help="Attacks, comma-separated (default: none,sign_flip,alie; protocol attacks: "
        "forge_partials, lying_owner, false_blame, withhold_one).",
    ),
    seeds: str | None = typer.Option(None, help="Seeds, comma-separated (default: 0,1,2)."),
    datasets: str | None = typer.Option(None, help="Data sets, comma-separated (default: both)."),
    engine: str | None = typer.Option(
        None,
        help="fast (default: the nodes trained as one batched computation) or full (real "
        "nodes on the in-memory ledger and transport). Protocol attacks always run full.",
    ),
    settings: list[str] = SetOption,
    full_check: str = typer.Option(
        "first", help="The cell re-run at full fidelity (DATASET/RULE/ATTACK/SEED), or none."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Final swarm accuracy per merge rule x attack x seed x data set, over many runs.

    The cells run on the fast engine (protocol attacks: real nodes in memory); one of them
    runs again at full fidelity (embedded chain, gRPC with mutual TLS) and must agree.
    """
    # here, not at the top: the simulator loads torch, seconds that other commands skip
    from swarmnode.simulation.run import sweep as run_sweep
    from swarmnode.simulation.scenario import Scenario
    from swarmnode.simulation.sweep import parse_grid

    extra = _parse_settings(settings)
    grid = parse_grid(
        datasets=datasets,
        rules=rules,
        attacks=attacks,
        seeds=seeds,
        byzantine=byzantine,
        engine=engine,
    )
    fields = {
        "nodes": nodes,
        "partition": partition,
        "alpha": alpha,
        "rounds": rounds,
        "local_batches": local_batches,
    }
    base = Scenario.load(scenario_file, {**fields, **extra})
    folder = out or Path("runs") / time.strftime(f"%Y%m%d-%H%M%S-{base.name}-sweep")
    report = run_sweep(base, grid, folder, check=full_check, console=output.console(stderr=as_json))
    if as_json:
        output.print_json(report)


def _parse_settings(settings: list[str]) -> dict[str, Any]:
    """`--set FIELD=VALUE` pairs: VALUE is read as TOML (numbers, booleans, lists, inline
    tables), or taken as a plain string when it is not TOML, so --set name=trial works."""
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
