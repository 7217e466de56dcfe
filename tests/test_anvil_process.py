"""AnvilProcess: an anvil started without a named log writes one in the temporary folder
and removes it once stopped or killed, so that simulations and tests leave no files behind
(a log the caller named is kept: the process-mode simulator keeps anvil.log in its run
folder); an anvil that cannot run is one line naming the binary, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from swarmnode.exceptions import ChainUnavailable, ConfigError
from swarmnode.ledger.anvil import ANVIL_ENV, AnvilProcess


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_a_log_anvil_made_itself_is_gone_after_it_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    anvil = AnvilProcess()
    anvil.start()
    try:
        logs = list(tmp_path.glob("anvil-*.log"))
        assert len(logs) == 1 and "Listening on" in logs[0].read_text()
    finally:
        getattr(anvil, how)()
    assert anvil.pid is None
    assert not list(tmp_path.glob("anvil-*.log"))


def test_a_named_log_is_kept(tmp_path: Path) -> None:
    named = tmp_path / "anvil.log"
    with AnvilProcess(log_path=named):
        pass
    assert "Listening on" in named.read_text()


def test_an_anvil_that_cannot_run_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "no-anvil-here"
    monkeypatch.setenv(ANVIL_ENV, str(missing))
    with pytest.raises(ConfigError, match=f"cannot run anvil at {missing}.*{ANVIL_ENV}"):
        AnvilProcess().start()
    silent = tmp_path / "exits-at-once"
    silent.write_text("#!/bin/sh\nexit 3\n")
    silent.chmod(0o755)
    monkeypatch.setenv(ANVIL_ENV, str(silent))
    with pytest.raises(ChainUnavailable, match=f"anvil \\({silent}\\) exited with code 3"):
        AnvilProcess().start()


def test_simulate_on_a_missing_anvil_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, ANVIL_ENV: str(tmp_path / "no-anvil-here")}
    flags = ["--set", "chain=anvil", "--set", "nodes=2", "--set", "rounds=1"]
    done = subprocess.run(
        [sys.executable, "-m", "swarmnode", "simulate", *flags, "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode != 0
    errors = done.stderr.strip().splitlines()
    assert errors[-1].startswith("swarmnode: cannot run anvil at"), done.stderr
    assert "Traceback" not in done.stderr
