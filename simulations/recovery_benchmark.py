"""How long a round takes to recover when a peer dies in it, phase by phase.

Run: .venv/bin/python simulations/recovery_benchmark.py [--nodes 4] [--mb 10]
     [--deadlines 1,3] [--repeats 3]

n in-process nodes on the embedded chain talk gRPC with mutual TLS over loopback; for each
transfer deadline, a clean round is timed, then rounds in which the last node dies at one
exact point (the die_at fault injection): before sending anything, after one update frame
(reduce-scatter), after its merged segment reached one peer (all-gather). A dying node
stops its gRPC server at once, as a killed process would. Printed per phase: the round's
wall time, the recovery time (from the death to the last survivor's final), how many
attempts the round took, and recovery / deadline. The protocol bounds it
(docs/round-protocol.md#faults-and-votes): the survivors may
vote a silent peer out at attempt start + transfer deadline (a peer that never reports,
at + 2 x the deadline), and the new attempt then reuses every update already received.
HPE Swarm Learning waits up to 600 s for a new leader instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from functools import partial

import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.table import Table

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # before grpc loads: no lines on dead peers

from swarmnode.merge import make_rule
from swarmnode.p2p.faults import Fault, InjectedCrash
from swarmnode.round import Round, RoundResult, RoundSettings
from swarmnode.rules import SwarmParams
from swarmnode.simulation.local import LocalSwarm, grpc_swarm, run_in_threads

PHASES = (
    "none",
    "before_reduce_scatter",
    "reduce_scatter:after_frames=1",
    "all_gather:after_peers=1",
)


def one_round(
    n: int, numel: int, deadline: int, phase: str
) -> tuple[float, float, int, list[RoundResult]]:
    """(round seconds, seconds from the death to the last final, attempts, survivors)."""
    params = SwarmParams(
        min_peers=2,
        max_peers=n,
        join_window=60,
        transfer_deadline=deadline,
        round_deadline=max(120, 4 * deadline),
    )
    swarm: LocalSwarm = grpc_swarm(params, n)
    died_at: list[float] = []
    ended_at: list[float] = []
    try:
        rng = np.random.default_rng(0)
        updates = [rng.standard_normal(numel).astype(np.float32) for _ in range(n)]
        fault = None if phase == "none" else Fault.parse(phase)

        def node(i: int, update: npt.NDArray[np.float32]) -> RoundResult | None:
            peer = swarm.peers[i]
            if fault is not None and i == n - 1:
                peer.transport.arm(fault)  # the last node dies at that point of the round
            try:
                result = Round(
                    ledger=peer.ledger,
                    transport=peer.transport,
                    inbox=peer.inbox,
                    vector=update,
                    weight=100,
                    val_loss=0.5,
                    rule=make_rule(params.merge_rule),
                    settings=RoundSettings(poll=0.01, frame_chunks=16),
                ).run()
            except InjectedCrash:
                died_at.append(time.perf_counter())
                if peer.server is not None:
                    peer.server.stop(0)  # dead: nothing answers there any more
                return None
            ended_at.append(time.perf_counter())
            return result

        t0 = time.perf_counter()
        results = run_in_threads([partial(node, i, u) for i, u in enumerate(updates)])
        wall = time.perf_counter() - t0
        survivors = [r for r in results if r is not None]
        if {r.status for r in survivors} != {"final"} or len({r.digest for r in survivors}) != 1:
            raise SystemExit(f"{phase}: survivors did not agree: {[r.status for r in survivors]}")
        start = died_at[0] if died_at else t0
        return wall, max(ended_at) - start, max(r.attempt for r in survivors), survivors
    finally:
        swarm.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--mb", type=float, default=10.0, help="model size in MB of float32")
    parser.add_argument("--deadlines", default="1,3", help="transfer deadlines in seconds")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per cell (median)")
    args = parser.parse_args()
    numel = int(args.mb * 1_000_000 / 4)
    logging.getLogger("swarmnode").setLevel(logging.ERROR)  # the expected votes, not news
    console = Console(width=110)
    table = Table(title=f"Recovery when a peer dies: {args.nodes} nodes, {args.mb:g} MB model")
    table.add_column("dies at", no_wrap=True)
    for column in (
        "deadline s",
        "round s",
        "recovery s",
        "attempts",
        "recovery / deadline",
    ):
        table.add_column(column, justify="right")
    for deadline in (int(d) for d in args.deadlines.split(",")):
        for phase in PHASES:
            runs = [one_round(args.nodes, numel, deadline, phase) for _ in range(args.repeats)]
            wall = statistics.median(r[0] for r in runs)
            recovery = statistics.median(r[1] for r in runs)
            attempts = max(r[2] for r in runs)
            clean = phase == "none"
            table.add_row(
                "nobody dies" if clean else phase,
                str(deadline),
                f"{wall:.2f}",
                "-" if clean else f"{recovery:.2f}",
                str(attempts),
                "-" if clean else f"{recovery / deadline:.2f}",
            )
    console.print(table)


if __name__ == "__main__":
    main()
