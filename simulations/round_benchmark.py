"""Rounds among n in-process nodes over real gRPC with mutual TLS on the embedded chain.

Run: .venv/bin/python simulations/round_benchmark.py [--sizes 10,100] [--nodes 2,4,8,16]
     [--rules mean,geometric_median]

For each model size (MB of float32), node count and merge rule, one full round (join,
close, reduce-scatter to both owners of every segment, merge, checked all-gather, report,
final) runs with every node in its own thread, and the script prints the most bytes any
node sent and received as a multiple of the model size, as the transports counted them on
the wire (every message and gRPC's 5-byte prefix, both as caller and as server; HTTP/2 and
TLS framing not included: swarmnode.p2p.transport.WireCount), next to what the two-owner scheme
should move, (3n-4)/n, and what an all-reduce with one unchecked owner per segment moves,
2(n-1)/n: their ratio is what checking every segment costs in bytes
(docs/round-protocol.md#data-plane). Also the round's wall time split into chain, transfer
and merge (medians over the nodes). All nodes share this process and its two cores, so times
are an upper bound for separate machines.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.table import Table

from swarmnode.merge import make_rule
from swarmnode.round import Round, RoundResult, RoundSettings
from swarmnode.rules import MergeRuleId, Rule, SwarmParams
from swarmnode.simulation.local import LocalPeer, grpc_swarm, run_in_threads

RULES = {
    "mean": Rule(MergeRuleId.MEAN),
    "median": Rule(MergeRuleId.MEDIAN),
    "geometric_median": Rule(MergeRuleId.GEOMETRIC_MEDIAN, (1000, 20, 0, 0)),
    "centered_clip": Rule(MergeRuleId.CENTERED_CLIP, (1_000_000, 3, 0, 0)),
}


def one_round(n: int, megabytes: int, rule: Rule) -> list[RoundResult]:
    numel = megabytes * 1_000_000 // 4
    params = SwarmParams(
        min_peers=2,
        max_peers=n,
        join_window=120,
        transfer_deadline=300,
        round_deadline=900,
        merge_rule=rule,
    )
    swarm = grpc_swarm(params, n)
    try:
        rng = np.random.default_rng(0)
        updates = [rng.standard_normal(numel).astype(np.float32) for _ in range(n)]
        reference = np.zeros(numel, dtype=np.float32)
        merge = make_rule(rule)

        def node(peer: LocalPeer, update: npt.NDArray[np.float32]) -> RoundResult:
            return Round(
                ledger=peer.ledger,
                transport=peer.transport,
                inbox=peer.inbox,
                vector=update,
                weight=100,
                val_loss=0.5,
                rule=merge,
                reference=reference,
                settings=RoundSettings(poll=0.01),
            ).run()

        results = run_in_threads(
            [partial(node, peer, update) for peer, update in zip(swarm.peers, updates, strict=True)]
        )
        if len({r.digest for r in results}) != 1 or results[0].digest is None:
            raise SystemExit(f"round did not end with one digest: {[r.status for r in results]}")
        return results
    finally:
        swarm.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100", help="model sizes in MB")
    parser.add_argument("--nodes", default="2,4,8,16")
    parser.add_argument("--rules", default="mean,geometric_median")
    args = parser.parse_args()
    table = Table(
        title="one round per row, in-process nodes, gRPC + mTLS, embedded chain; "
        "bytes counted by the transports (most of any node)"
    )
    for column in (
        "model",
        "n",
        "rule",
        "sent / model",
        "received / model",
        "median sent",
        "median received",
        "checked (3n-4)/n",
        "one owner 2(n-1)/n",
        "sent / one owner",
        "chain s",
        "transfer s",
        "merge s",
        "round s",
    ):
        table.add_column(column, justify="right")
    console = Console(width=200)
    for size in (int(s) for s in args.sizes.split(",")):
        for n in (int(v) for v in args.nodes.split(",")):
            for name in args.rules.split(","):
                t0 = time.perf_counter()
                results = one_round(n, size, RULES[name])
                wall = time.perf_counter() - t0
                model = size * 1_000_000
                sent = max(r.traffic.sent for r in results) / model
                received = max(r.traffic.received for r in results) / model
                # a node that starts before a peer is ready sends its first frame again after
                # the peer's NotReady: real bytes, in the most, rarely in the median
                median_sent = statistics.median(r.traffic.sent for r in results) / model
                median_received = statistics.median(r.traffic.received for r in results) / model

                def median(key: str, rs: list[RoundResult] = results) -> float:
                    return statistics.median(r.seconds.get(key, 0.0) for r in rs)

                table.add_row(
                    f"{size} MB",
                    str(n),
                    name,
                    f"{sent:.3f}",
                    f"{received:.3f}",
                    f"{median_sent:.3f}",
                    f"{median_received:.3f}",
                    f"{(3 * n - 4) / n:.3f}",
                    f"{2 * (n - 1) / n:.3f}",
                    f"{sent / (2 * (n - 1) / n):.2f}x",
                    f"{median('chain'):.2f}",
                    f"{median('transfer'):.2f}",
                    f"{median('merge'):.2f}",
                    f"{median('total'):.2f}",
                )
                console.print(f"done: {size} MB, n={n}, {name} in {wall:.1f} s")
    console.print(table)


if __name__ == "__main__":
    main()
