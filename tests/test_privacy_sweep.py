"""simulations/privacy_sweep.py on a tiny grid (docs/privacy.md#accuracy-against-epsilon):
one row per mode, each epsilon the accountant's for what the row ran, and a setting the
simulator refuses ends the sweep with one line before any run."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from swarmnode.privacy import epsilon_of

SCRIPT = Path(__file__).resolve().parents[1] / "simulations" / "privacy_sweep.py"
TINY = ["--datasets", "digits", "--nodes", "3", "--rounds", "1", "--local-batches", "2"]
TINY += ["--seeds", "0", "--local-noise", "1", "--mean-noise", "2"]


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("privacy_sweep", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_sweep_prints_accuracy_against_epsilon_for_each_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = load_script()
    out = tmp_path / "rows.json"
    assert sweep.main([*TINY, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "accuracy against epsilon" in printed and "load average" in printed
    rows = json.loads(out.read_text())["rows"]
    assert [(r["mode"], r["engine"], r["noise"]) for r in rows] == [
        ("none", "fast", None),
        ("local", "full", 1.0),
        ("distributed", "fast", 2.0),
    ]
    assert rows[0]["epsilon"] is None and rows[0]["delta"] is None
    assert 0 < rows[1]["epsilon"] < 50  # two DP-SGD steps per node
    # one round of the unsampled Gaussian at sigma 2: what the node's accountant says
    assert rows[2]["epsilon"] == pytest.approx(epsilon_of([(2.0, 1.0, 1)], 1e-5), rel=1e-9)
    assert all(0 <= r["accuracy"] <= 1 and len(r["accuracies"]) == 1 for r in rows)


def test_a_refused_setting_is_one_line_before_any_run(capsys: pytest.CaptureFixture[str]) -> None:
    sweep = load_script()
    assert sweep.main([*TINY, "--colluders", "3"]) == 2  # f = m = 3 nodes
    printed = capsys.readouterr().out.strip()
    assert printed.splitlines()[-1].startswith("refused:") and "assumed_colluders 3" in printed
    assert "accuracy against epsilon" not in printed
