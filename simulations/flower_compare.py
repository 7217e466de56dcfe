"""The same FedAvg through Flower's simulation engine (Ray), swarmnode's fast engine and full
fidelity, side by side in one run (docs/simulator.md#flower-side-by-side).

Full fidelity runs twice, once on each chain (docs/simulator.md#the-chain): rows
"full/anvil" (a private anvil, the scenario's `chain = "anvil"`) and "full/embedded" (the
py-evm chain inside this process, the default). The full-fidelity target (at least Flower's
speed at n = 8) is the anvil row's: issue 17 lets the simulator's chain be anvil where it is
faster. The embedded row is printed beside it, without a target, for comparison.

Every engine gets the same split, initial model, test set and recipe: each node trains
`--local-batches` batches a round in LocalTrainer's order with a fresh SGD with momentum
(`fresh_optimizer`), and the round merges with the sample-weighted mean. A run is timed from
the call that starts its engine to the final model: data loading is outside, the engine's
start-up (Ray's workers; the embedded chain, keys and gRPC servers) inside, since that is
what a user waits for. Each engine scores the merged model on the test set every round.

    .venv/bin/python simulations/flower_compare.py                  # n = 8 and 100, seed 0
    .venv/bin/python simulations/flower_compare.py --seeds 0,1,2    # the accuracy target
    .venv/bin/python simulations/flower_compare.py --nodes 8 --full-at none
    .venv/bin/python simulations/flower_compare.py --nodes 8 --chains anvil   # one full row

Needs the `swarmnode[flower]` extra (flwr[simulation], Ray). Prints the measured ratios
beside the targets; the targets are goals to read, not assertions.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from swarmnode.simulation.data import Dataset
from swarmnode.simulation.engine import run_swarm
from swarmnode.simulation.fast import run_fast
from swarmnode.simulation.flower_baseline import run_flower
from swarmnode.simulation.partition import IndexArray
from swarmnode.simulation.scenario import Scenario
from swarmnode.simulation.tasks import scenario_data

FAST_TARGETS = {8: 20.0, 100: 50.0}  # Flower's seconds / the fast engine's, at least
FULL_TARGET = 1.0  # Flower's seconds / full fidelity's on anvil at n = 8, at least
TARGETED_FULL = "full/anvil"  # the full-fidelity row the target applies to
CHAINS = ("anvil", "embedded")
ENGINES = ("flower", "fast", *(f"full/{chain}" for chain in CHAINS))
ACCURACY_POINTS = 1.0  # |fast - Flower| final accuracy, mean over seeds, at most


@dataclass
class Result:
    engine: str
    nodes: int
    seed: int
    seconds: float
    accuracy: float


def _timed(run: Callable[[], float]) -> tuple[float, float]:
    t0 = time.perf_counter()
    accuracy = run()
    return time.perf_counter() - t0, accuracy


def _full_accuracy(scenario: Scenario, data: Dataset, parts: list[IndexArray]) -> float:
    return run_swarm(scenario, data, parts, backend="grpc").accuracy


def compare(nodes: int, seed: int, args: argparse.Namespace, chains: list[str]) -> list[Result]:
    """Flower, the fast engine and full fidelity on each of `chains` (none: no full rows)."""
    scenario = Scenario.load(
        None,
        {
            "engine": "fast",
            "nodes": nodes,
            "seed": seed,
            "rounds": args.rounds,
            "local_batches": args.local_batches,
            "fresh_optimizer": True,
            **({"dataset": args.dataset} if args.dataset else {}),
        },
    )
    data, parts = scenario_data(scenario)  # outside every timing
    out = []
    flower = run_flower(scenario, data, parts)  # its own timing: run_simulation's call
    out.append(Result("flower", nodes, seed, flower.seconds, flower.curve.final))
    seconds, accuracy = _timed(lambda: run_fast(scenario, data, parts).accuracy)
    out.append(Result("fast", nodes, seed, seconds, accuracy))
    for chain in chains:
        fidelity = scenario.model_copy(update={"engine": "full", "chain": chain})
        seconds, accuracy = _timed(partial(_full_accuracy, fidelity, data, parts))
        out.append(Result(f"full/{chain}", nodes, seed, seconds, accuracy))
    for r in out:
        print(
            f"  n={r.nodes} seed={r.seed} {r.engine:>13}: {r.seconds:8.2f} s, {r.accuracy:.4f}",
            flush=True,
        )
    return out


def report(results: list[Result], dataset_of: dict[int, str]) -> None:
    print()
    print(
        f"{'n':>5} {'data':>8} {'engine':>13} {'seconds':>9} {'Flower/it':>9} {'target':>8} "
        f"{'accuracy':>9} {'vs Flower':>10}"
    )
    for n in sorted({r.nodes for r in results}):
        mine = [r for r in results if r.nodes == n]
        by = {e: [r for r in mine if r.engine == e] for e in ENGINES}
        flower_s = statistics.fmean(r.seconds for r in by["flower"])
        flower_a = statistics.fmean(r.accuracy for r in by["flower"])
        for engine, runs in by.items():
            if not runs:
                continue
            seconds = statistics.fmean(r.seconds for r in runs)
            accuracy = statistics.fmean(r.accuracy for r in runs)
            ratio = flower_s / seconds
            goal = FAST_TARGETS.get(n) if engine == "fast" else None
            goal = FULL_TARGET if engine == TARGETED_FULL and n == 8 else goal
            target = "-" if goal is None else f">={goal:g}x"
            met = "" if goal is None else (" ok" if ratio >= goal else " MISS")
            # rounded first: means of equal accuracies can differ in the last bit, and a
            # difference of -1e-15 points would print as "-0.00"
            points = round(100 * (accuracy - flower_a), 2) + 0.0
            versus = "-" if engine == "flower" else f"{points:+.2f} pt"
            print(
                f"{n:>5} {dataset_of[n]:>8} {engine:>13} {seconds:9.2f} {ratio:8.1f}x "
                f"{target + met:>8} {accuracy:9.4f} {versus:>10}"
            )
        fast_a = statistics.fmean(r.accuracy for r in by["fast"])
        gap = abs(100 * (fast_a - flower_a))
        seeds = len(by["fast"])
        print(
            f"      n={n}: fast vs Flower final accuracy {gap:.2f} points, mean of {seeds} "
            f"seed(s) (target <= {ACCURACY_POINTS:g}: {'ok' if gap <= ACCURACY_POINTS else 'MISS'})"
        )
        if n == 8 and by[TARGETED_FULL]:
            print(
                f"      n={n}: the full-fidelity target (>= {FULL_TARGET:g}x Flower's speed) is "
                f"{TARGETED_FULL}'s; the other full-fidelity rows have none"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="8,100", help="comma-separated node counts")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (targets: 0,1,2)")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--local-batches", type=int, default=10)
    parser.add_argument("--dataset", default=None, help="default: the scenario's for each n")
    parser.add_argument(
        "--full-at", default="8", help="node counts also run at full fidelity, or none"
    )
    parser.add_argument(
        "--chains",
        default=",".join(CHAINS),
        help="full fidelity's chains, comma-separated (anvil: the target's row; embedded)",
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch's intra-op threads in this process (Flower's clients run one each)",
    )
    args = parser.parse_args()
    # the models are tiny: on the shared 2-core machine one thread ran a fast-engine sweep
    # cell in 1.0 s of CPU against 14 s with torch's default (swarmnode.simulation.sweep)
    torch.set_num_threads(args.torch_threads)
    node_counts = [int(v) for v in args.nodes.split(",")]
    seeds = [int(v) for v in args.seeds.split(",")]
    full_at = set() if args.full_at == "none" else {int(v) for v in args.full_at.split(",")}
    chains = [c for c in args.chains.split(",") if c]
    unknown = [c for c in chains if c not in CHAINS]
    if unknown:
        parser.error(f"--chains {','.join(unknown)}: unknown (known: {', '.join(CHAINS)})")
    results: list[Result] = []
    dataset_of: dict[int, str] = {}
    for n in node_counts:
        extra = {"dataset": args.dataset} if args.dataset else {}
        dataset_of[n] = Scenario.load(None, {"engine": "fast", "nodes": n, **extra}).dataset
        for seed in seeds:
            results += compare(n, seed, args, chains if n in full_at else [])
    report(results, dataset_of)


if __name__ == "__main__":
    main()
