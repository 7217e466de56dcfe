"""An anvil started without a named log writes one in the temporary folder and removes it
once stopped or killed, so that simulations and tests leave no files behind; a log the
caller named is kept (the process-mode simulator keeps anvil.log in its run folder)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from swarmnode.ledger.anvil import AnvilProcess


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
