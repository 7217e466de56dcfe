"""The `swarmnode` command as a user runs it: a real subprocess, real output, real exit codes."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest


def swarmnode(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "swarmnode", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )


@pytest.mark.chain
def test_demo_runs_a_round_to_final_and_every_reporter_agrees() -> None:
    result = swarmnode("demo", "--nodes", "4", "--seed", "7")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("joined round 1") == 4
    assert "closed round 1" in out
    reported = set(re.findall(r"reported merged digest ([0-9a-f]{16})", out))
    assert len(reported) == 1, out  # every node computed the same merged model
    final = re.search(r"round 1 is final: digest ([0-9a-f]{16})", out)
    assert final is not None, out
    assert final.group(1) in reported
    assert "round 2 is open" in out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("demo", "--nodes", "1"), "--nodes"),
        (("demo", "--seed", "abc"), "--seed"),
        (("no-such-command",), "no-such-command"),
    ],
)
def test_a_users_mistake_is_one_line_on_stderr_without_a_traceback(
    args: tuple[str, ...], needle: str
) -> None:
    result = swarmnode(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("swarmnode: ") and needle in lines[0]
    assert "Traceback" not in result.stderr
