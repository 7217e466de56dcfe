"""Time and bytes per node per round with and without secure aggregation, side by side.

Run: .venv/bin/python simulations/privacy_benchmark.py [--nodes 8,32] [--models 10MB]
     [--transport auto|grpc|memory] [--secagg-bound 16] [--secagg-fraction-bits 20]
     [--secagg-max-weight 65536] [--json]

For each model and node count, two full rounds (join, close, reduce-scatter, merge,
all-gather, report, final) run one after the other on the same updates, with every node in
its own thread of this process: one plain, one with secure aggregation
(SwarmParams.secure_aggregation, docs/secure-aggregation.md). The rest of the swarm's
parameters are the same for both (mean, owner checks on, min_peers 3, the least secure
aggregation allows). Bytes are counted on the wire by each node's transport, exactly as
simulations/round_benchmark.py counts them (every message and gRPC's 5-byte prefix, as
caller and as server; HTTP/2 and TLS framing not included): sent and received per node over
the model's size, the most and the median over the nodes. Times are medians over the nodes,
split as the round records them (chain, transfer, merge; "rest" is the round's total less
those: waiting for the round to open and close, and secure aggregation's setup).

The comparison row divides the secure round by the plain one: bytes (the larger of the most
sent and the most received, round_benchmark's ratio) against issue 18's target, at most
2 x the plain round's bytes, with a verdict; and the round's time. It also prints how far
the secure round's merged model lies from the plain one's (the fixed-point error,
docs/secure-aggregation.md#fixed-point) beside the bound stated there.

Models as in round_benchmark.py: 19KB is the README demo's MLP (4,810 float32), the others
MB of float32 (1 MB = 250,000 elements). Updates are standard normal values clipped to the
secure-aggregation bound B (a value outside it is refused, never encoded). Transport as in
round_benchmark.py (--transport auto, the default): gRPC with mutual TLS on the embedded
chain up to 16 nodes, the in-memory transport on the in-memory chain above (32 in-process
gRPC servers with TLS do not fit a 2-core machine); the memory transport counts exactly the
bytes gRPC counts for the same messages, so the byte columns compare; its times do not.
All nodes share one process (and its cores), so times are an upper bound for separate
machines: the secure round's setup (each node masks its whole vector with one PRG stream
per peer) runs n times on the same cores, so at n = 32 it dominates "rest". The load
average is printed with the results: read times beside it.

The secure-aggregation numbers default to SecureAggregation's (B = 16, f = 20, w_max = 2^16:
8-byte words); words of 4 bytes need small weights, e.g. --secagg-max-weight 1
--secagg-bound 4 --secagg-fraction-bits 16 at n = 8 (14 at n = 32), and every node then
joins with weight 1 (docs/secure-aggregation.md#fixed-point).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial

import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.table import Table

from swarmnode.exceptions import ConfigError
from swarmnode.merge import make_rule
from swarmnode.round import Round, RoundResult, RoundSettings
from swarmnode.rules import MergeRuleId, Rule, SecureAggregation, SwarmParams
from swarmnode.secagg.fixedpoint import FixedPoint
from swarmnode.simulation.local import LocalPeer, grpc_swarm, memory_swarm, run_in_threads

DEMO_ELEMENTS = 64 * 64 + 64 + 64 * 10 + 10  # the demo's digits MLP: 4,810 float32, 19 KB
MODELS = {  # the same names and sizes as round_benchmark.py
    "19KB": DEMO_ELEMENTS,
    "1MB": 250_000,
    "10MB": 2_500_000,
    "100MB": 25_000_000,
}
GRPC_UP_TO = 16  # --transport auto: gRPC up to here, the memory transport above
TARGET = 2.0  # issue 18: a secure round moves at most 2 x the plain round's bytes
WEIGHT = 100  # each node's weight (sample count), capped at the swarm's max weight
MEAN = Rule(MergeRuleId.MEAN)  # the only rule secure aggregation merges with


def swarm_params(n: int, secure: SecureAggregation | None) -> SwarmParams:
    """The swarm both settings run on; only `secure_aggregation` differs."""
    return SwarmParams(
        min_peers=3,
        max_peers=n,
        join_window=120,
        transfer_deadline=300,
        round_deadline=900,
        merge_rule=MEAN,
        secure_aggregation=secure,
    )


def updates(n: int, numel: int, bound: float) -> list[npt.NDArray[np.float32]]:
    """The nodes' updates, the same for both settings: standard normal, clipped to B."""
    rng = np.random.default_rng(0)
    return [np.clip(rng.standard_normal(numel), -bound, bound).astype(np.float32) for _ in range(n)]


def one_round(
    params: SwarmParams, vectors: Sequence[npt.NDArray[np.float32]], weight: int, transport: str
) -> list[RoundResult]:
    """One round of len(vectors) nodes on a fresh swarm; every node's result."""
    n = len(vectors)
    swarm = grpc_swarm(params, n) if transport == "grpc" else memory_swarm(params, n)
    try:
        reference = np.zeros(vectors[0].size, dtype=np.float32)

        def node(peer: LocalPeer, vector: npt.NDArray[np.float32]) -> RoundResult:
            return Round(
                ledger=peer.ledger,
                transport=peer.transport,
                inbox=peer.inbox,
                vector=vector,
                weight=weight,
                val_loss=0.5,
                rule=make_rule(MEAN),
                reference=reference,
                settings=RoundSettings(poll=0.01),
            ).run()

        results = run_in_threads(
            [partial(node, peer, v) for peer, v in zip(swarm.peers, vectors, strict=True)]
        )
    finally:
        swarm.close()
    if len({r.digest for r in results}) != 1 or results[0].digest is None:
        raise SystemExit(f"round did not end with one digest: {[r.status for r in results]}")
    return results


@dataclass
class Row:
    """One round: bytes per node over the model, and median times over the nodes."""

    model: str
    n: int
    setting: str  # "plain" or "secure"
    transport: str
    word: int  # bytes per value in the reduce-scatter: 4 (float32) or the masked word
    sent_max: float
    sent_median: float
    received_max: float
    received_median: float
    chain: float
    transfer: float
    merge: float
    rest: float
    round: float

    @property
    def ratio(self) -> float:
        """round_benchmark's ratio: the larger of the most sent and the most received."""
        return max(self.sent_max, self.received_max)


@dataclass
class Comparison:
    """The secure round over the plain one, for one model and node count."""

    model: str
    n: int
    transport: str
    bytes_ratio: float  # secure Row.ratio over plain Row.ratio
    sent_median_ratio: float
    received_median_ratio: float
    time_ratio: float  # median round time, secure over plain
    target: float
    max_difference: float  # the most any merged value differs between the two settings
    # FixedPoint.error_bound for these inputs (before the float32 cast) plus one float32
    # unit in the last place of the largest merged value: the two casts to float32 (the
    # secure decode's, the plain mean's) add at most half a unit each
    bound: float

    @property
    def verdict(self) -> str:
        return "ok" if self.bytes_ratio <= self.target else "OVER"

    @property
    def within(self) -> bool:
        return self.max_difference <= self.bound


def row(model: str, setting: str, transport: str, word: int, results: list[RoundResult]) -> Row:
    size = MODELS[model] * 4
    sent = [r.traffic.sent / size for r in results]
    received = [r.traffic.received / size for r in results]

    def median(key: str) -> float:
        return statistics.median(r.seconds.get(key, 0.0) for r in results)

    chain, transfer, merge, total = (median(k) for k in ("chain", "transfer", "merge", "total"))
    rest = statistics.median(
        r.seconds.get("total", 0.0)
        - sum(r.seconds.get(k, 0.0) for k in ("chain", "transfer", "merge"))
        for r in results
    )
    return Row(
        model=model,
        n=len(results),
        setting=setting,
        transport=transport,
        word=word,
        sent_max=max(sent),
        sent_median=statistics.median(sent),
        received_max=max(received),
        received_median=statistics.median(received),
        chain=chain,
        transfer=transfer,
        merge=merge,
        rest=rest,
        round=total,
    )


def warm_up(secure: SecureAggregation, transport: str) -> None:
    """One untimed round of 3 nodes on the demo's model in each setting, so that neither
    measured setting pays for the first chain, imports or thread pools alone."""
    vectors = updates(3, DEMO_ELEMENTS, float(secure.bound))
    weight = min(WEIGHT, secure.max_weight)
    for setting in (None, secure):
        one_round(swarm_params(3, setting), vectors, weight, transport)


def measure(
    model: str, n: int, secure: SecureAggregation, transport: str
) -> tuple[Row, Row, Comparison]:
    """The plain round, then the secure one, on the same updates."""
    weight = min(WEIGHT, secure.max_weight)
    vectors = updates(n, MODELS[model], float(secure.bound))
    plain_results = one_round(swarm_params(n, None), vectors, weight, transport)
    secure_results = one_round(swarm_params(n, secure), vectors, weight, transport)
    fixed = FixedPoint(
        peers=n,
        max_weight=secure.max_weight,
        bound=float(secure.bound),
        fraction_bits=secure.fraction_bits,
    )
    plain = row(model, "plain", transport, 4, plain_results)
    masked = row(model, "secure", transport, fixed.dtype.itemsize, secure_results)
    merged_plain, merged_secure = plain_results[0].merged, secure_results[0].merged
    assert merged_plain is not None and merged_secure is not None  # one digest, so merged
    difference = float(
        np.max(np.abs(merged_secure.astype(np.float64) - merged_plain.astype(np.float64)))
    )
    largest = np.float32(np.max(np.abs(merged_plain)))
    comparison = Comparison(
        model=model,
        n=n,
        transport=transport,
        bytes_ratio=masked.ratio / plain.ratio,
        sent_median_ratio=masked.sent_median / plain.sent_median,
        received_median_ratio=masked.received_median / plain.received_median,
        time_ratio=masked.round / plain.round,
        target=TARGET,
        max_difference=difference,
        bound=fixed.error_bound(n, n * weight) + float(np.spacing(largest)),
    )
    return plain, masked, comparison


def rows_table(rows: list[Row]) -> Table:
    out = Table(
        title="one round per row, in-process nodes; bytes per node over the model, counted on "
        "the wire by the transports; times: medians over the nodes (rest: waits and secure "
        "aggregation's setup)"
    )
    columns = (
        "model",
        "n",
        "setting",
        "transport",
        "word B",
        "sent max",
        "sent median",
        "recv max",
        "recv median",
        "chain s",
        "transfer s",
        "merge s",
        "rest s",
        "round s",
    )
    for column in columns:
        out.add_column(column, justify="right")
    for r in rows:
        out.add_row(
            r.model,
            str(r.n),
            r.setting,
            r.transport,
            str(r.word),
            f"{r.sent_max:.3f}",
            f"{r.sent_median:.3f}",
            f"{r.received_max:.3f}",
            f"{r.received_median:.3f}",
            f"{r.chain:.2f}",
            f"{r.transfer:.2f}",
            f"{r.merge:.2f}",
            f"{r.rest:.2f}",
            f"{r.round:.2f}",
        )
    return out


def comparison_table(comparisons: list[Comparison]) -> Table:
    out = Table(
        title="secure / plain, side by side in this run; bytes: the larger of the most sent "
        "and the most received (target: issue 18's)"
    )
    columns = (
        "model",
        "n",
        "transport",
        "bytes",
        "sent median",
        "recv median",
        "target",
        "",
        "round time",
        "max |secure - plain|",
        "bound",
        "",
    )
    for column in columns:
        out.add_column(column, justify="right")
    for c in comparisons:
        out.add_row(
            c.model,
            str(c.n),
            c.transport,
            f"{c.bytes_ratio:.3f} x",
            f"{c.sent_median_ratio:.3f} x",
            f"{c.received_median_ratio:.3f} x",
            f"<= {c.target:.2f} x",
            c.verdict,
            f"{c.time_ratio:.2f} x",
            f"{c.max_difference:.2e}",
            f"{c.bound:.2e}",
            "within" if c.within else "OUTSIDE",
        )
    return out


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} cores"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="8,32", help="node counts (at least 3), e.g. 8,32")
    parser.add_argument("--models", default="10MB", help=", ".join(MODELS))
    parser.add_argument("--transport", default="auto", choices=("auto", "grpc", "memory"))
    defaults = SecureAggregation()
    parser.add_argument("--secagg-bound", type=int, default=defaults.bound, help="B")
    parser.add_argument(
        "--secagg-fraction-bits", type=int, default=defaults.fraction_bits, help="f"
    )
    parser.add_argument("--secagg-max-weight", type=int, default=defaults.max_weight, help="w_max")
    parser.add_argument(
        "--no-warm-up", action="store_true", help="skip the untimed first round per setting"
    )
    parser.add_argument("--json", action="store_true", help="rows as JSON lines, no tables")
    args = parser.parse_args(argv)
    try:
        models = [m for m in args.models.split(",") if MODELS[m]]
        nodes = [int(v) for v in args.nodes.split(",")]
    except (KeyError, ValueError) as exc:
        raise SystemExit(f"privacy_benchmark: bad value {exc}") from None
    if any(n < 3 for n in nodes):
        raise SystemExit("privacy_benchmark: secure aggregation needs at least 3 nodes")
    try:  # the deploy's own checks: a bad setting is one line, not a traceback
        secure = SecureAggregation(
            args.secagg_bound, args.secagg_fraction_bits, args.secagg_max_weight
        )
        for n in nodes:
            swarm_params(n, secure).validate()
    except ConfigError as exc:
        raise SystemExit(f"privacy_benchmark: {exc}") from None
    console = Console(width=200, stderr=args.json)
    console.print(f"start: {load()}")
    rows: list[Row] = []
    comparisons: list[Comparison] = []
    warmed: set[str] = set() if not args.no_warm_up else {"grpc", "memory"}
    for model in models:
        for n in nodes:
            transport = args.transport
            if transport == "auto":
                transport = "grpc" if n <= GRPC_UP_TO else "memory"
            why = (
                "gRPC with mutual TLS on the embedded chain"
                if transport == "grpc"
                else "the in-memory transport on the in-memory chain"
            )
            if transport not in warmed:
                warm_up(secure, transport)
                warmed.add(transport)
            started = time.perf_counter()
            plain, masked, comparison = measure(model, n, secure, transport)
            rows += [plain, masked]
            comparisons.append(comparison)
            console.print(
                f"done: {model}, n={n}, {why}: secure {comparison.bytes_ratio:.3f} x the plain "
                f"round's bytes (target <= {TARGET}: {comparison.verdict}), "
                f"{comparison.time_ratio:.2f} x its time, in {time.perf_counter() - started:.1f} s"
            )
            if args.json:
                for r in (plain, masked):
                    print(json.dumps({"kind": "round", **asdict(r), "ratio": r.ratio}), flush=True)
                print(
                    json.dumps(
                        {
                            "kind": "comparison",
                            **asdict(comparison),
                            "verdict": comparison.verdict,
                            "within": comparison.within,
                        }
                    ),
                    flush=True,
                )
    if not args.json:
        console.print(rows_table(rows))
        console.print(comparison_table(comparisons))
    console.print(
        f"end: {load()}; secure aggregation: B={secure.bound}, f={secure.fraction_bits}, "
        f"w_max={secure.max_weight}, each node's weight {min(WEIGHT, secure.max_weight)}"
    )


if __name__ == "__main__":
    main()
