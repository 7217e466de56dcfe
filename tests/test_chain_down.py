"""The chain's JSON-RPC endpoint goes away under two `swarmnode run` daemons: they train on,
try again with backoff, say so in one line at the start and one at the end, and take part
in the next final round once anvil is back on the same port with the same state.

One daemon runs on a pseudo-terminal, so its progress bar is what shows it training while
the chain is down; the other writes to a file, which must stay free of bars."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from swarmnode import canonical
from swarmnode.identity import NodeIdentity
from swarmnode.ledger.anvil import DEV_KEY, AnvilProcess
from swarmnode.ledger.deployment import Deployment
from swarmnode.ledger.events import EventCursor
from swarmnode.ledger.rpc import RpcChain
from swarmnode.ledger.types import RoundStatus
from swarmnode.records import round_records
from swarmnode.rules import Rule, SwarmParams, SyncPolicyId
from swarmnode.training import LocalTrainer, example_task

pytestmark = [pytest.mark.chain, pytest.mark.slow]

INTERVAL = 40  # batches between syncs
ESCAPE = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Polls what other processes write (their logs, a terminal); bounded."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def events(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def finals(log: Path) -> dict[int, str]:
    return {r.round: r.digest for r in round_records(events(log)) if r.status == "final"}


class Terminal:
    """A pseudo-terminal a child writes to, read in the background into one buffer."""

    def __init__(self) -> None:
        self.leader, self.follower = os.openpty()
        self._data = bytearray()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.leader, 65536)
            except OSError:  # EIO: the last writer closed its end
                return
            if not chunk:
                return
            with self._lock:
                self._data += chunk

    def text(self) -> str:
        with self._lock:
            return ESCAPE.sub(b"", bytes(self._data)).decode(errors="replace")

    def close(self) -> None:
        os.close(self.follower)
        self._reader.join(10)
        os.close(self.leader)


@pytest.fixture
def processes() -> Iterator[list[AnvilProcess | subprocess.Popen[bytes]]]:
    """Every anvil and daemon a test starts, stopped by pid at the end whatever happened."""
    started: list[AnvilProcess | subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for process in reversed(started):
            if isinstance(process, AnvilProcess):
                process.kill()
            elif process.poll() is None:
                process.kill()
                process.wait()


def test_daemons_train_through_a_chain_outage_and_rejoin(
    tmp_path: Path, processes: list[AnvilProcess | subprocess.Popen[bytes]]
) -> None:
    state = tmp_path / "anvil-state.json"
    first = AnvilProcess(state=state)
    processes.append(first)
    url = first.start()
    chain = RpcChain(url)
    dev = Account.from_key(DEV_KEY)
    initial = LocalTrainer(example_task(), "cpu", 0, init_seed=0).snapshot()
    params = SwarmParams(
        min_peers=2,
        max_peers=2,
        join_window=30,
        transfer_deadline=60,
        round_deadline=300,
        sync_policy=Rule(SyncPolicyId.EVERY_N_BATCHES, (INTERVAL, 0, 0, 0)),
        initial_model_digest=canonical.digest(initial),
    )
    deployment = chain.deploy(params, dev)
    deployment.save(tmp_path / "deployment.json")
    for name in ("a", "b"):
        identity = NodeIdentity.create(tmp_path / name, "", kdf="pbkdf2", iterations=2)
        chain.fund(dev, identity.address, 10**18)
        (tmp_path / f"{name}.toml").write_text(
            "[node]\n"
            f'identity_dir = "{name}"\n'
            'deployment = "deployment.json"\n'
            'task = "swarmnode.training:example_task"\n'
            'device = "cpu"\n'
        )
    logs = [tmp_path / name / "node.jsonl" for name in ("a", "b")]
    # one torch thread each: two daemons share two cores (with pytest -n 2, beside a worker)
    env = {"PATH": os.environ["PATH"], "SWARMNODE_KEY_PASSPHRASE": "", "OMP_NUM_THREADS": "1"}

    def run(name: str, out: int) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [sys.executable, "-m", "swarmnode", "run", "--config", str(tmp_path / f"{name}.toml")],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env={**env, "TERM": "xterm", "COLUMNS": "120"},
        )
        processes.append(process)
        return process

    terminal = Terminal()
    plain = open(tmp_path / "b.out", "wb")  # noqa: SIM115 - closed below, after the daemon
    try:
        daemons = [run("a", terminal.follower), run("b", plain.fileno())]

        def plain_text() -> str:
            return (tmp_path / "b.out").read_text(errors="replace")

        def alive() -> None:
            outputs = [terminal.text(), (tmp_path / "b.out").read_text(errors="replace")]
            for daemon, output in zip(daemons, outputs, strict=True):
                assert daemon.poll() is None, f"exit {daemon.returncode}:\n{output[-4000:]}"

        def both(condition: Callable[[Path], bool]) -> Callable[[], bool]:
            def check() -> bool:
                alive()
                return all(condition(log) for log in logs)

            return check

        wait_until(both(lambda log: len(finals(log)) >= 1), 180, "a final round")
        assert first.stop() is not None  # SIGTERM: anvil writes its state and exits
        before = max(max(finals(log)) for log in logs)

        def logged(event: str) -> Callable[[Path], bool]:
            return lambda log: any(e.get("event") == event for e in events(log))

        wait_until(both(logged("chain_down")), 120, "both daemons to see the chain go")

        def batches_while_down() -> int:
            counts = re.findall(r"chain down, training on\D*?(\d+) batches", terminal.text())
            return int(counts[-1]) if counts else 0

        # what a person at the terminal sees: the node training on, past its sync point
        wait_until(lambda: batches_while_down() >= 3 * INTERVAL, 120, "training while down")

        second = AnvilProcess(port=first.port, state=state)
        processes.append(second)
        second.start()

        def final_after_outage(log: Path) -> bool:
            up = [i for i, e in enumerate(events(log)) if e.get("event") == "chain_up"]
            return bool(up) and any(
                r.status == "final" and r.round > before
                for r in round_records(events(log)[up[0] :])
            )

        wait_until(both(final_after_outage), 180, "a final round after the outage")
        for daemon in daemons:
            daemon.send_signal(signal.SIGTERM)
        for daemon, output in zip(daemons, (terminal.text, plain_text), strict=True):
            assert daemon.wait(120) == 0, output()[-4000:]
    finally:
        terminal.close()
        plain.close()

    reader = RpcChain(url).ledger(Deployment.load(tmp_path / "deployment.json"), Account.create())
    shared = set(finals(logs[0])) & set(finals(logs[1]))
    after = [number for number in shared if number > before]
    assert after, "no round after the outage that both daemons finished"
    for number in after:
        assert finals(logs[0])[number] == finals(logs[1])[number]
        assert reader.round(number).status == RoundStatus.FINAL
        assert reader.round(number).final_digest == bytes.fromhex(finals(logs[0])[number])

    for log in logs:
        entries = events(log)
        kinds = [e.get("event") for e in entries]
        assert kinds.count("chain_down") == 1 and kinds.count("chain_up") == 1, kinds
        down, up = kinds.index("chain_down"), kinds.index("chain_up")
        assert down < up
        ended = entries[up]
        assert ended["batches"] >= 1 and ended["tries"] >= 1 and ended["seconds"] > 0
        # the outage is its two lines, not a line per try
        loud = [e for e in entries[down + 1 : up] if e["level"] in ("warning", "error")]
        assert not loud, loud
    on_terminal = [e for e in events(logs[0]) if e.get("event") == "chain_up"]
    assert on_terminal[0]["batches"] >= 3 * INTERVAL

    text = terminal.text()
    assert "chain down, training on" in text and re.search(r"round \d+ final", text)
    plain_output = (tmp_path / "b.out").read_bytes()
    assert b"is unreachable: training goes on" in plain_output
    assert b"answers again after" in plain_output
    assert b"\x1b[" not in plain_output  # a file gets log lines, never a bar


def test_an_event_cursor_outlives_a_restart_of_a_quiet_chain(
    tmp_path: Path, processes: list[AnvilProcess | subprocess.Popen[bytes]]
) -> None:
    """Nothing is mined between the restart and the next poll: the cursor's next block is
    beyond the chain's head, where anvil refuses to open a filter."""
    state = tmp_path / "anvil-state.json"
    first = AnvilProcess(state=state)
    processes.append(first)
    chain = RpcChain(first.start())
    dev = Account.from_key(DEV_KEY)
    deployment = chain.deploy(SwarmParams(min_peers=2, max_peers=2), dev)
    node = Account.create()
    chain.fund(dev, node.address, 10**18)
    ledger = chain.ledger(deployment, node)
    cursor = EventCursor(ledger)
    assert [e.name for e in cursor.poll()] == ["RoundOpened"]
    assert first.stop() is not None
    second = AnvilProcess(port=first.port, state=state)
    processes.append(second)
    second.start()
    assert cursor.poll() == []  # the filter died with the first anvil: reopened at the head
    assert cursor.filter_fallbacks == 1
    ledger.register("127.0.0.1:9400", f"certificate:{ledger.account.lower()}".encode())
    assert [e.name for e in cursor.poll()] == ["Registered"]
