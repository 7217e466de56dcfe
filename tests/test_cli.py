"""The `swarmnode` command as a user runs it: a real subprocess, real output, real exit codes."""

from __future__ import annotations

import json
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


@pytest.mark.chain
def test_demo_json_is_the_round_as_data_and_only_that_on_stdout() -> None:
    result = swarmnode("demo", "--nodes", "3", "--seed", "3", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)  # nothing but the JSON on stdout
    assert "joined round 1" in result.stderr  # the story still told, on stderr
    assert summary["status"] == "final" and summary["next_round"] == 2
    assert len(summary["nodes"]) == 3
    reporters = [node for node in summary["nodes"] if node["reported"]]
    assert reporters, summary
    assert summary["final_digest"][:16] in result.stderr
    assert all(any(c["call"] == "join" for c in node["gas"]) for node in summary["nodes"])


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
