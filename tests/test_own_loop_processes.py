"""The README's own loop as three OS processes against anvil (simulations/own_loop.py): each
process opens its node folder with SwarmCallback.from_node_dir, all end every round on the
same digest, and one killed with SIGKILL right after a round's checkpoint, started again,
resumes from that checkpoint (merged model, optimizer, sync policy, batch) and ends with
the others."""

from __future__ import annotations

import io
import os
import re
import runpy
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from swarmnode import canonical
from swarmnode.checkpoint import CheckpointStore
from swarmnode.identity import NodeIdentity
from swarmnode.ledger.deployment import Deployment
from swarmnode.ledger.devchain import AnvilChain
from swarmnode.ledger.types import RoundStatus

pytestmark = [pytest.mark.chain, pytest.mark.slow]

SCRIPT = Path(__file__).resolve().parents[1] / "simulations" / "own_loop.py"
NAMES = ("hospital-a", "hospital-b", "hospital-c")
# 599 rows each: 19 batches of 32 per epoch, 3 epochs: syncs after batches 10, 20, ..., 50
# and at the end, six rounds
ROUNDS = 6
CRASH_AFTER = 2  # hospital-c dies right after round 2's checkpoint is written
# one torch thread each: three processes share the cores (beside a pytest-xdist worker)
ENV = {"PATH": os.environ["PATH"], "SWARMNODE_KEY_PASSPHRASE": "", "OMP_NUM_THREADS": "1"}

# Runs the script unchanged, with LivePeer.save wrapped to SIGKILL the process once the
# checkpoint of round CRASH_AFTER_ROUND is on disk: a crash at a known point, no timing.
CRASHING = """
import os, runpy, signal, sys
from swarmnode.peer import LivePeer
save = LivePeer.save
def save_then_die(self, result, state, extra=b""):
    done = save(self, result, state, extra)
    if result.round == int(os.environ["CRASH_AFTER_ROUND"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return done
LivePeer.save = save_then_die
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def swarm(chain: AnvilChain, folder: Path) -> Deployment:
    """The README's steps: three node folders (what `swarmnode init` makes, with a node.toml
    that names no task), the script's initial model saved, and `swarmnode deploy
    --initial-model` of a swarm that needs all three in every round."""
    accounts = []
    for name in NAMES:
        identity = NodeIdentity.create(folder / name, "", kdf="pbkdf2", iterations=2)
        accounts += ["--fund", identity.address, "--allow", identity.address]
        (folder / name / "node.toml").write_text(
            '[node]\nidentity_dir = "."\ndeployment = "../deployment.json"\ndevice = "cpu"\n'
        )
    run(folder, str(SCRIPT), "--save-initial", "initial.pt")
    run(
        folder, "-m", "swarmnode", "deploy", "--rpc", chain.url, "--out", "deployment.json",
        "--min-peers", "3", "--max-peers", "3", "--sync-policy", "every_n_batches:10",
        "--initial-model", "initial.pt", "--transfer-deadline", "20",
        # from the first join: room for the killed one to come back (a restart took 5 s here and
        # 36 s on a loaded machine); a round that ends well never waits for it
        "--round-deadline", "150",
        *accounts,
    )  # fmt: skip
    return Deployment.load(folder / "deployment.json")


def run(folder: Path, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=120, cwd=folder, env=ENV
    )
    assert done.returncode == 0, done.stdout + done.stderr


def start(folder: Path, index: int, crash_after: int | None = None) -> subprocess.Popen[str]:
    command = [str(SCRIPT), NAMES[index], "--node", str(index), "--nodes", "3"]
    env = dict(ENV)
    if crash_after is not None:
        command = ["-c", CRASHING, *command]
        env["CRASH_AFTER_ROUND"] = str(crash_after)
    return subprocess.Popen(
        [sys.executable, *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=folder,
        env=env,
    )


def rounds(output: str) -> dict[int, tuple[str, str]]:
    """round -> (status, digest) from the script's lines."""
    found = re.findall(r"^round (\d+) (\w+) digest (\S+)$", output, re.MULTILINE)
    return {int(number): (status, digest) for number, status, digest in found}


def test_three_own_loop_processes_agree_and_a_killed_one_resumes(
    own_anvil: AnvilChain, tmp_path: Path
) -> None:
    deployment = swarm(own_anvil, tmp_path)
    processes = [start(tmp_path, 0), start(tmp_path, 1), start(tmp_path, 2, CRASH_AFTER)]
    outputs: list[str] = []
    try:
        crashed, _ = processes[2].communicate(timeout=180)  # start-up and two rounds
        assert processes[2].returncode == -signal.SIGKILL, crashed
        # it died in round 2's save, after the checkpoint was written, before its line
        assert sorted(rounds(crashed)) == list(range(1, CRASH_AFTER)), crashed
        processes.append(start(tmp_path, 2))  # the same folder again: resume
        for process in (processes[0], processes[1], processes[3]):
            out, _ = process.communicate(timeout=120)
            assert process.returncode == 0, out
            outputs.append(out)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    restarted = outputs[2]
    assert f"resumed round {CRASH_AFTER} at batch {CRASH_AFTER * 10}" in restarted, restarted
    seen = [rounds(outputs[0]), rounds(outputs[1]), {**rounds(crashed), **rounds(restarted)}]
    assert sorted(seen[0]) == list(range(1, ROUNDS + 1)), outputs[0]
    assert seen[0] == seen[1]  # every round, the same digest
    assert seen[2] == {n: seen[0][n] for n in seen[0] if n != CRASH_AFTER}  # and in the third
    assert {status for status, _ in seen[0].values()} == {"final"}

    reader = own_anvil.ledger(deployment, own_anvil.new_account())
    initial = runpy.run_path(str(SCRIPT))["make_model"]()  # what every process built
    assert reader.params().initial_model_digest == canonical.digest(
        canonical.flatten(initial).numpy()
    )
    last = reader.round(ROUNDS)
    assert last.status == RoundStatus.FINAL and last.final_digest is not None
    for name, out in zip(NAMES, outputs, strict=True):
        model = re.search(r"^model (\S+) accuracy", out, re.MULTILINE)
        assert model is not None and model.group(1) == last.final_digest.hex()[:16], out
        latest = CheckpointStore(tmp_path / name / "checkpoints").latest()
        assert latest is not None and latest.round == ROUNDS
        assert latest.digest == last.final_digest
        assert latest.state["batches_done"] == 57
        # the optimizer's state went through the restart: Adam counted all 57 steps
        adam = torch.load(io.BytesIO(latest.extra), weights_only=True)
        assert {int(s["step"]) for s in adam["state"].values()} == {57}, name
