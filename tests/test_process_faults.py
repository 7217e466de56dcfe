"""Peers that die mid-round as real OS processes: `swarmnode run` daemons against anvil, each
victim SIGKILLing itself at one exact point of the all-reduce (die_at). Where its rows are
missing, the survivors vote it out on chain and merge again without it in a new attempt;
where its rows had reached both owners of every segment, they check its segments
themselves and finish without a vote. Either way they end every round on the same digest as
the chain's, and a round never waits on the dead for longer than its deadlines.

One swarm of five covers the phases in turn, so the processes start once: round 1 is clean;
in round 2 a victim dies before sending anything, in round 3 one dies after a single update
frame (reduce-scatter), in round 4 one dies after its merged segment reached exactly one
peer (all-gather). Chain time is never moved: the drop votes wait out the real deadline.

All five are in round 1 in every interleaving: a round closes once every *registered* node
has joined (docs/round-protocol.md#closing), so a daemon whose start-up lagged the others'
would miss it and shift the victims' rounds. The task below builds no model (so trains and
joins nothing) until the test has seen all five registered and opens a gate.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from swarmnode import canonical
from swarmnode.checkpoint import CheckpointStore
from swarmnode.identity import NodeIdentity
from swarmnode.ledger.deployment import Deployment
from swarmnode.ledger.devchain import AnvilChain
from swarmnode.ledger.types import RoundStatus
from swarmnode.records import round_records
from swarmnode.rules import Rule, SwarmParams, SyncPolicyId
from swarmnode.training import LocalTrainer, Task, example_task

pytestmark = [pytest.mark.chain, pytest.mark.slow]

TRANSFER_DEADLINE = 3
VICTIMS = {  # node name -> (die_at, final rounds before it dies, what its last log line says)
    "v2": ("before_reduce_scatter", 1, "dies before the reduce-scatter"),
    "v3": ("reduce_scatter:after_frames=1", 2, "dies after 1 update frames"),
    "v4": ("all_gather:after_peers=1", 3, "merged segment to 1 peers"),
}
SURVIVORS = ("s1", "s2")
HIDDEN = 1024  # 21,508 parameters: 6 chunks, so that no participant owns an empty segment
ROUNDS = 4
ROUND_DEADLINE = 120
ROOT = Path(__file__).resolve().parents[1]  # the daemons import this module's gated_task
GATE_TIMEOUT = 180.0  # seconds a daemon waits for the gate before it fails


def gated_task(hidden: int, gate: str) -> Task:
    """example_task(hidden), whose model_factory first waits until the file `gate` exists.

    A daemon builds its model after it has registered, and trains and joins only with it:
    so no node joins round 1 before the test has seen all five registered."""
    task = example_task(hidden=hidden)
    build = task.model_factory

    def model_after_the_gate() -> torch.nn.Module:
        deadline = time.monotonic() + GATE_TIMEOUT
        while not Path(gate).exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the test never opened the gate {gate}")
            time.sleep(0.05)  # polls a file the test writes
        return build()

    task.model_factory = model_after_the_gate
    return task


def events(folder: Path) -> list[dict[str, Any]]:
    path = folder / "node.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def write_swarm(anvil: AnvilChain, folder: Path) -> tuple[Deployment, dict[str, Path]]:
    initial = LocalTrainer(example_task(hidden=HIDDEN), "cpu", 0, init_seed=0).snapshot()
    assert len(initial) > 5 * canonical.CHUNK_ELEMENTS  # every one of five owns a segment
    params = SwarmParams(
        min_peers=2,
        max_peers=5,
        # once a victim is gone, the round closes this long after the first join: every
        # survivor must have joined by then, or it misses the round and shifts the victims'
        # rounds; with 4 s, a survivor 4 s late under load (poll, 4 batches, join) would miss it
        join_window=8,
        transfer_deadline=TRANSFER_DEADLINE,
        round_deadline=ROUND_DEADLINE,
        sync_policy=Rule(SyncPolicyId.EVERY_N_BATCHES, (4, 0, 0, 0)),
        initial_model_digest=canonical.digest(initial),
    )
    deployment, _ = anvil.deploy(params)
    Deployment(deployment.chain_id, deployment.address, deployment.block, params, anvil.url).save(
        folder / "deployment.json"
    )
    configs = {}
    for name in (*SURVIVORS, *VICTIMS):
        identity = NodeIdentity.create(folder / name, "", kdf="pbkdf2", iterations=2)
        anvil.rpc.fund(anvil.funder, identity.address, 10**18)
        fault = ""
        if name in VICTIMS:
            die_at, after, _ = VICTIMS[name]
            fault = f'die_at = "{die_at}"\ndie_after_rounds = {after}\n'
        config = folder / f"{name}.toml"
        config.write_text(
            f'identity_dir = "{name}"\ndeployment = "deployment.json"\n'
            f'task = "{__name__}:gated_task"\ndevice = "cpu"\nrounds = {ROUNDS}\n'
            + fault
            + f'[task_args]\nhidden = {HIDDEN}\ngate = "{folder / "gate"}"\n'
        )
        configs[name] = config
    return deployment, configs


def test_victims_sigkilled_in_each_phase_are_voted_out_and_survivors_agree(
    own_anvil: AnvilChain, tmp_path: Path
) -> None:
    deployment, configs = write_swarm(own_anvil, tmp_path)
    reader = own_anvil.ledger(deployment, own_anvil.new_account())
    processes = {
        name: subprocess.Popen(
            [sys.executable, "-m", "swarmnode", "run", "--config", str(config)],
            stdout=(tmp_path / f"{name}.out").open("w"),
            stderr=subprocess.STDOUT,
            # one torch thread each: the daemons share two cores
            env={
                "PATH": os.environ["PATH"],
                "SWARMNODE_KEY_PASSPHRASE": "",
                "OMP_NUM_THREADS": "1",
            },
            cwd=ROOT,
        )
        for name, config in configs.items()
    }
    try:
        deadline = time.monotonic() + 180
        while len(reader.active_nodes()) < len(configs):  # all five registered: open the gate
            exited = {n: p.returncode for n, p in processes.items() if p.poll() is not None}
            assert not exited, (exited, [(tmp_path / f"{n}.out").read_text() for n in exited])
            assert time.monotonic() < deadline, "the five daemons did not all register"
            time.sleep(0.1)  # polls the chain
        (tmp_path / "gate").touch()
        codes = {name: p.wait(timeout=240) for name, p in processes.items()}
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()

    # the victims really died by SIGKILL, at the point they were told, after their rounds
    for name, (_, after, last_words) in VICTIMS.items():
        log = events(tmp_path / name)
        assert codes[name] == -signal.SIGKILL, (name, (tmp_path / f"{name}.out").read_text())
        assert [r.status for r in round_records(log)] == ["final"] * after
        assert log[-1]["event"] == "die" and last_words in log[-1]["message"], log[-1]
    assert [codes[name] for name in SURVIVORS] == [0, 0]

    accounts = {
        name: NodeIdentity.load(tmp_path / name, "").address for name in (*SURVIVORS, *VICTIMS)
    }
    died_in = {name: events(tmp_path / name)[-1]["round"] for name in VICTIMS}
    assert len(set(died_in.values())) == 3  # one victim per round
    for name, number in died_in.items():
        state = reader.round(number)
        live = {p.lower() for p in state.live_participants}
        assert state.status == RoundStatus.FINAL
        assert {accounts[s].lower() for s in SURVIVORS} <= live
        if VICTIMS[name][0].startswith("all_gather") and state.attempt == 1:
            # its rows had reached both owners of every segment: the others checked its
            # segments themselves and finished in the first attempt, its update merged in
            # (docs/round-protocol.md#relays); on a loaded machine its last rows may still
            # have been on the way, and then it is voted out like the others
            assert accounts[name].lower() in live
        else:
            # voted out, and the rest merged again without it, in the same round
            assert state.attempt >= 2 and accounts[name].lower() not in live

    # every survivor ends every round on the chain's digest, and checkpointed it
    for name in SURVIVORS:
        rounds = round_records(events(tmp_path / name))
        assert [r.status for r in rounds] == ["final"] * ROUNDS
        for entry in rounds:
            assert bytes.fromhex(entry.digest) == reader.round(entry.round).final_digest
            assert entry.gas > 0
        latest = CheckpointStore(tmp_path / name / "checkpoints").latest()
        assert latest is not None and latest.round == ROUNDS
        assert latest.digest == reader.round(ROUNDS).final_digest
        # a fault round is bounded by the deadlines: the wait for the dead peer is the
        # transfer deadline plus the vote (about 10 s), not an open-ended election, which
        # would last until the round deadline; half of that leaves a loaded machine room
        for entry in rounds[1:]:
            assert entry.seconds["total"] < ROUND_DEADLINE / 2
