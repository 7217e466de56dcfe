"""`swarmnode simulate --processes`: every virtual node a `swarmnode run` daemon of its own.

Full isolation: each node is a separate OS process with its own interpreter, identity folder
(account keystore, TLS key and certificate), node.toml, JSON log and checkpoints, exactly
what a hospital would run; the nodes share nothing but one anvil chain and loopback. The
simulator only sets the stage (anvil, the contract with the scenario's parameters, funded
accounts, one config per node), watches, and cleans up:

- per round, what each node did comes from its own JSON log line (the daemon writes its
  RoundResult there: status, digest, bytes, transactions and the gas of its receipts), and
  who took part and which digest won from the chain;
- the merged model is scored from the checkpoint a daemon writes after each final round
  (read back against its digest), on the same held-out test set as in process;
- with DP, each node.toml carries the scenario's `[privacy]`, each round line the epsilon the
  daemon had spent, and a daemon whose budget ended its rounds (its `privacy_budget_spent`
  line) is recorded as `budget_spent` in the rounds after, as in process;
- every process is stopped by its pid when the run ends, fails, or is interrupted (Ctrl-C,
  SIGTERM): SIGTERM first (a daemon leaves after the round in progress), SIGKILL after a
  grace period. The pids are in processes.json in the run folder while it runs.

The node identities are throwaway dev-chain accounts: empty passphrase and a cheap key
derivation, so that a daemon starts in a second, not in the seconds scrypt takes.

A runner, beside the in-process engine (docs/simulator.md#processes): the same scenario in,
the same SwarmRun (results.py) out.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from eth_account import Account

from swarmnode import canonical
from swarmnode.checkpoint import read as read_checkpoint
from swarmnode.exceptions import ConfigError, SwarmError
from swarmnode.identity import PASSPHRASE_ENV, PASSPHRASE_FILE_ENV, NodeIdentity
from swarmnode.ledger.anvil import DEV_KEY, AnvilProcess
from swarmnode.ledger.base import Ledger
from swarmnode.ledger.rpc import RpcChain
from swarmnode.ledger.types import RoundStatus
from swarmnode.records import ROUND_EVENT, NodeRoundRecord
from swarmnode.rules import SwarmParams
from swarmnode.simulation.results import RoundRecord, SwarmRun
from swarmnode.simulation.scenario import Scenario
from swarmnode.training import Data, LocalTrainer, Task

NodeTask = tuple[str, dict[str, Any]]
"""What one daemon's node.toml names: the task spec and its task_args."""

FUNDING_WEI = 10**18  # 1 dev ether: thousands of rounds of gas at anvil's prices
GRACE_SECONDS = 10.0  # a SIGTERMed daemon that has not left by then is SIGKILLed
START_SECONDS = 180.0  # interpreter, torch, web3, enrolment; 8 of them share two cores here
POLL_SECONDS = 0.1
BUDGET_EVENT = "privacy_budget_spent"
"""The `event` of the line a daemon logs when its DP budget ends its rounds (daemon.py)."""


class _Node:
    """One daemon: its folder, its process, and the log lines it has written so far."""

    def __init__(self, index: int, folder: Path, process: subprocess.Popen[bytes]) -> None:
        self.index = index
        self.folder = folder
        self.process = process
        self.rounds: dict[int, NodeRoundRecord] = {}  # round -> its last record in the log
        self.started_at: float | None = None
        self.asked_to_stop = False  # sent SIGTERM: a signal may end it during its own exit
        self.drained = False  # it had exited before its log was last read: nothing more comes
        # with DP: the epsilon it had spent when it stopped joining rounds (its budget's
        # end, docs/privacy.md#the-budget); a spent node takes part in no later round
        self.spent: float | None = None
        self.budget_spent = False
        self._offset = 0
        self._partial = b""

    @property
    def log(self) -> Path:
        return self.folder / "node.jsonl"

    def read_log(self) -> bool:
        """Takes in the lines written since the last call; True if there were any."""
        try:
            with open(self.log, "rb") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
        except FileNotFoundError:
            return False
        self._offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()  # a line still being written
        for line in lines:
            if not line.strip():
                continue
            event = json.loads(line)
            if event.get("event") == "started":
                self.started_at = float(event["time"])
            elif event.get("event") == BUDGET_EVENT:
                self.budget_spent = True
                self.spent = event.get("epsilon")
            elif event.get("event") == ROUND_EVENT:
                record = NodeRoundRecord.from_json(event)
                self.rounds[record.round] = record
        return bool(lines)

    @property
    def finals(self) -> int:
        """Final rounds so far: what a daemon counts towards its `rounds`."""
        return sum(1 for r in self.rounds.values() if r.status == "final")

    def last_words(self) -> str:
        """The last line the daemon printed, to say why it went wrong."""
        try:
            text = (self.folder / "stdout.log").read_text(errors="replace").strip()
        except FileNotFoundError:
            return "(no output)"
        return text.splitlines()[-1] if text else "(no output)"


def run_processes(
    scenario: Scenario,
    tasks: list[Task],
    test_set: Data,
    node_tasks: list[NodeTask],
    folder: Path,
    on_round: Callable[[RoundRecord], None] = lambda record: None,
) -> SwarmRun:
    """Runs the scenario with one `swarmnode run` process per node task, against anvil.

    `tasks` are the same tasks built in this process: the first gives the initial model
    (its digest goes into the contract) and scores the checkpoints on `test_set`.
    """
    if len(tasks) != len(node_tasks):
        raise ConfigError(f"{len(tasks)} tasks for {len(node_tasks)} nodes")
    if (folder / "nodes").exists():
        raise ConfigError(f"{folder}: holds the nodes of an earlier run; give a fresh --out")
    folder.mkdir(parents=True, exist_ok=True)
    scorer = LocalTrainer(tasks[0], "cpu", 0, init_seed=scenario.seed)
    initial = scorer.snapshot()
    params = scenario.swarm_params(len(tasks), canonical.digest(initial))
    anvil = AnvilProcess(log_path=folder / "anvil.log")
    nodes: list[_Node] = []
    with _sigterm_interrupts():
        try:
            anvil.start()
            _write_pids(folder, anvil, nodes)
            watch = _Watch(scenario, anvil, nodes, scorer, test_set, on_round)
            watch.stage(params, node_tasks, folder)
            records = watch.run(model_bytes=len(initial) * canonical.ELEMENT_BYTES)
        finally:
            _stop_all(anvil, nodes)
    return SwarmRun.of(records)


class _Watch:
    """Sets up the swarm, then follows the nodes' logs and checkpoints round by round."""

    def __init__(
        self,
        scenario: Scenario,
        anvil: AnvilProcess,
        nodes: list[_Node],
        scorer: LocalTrainer,
        test_set: Data,
        on_round: Callable[[RoundRecord], None],
    ) -> None:
        self.scenario = scenario
        self.anvil = anvil
        self.nodes = nodes
        self.scorer = scorer
        self.test_set = test_set
        self.on_round = on_round
        self.scores: dict[int, tuple[bytes, float, float]] = {}  # round -> digest, acc, loss
        self.reader: Ledger | None = None
        self.stall_seconds = 60.0

    def stage(self, params: SwarmParams, node_tasks: list[NodeTask], folder: Path) -> None:
        """Deploys, makes and funds one identity per node, writes its config, starts it."""
        chain = RpcChain(self.anvil.url)
        funder = Account.from_key(DEV_KEY)
        # restricted, as `swarmnode deploy` makes it: the swarm admits its nodes and nobody
        # else (docs/trust.md#the-roster)
        deployment = chain.deploy(replace(params, restricted=True), funder)
        deployment.save(folder / "deployment.json")
        self.reader = chain.ledger(deployment, Account.create())
        self.stall_seconds = params.round_deadline + 60.0
        env = _child_environment()
        configs = []
        members: list[str] = []
        for i, (task, task_args) in enumerate(node_tasks):
            home = folder / "nodes" / f"node-{i:02d}"
            identity = NodeIdentity.create(home, "", kdf="pbkdf2", iterations=2)
            chain.fund(funder, identity.address, FUNDING_WEI)
            members.append(identity.address)
            config = home / "node.toml"
            config.write_text(_node_toml(self.scenario, i, task, task_args))
            configs.append((home, config))
        admin = chain.ledger(deployment, funder)  # after funding: it reads the nonce once
        for account in members:
            admin.allow(account)
        for i, (home, config) in enumerate(configs):
            with open(home / "stdout.log", "wb") as out:
                process = subprocess.Popen(
                    [sys.executable, "-m", "swarmnode", "run", "--config", str(config)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    # Ctrl-C at a terminal reaches the simulator alone, which then stops
                    # every node in order instead of all of them racing each other
                    start_new_session=True,
                )
            self.nodes.append(_Node(i, home, process))
            _write_pids(folder, self.anvil, self.nodes)

    def run(self, model_bytes: int) -> list[RoundRecord]:
        """Until every node has stopped: one record per round, the first `rounds` rounds."""
        records: list[RoundRecord] = []
        began = last_news = time.monotonic()
        wanted = self.scenario.rounds
        while True:
            for node in self.nodes:  # exited before this read: the read has its last line
                node.drained = node.process.poll() is not None
            if any([node.read_log() for node in self.nodes]):
                last_news = time.monotonic()
            self._score_checkpoints()
            over = all(node.drained for node in self.nodes)  # and every line of theirs read
            self._check_exits()
            while len(records) < wanted:
                record = self._record(len(records), records, model_bytes, over)
                if record is None:
                    break
                records.append(record)
                self.on_round(record)
            if over:
                break
            if len(records) >= wanted:
                self._ask_to_leave(wanted)
            self._check_progress(began, last_news)
            time.sleep(POLL_SECONDS)  # the daemons' log files are what there is to watch
        if not records and all(node.budget_spent for node in self.nodes):
            raise ConfigError(
                f"dp_budget {self.scenario.dp_budget}: spent before the first round on every "
                "node (one round's training would spend more); raise dp_budget or dp_noise"
            )
        if not records:
            raise SwarmError("the nodes stopped before any round ended")
        return records

    def _check_exits(self) -> None:
        """A node that exited on its own with an error ends the run, naming it."""
        for node in self.nodes:
            code = node.process.poll()
            if code not in (None, 0) and not (node.asked_to_stop and code == -signal.SIGTERM):
                raise SwarmError(
                    f"node {node.index} (pid {node.process.pid}) exited with code {code}: "
                    f"{node.last_words()}"
                )

    def _ask_to_leave(self, wanted: int) -> None:
        """SIGTERM to the nodes still short of `wanted` final rounds: a failed round does
        not count towards a daemon's `rounds`, so one that saw one goes on after the
        swarm's rounds are done."""
        for node in self.nodes:
            if not node.asked_to_stop and node.finals < wanted:
                node.asked_to_stop = node.process.poll() is None
                if node.asked_to_stop:
                    node.process.send_signal(signal.SIGTERM)

    def _check_progress(self, began: float, last_news: float) -> None:
        """A node that never started, or a swarm that went quiet, ends the run."""
        now = time.monotonic()
        for node in self.nodes:
            if node.started_at is None and now - began > START_SECONDS:
                raise SwarmError(
                    f"node {node.index} (pid {node.process.pid}) did not start within "
                    f"{START_SECONDS:.0f} s: {node.last_words()}"
                )
        if now - last_news > self.stall_seconds:
            raise SwarmError(
                f"no node logged anything for {self.stall_seconds:.0f} s; their logs are "
                f"in {self.nodes[0].folder.parent}"
            )

    def _round_numbers(self) -> list[int]:
        return sorted({r for node in self.nodes for r in node.rounds})

    def _record(
        self, position: int, records: list[RoundRecord], model_bytes: int, over: bool
    ) -> RoundRecord | None:
        """The `position`-th round, once every node is past it and its model is scored."""
        number = self._ready(position, over)
        if number is None:
            return None
        mine = [
            replace(node.rounds[number], node=node.index, pid=node.process.pid)
            for node in self.nodes
            if number in node.rounds
        ]
        spent = [_spent_record(node, number) for node in self.nodes if _spent_before(node, number)]
        assert self.reader is not None
        state = self.reader.round(number)
        chain_digest = state.final_digest if state.status == RoundStatus.FINAL else None
        agreed = self._agreed(number, mine, chain_digest, len(self.nodes) - len(spent))
        accuracy, loss = self._score(number, records)
        return RoundRecord(
            round=number,
            participants=len(state.participants),
            seconds=_seconds(mine, records, self.nodes),
            bytes_sent_per_node=float(max(r.bytes_sent for r in mine)),
            model_bytes=model_bytes,
            digest_agreed=agreed,
            digest=chain_digest.hex() if agreed and chain_digest is not None else "",
            transactions=sum(r.receipts or 0 for r in mine),
            gas_used=sum(r.gas for r in mine),
            accuracy=accuracy,
            loss=loss,
            per_node=sorted(mine + spent, key=lambda r: r.node or 0),
        )

    def _ready(self, position: int, over: bool) -> int | None:
        """The number of the `position`-th round if it can be recorded: every node is past
        it and the model it merged is scored, or the nodes are all gone (`over`)."""
        numbers = self._round_numbers()
        if position >= len(numbers):
            return None
        number = numbers[position]
        if over:
            return number
        if any(
            not n.drained and not n.budget_spent and max(n.rounds, default=0) < number
            for n in self.nodes
        ):
            return None
        merged = any(n.rounds[number].digest for n in self.nodes if number in n.rounds)
        if merged and number not in self.scores:
            return None  # a node with a digest checkpoints it just after the log line
        return number

    def _agreed(
        self, number: int, mine: list[NodeRoundRecord], chain_digest: bytes | None, due: int
    ) -> bool:
        """Every node `due` in the round (all but those whose DP budget was spent before it,
        as in process) ended it holding the model whose digest is on chain."""
        score = self.scores.get(number)
        return (
            chain_digest is not None
            and len(mine) == due
            and {r.digest for r in mine} == {chain_digest.hex()}
            and score is not None
            and score[0] == chain_digest
        )

    def _score(self, number: int, records: list[RoundRecord]) -> tuple[float, float]:
        """(accuracy, loss) of the model round `number` left: its checkpoint's, or, with no
        new model, the last round's (the initial model's before any)."""
        score = self.scores.get(number)
        if score is not None:
            return score[1], score[2]
        if records:
            return records[-1].accuracy, records[-1].loss
        return self._initial_score()

    def _score_checkpoints(self) -> None:
        """Scores each round's merged model as soon as any node's checkpoint of it appears
        (a daemon keeps only its newest two, so this cannot wait for the end)."""
        for node in self.nodes:
            for path in sorted((node.folder / "checkpoints").glob("round-*.ckpt")):
                number = int(path.stem.removeprefix("round-"))
                if number in self.scores:
                    continue
                try:
                    checkpoint = read_checkpoint(path)
                except (OSError, ValueError):
                    continue  # replaced by a newer one while we looked
                self.scorer.load(checkpoint.vector)
                metrics = self.scorer.evaluate(self.test_set)
                self.scores[number] = (checkpoint.digest, metrics["accuracy"], metrics["loss"])

    def _initial_score(self) -> tuple[float, float]:
        trainer = LocalTrainer(self.scorer.task, "cpu", 0, init_seed=self.scenario.seed)
        metrics = trainer.evaluate(self.test_set)
        return metrics["accuracy"], metrics["loss"]


def _spent_before(node: _Node, number: int) -> bool:
    """The node's DP budget ended its rounds before round `number`."""
    return node.budget_spent and number > max(node.rounds, default=0)


def _spent_record(node: _Node, number: int) -> NodeRoundRecord:
    """A spent node's record of a round it sat out: `budget_spent` with the epsilon it spent,
    what the in-process engine records for it (engine.py)."""
    return NodeRoundRecord(
        round=number,
        status="budget_spent",
        node=node.index,
        pid=node.process.pid,
        epsilon=node.spent,
    )


def _seconds(mine: list[NodeRoundRecord], records: list[RoundRecord], nodes: list[_Node]) -> float:
    """From the previous round's last log line (the last daemon's start, for the first
    round) to this round's last."""
    ended = max(r.time or 0.0 for r in mine)
    if records:
        began = max(r.time or 0.0 for r in records[-1].per_node)
    else:
        starts = [n.started_at for n in nodes if n.started_at is not None]
        began = max(starts) if starts else ended
    return max(0.0, ended - began)


def _node_toml(scenario: Scenario, index: int, task: str, task_args: dict[str, Any]) -> str:
    """The node's config: the seeds the in-process engine gives node `index`."""
    lines = [
        "# written by `swarmnode simulate --processes`; run alone with",
        "# `swarmnode run --config node.toml` while the run's anvil is up",
        "[node]",
        'identity_dir = "."',
        'deployment = "../../deployment.json"',
        f"task = {_toml(task)}",
        'listen = "127.0.0.1:0"',
        'device = "cpu"',
        f"rounds = {scenario.rounds}",
        f"seed = {scenario.seed * 1000 + index}",
        f"init_seed = {scenario.seed}",
        # every daemon waits for all to register: round 1 must not close on the first few
        f"start_with = {scenario.nodes}",
        "",
        "[node.task_args]",
    ]
    lines += [f"{key} = {_toml(value)}" for key, value in task_args.items()]
    lines += _privacy_toml(scenario)
    return "\n".join(lines) + "\n"


def _privacy_toml(scenario: Scenario) -> list[str]:
    """node.toml's `[privacy]` (docs/privacy.md#settings) from the scenario's dp_* keys, or
    nothing without DP. Written from `Scenario.privacy()` / `mean_privacy()`, the settings
    the in-process engine hands its nodes, so that both runners apply the same defaults."""
    local, mean = scenario.privacy(), scenario.mean_privacy()
    values: dict[str, float | int | None]
    if local is not None:
        values = {
            "noise_multiplier": local.noise_multiplier,
            "max_grad_norm": local.max_grad_norm,
            "delta": local.delta,
            "epsilon_budget": local.epsilon_budget,
        }
    elif mean is not None:  # distributed DP: the swarm is deployed with secure aggregation
        values = {
            "mean_noise_multiplier": mean.noise_multiplier,
            "mean_clip_norm": mean.clip_norm,
            "assumed_colluders": mean.assumed_colluders,
            "delta": mean.delta,
            "epsilon_budget": mean.epsilon_budget,
        }
    else:
        return []
    lines = ["", "[privacy]"]
    return lines + [f"{key} = {_toml(value)}" for key, value in values.items() if value is not None]


def _toml(value: Any) -> str:
    """TOML for the plain values task_args hold (a JSON string or array is TOML as well)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise ConfigError(f"task_args: {value!r} cannot be written to node.toml")


def _child_environment() -> dict[str, str]:
    """The daemons' environment: this one, the (empty) passphrase of their throwaway keys
    (in place of any passphrase file this process was given: one way only, and each daemon
    takes it out of its environment as it reads it, docs/trust.md#keys), one math thread
    each (several of them share few cores), gRPC's C core quiet unless this process was told
    otherwise (`swarmnode --verbose` sets GRPC_VERBOSITY; its lines would bury a daemon's last
    words in stdout.log), and this interpreter's own import folders, so that a user's task
    module imports there as it does here."""
    env = dict(os.environ)
    env[PASSPHRASE_ENV] = ""
    env.pop(PASSPHRASE_FILE_ENV, None)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("GRPC_VERBOSITY", "NONE")
    system = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    own = []
    for entry in sys.path:
        path = Path(entry or os.getcwd()).resolve()
        if path.is_dir() and not any(path.is_relative_to(s) for s in system):
            own.append(str(path))
    if env.get("PYTHONPATH"):
        own.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(own))
    return env


def _write_pids(folder: Path, anvil: AnvilProcess, nodes: list[_Node]) -> None:
    """processes.json: what is running for this run, for a person (or a test) to check."""
    pids = {
        "anvil": {"pid": anvil.pid, "url": anvil.url},
        "nodes": [
            {"node": n.index, "pid": n.process.pid, "config": str(n.folder / "node.toml")}
            for n in nodes
        ],
    }
    temporary = folder / "processes.json.tmp"
    temporary.write_text(json.dumps(pids, indent=2) + "\n")
    temporary.replace(folder / "processes.json")


def _stop_all(anvil: AnvilProcess, nodes: list[_Node]) -> None:
    """Every node, then anvil, by pid: SIGTERM, then SIGKILL after the grace period. Ctrl-C
    and SIGTERM are held off meanwhile, so that a second one cannot leave a process behind."""
    with _signals_held():
        for node in nodes:
            if node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + GRACE_SECONDS
        for node in nodes:
            try:
                node.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()
        anvil.stop()


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM to the simulator ends the run as Ctrl-C does, through the same clean-up."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _signals_held() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in held}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
