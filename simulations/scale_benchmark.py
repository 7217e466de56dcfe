"""Seconds per round and peak memory against the number of virtual nodes, per engine.

Run: .venv/bin/python simulations/scale_benchmark.py [--fast 8,64,256,1000] [--memory 8,32]
     [--grpc 8] [--anvil 8] [--rounds 3]

Each point runs in a fresh process of its own (this script again, with --one), so its peak
memory (the process's maximum resident set, and the GPU's peak allocation on CUDA) is its
own. Seconds per round is the mean over the rounds after the first (the first pays for
warm-ups); set-up (data, chain, nodes) is printed apart. Swarm rounds only: no baselines.

- fast: the fast engine (swarmnode/simulation/fast.py) on diamonds, IID, 10 batches of 32
  per node per round. Past 4,315 nodes diamonds has fewer than ten training rows a node, so
  such a point (10,000: `--fast 10000`) deals the rows with no floor (four a node) and says
  so: it measures the engine, not a scenario the simulator would accept.
- memory: full fidelity's SwarmNodes on the in-memory ledger and transport (a thread a node).
- grpc: full fidelity: the embedded chain and mutual-TLS gRPC; 32 nodes cost minutes of
  set-up and half a minute a round, hence only 8 by default (`--grpc 8,32` for both).
- anvil: the same full fidelity on a private anvil (scenario key chain = "anvil",
  docs/simulator.md#the-chain), 8 nodes by default (`--anvil 8,32`).

The default run (fast 8-1000, memory 8 and 32, grpc 8, anvil 8) takes about five minutes on
an idle two-core machine. On a machine shared by more jobs than cores, give `--threads 1`: torch's
intra-op threads then wait on each other at every batched operation (measured on two cores at
load 12: the fast engine's round at 1,000 nodes took 13.8 s with two threads, 1.7 s with one).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch.utils.data import TensorDataset

from swarmnode.simulation.data import load_dataset
from swarmnode.simulation.engine import run_tasks
from swarmnode.simulation.fast import run_fast
from swarmnode.simulation.partition import partition
from swarmnode.simulation.results import RoundRecord
from swarmnode.simulation.scenario import Scenario
from swarmnode.simulation.tasks import node_tasks

FLOOR = 10  # rows a node, as scenarios deal them


def one(engine: str, nodes: int, rounds: int) -> dict[str, Any]:
    """One point, measured in this process."""
    started = time.perf_counter()
    fields: dict[str, Any] = {"nodes": nodes, "rounds": rounds, "dataset": "diamonds"}
    fields.update({"partition": "iid", "local_batches": 10, "batch_size": 32})
    if engine == "fast":
        fields["engine"] = "fast"
    if engine == "anvil":
        fields["chain"] = "anvil"
    scenario = Scenario.load(None, fields)
    data = load_dataset("diamonds", seed=scenario.seed)
    floor = FLOOR if nodes * FLOOR <= len(data.y_train) else 1
    parts = partition(data.y_train.numpy(), nodes, "iid", seed=0, min_samples=floor)
    seconds: list[float] = []
    first: list[float] = []

    def on_round(record: RoundRecord) -> None:
        seconds.append(record.seconds)
        if not first:
            first.append(time.perf_counter() - started - record.seconds)

    if engine == "fast":
        run = run_fast(scenario, data, parts, on_round)
    else:
        tasks = node_tasks(scenario, data, parts)
        test_set = TensorDataset(data.x_test, data.y_test)
        backend = "memory" if engine == "memory" else "grpc"
        run = run_tasks(scenario, tasks, test_set, on_round, backend=backend)  # type: ignore[arg-type]
    later = seconds[1:] or seconds
    cuda = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
    return {
        "engine": engine,
        "nodes": nodes,
        "rows_per_node": min(len(p) for p in parts),
        "setup_s": first[0],
        "round_s": sum(later) / len(later),
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cuda_mb": cuda / 2**20,
        "accuracy": run.accuracy,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }


def measure(
    engine: str, nodes: int, rounds: int, timeout: float, threads: int
) -> dict[str, Any] | str:
    """One point in a child process; what went wrong, in a line, when it did."""
    command = [sys.executable, __file__, "--one", f"{engine}:{nodes}", "--rounds", str(rounds)]
    command += ["--threads", str(threads)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"over {timeout:.0f} s"
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit {done.returncode}"]
        return lines[-1][:120]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _counts(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()] if text else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fast", default="8,64,256,1000", help="fast-engine node counts")
    parser.add_argument("--memory", default="8,32", help="full fidelity in memory")
    parser.add_argument("--grpc", default="8", help="full fidelity, embedded chain and gRPC")
    parser.add_argument("--anvil", default="8", help="full fidelity, a private anvil and gRPC")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=900, help="seconds a point may take")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads per point (0: torch's)"
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        engine, nodes = args.one.split(":")
        print(json.dumps(one(engine, int(nodes), args.rounds)))
        return
    console = Console()
    table = Table(title=f"seconds per round and peak memory ({args.rounds} rounds a point)")
    for column in ("engine", "nodes", "rows/node", "set-up s", "s/round", "peak RSS MB"):
        table.add_column(column, justify="right")
    table.add_column("note")
    plan = [("fast", n) for n in _counts(args.fast)]
    plan += [("memory", n) for n in _counts(args.memory)]
    plan += [("grpc", n) for n in _counts(args.grpc)]
    plan += [("anvil", n) for n in _counts(args.anvil)]
    for engine, nodes in plan:
        console.print(f"{engine} at {nodes} nodes ...")
        got = measure(engine, nodes, args.rounds, args.timeout, args.threads)
        if isinstance(got, str):
            table.add_row(engine, str(nodes), "", "", "", "", got)
            continue
        note = got["device"]
        if got["cuda_mb"]:
            note += f", GPU peak {got['cuda_mb']:.0f} MB"
        if got["rows_per_node"] < FLOOR:
            note += f", under the {FLOOR}-row floor"
        table.add_row(
            engine,
            str(nodes),
            str(got["rows_per_node"]),
            f"{got['setup_s']:.1f}",
            f"{got['round_s']:.3f}",
            f"{got['rss_mb']:.0f}",
            note,
        )
    console.print(table)


if __name__ == "__main__":
    main()
