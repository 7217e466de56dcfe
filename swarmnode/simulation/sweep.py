"""`swarmnode simulate sweep`: final swarm accuracy per merge rule and attack, over seeds and
data sets, with one cell re-run at full fidelity.

A full-fidelity cell costs a minute (py-evm mines tens of transactions a second), so the grid
runs on the fast engine (fast.py: the nodes' models trained as one batched computation, the
same merge functions), 36 cells in well under two minutes. Attacks that lie in messages
(forge_partials, lying_owner, false_blame, withhold_one) need the messages, so their cells,
and every cell with `engine="full"`, run real SwarmNodes on the in-memory ledger and
transport instead (engine.run_swarm's "memory" backend). To show that neither shortcut
changes what matters, one cell is run again on the embedded chain with gRPC and mutual TLS:
a cell of real nodes must end on the same final digest, bit for bit; a fast-engine cell
matches full fidelity within float summation order (docs/simulator.md#the-fast-engine), so
its final accuracy and loss must agree within FULL_CHECK_TOLERANCE and the report says
whether the digests happen to be equal too.

Every cell of a grid uses the same merge-rule parameters whatever its attack, so a rule's
clean cell and its attacked cells differ only by the attackers.

A runner (docs/simulator.md#sweeps): the grid, its cells and their runs. What the sweep
writes and prints is sweep_report.py's, and run.sweep ties the two together.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from pydantic import ValidationError

from swarmnode.exceptions import ConfigError
from swarmnode.rules import PPM
from swarmnode.simulation.attacks import ATTACKS, PROTOCOL_ATTACKS
from swarmnode.simulation.data import DATASETS
from swarmnode.simulation.engine import Backend, run_swarm
from swarmnode.simulation.fast import run_fast
from swarmnode.simulation.results import SwarmRun
from swarmnode.simulation.scenario import ENGINES, MERGE_RULES, Scenario
from swarmnode.simulation.tasks import scenario_data

RULES = ("mean", "median", "trimmed_mean", "centered_clip")
SWEEP_ATTACKS = ("none", "sign_flip", "alie")
SEEDS = (0, 1, 2)
BYZANTINE = 2
ENGINE = "fast"
FULL_CHECK_TOLERANCE = {"accuracy": 0.01, "loss": 1e-3}
"""How far a fast-engine cell's final accuracy and test loss may sit from the same cell at
full fidelity: the two models agree to about 1e-5 a round (tests/test_fast_engine.py), which
moves the loss by far less than 1e-3 and flips at most a test row or two."""

# centered clipping: an honest node's update has an L2 norm of about 2 early on and 0.3-0.7
# later (measured on both data sets with the default scenario); a radius of 0.5 clips the
# early ones and keeps most late ones whole, and ten iterations let the estimate travel up
# to 10 x tau. Measured over 3 seeds against 2 sign flippers of 8: (tau 1.0,
# 3 iterations) lost 10-12 points, (0.5, 10) 7-9, (0.2, 30) 8-9, (0.25, 3) 8-26.
CLIP_TAU_PPM = 500_000
CLIP_ITERATIONS = 10


@dataclass(frozen=True)
class Grid:
    datasets: tuple[str, ...] = DATASETS
    rules: tuple[str, ...] = RULES
    attacks: tuple[str, ...] = SWEEP_ATTACKS
    seeds: tuple[int, ...] = SEEDS
    byzantine: int = BYZANTINE  # in every cell whose attack is not "none"
    engine: str = ENGINE  # "fast", or "full": real nodes in memory; protocol attacks: "full"


@dataclass(frozen=True)
class Cell:
    dataset: str
    rule: str
    attack: str
    seed: int

    @property
    def label(self) -> str:
        return f"{self.dataset}/{self.rule}/{self.attack}/{self.seed}"


@dataclass
class CellResult:
    cell: Cell
    accuracy: float
    loss: float
    digest: str
    rounds_agreed: int
    seconds: float
    engine: str = ENGINE  # "fast", or "full": real SwarmNodes on the in-memory backend
    # What the protocol did (docs/simulator.md#sweeps), from the honest nodes' records:
    rounds: int = 0
    checked: int = 0  # segments the honest nodes re-merged themselves, over all rounds
    attackers_accused: int = 0  # rounds in which an honest node accused an attacker
    honest_accused: int = 0  # rounds in which an honest node accused an honest one
    voted_out: list[int] = field(default_factory=list)  # nodes the chain dropped, any round
    bytes_per_node: float = 0.0  # mean bytes an honest node sent per round
    received_per_node: float = 0.0  # mean bytes an honest node received (fetched rows too)


def cell_result(
    cell: Cell, run: SwarmRun, attackers: int, seconds: float, engine: str = ENGINE
) -> CellResult:
    """`run`'s result; the last `attackers` of its nodes are the attackers."""
    rounds = run.rounds
    nodes = len(rounds[0].per_node) if rounds else 0
    honest = set(range(nodes - attackers))
    mine = [[n for n in r.per_node if n.node in honest] for r in rounds]
    sent = [statistics.fmean(n.bytes_sent for n in ns) for ns in mine if ns]
    received = [statistics.fmean(n.bytes_received for n in ns) for ns in mine if ns]
    return CellResult(
        cell=cell,
        accuracy=run.accuracy,
        loss=run.loss,
        digest=run.digest,
        rounds_agreed=sum(r.digest_agreed for r in rounds),
        seconds=seconds,
        engine=engine,
        rounds=len(rounds),
        checked=sum(r.checked for r in rounds),
        attackers_accused=sum(any(a not in honest for a in r.accused) for r in rounds),
        honest_accused=sum(any(a in honest for a in r.accused) for r in rounds),
        voted_out=sorted({i for r in rounds for i in r.faults.get("dropped", [])}),
        bytes_per_node=statistics.fmean(sent) if sent else 0.0,
        received_per_node=statistics.fmean(received) if received else 0.0,
    )


def parse_names(flag: str, text: str, known: tuple[str, ...]) -> tuple[str, ...]:
    """A comma-separated list of known names; a ConfigError names the flag and the stranger."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise ConfigError(f"{flag}: give at least one of {', '.join(known)}")
    for name in names:
        if name not in known:
            raise ConfigError(f"{flag}: unknown {name!r} (known: {', '.join(known)})")
    return tuple(dict.fromkeys(names))


def parse_seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ConfigError(f"--seeds: {text!r} is not a comma-separated list of integers") from None
    if not seeds or any(s < 0 for s in seeds):
        raise ConfigError(f"--seeds: give one or more integers >= 0, got {text!r}")
    return tuple(dict.fromkeys(seeds))


def checked_cell(check: str, grid: Grid) -> Cell | None:
    """The cell `--full-check` names: "first", "none" (no cell) or DATASET/RULE/ATTACK/SEED."""
    if check == "none":
        return None
    return grid_cells(grid)[0] if check == "first" else parse_cell(check, grid)


def parse_cell(text: str, grid: Grid) -> Cell:
    """DATASET/RULE/ATTACK/SEED, one of the grid's cells."""
    parts = text.split("/")
    cells = {c.label: c for c in grid_cells(grid)}
    if len(parts) != 4 or text not in cells:
        raise ConfigError(
            f"--full-check: {text!r} is not a cell of this sweep (DATASET/RULE/ATTACK/SEED, "
            f"e.g. {grid_cells(grid)[0].label}), nor 'first' or 'none'"
        )
    return cells[text]


def parse_grid(
    *,
    datasets: str | None,
    rules: str | None,
    attacks: str | None,
    seeds: str | None,
    byzantine: int | None,
    engine: str | None = None,
) -> Grid:
    """The grid from the command line's flags; a flag not given keeps the default."""
    grid = Grid()
    if byzantine is not None and byzantine < 1:
        raise ConfigError(f"--byzantine: a sweep needs at least 1 attacker, got {byzantine}")
    return Grid(
        engine=parse_names("--engine", engine, ENGINES)[0] if engine else grid.engine,
        datasets=parse_names("--datasets", datasets, DATASETS) if datasets else grid.datasets,
        rules=parse_names("--rules", rules, MERGE_RULES) if rules else grid.rules,
        attacks=parse_names("--attacks", attacks, ATTACKS) if attacks else grid.attacks,
        seeds=parse_seeds(seeds) if seeds else grid.seeds,
        byzantine=grid.byzantine if byzantine is None else byzantine,
    )


def grid_cells(grid: Grid) -> list[Cell]:
    return [
        Cell(d, r, a, s)
        for d in grid.datasets
        for r in grid.rules
        for a in grid.attacks
        for s in grid.seeds
    ]


def rule_params(rule: str, base: Scenario, grid: Grid) -> tuple[int, int, int, int]:
    """Parameters that let `rule` stand against the grid's Byzantine count: the base
    scenario's own when it names this rule with parameters, sensible defaults otherwise."""
    if rule == base.merge_rule and any(base.merge_params):
        return base.merge_params
    b, n = grid.byzantine, base.nodes
    if rule == "trimmed_mean":  # cut exactly the attackers from each side, at least one
        return (-(-max(b, 1) * PPM // n), 0, 0, 0)
    if rule == "centered_clip":
        return (CLIP_TAU_PPM, CLIP_ITERATIONS, 0, 0)
    if rule == "krum":
        return (max(b, 1), 0, 0, 0)
    if rule == "geometric_median":
        return (1000, 100, 0, 0)  # stop at a step of 0.1% of the median distance
    return (0, 0, 0, 0)


def cell_scenario(base: Scenario, grid: Grid, cell: Cell) -> Scenario:
    attacked = cell.attack != "none"
    fields = base.model_dump()
    fields.update(
        name=f"{base.name}-{cell.label.replace('/', '-')}",
        dataset=cell.dataset,
        merge_rule=cell.rule,
        merge_params=rule_params(cell.rule, base, grid),
        attack=cell.attack,
        byzantine=grid.byzantine if attacked else 0,
        seed=cell.seed,
        engine=cell_engine(grid, cell),
    )
    try:
        return Scenario.model_validate(fields)
    except ValidationError as exc:
        message = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"sweep cell {cell.label}: {message}") from None
    except ConfigError as exc:  # a rule's parameters, checked inside the scenario's validator
        raise ConfigError(f"sweep cell {cell.label}: {exc}") from None


def cell_engine(grid: Grid, cell: Cell) -> str:
    """The grid's engine, but "full" (real nodes) for an attack that lies in messages, and
    then for the clean cells too: a protocol attack's cost is read against the clean run's
    bytes and checks, which the fast engine (no messages) has none of."""
    lies_in_messages = cell.attack in PROTOCOL_ATTACKS
    if cell.attack == "none" and any(a in PROTOCOL_ATTACKS for a in grid.attacks):
        lies_in_messages = True
    return "full" if lies_in_messages else grid.engine


def run_cell(scenario: Scenario, backend: Backend) -> SwarmRun:
    """The cell on its scenario's engine: fast, or real nodes on `backend`."""
    if scenario.engine == "fast":
        return run_fast(scenario, *scenario_data(scenario))
    return run_swarm(scenario, *scenario_data(scenario), backend=backend)


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch's intra-op threads, one while a fast-engine sweep runs: its models are so small
    (a 64-wide MLP, 8 nodes, batches of 32) that splitting an operation costs more than it
    saves. Measured on the 2-core machine under load: one digits cell 14.2 s of CPU with
    torch's default threads, 1.0 s with one, to the same final accuracy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_cells(
    scenarios: dict[Cell, Scenario], on_cell: Callable[[Cell, CellResult | None], None]
) -> list[CellResult]:
    """Every cell on its engine (fast, or real nodes on the in-memory backend), in order;
    `on_cell` hears of each as it starts (None) and as it ends."""
    results = []
    for cell, scenario in scenarios.items():
        on_cell(cell, None)
        t0 = time.perf_counter()
        run = run_cell(scenario, "memory")
        seconds = time.perf_counter() - t0
        results.append(cell_result(cell, run, scenario.byzantine, seconds, scenario.engine))
        on_cell(cell, results[-1])
    return results


def full_fidelity_run(scenario: Scenario) -> tuple[SwarmRun, float]:
    """The cell's scenario on the embedded chain with mutual-TLS gRPC, and its seconds."""
    t0 = time.perf_counter()
    run = run_cell(scenario.model_copy(update={"engine": "full"}), "grpc")
    return run, time.perf_counter() - t0


def full_fidelity(
    scenario: Scenario, swept: CellResult, ran: tuple[SwarmRun, float] | None = None
) -> dict[str, Any]:
    """`swept`'s cell again on the embedded chain with mutual-TLS gRPC (or `ran`, that run
    made already). A cell of real nodes must end on its digest bit for bit; a fast-engine
    cell within FULL_CHECK_TOLERANCE."""
    run, seconds = ran if ran is not None else full_fidelity_run(scenario)
    accuracy, digest = run.accuracy, run.digest
    agreed = sum(r.digest_agreed for r in run.rounds)
    equal = bool(digest) and digest == swept.digest
    apart = {"accuracy": abs(accuracy - swept.accuracy), "loss": abs(run.loss - swept.loss)}
    close = all(apart[k] <= limit for k, limit in FULL_CHECK_TOLERANCE.items())
    return {
        "cell": asdict(swept.cell),
        "engine": swept.engine,
        "sweep_digest": swept.digest,
        "full_fidelity_digest": digest,
        "equal": equal,
        "tolerance": None if swept.engine == "full" else dict(FULL_CHECK_TOLERANCE),
        "difference": apart,
        "agrees": equal if swept.engine == "full" else close and agreed == len(run.rounds),
        "sweep_accuracy": swept.accuracy,
        "full_fidelity_accuracy": accuracy,
        "sweep_loss": swept.loss,
        "full_fidelity_loss": run.loss,
        "full_fidelity_rounds_agreed": agreed,
        "full_fidelity_seconds": seconds,
    }
