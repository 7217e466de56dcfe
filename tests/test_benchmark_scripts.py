"""The benchmark scripts in simulations/ are not run by the suite (they measure, and take
minutes), so nothing else notices when a refactor moves a name they import: each must at
least start and print its usage."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = sorted(
    p
    for p in (Path(__file__).resolve().parents[1] / "simulations").glob("*.py")
    if not p.name.startswith("_")  # _bench_peer.py is a module the transport benchmark runs
)


def test_there_are_benchmark_scripts_to_check() -> None:
    assert len(SCRIPTS) >= 4


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_a_benchmark_script_imports_and_prints_its_usage(script: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage" in done.stdout.lower()


def test_the_transport_benchmarks_peer_module_imports() -> None:
    simulations = Path(__file__).resolve().parents[1] / "simulations"
    done = subprocess.run(
        [sys.executable, "-c", "import _bench_peer"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=simulations,
    )
    assert done.returncode == 0, done.stderr[-2000:]
