"""Bytes per node per round, counted on the wire, with the owner checks on and off.

Run: .venv/bin/python simulations/round_benchmark.py [--nodes 2,4,8,16] [--nodes 32,64]
     [--models 19KB,1MB,10MB,100MB] [--checks on,off] [--transport auto|grpc|memory]
     [--rule mean] [--json]

For each model, node count and setting of the owner checks (SwarmParams.checked_merge,
docs/trust.md#unchecked-merge), one full round (join, close, reduce-scatter, merge,
all-gather, report, final) runs with every node in its own thread of this process. Printed
per row: the bytes each node sent and received over the model's size, as its transport
counted them on the wire (every message and gRPC's 5-byte prefix, as caller and as server;
HTTP/2 and TLS framing not included: swarmnode.p2p.transport.WireCount), the most and the
median over the nodes; what the busiest sender sent and the busiest receiver received,
split into payload (float32 values), hashes (Merkle proofs, MERGED_HASHES digests, a
catch-up's hash list) and framing (everything else); the
protocol's own estimate ((3n-4)/n checked, 2(n-1)/n unchecked) and issue 16's target
beside the measured ratio (the larger of the most sent and the most received); and the
round's time split into chain, transfer and merge (medians over the nodes).

Models: 19KB is the README demo's MLP (4,810 float32), the others are MB of float32
(1 MB = 250,000 elements); 100MB runs only up to n = 16. The transport is gRPC with mutual
TLS on the embedded chain up to n = 16 and the in-memory transport on the in-memory chain
above (--transport auto, the default): 32 or 64 in-process gRPC servers with TLS do not fit
this machine's two cores. The memory transport counts exactly the bytes gRPC counts for the
same messages (tests/test_wire_bytes.py), so the byte columns compare; its times do not.
All nodes share one process, so times are an upper bound for separate machines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass
from functools import partial

import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.table import Table

from swarmnode.merge import make_rule
from swarmnode.round import Round, RoundResult, RoundSettings
from swarmnode.rules import MergeRuleId, Rule, SwarmParams
from swarmnode.simulation.local import LocalPeer, grpc_swarm, memory_swarm, run_in_threads

RULES = {
    "mean": Rule(MergeRuleId.MEAN),
    "median": Rule(MergeRuleId.MEDIAN),
    "geometric_median": Rule(MergeRuleId.GEOMETRIC_MEDIAN, (1000, 20, 0, 0)),
}
DEMO_ELEMENTS = 64 * 64 + 64 + 64 * 10 + 10  # the demo's digits MLP: 4,810 float32, 19 KB
MODELS = {
    "19KB": DEMO_ELEMENTS,
    "1MB": 250_000,
    "10MB": 2_500_000,
    "100MB": 25_000_000,
}
LARGEST_N = {"100MB": 16}  # a 100 MB model runs only up to this many nodes (memory)
GRPC_UP_TO = 16  # --transport auto: gRPC up to here, the memory transport above


def target(model: str, n: int, checked: bool) -> float | None:
    """Issue 16's bound on bytes per node over the model, where it sets one."""
    if checked:
        return 3 * (n - 1) / n + 0.1
    if model == "19KB":
        return {8: 2.2, 32: 3.0, 64: 3.5}.get(n)
    return 2.2 if n in (8, 32, 64) else None


def estimate(n: int, checked: bool) -> float:
    """What the protocol's payload alone should be per node (docs/round-protocol.md#owners)."""
    return (3 * n - 4) / n if checked else 2 * (n - 1) / n


def one_round(
    n: int, numel: int, rule: Rule, checked: bool, transport: str
) -> tuple[list[RoundResult], float]:
    """One round of n nodes; the results and the wall time."""
    params = SwarmParams(
        min_peers=2,
        max_peers=n,
        join_window=120,
        transfer_deadline=300,
        round_deadline=900,
        merge_rule=rule,
        checked_merge=checked,
    )
    swarm = grpc_swarm(params, n) if transport == "grpc" else memory_swarm(params, n)
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

        started = time.perf_counter()
        results = run_in_threads(
            [partial(node, peer, update) for peer, update in zip(swarm.peers, updates, strict=True)]
        )
        wall = time.perf_counter() - started
        if len({r.digest for r in results}) != 1 or results[0].digest is None:
            raise SystemExit(f"round did not end with one digest: {[r.status for r in results]}")
        return results, wall
    finally:
        swarm.close()


@dataclass
class Row:
    model: str
    n: int
    checks: str
    transport: str
    sent_max: float
    sent_median: float
    received_max: float
    received_median: float
    payload: float  # the busiest sender's sent bytes in parts, over the model
    hashes: float
    framing: float
    received_payload: float  # the busiest receiver's received bytes in parts, over the model
    received_hashes: float
    received_framing: float
    estimate: float
    target: float | None
    chain: float
    transfer: float
    merge: float
    round: float

    @property
    def ratio(self) -> float:
        return max(self.sent_max, self.received_max)

    @property
    def verdict(self) -> str:
        if self.target is None:
            return ""
        return "ok" if self.ratio <= self.target else "OVER"


def measure(model: str, n: int, checked: bool, rule: Rule, transport: str) -> Row:
    numel = MODELS[model]
    size = numel * 4
    results, _ = one_round(n, numel, rule, checked, transport)
    sent = [r.traffic.sent / size for r in results]
    received = [r.traffic.received / size for r in results]
    busiest = max(results, key=lambda r: r.traffic.sent).traffic.sent_split
    fullest = max(results, key=lambda r: r.traffic.received).traffic.received_split

    def median(key: str) -> float:
        return statistics.median(r.seconds.get(key, 0.0) for r in results)

    return Row(
        model=model,
        n=n,
        checks="on" if checked else "off",
        transport=transport,
        sent_max=max(sent),
        sent_median=statistics.median(sent),
        received_max=max(received),
        received_median=statistics.median(received),
        payload=busiest.payload / size,
        hashes=busiest.hashes / size,
        framing=busiest.framing / size,
        received_payload=fullest.payload / size,
        received_hashes=fullest.hashes / size,
        received_framing=fullest.framing / size,
        estimate=estimate(n, checked),
        target=target(model, n, checked),
        chain=median("chain"),
        transfer=median("transfer"),
        merge=median("merge"),
        round=median("total"),
    )


def table(rows: list[Row]) -> Table:
    out = Table(
        title="one round per row, in-process nodes; bytes per node over the model, counted on "
        "the wire by the transports; split (payload / hashes and proofs / framing): the "
        "busiest sender's and the busiest receiver's; times: medians over nodes"
    )
    columns = (
        "model",
        "n",
        "checks",
        "transport",
        "sent max",
        "sent median",
        "sent split",
        "recv max",
        "recv median",
        "recv split",
        "estimate",
        "target",
        "",
        "chain s",
        "transfer s",
        "merge s",
        "round s",
    )
    for column in columns:
        out.add_column(column, justify="right")
    for r in rows:
        out.add_row(
            r.model,
            str(r.n),
            r.checks,
            r.transport,
            f"{r.sent_max:.3f}",
            f"{r.sent_median:.3f}",
            f"{r.payload:.3f} / {r.hashes:.3f} / {r.framing:.3f}",
            f"{r.received_max:.3f}",
            f"{r.received_median:.3f}",
            f"{r.received_payload:.3f} / {r.received_hashes:.3f} / {r.received_framing:.3f}",
            f"{r.estimate:.3f}",
            "" if r.target is None else f"<= {r.target:.2f}",
            r.verdict,
            f"{r.chain:.2f}",
            f"{r.transfer:.2f}",
            f"{r.merge:.2f}",
            f"{r.round:.2f}",
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="2,4,8,16", help="node counts, e.g. 32,64")
    parser.add_argument("--models", default=",".join(MODELS), help=", ".join(MODELS))
    parser.add_argument("--checks", default="on,off", help="owner checks: on, off or both")
    parser.add_argument("--transport", default="auto", choices=("auto", "grpc", "memory"))
    parser.add_argument("--rule", default="mean", choices=sorted(RULES))
    parser.add_argument("--json", action="store_true", help="rows as JSON lines, no table")
    args = parser.parse_args()
    try:
        models = [m for m in args.models.split(",") if MODELS[m]]
        nodes = [int(v) for v in args.nodes.split(",")]
        checks = [{"on": True, "off": False}[c] for c in args.checks.split(",")]
    except (KeyError, ValueError) as exc:
        raise SystemExit(f"round_benchmark: bad value {exc}") from None
    console = Console(width=220, stderr=args.json)
    rows: list[Row] = []
    for model in models:
        for n in nodes:
            if n > LARGEST_N.get(model, n):
                continue
            transport = args.transport
            if transport == "auto":
                transport = "grpc" if n <= GRPC_UP_TO else "memory"
            for checked in checks:
                started = time.perf_counter()
                row = measure(model, n, checked, RULES[args.rule], transport)
                rows.append(row)
                console.print(
                    f"done: {model}, n={n}, checks {row.checks}, {transport}: "
                    f"{row.ratio:.3f} x the model (target {row.target}) "
                    f"in {time.perf_counter() - started:.1f} s"
                )
                if args.json:
                    print(json.dumps({**row.__dict__, "ratio": row.ratio}), flush=True)
    if not args.json:
        console.print(table(rows))


if __name__ == "__main__":
    main()
