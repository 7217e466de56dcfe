"""What a sweep leaves: sweep.json, sweep.png, and its tables on the terminal.

A report (docs/simulator.md#sweeps): it reads the sweep's grid and cell results, and runs
nothing itself.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from swarmnode.simulation.attacks import PROTOCOL_ATTACKS
from swarmnode.simulation.scenario import Scenario
from swarmnode.simulation.sweep import Cell, CellResult, Grid, rule_params

ROBUST_MARGIN = 0.03  # "stays within 3 points of the clean run" (issue 8, point 7)

Rows = dict[tuple[str, str, str], dict[str, Any]]  # the summary by data set, rule, attack


def summarize(results: list[CellResult], grid: Grid) -> list[dict[str, Any]]:
    """Per data set, rule and attack: mean accuracy over seeds, spread (sample standard
    deviation, min, max) and the distance to the same rule's clean run."""
    rows: list[dict[str, Any]] = []
    for d in grid.datasets:
        for r in grid.rules:
            cells = {
                a: [x for x in results if (x.cell.dataset, x.cell.rule, x.cell.attack) == (d, r, a)]
                for a in grid.attacks
            }
            acc = {a: [x.accuracy for x in xs] for a, xs in cells.items()}
            clean = statistics.fmean(acc["none"]) if "none" in acc else None
            base = cells.get("none")
            rows += [
                {**_summary_row(d, r, a, acc[a], clean), **_protocol_row(xs, base)}
                for a, xs in cells.items()
            ]
    return rows


def _protocol_row(cells: list[CellResult], clean: list[CellResult] | None) -> dict[str, Any]:
    """What the protocol did in these cells (one per seed), per round where it is a rate;
    bytes also against the `clean` cells' (the same rule without attackers)."""
    rounds = sum(x.rounds for x in cells) or 1
    sent = statistics.fmean(x.bytes_per_node for x in cells)
    received = statistics.fmean(x.received_per_node for x in cells)
    clean_sent = statistics.fmean(x.bytes_per_node for x in clean) if clean else 0.0
    clean_received = statistics.fmean(x.received_per_node for x in clean) if clean else 0.0
    return {
        "rounds_final": sum(x.rounds_agreed for x in cells) / rounds,
        "checked_per_round": sum(x.checked for x in cells) / rounds,
        "attackers_accused": sum(x.attackers_accused for x in cells) / rounds,
        "honest_accused": sum(x.honest_accused for x in cells),
        "voted_out": sorted({i for x in cells for i in x.voted_out}),
        "bytes_per_node": sent,
        "bytes_vs_clean": sent / clean_sent if clean_sent else None,
        "received_per_node": received,
        "received_vs_clean": received / clean_received if clean_received else None,
    }


def _summary_row(
    dataset: str, rule: str, attack: str, runs: list[float], clean: float | None
) -> dict[str, Any]:
    mean = statistics.fmean(runs)
    return {
        "dataset": dataset,
        "rule": rule,
        "attack": attack,
        "seeds": len(runs),
        "mean": mean,
        "std": statistics.stdev(runs) if len(runs) > 1 else 0.0,
        "min": min(runs),
        "max": max(runs),
        "vs_clean": None if clean is None else mean - clean,
    }


def build_report(
    base: Scenario,
    grid: Grid,
    results: list[CellResult],
    check: dict[str, Any] | None,
    wall_seconds: float,
) -> dict[str, Any]:
    """sweep.json's content."""
    return {
        "base_scenario": base.model_dump(),
        "grid": {**asdict(grid), "nodes": base.nodes, "rounds": base.rounds},
        "merge_params": {r: list(rule_params(r, base, grid)) for r in grid.rules},
        "cells": [
            {**asdict(x.cell), **{k: v for k, v in asdict(x).items() if k != "cell"}}
            for x in results
        ],
        "summary": summarize(results, grid),
        "full_fidelity_check": check,
        "wall_seconds": wall_seconds,
    }


def write_outputs(out: Path, report: dict[str, Any], grid: Grid) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(out / "sweep.png", report["summary"], grid)
    return [out / "sweep.json", out / "sweep.png"]


def print_tables(console: Console, report: dict[str, Any], grid: Grid) -> None:
    """Per data set: the accuracy table, and which rules held against every attack; then
    the full-fidelity check."""
    rows = {(s["dataset"], s["rule"], s["attack"]): s for s in report["summary"]}
    for d in grid.datasets:
        console.print(_accuracy_table(d, rows, grid))
        if "none" in grid.attacks and len(grid.attacks) > 1:
            console.print(_held(d, rows, grid))
        if any(a in PROTOCOL_ATTACKS for a in grid.attacks):
            console.print(_protocol_table(d, rows, grid))
    check = report["full_fidelity_check"]
    if check is not None:
        console.print(_check_line(check))
    protocol = [a for a in grid.attacks if a in PROTOCOL_ATTACKS]
    if grid.engine == "fast" and protocol:
        console.print(
            f"{', '.join(protocol)} lie in messages, which the fast engine has none of: their "
            "cells ran real nodes on the in-memory ledger and transport"
        )
    console.print(f"{len(report['cells'])} runs in {report['wall_seconds']:.0f} s")


def _check_line(check: dict[str, Any]) -> str:
    """The full-fidelity re-run's verdict: digests equal for real nodes; for the fast
    engine, final accuracy and loss within the tolerance (and whether the bits match)."""
    head = (
        f"full-fidelity re-run of {Cell(**check['cell']).label} (embedded chain, gRPC with "
        f"mutual TLS, {check['full_fidelity_seconds']:.0f} s): final digest "
        f"{check['full_fidelity_digest'][:16] or '-'}…, {check['engine']} engine "
        f"{check['sweep_digest'][:16] or '-'}…"
    )
    if check["tolerance"] is None:
        return head + (": [green]equal[/]" if check["equal"] else ": [red]DIFFERENT[/]")
    apart, limit = check["difference"], check["tolerance"]
    verdict = "[green]within tolerance[/]" if check["agrees"] else "[red]OUTSIDE tolerance[/]"
    return (
        f"{head} ({'bit-identical' if check['equal'] else 'not bit-identical'}); accuracy "
        f"{check['full_fidelity_accuracy']:.4f} vs {check['sweep_accuracy']:.4f}, apart "
        f"{apart['accuracy']:.4f} (at most {limit['accuracy']}), loss apart "
        f"{apart['loss']:.2e} (at most {limit['loss']:.0e}): {verdict}"
    )


def _accuracy_table(dataset: str, rows: Rows, grid: Grid) -> Table:
    table = Table(
        title=f"{dataset}: final swarm accuracy, mean ± std over {len(grid.seeds)} seed(s) "
        f"(in parentheses: points against the rule's clean run)"
    )
    table.add_column("merge rule")
    for a in grid.attacks:
        name = a if a == "none" else f"{a} ({grid.byzantine} Byzantine)"
        table.add_column(name, justify="right")
    for r in grid.rules:
        cells = []
        for a in grid.attacks:
            s = rows[(dataset, r, a)]
            text = f"{s['mean']:.3f} ± {s['std']:.3f}"
            if a != "none" and s["vs_clean"] is not None:
                colour = "green" if s["vs_clean"] >= -ROBUST_MARGIN else "red"
                text += f" [{colour}]({100 * s['vs_clean']:+.1f})[/]"
            cells.append(text)
        table.add_row(r, *cells)
    return table


def _protocol_table(dataset: str, rows: Rows, grid: Grid) -> Table:
    """Per rule and protocol attack (and the clean run, for comparison): what the checks
    did, over all seeds' rounds."""
    table = Table(
        title=f"{dataset}: what the protocol did against the liars ({grid.byzantine} "
        f"Byzantine; rates per round over {len(grid.seeds)} seed(s))"
    )
    for name in (
        "merge rule",
        "attack",
        "accuracy",
        "rounds final",
        "segments checked",
        "attacker accused",
        "honest accused",
        "voted out",
        "KB sent/node",
        "KB received/node",
    ):
        table.add_column(name, justify="left" if name in ("merge rule", "attack") else "right")
    shown = [a for a in grid.attacks if a == "none" or a in PROTOCOL_ATTACKS]
    for r in grid.rules:
        for a in shown:
            s = rows[(dataset, r, a)]
            vs = "" if a == "none" or s["vs_clean"] is None else f" ({100 * s['vs_clean']:+.1f})"
            ratio = "" if s["bytes_vs_clean"] is None else f" (x{s['bytes_vs_clean']:.2f})"
            inward = s["received_vs_clean"]
            received = f"{s['received_per_node'] / 1024:.0f}" + (
                "" if inward is None else f" (x{inward:.2f})"
            )
            table.add_row(
                r,
                a,
                f"{s['mean']:.3f}{vs}",
                f"{100 * s['rounds_final']:.0f}%",
                f"{s['checked_per_round']:.1f}",
                f"{100 * s['attackers_accused']:.0f}%",
                str(s["honest_accused"]),
                ",".join(map(str, s["voted_out"])) or "-",
                f"{s['bytes_per_node'] / 1024:.0f}{ratio}",
                received,
            )
    return table


def _held(dataset: str, rows: Rows, grid: Grid) -> str:
    """Which rules stayed within the margin of their clean run under every attack."""
    held: list[str] = []
    fell: list[str] = []
    for r in grid.rules:
        attacked = [rows[(dataset, r, a)] for a in grid.attacks if a != "none"]
        lost = [
            f"{s['attack']} {100 * s['vs_clean']:+.1f}"
            for s in attacked
            if s["vs_clean"] is not None and s["vs_clean"] < -ROBUST_MARGIN
        ]
        if lost:
            fell.append(f"{r} ({', '.join(lost)})")
        else:
            held.append(r)
    return (
        f"within {100 * ROBUST_MARGIN:.0f} points of their clean run under every attack: "
        f"{', '.join(held) or 'none'}; not: {', '.join(fell) or 'none'}"
    )


def plot(path: Path, summary: list[dict[str, Any]], grid: Grid) -> None:
    """Grouped bars per data set: rules along x, one bar per attack, whiskers min to max."""
    import matplotlib  # here: over half a second to import, for the plot alone

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {(s["dataset"], s["rule"], s["attack"]): s for s in summary}
    fig, axes = plt.subplots(
        1, len(grid.datasets), figsize=(6 * len(grid.datasets), 4.5), dpi=110, squeeze=False
    )
    width = 0.8 / len(grid.attacks)
    for ax, d in zip(axes[0], grid.datasets, strict=True):
        for j, a in enumerate(grid.attacks):
            stats = [rows[(d, r, a)] for r in grid.rules]
            xs = [i + (j - (len(grid.attacks) - 1) / 2) * width for i in range(len(grid.rules))]
            means = [s["mean"] for s in stats]
            spread = [[s["mean"] - s["min"] for s in stats], [s["max"] - s["mean"] for s in stats]]
            ax.bar(xs, means, width, yerr=spread, capsize=3, label=a)
        ax.set_xticks(range(len(grid.rules)), grid.rules)
        ax.set_ylim(0, 1.12)  # headroom for the legend, above the bars
        ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
        ax.set_ylabel("final swarm test accuracy")
        ax.set_title(f"{d} ({len(grid.seeds)} seed(s), whiskers: min-max)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(loc="upper center", ncol=len(grid.attacks), fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
