"""What the `swarmnode` command lets through to a user (swarmnode/cli/output.py): no gRPC
C-core log line unless `swarmnode --verbose` asks for one; nothing wrapped or cut when the
output goes to a pipe (help pages, tables); `--json` where a table is printed.

Every command runs as a user runs it, a process of its own with its output on pipes. The
simulations set GRPC_TRACE, so that the core has lines to print for certain (not only a
"Got goaway" when a server happens to close under a call): the quiet run must show none
of them, the verbose one must show them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from swarmnode.simulation.processes import _child_environment

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = str(ROOT / "simulations" / "demo.toml")
# absl's prefix on every C-core line (I1206 08:25:31.864156 5471 chttp2_transport.cc:1403])
# and words of the lines users saw at the end of the demo
CORE_LINE = re.compile(r"\.cc:\d+\]|goaway|ev_poll", re.IGNORECASE)
ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


def environment(**extra: str) -> dict[str, str]:
    """A user's environment without a terminal: no COLUMNS, no GRPC_VERBOSITY of theirs."""
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/tmp"),
        "OMP_NUM_THREADS": "1",
        **extra,
    }
    return env


def swarmnode(*args: str, cwd: Path | None = None, **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "swarmnode", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=cwd or ROOT,
        env=environment(**extra),
    )


def finished(process: subprocess.Popen[str], timeout: float = 240) -> tuple[str, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err[-3000:]
    return out, err


def core_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if CORE_LINE.search(line)]


@pytest.mark.slow
def test_grpc_core_lines_reach_the_user_only_with_verbose(tmp_path: Path) -> None:
    small = ("--nodes", "2", "--rounds", "1")
    trace = {"GRPC_TRACE": "connectivity_state"}  # lines the core prints for certain
    # side by side: each waits on its own two nodes more than on the CPU
    quiet = swarmnode(
        "simulate", SCENARIO, *small, "--out", str(tmp_path / "quiet"), "--json", **trace
    )
    loud = swarmnode(
        "--verbose", "simulate", SCENARIO, *small, "--out", str(tmp_path / "loud"), **trace
    )
    out, err = finished(quiet)
    loud_out, loud_err = finished(loud)

    assert core_lines(out + err) == []
    assert core_lines(loud_out + loud_err), "--verbose showed no gRPC line: the test shows nothing"
    # --json: stdout is the report and nothing else; the story and tables went to stderr,
    # each sentence on one line although no terminal gave a width
    report = json.loads(out)
    assert len(report["rounds"]) == 1 and report["scenario"]["nodes"] == 2
    assert json.loads((tmp_path / "quiet" / "report.json").read_text()) == report
    intro = [line for line in err.splitlines() if line.startswith("demo: 2 nodes on digits")]
    assert len(intro) == 1 and intro[0].endswith("gRPC with mutual TLS over loopback"), err
    assert any(
        line.startswith("wrote ") and line.endswith("accuracy.png") for line in err.split("\n")
    )


def test_the_simulators_daemons_are_quiet_unless_this_process_was_told_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GRPC_VERBOSITY", raising=False)
    assert _child_environment()["GRPC_VERBOSITY"] == "NONE"
    monkeypatch.setenv("GRPC_VERBOSITY", "INFO")  # what `swarmnode --verbose` sets
    assert _child_environment()["GRPC_VERBOSITY"] == "INFO"


def test_piped_help_shows_defaults_and_long_names_whole() -> None:
    runs = {
        "root": swarmnode("--help"),
        "init": swarmnode("init", "--help"),
        "deploy": swarmnode("deploy", "--help"),
    }
    pages = {name: finished(process, timeout=60)[0] for name, process in runs.items()}
    assert "--verbose" in pages["root"]
    lines = pages["init"].splitlines()  # cut at 80 columns: "[default:" and the rest apart
    assert any("[default: swarmnode.training:example_task]" in line for line in lines)
    # cut at 80 columns: "swarmnode.canonical.save_model…"
    assert "swarmnode.canonical.save_model_file" in pages["deploy"]
    assert "…" not in pages["deploy"] + pages["init"]


def test_a_piped_table_keeps_every_address_whole() -> None:
    out, _ = finished(swarmnode("demo", "--nodes", "2"), timeout=120)
    roster = [line for line in out.splitlines() if line.startswith("│ node-")]
    assert len(roster) == 4  # two rows of the roster, two of the gas table
    assert [len(ADDRESS.findall(line)) for line in roster[:2]] == [1, 1], out
    assert all("127.0.0.1:5005" in line for line in roster[:2]), out


@pytest.mark.slow
def test_a_sweep_prints_its_report_as_json(tmp_path: Path) -> None:
    out, err = finished(
        swarmnode(
            "simulate",
            "sweep",
            SCENARIO,
            "--nodes",
            "2",
            "--rounds",
            "1",
            "--rules",
            "mean",
            "--attacks",
            "none",
            "--seeds",
            "0",
            "--datasets",
            "digits",
            "--full-check",
            "none",
            "--out",
            str(tmp_path),
            "--json",
        )
    )
    report = json.loads(out)
    assert report == json.loads((tmp_path / "sweep.json").read_text())
    assert [(c["rule"], c["attack"]) for c in report["cells"]] == [("mean", "none")]
    assert "final swarm accuracy" in err  # the table, on stderr
