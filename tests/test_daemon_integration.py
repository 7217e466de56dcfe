"""The daemon as an operator runs it: three `swarmnode run` processes against own_anvil, mutual
TLS over loopback, learning digits together although each holds only four of the ten
classes; a daemon killed with SIGKILL that resumes from its checkpoint and rejoins; and what
a daemon does when it must stop, or restarts, in the middle of a round
(docs/round-protocol.md#withdrawing).

First the stop rules at the round level, on the in-memory ledger (fast); then the processes.
Every process is stopped by its pid in a finally; every wait is on a log line or chain state,
with a deadline.
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import pytest

from swarmnode import canonical
from swarmnode.checkpoint import CheckpointStore
from swarmnode.identity import NodeIdentity
from swarmnode.ledger.base import Ledger
from swarmnode.ledger.contract import ContractLedger
from swarmnode.ledger.deployment import Deployment
from swarmnode.ledger.devchain import AnvilChain
from swarmnode.ledger.types import RoundStatus
from swarmnode.merge import make_rule
from swarmnode.records import NodeRoundRecord, round_records
from swarmnode.round import Round, RoundResult, RoundSettings, leave_unfinished
from swarmnode.rules import Rule, SwarmParams, SyncPolicyId
from swarmnode.simulation.local import memory_swarm, run_in_threads
from swarmnode.simulation.tasks import dataset_task, held_out
from swarmnode.training import LocalTrainer

T = TypeVar("T")

# ------------------------------------------------------------------ the round level, in memory

NUMEL = 3 * canonical.CHUNK_ELEMENTS + 7


def _vector(seed: int) -> npt.NDArray[np.float32]:
    return np.random.default_rng(seed).standard_normal(NUMEL).astype(np.float32)


def _round_with_a_silent_peer(
    stop_grace: float, transfer_deadline: int
) -> tuple[list[Ledger], RoundResult, RoundResult, Any]:
    """Node 0 runs the round; node 1 runs it and is asked to stop once it has closed; node 2
    joins and never sends anything. Returns the ledgers, both results, and the round as node
    1's ledger saw it the moment its round returned."""
    params = SwarmParams(
        min_peers=2,
        max_peers=3,
        join_window=30,
        transfer_deadline=transfer_deadline,
        round_deadline=120,
    )
    swarm = memory_swarm(params, 3, clock=time.time)
    ledgers = [p.ledger for p in swarm.peers]
    stop = threading.Event()
    rule = make_rule(params.merge_rule)
    seen: list[Any] = []

    def run(i: int, stop_event: threading.Event | None) -> RoundResult:
        result = Round(
            ledger=ledgers[i],
            transport=swarm.peers[i].transport,
            inbox=swarm.peers[i].inbox,
            vector=_vector(i),
            weight=10,
            val_loss=0.5,
            rule=rule,
            settings=RoundSettings(poll=0.02, stop=stop_event, stop_grace=stop_grace),
        ).run()
        if i == 1:
            seen.append(ledgers[0].round(1))
        return result

    def until(condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 60
        while not condition():
            assert time.monotonic() < deadline
            time.sleep(0.01)  # polls the ledger's state

    def silent() -> RoundResult:
        until(lambda: ledgers[2].round(1).joined == 2)  # join last: this join closes the round
        ledgers[2].join(1, canonical.digest(_vector(2)), 10, 1)
        until(lambda: ledgers[2].round(1).status != RoundStatus.OPEN)
        stop.set()  # the round has closed: node 1 is inside it now
        return RoundResult(1, 1, "silent", (), None, None)

    try:
        results = run_in_threads([lambda: run(0, None), lambda: run(1, stop), silent], timeout=120)
    finally:
        swarm.close()
    return ledgers, results[0], results[1], seen[0]


def test_a_stopping_node_withdraws_from_a_round_that_cannot_end_within_its_grace() -> None:
    ledgers, first, stopping, seen = _round_with_a_silent_peer(stop_grace=0.2, transfer_deadline=3)
    assert stopping.status == "withdrawn" and stopping.merged is None
    # it did not wait out the transfer deadline on the silent peer: when it returned, the
    # round was still under way, in the attempt its withdrawal started
    assert seen.status == RoundStatus.CLOSED and seen.attempt == 2
    seat = next(s for s in seen.seats if s.account == ledgers[1].account)
    assert seat.dropped_at == 1
    # the other two: node 0 votes the silent one out, which leaves too few: the round fails
    state = ledgers[0].round(1)
    assert state.status == RoundStatus.FAILED
    assert first.status == "failed_too_few"


def test_a_stopping_node_finishes_a_round_that_ends_within_its_grace() -> None:
    ledgers, first, stopping, _ = _round_with_a_silent_peer(stop_grace=60, transfer_deadline=1)
    state = ledgers[0].round(1)
    assert state.status == RoundStatus.FINAL
    assert set(state.live_participants) == {ledgers[0].account, ledgers[1].account}
    assert first.status == stopping.status == "final"
    assert first.digest == stopping.digest == state.final_digest


def test_a_node_asked_to_stop_before_joining_does_not_join() -> None:
    swarm = memory_swarm(SwarmParams(min_peers=2, max_peers=2), 2)
    stop = threading.Event()
    stop.set()
    try:
        peer = swarm.peers[0]
        result = Round(
            ledger=peer.ledger,
            transport=peer.transport,
            inbox=peer.inbox,
            vector=_vector(0),
            weight=1,
            val_loss=0.0,
            rule=make_rule(Rule(0)),
            settings=RoundSettings(stop=stop),
        ).run()
        assert result.status == "stopped"
        assert peer.ledger.round(1).joined == 0
    finally:
        swarm.close()


def test_a_seat_held_without_the_rounds_state_is_left_while_open_and_withdrawn_when_closed() -> (
    None
):
    swarm = memory_swarm(SwarmParams(min_peers=2, max_peers=3), 3)
    a, b, c = (p.ledger for p in swarm.peers)
    try:
        assert leave_unfinished(a) is None  # no seat: nothing to do
        a.join(1, b"\x01" * 32, 1, 0)
        assert leave_unfinished(a) == (1, "left")
        assert a.round(1).joined == 0
        for ledger in (a, b, c):
            ledger.join(1, b"\x01" * 32, 1, 0)
        assert a.round(1).status == RoundStatus.CLOSED  # max_peers joined
        assert leave_unfinished(a) == (1, "withdrawn")
        state = a.round(1)
        assert a.account not in state.live_participants and state.attempt == 2
        assert leave_unfinished(a) is None  # already out
    finally:
        swarm.close()


# ------------------------------------------------------------------ processes: helpers

TASK = "swarmnode.simulation.tasks:dataset_task"
CLASSES = {"a": (0, 1, 2, 3), "b": (3, 4, 5, 6), "c": (6, 7, 8, 9)}
EPOCHS = 5  # local epochs per round
BATCH = 32  # dataset_task's default batch size


@functools.cache
def sync_batches() -> int:
    """The swarm's every-N-batches interval: 5 epochs of the largest node's batches, so that
    every node trains at least 5 local epochs between rounds."""
    rows = max(
        LocalTrainer(dataset_task("digits", classes=c), "cpu", 0).num_samples
        for c in CLASSES.values()
    )
    return EPOCHS * math.ceil(rows / BATCH)


class Daemon:
    """One `swarmnode run` process and its folder. Output goes to a file: a pipe that nobody
    reads fills up and blocks the daemon."""

    def __init__(self, folder: Path, name: str) -> None:
        self.name = name
        self.folder = folder / name
        self.config = folder / f"{name}.toml"
        self.output = folder / f"{name}.out"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.output, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "swarmnode", "run", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                # one torch thread each: several daemons share two cores here, and
                # oversubscribed torch threads made a 95-batch step 10-100x slower (measured)
                env={
                    "PATH": os.environ["PATH"],
                    "SWARMNODE_KEY_PASSPHRASE": "",
                    "OMP_NUM_THREADS": "1",
                },
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, number: int) -> None:
        os.kill(self.pid, number)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} did not exit in {timeout} s:\n{self.tail()}"
            ) from None

    def stop_for_good(self) -> None:
        """The fixture's cleanup: SIGKILL by pid whatever is still running."""
        if self.running():
            self.signal(signal.SIGKILL)
            assert self.process is not None
            self.process.wait()

    def events(self, since: int = 0) -> list[dict[str, Any]]:
        """The JSON log from line `since` on; a line still being written is left out."""
        path = self.folder / "node.jsonl"
        if not path.exists():
            return []
        lines = path.read_text().split("\n")[:-1]
        return [json.loads(line) for line in lines[since:] if line]

    def lines(self) -> int:
        return len(self.events())

    def rounds(self, since: int = 0, status: str = "final") -> list[NodeRoundRecord]:
        return [r for r in round_records(self.events(since)) if status in ("", r.status)]

    def tail(self) -> str:
        return self.output.read_text()[-4000:] if self.output.exists() else "(no output)"


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    try:
        yield started
    finally:
        for daemon in started:
            daemon.stop_for_good()


def wait_for(
    what: str, found: Callable[[], T | None], alive: list[Daemon], timeout: float = 120
) -> T:
    """Polls `found` until it gives something; fails at the deadline, or at once if one of
    `alive` has exited, with the daemons' output."""
    deadline = time.monotonic() + timeout
    while True:
        value = found()
        if value:
            return value
        for daemon in alive:
            if not daemon.running():
                raise AssertionError(f"{daemon.name} exited waiting for {what}:\n{daemon.tail()}")
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {d.name}\n{d.tail()}" for d in alive)
            raise AssertionError(f"timed out waiting for {what}\n{tails}")
        time.sleep(0.1)  # a polling interval, not a synchronisation


def digits_swarm(
    own_anvil: AnvilChain,
    folder: Path,
    nodes: dict[str, tuple[int, ...]],
    *,
    min_peers: int,
    transfer_deadline: int,
    join_window: int = 30,
    rounds: int = 0,
    extra: dict[str, str] | None = None,
) -> tuple[ContractLedger, dict[str, Daemon]]:
    """A swarm contract for the digits task on own_anvil, one funded node folder and node.toml
    per name (holding those classes), and a reader's ledger handle."""
    initial = LocalTrainer(dataset_task("digits"), "cpu", 0, init_seed=0).snapshot()
    params = SwarmParams(
        min_peers=min_peers,
        max_peers=len(nodes),
        join_window=join_window,
        transfer_deadline=transfer_deadline,
        round_deadline=300,
        sync_policy=Rule(SyncPolicyId.EVERY_N_BATCHES, (sync_batches(), 0, 0, 0)),
        initial_model_digest=canonical.digest(initial),
    )
    deployment, _ = own_anvil.deploy(params)
    Deployment(
        deployment.chain_id, deployment.address, deployment.block, params, own_anvil.url
    ).save(folder / "deployment.json")
    daemons = {}
    for name, classes in nodes.items():
        identity = NodeIdentity.create(folder / name, "", kdf="pbkdf2", iterations=2)
        own_anvil.rpc.fund(own_anvil.funder, identity.address, 10**18)
        daemon = Daemon(folder, name)
        daemon.config.write_text(
            f'identity_dir = "{name}"\n'
            'deployment = "deployment.json"\n'
            f'task = "{TASK}"\n'
            'device = "cpu"\n'
            f"rounds = {rounds}\n"
            + (extra or {}).get(name, "")
            + f"\n[task_args]\nclasses = {list(classes)}\n"
        )
        daemons[name] = daemon
    return own_anvil.ledger(deployment, own_anvil.new_account()), daemons


def account_of(daemon: Daemon) -> str:
    return NodeIdentity.inspect(daemon.folder).address


def chain_events(reader: ContractLedger, name: str) -> list[dict[str, Any]]:
    events, _ = reader.events(reader.start_cursor())
    return [dict(e.args) for e in events if e.name == name]


def withdrawals(reader: ContractLedger, account: str) -> list[tuple[int, int]]:
    """(round, attempt) of every Withdrawn event the chain has for `account`."""
    return [
        (int(e["round"]), int(e["attempt"]))
        for e in chain_events(reader, "Withdrawn")
        if str(e["node"]).lower() == account.lower()
    ]


def accuracy_of(vector: npt.NDArray[np.float32], classes: tuple[int, ...] | None = None) -> float:
    trainer = LocalTrainer(dataset_task("digits"), "cpu", 0)
    trainer.load(vector)
    return trainer.evaluate(held_out("digits", classes=classes))["accuracy"]


# ------------------------------------------------------------------ processes: the tests


@pytest.mark.chain
@pytest.mark.slow
def test_three_daemons_learn_digits_that_none_of_them_could_alone(
    own_anvil: AnvilChain, tmp_path: Path, daemons: list[Daemon]
) -> None:
    # Six rounds: an in-process replay of the same trainers and weighted mean (seed 0) gave
    # merged 0.86 and unseen classes >= 0.82 after round 6 (0.91 and 0.88 after round 10);
    # odd rounds dip (0.59 after round 3), even ones climb, so the count stays even
    rounds = 6
    reader, nodes = digits_swarm(
        own_anvil, tmp_path, dict(CLASSES), min_peers=3, transfer_deadline=30, rounds=rounds
    )
    daemons.extend(nodes.values())
    for daemon in daemons:
        daemon.start()
    for daemon in daemons:
        assert daemon.wait(timeout=240) == 0, daemon.tail()

    accounts = {account_of(d) for d in daemons}
    for number in range(1, rounds + 1):  # every round final, with all three in it
        state = reader.round(number)
        assert state.status == RoundStatus.FINAL
        assert set(state.live_participants) == accounts
    for daemon in daemons:  # each logged every round with the digest the chain holds
        logged = daemon.rounds()
        assert [e.round for e in logged] == list(range(1, rounds + 1)), daemon.tail()
        for event in logged:
            assert bytes.fromhex(event.digest) == reader.round(event.round).final_digest

    final = [CheckpointStore(d.folder / "checkpoints").latest() for d in daemons]
    assert all(c is not None and c.round == rounds for c in final)
    vectors = [c.vector for c in final if c is not None]
    assert all(v.tobytes() == vectors[0].tobytes() for v in vectors)  # bit-identical
    merged = accuracy_of(vectors[0])
    unseen = {
        name: accuracy_of(vectors[0], tuple(k for k in range(10) if k not in classes))
        for name, classes in CLASSES.items()
    }
    alone = {}
    for name, classes in CLASSES.items():  # the same batches, no swarm
        trainer = LocalTrainer(dataset_task("digits", classes=classes), "cpu", 0, init_seed=0)
        trainer.train_batches(rounds * sync_batches())
        alone[name] = trainer.evaluate(held_out("digits"))["accuracy"]

    print(f"\nsync every {sync_batches()} batches ({EPOCHS} epochs), {rounds} rounds")
    print(f"held-out accuracy, merged model: {merged:.3f}")
    for name in CLASSES:
        print(
            f"  node {name} classes {CLASSES[name]}: merged on its unseen classes "
            f"{unseen[name]:.3f}; the node alone on all classes {alone[name]:.3f}"
        )
    print("round seconds per daemon, median (mean) over the rounds:")
    for daemon in daemons:
        split = {
            key: [e.seconds.get(key, 0.0) for e in daemon.rounds()]
            for key in ("chain", "transfer", "merge", "total")
        }
        print(
            f"  {daemon.name}: "
            + ", ".join(
                f"{key} {statistics.median(v):.3f} ({statistics.mean(v):.3f})"
                for key, v in split.items()
            )
        )
    assert merged >= 0.75
    assert all(value >= 0.6 for value in unseen.values()), unseen
    assert all(value < 0.5 for value in alone.values()), alone  # four classes of ten
    assert merged > max(alone.values()) + 0.3


@pytest.mark.chain
@pytest.mark.slow
def test_killed_daemons_withdraw_from_the_round_they_lost_resume_and_rejoin(
    own_anvil: AnvilChain, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """Two kills of the same node v. First it SIGKILLs itself inside a round it joined
    (die_at, before sending anything); restarted, it withdraws from that round, the other
    two finish it in a new attempt, and the next round includes v again. Then the test
    SIGKILLs it at whatever point it is; restarted with the same config, it resumes from its
    checkpoint and ends its next round on the swarm's digest."""
    # Far longer than a restart (about 5 s here, 36 s seen on a loaded machine): v must be
    # back before the others would vote it out. Nothing waits for it when v withdraws.
    transfer = 90
    reader, nodes = digits_swarm(
        own_anvil,
        tmp_path,
        {"a": CLASSES["a"], "b": CLASSES["b"], "v": CLASSES["c"]},
        min_peers=2,
        transfer_deadline=transfer,
        join_window=5,
        extra={"v": 'die_at = "before_reduce_scatter"\ndie_after_rounds = 2\n'},
    )
    daemons.extend(nodes.values())
    a, b, v = nodes["a"], nodes["b"], nodes["v"]
    for daemon in daemons:
        daemon.start()
    me = account_of(v)

    # 1. v dies inside round r, after the round closed with v in it
    code = v.wait(timeout=180)
    assert code == -signal.SIGKILL, v.tail()
    died = [e for e in v.events() if e.get("event") == "die"]
    assert died, v.tail()
    r = reader.current_round()
    state = reader.round(r)
    assert state.status == RoundStatus.CLOSED and me in state.live_participants
    v.config.write_text(
        v.config.read_text().replace('die_at = "before_reduce_scatter"\n', "")
    )  # the same node, without the fault
    seen = v.lines()
    v.start()
    wait_for(
        "v to withdraw from the round it lost",
        lambda: [e for e in v.events(seen) if e.get("event") == "withdrawn"],
        [a, b, v],
    )
    withdrawn = [e for e in v.events(seen) if e.get("event") == "withdrawn"]
    assert withdrawn[0]["round"] == r
    assert withdrawals(reader, me) == [(r, 1)]  # withdrawn, not voted out
    wait_for(
        "the others to finish round r",
        lambda: reader.round(r).status == RoundStatus.FINAL,
        [a, b, v],
    )
    state = reader.round(r)
    assert state.attempt == 2 and set(state.live_participants) == {account_of(a), account_of(b)}
    # nobody waited out the transfer deadline (votes come only after it): the withdrawal
    # moved a and b to the new attempt while they were still waiting on v's data
    assert not [e for e in chain_events(reader, "DropVoted") if e["round"] == r]
    back = wait_for("v's first final round", lambda: v.rounds(seen), [a, b, v])[0]
    assert back.round > r
    assert me in reader.round(back.round).live_participants
    assert bytes.fromhex(back.digest) == reader.round(back.round).final_digest

    # 2. the test kills v with SIGKILL wherever it is; v comes back with the same config
    wait_for("v's second final round", lambda: len(v.rounds(seen)) >= 2, [a, b, v])
    v.signal(signal.SIGKILL)
    killed_at = time.time()
    assert v.wait(timeout=30) == -signal.SIGKILL
    checkpoint = CheckpointStore(v.folder / "checkpoints").latest()
    assert checkpoint is not None
    seen = v.lines()
    v.start()
    first = wait_for("v's first final round after kill -9", lambda: v.rounds(seen), [a, b, v])[0]
    events = v.events(seen)
    resumed = [e for e in events if e.get("event") == "resumed"]
    assert resumed and resumed[0]["round"] == checkpoint.round
    gave_up = [e["event"] for e in events if e.get("event") in ("withdrawn", "left")]
    number = first.round
    digest = bytes.fromhex(first.digest)
    assert digest == reader.round(number).final_digest

    def logged(daemon: Daemon) -> list[NodeRoundRecord]:
        return [e for e in daemon.rounds() if e.round == number]

    for other in (a, b):  # the same digest as the others logged for that round
        same = wait_for(f"{other.name}'s round {number}", partial(logged, other), [a, b, v])
        assert [e.digest for e in same] == [first.digest]
    print(
        f"\nkill -9 to the restarted node's first final round (round {number}): "
        f"{(first.time or 0.0) - killed_at:.1f} s (transfer deadline {transfer} s; resumed "
        f"from the round-{checkpoint.round} checkpoint; "
        f"seat given up at restart: {gave_up or 'none'})"
    )

    for daemon in (a, b, v):
        daemon.signal(signal.SIGTERM)
    for daemon in (a, b, v):
        assert daemon.wait(timeout=120) == 0, daemon.tail()


@pytest.mark.chain
@pytest.mark.slow
def test_sigterm_mid_round_finishes_within_the_grace_or_withdraws(
    own_anvil: AnvilChain, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """Four daemons; in its second round node c dies before sending anything, so the round
    can end only after the transfer deadline, when c is voted out. Then b and d get SIGTERM: b, with
    no grace, withdraws at once; d, with a grace longer than the round needs, finishes it.
    Both exit 0."""
    # b's withdrawal must land in attempt 1, before a and d vote c out at the transfer
    # deadline: from c's death that is the test seeing it, two RPCs, the signal, b's poll
    # and its transaction. 8 s left a loaded machine little slack; 12 s leaves it more
    transfer = 12
    reader, nodes = digits_swarm(
        own_anvil,
        tmp_path,
        {"a": CLASSES["a"], "b": CLASSES["b"], "c": CLASSES["c"], "d": (2, 5, 8)},
        min_peers=2,
        transfer_deadline=transfer,
        extra={
            "b": "stop_grace = 0\n",
            "c": 'die_at = "before_reduce_scatter"\ndie_after_rounds = 1\n',
            "d": "stop_grace = 60\n",
        },
    )
    daemons.extend(nodes.values())
    a, b, c, d = (nodes[n] for n in "abcd")
    for daemon in daemons:
        daemon.start()
    assert c.wait(timeout=180) == -signal.SIGKILL, c.tail()
    r = reader.current_round()
    state = reader.round(r)
    assert state.status == RoundStatus.CLOSED
    assert {account_of(b), account_of(d)} <= set(state.live_participants)
    b.signal(signal.SIGTERM)
    d.signal(signal.SIGTERM)
    assert b.wait(timeout=60) == 0, b.tail()
    assert d.wait(timeout=120) == 0, d.tail()

    # b withdrew in attempt 1: before the transfer deadline, when c would have been voted out
    assert withdrawals(reader, account_of(b)) == [(r, 1)]
    b_rounds = b.rounds(status="")
    assert b_rounds[-1].round == r and b_rounds[-1].status == "withdrawn"
    assert b.events()[-1]["event"] == "stopped"
    # d finished round r with a: c voted out, b withdrawn
    state = reader.round(r)
    assert state.status == RoundStatus.FINAL
    assert set(state.live_participants) == {account_of(a), account_of(d)}
    d_rounds = d.rounds(status="")
    assert d_rounds[-1].round == r and d_rounds[-1].status == "final"
    assert bytes.fromhex(d_rounds[-1].digest) == state.final_digest
    assert not [e for e in d.events() if e.get("event") == "withdrawn"]
    assert d.events()[-1]["event"] == "stopped"
    a.signal(signal.SIGTERM)
    assert a.wait(timeout=120) == 0, a.tail()
