"""`swarmnode simulate --ray ADDRESS`: the fast engine's nodes trained in shards as Ray tasks
(docs/simulator.md#ray).

The module starts one local Ray cluster, a head and a worker node bound to 127.0.0.1, each
`ray start` in a process session of its own so that teardown signals exactly the processes
this test started. It needs the `swarmnode[ray]` extra: without it the cluster tests skip on a
developer's machine and fail under CI=true, where .ci/run installs it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console

from swarmnode.cli import main
from swarmnode.simulation.fast import FastRounds, Swarm
from swarmnode.simulation.ray_shards import (
    ShardedRounds,
    has_ray,
    run_here,
    run_on_ray,
    shard_ids,
)
from swarmnode.simulation.run import _nodes, simulate
from swarmnode.simulation.scenario import Scenario

START_TIMEOUT_S = 180  # one `ray start` on a busy machine
STOP_GRACE_S = 10  # the processes' own shutdown after SIGTERM (the GCS may not), as `ray stop`
REAP_TIMEOUT_S = 10  # the last of them gone after SIGKILL

pytestmark = pytest.mark.filterwarnings("ignore:Tip. In future versions of Ray:FutureWarning")


def _need_ray() -> None:
    if has_ray():
        return
    if os.environ.get("CI") == "true":
        pytest.fail("Ray is missing: .ci/run installs swarmnode[ray]")
    pytest.skip("needs Ray: pip install 'swarmnode[ray]'")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _ray_start(args: list[str], log: Path) -> int:
    """Runs `ray start` until it reports its node up, in a new session; the session's id
    (the process group of every process it left running)."""
    ray = Path(sys.executable).with_name("ray")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    with log.open("w") as out:
        started = subprocess.Popen(
            [str(ray), "start", *args], env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            code = started.wait(timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(started.pid, signal.SIGKILL)
            raise
    assert code == 0, f"ray start {args[0]} failed:\n{log.read_text()}"
    return started.pid


def _signal(groups: list[int], signum: int) -> list[int]:
    """Sends `signum` to each process group; those that still had a process."""
    alive = []
    for group in groups:
        try:
            os.killpg(group, signum)
        except ProcessLookupError:
            continue
        alive.append(group)
    return alive


def _running(groups: list[int]) -> list[int]:
    """The groups that still have a process that is not a zombie (one that has exited and
    waits for its new parent to reap it holds nothing), from /proc."""
    left = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited while we looked
        if fields[0] != "Z" and int(fields[2]) in groups:
            left.add(int(fields[2]))
    return sorted(left)


def _wait_gone(groups: list[int], seconds: float) -> list[int]:
    """Waits up to `seconds` for every process of `groups` to exit; the groups left."""
    deadline = time.monotonic() + seconds
    while (left := _running(groups)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def _stop(groups: list[int]) -> None:
    """What `ray stop` does, to the sessions this module's `ray start`s made and nothing
    else: SIGTERM, STOP_GRACE_S for a clean exit, then SIGKILL to what is left."""
    left = _wait_gone(_signal(groups, signal.SIGTERM), STOP_GRACE_S)
    left = _wait_gone(_signal(left, signal.SIGKILL), REAP_TIMEOUT_S)
    assert not left, f"Ray processes of groups {left} outlived SIGKILL"


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[str, list[str]]]:
    """A head and one worker node, one CPU each, on 127.0.0.1; this process connected to
    it. Yields the address and the two nodes' ids."""
    _need_ray()
    import ray

    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths
    address = f"127.0.0.1:{_free_port()}"
    common = [
        "--node-ip-address=127.0.0.1",
        "--num-cpus=1",
        "--object-store-memory=100000000",
        f"--temp-dir={temp}",
        "--disable-usage-stats",
    ]
    groups: list[int] = []
    try:
        head = ["--head", f"--port={address.split(':')[1]}", "--include-dashboard=false"]
        groups.append(_ray_start([*head, *common], temp / "head.log"))
        groups.append(_ray_start([f"--address={address}", *common], temp / "worker.log"))
        ray.init(address=address, log_to_driver=False, configure_logging=False)
        listed: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
        nodes = sorted(n["NodeID"] for n in listed if n["Alive"])
        assert len(nodes) == 2, listed
        yield address, nodes
    finally:
        ray.shutdown()
        _stop(groups)
        shutil.rmtree(temp, ignore_errors=True)


def _scenario(**over: Any) -> Scenario:
    fields = {"engine": "fast", "nodes": 16, "rounds": 3, "local_batches": 3, "seed": 3}
    return Scenario.load(None, {**fields, **over})


def test_shards_cut_the_nodes_into_contiguous_near_equal_runs() -> None:
    assert shard_ids(16, 2) == [list(range(8)), list(range(8, 16))]
    assert [len(s) for s in shard_ids(10, 3)] == [3, 4, 3]
    assert shard_ids(3, 8) == [[0], [1], [2]]  # never an empty shard
    assert [i for shard in shard_ids(1000, 7) for i in shard] == list(range(1000))


def test_shards_trained_apart_merge_to_the_fast_engines_model() -> None:
    """In this process, without Ray: label-flipping attackers straddle a shard boundary and
    dropout moves who takes part, and every round's merged model is the fast engine's."""
    scenario = _scenario(nodes=10, byzantine=3, attack="label_flip", dropout=0.3)
    nodes = _nodes(scenario)
    assert nodes.data is not None
    whole = FastRounds(scenario, Swarm(scenario, nodes.data, nodes.parts), nodes.data)
    swarm = Swarm(scenario, nodes.data, nodes.parts)
    shards = ShardedRounds(scenario, swarm, nodes.data, 3, run_here(scenario, nodes.data))
    sat_out = 0
    for k in range(1, scenario.rounds + 1):
        expected, got = whole.round(k), shards.round(k)
        assert torch.allclose(shards.reference, whole.reference, rtol=0, atol=1e-6), k
        assert got.participants == expected.participants
        sat_out += scenario.nodes - got.participants
        assert [r.val_loss for r in got.per_node] == pytest.approx(
            [r.val_loss for r in expected.per_node], abs=1e-6
        )
    assert sat_out > 0  # dropout did move who takes part


@pytest.mark.slow
def test_sixteen_nodes_on_two_ray_nodes_end_every_round_on_one_model(
    cluster: tuple[str, list[str]],
) -> None:
    address, ray_nodes = cluster
    scenario = _scenario()
    nodes = _nodes(scenario)
    assert nodes.data is not None
    sharded = run_on_ray(scenario, nodes.data, nodes.parts, address)
    whole = FastRounds(scenario, Swarm(scenario, nodes.data, nodes.parts), nodes.data)
    assert len(sharded.run.rounds) == scenario.rounds
    for k, record in enumerate(sharded.run.rounds, start=1):
        digests = {r.digest for r in record.per_node}
        assert record.participants == 16 and digests == {record.digest}, k
        whole.round(k)
        assert torch.allclose(sharded.merged[k - 1], whole.reference, rtol=0, atol=1e-6), k
        placed = sharded.placements[k - 1]
        assert sorted(placed) == list(range(16))
        assert set(placed.values()) == set(ray_nodes), placed  # both Ray nodes trained


@pytest.mark.slow
def test_simulate_ray_on_the_command_line_writes_its_report(
    cluster: tuple[str, list[str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    address, _ = cluster
    out = tmp_path / "run"
    argv = ["swarmnode", "simulate", "--ray", address, "--nodes", "16", "--rounds", "2"]
    monkeypatch.setattr(sys, "argv", [*argv, "--local-batches", "2", "--out", str(out)])
    monkeypatch.setenv("COLUMNS", "200")
    try:
        main()
    except SystemExit as exited:
        assert exited.code in (0, None), capsys.readouterr()
    printed = capsys.readouterr().out
    assert "Ray tasks on" in printed and address in printed
    report = json.loads((out / "report.json").read_text())
    assert report["scenario"]["engine"] == "fast"  # --ray implies the fast engine
    assert len(report["rounds"]) == 2


def test_ray_with_the_full_engine_is_one_line_before_anything_runs(tmp_path: Path) -> None:
    _need_ray()
    scenario = Scenario.load(None, {"engine": "full", "nodes": 4, "rounds": 1})
    with open(os.devnull, "w") as quiet, pytest.raises(Exception) as refused:
        simulate(scenario, tmp_path / "never", Console(file=quiet), ray="127.0.0.1:1")
    assert str(refused.value) == "--ray spreads the fast engine's shards: use it with --engine fast"
    assert not (tmp_path / "never").exists()


def test_a_ray_address_with_no_head_is_one_line_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _need_ray()
    out = tmp_path / "never"
    address = f"127.0.0.1:{_free_port()}"  # nothing listens: ray.init would wait minutes
    monkeypatch.setattr(sys, "argv", ["swarmnode", "simulate", "--ray", address, "--out", str(out)])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"swarmnode: --ray {address}: no Ray head answers there")
    assert not out.exists()


def test_without_ray_the_cli_names_the_extra_in_one_line(tmp_path: Path) -> None:
    """Ray made unimportable the way Python documents (sys.modules[name] = None)."""
    code = (
        "import sys; sys.modules['ray'] = None; sys.argv = ['swarmnode', 'simulate', "
        f"'--ray', '127.0.0.1:1', '--out', {str(tmp_path / 'never')!r}]; "
        "from swarmnode.cli import main; main()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1, result
    assert result.stderr.strip() == "swarmnode: --ray needs Ray: pip install 'swarmnode[ray]'"
    assert not (tmp_path / "never").exists()
