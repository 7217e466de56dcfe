"""The chain goes away and comes back: every logical call lands exactly once.

Two ways anvil restarts (docs/chain.md#three-chains): SIGTERM writes its state file, so the
chain comes back whole but forgets its log filters; SIGKILL under --state-interval 1 comes
back with the state of its last periodic write, without the transactions after it, even
those whose receipts the client already had.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from swarmnode.ledger.anvil import DEV_KEY, AnvilProcess
from swarmnode.ledger.contract import ContractLedger
from swarmnode.ledger.deployment import Deployment
from swarmnode.ledger.events import EventCursor
from swarmnode.ledger.rpc import RpcChain
from swarmnode.ledger.transactions import Backoff
from swarmnode.ledger.types import RoundStatus
from swarmnode.rules import SwarmParams

pytestmark = [pytest.mark.chain, pytest.mark.slow]

PARAMS = SwarmParams(min_peers=2, max_peers=2, join_window=30, transfer_deadline=60)


def h(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Polls an outside process's observable state (a file anvil writes); bounded."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class Swarm:
    """Two funded nodes on a fresh contract, each counting the logical calls it makes."""

    def __init__(self, url: str, restart: Callable[[float], None] | None = None) -> None:
        self.rpc = RpcChain(url)
        dev = Account.from_key(DEV_KEY)
        self.deployment: Deployment = self.rpc.deploy(PARAMS, dev)
        self.accounts: list[LocalAccount] = [Account.create(), Account.create()]
        for account in self.accounts:
            self.rpc.fund(dev, account.address, 10**18)
        unavailable = Backoff(first_delay=0.1, attempts=6, sleep=restart or time.sleep)
        self.ledgers: list[ContractLedger] = [
            self.rpc.ledger(self.deployment, account, unavailable=unavailable)
            for account in self.accounts
        ]
        self.calls = [0, 0]

    def do(self, i: int, call: Callable[[ContractLedger], None]) -> None:
        call(self.ledgers[i])
        self.calls[i] += 1

    def play_round(self, number: int) -> None:
        for i in (0, 1):
            self.do(i, lambda led: led.join(number, h(f"{number}-{led.account}"), 10, 1))
        for i in (0, 1):
            self.do(i, lambda led: led.report(number, 1, h(f"merged-{number}")))

    def nonce(self, i: int) -> int:
        return int(self.rpc.w3.eth.get_transaction_count(self.accounts[i].address))


@pytest.fixture
def anvils() -> Iterator[list[AnvilProcess]]:
    """Every anvil a test starts, stopped at the end whatever happened."""
    started: list[AnvilProcess] = []
    try:
        yield started
    finally:
        for anvil in started:
            anvil.kill()


def test_sigterm_restart_on_the_same_port_loses_nothing(
    tmp_path: Path, anvils: list[AnvilProcess]
) -> None:
    state = tmp_path / "state.json"
    first = AnvilProcess(state=state)
    anvils.append(first)
    url = first.start()

    def restart_once(delay: float) -> None:  # the client's backoff is where anvil comes back
        if len(anvils) == 1:
            second = AnvilProcess(port=first.port, state=state)
            anvils.append(second)
            second.start()

    swarm = Swarm(url, restart=restart_once)
    cursor = EventCursor(swarm.ledgers[0])
    cursor.poll()
    for i in (0, 1):
        swarm.do(
            i,
            lambda led, i=i: led.register(
                f"127.0.0.1:{9100 + i}", f"cert-{i}:{led.account.lower()}".encode()
            ),
        )
    swarm.play_round(1)
    assert [e.name for e in cursor.poll()][-3:] == ["Reported", "RoundFinalized", "RoundOpened"]

    assert first.stop() is not None  # SIGTERM: anvil writes its state file
    assert state.exists()
    swarm.play_round(2)  # the first call meets a dead port, retries, and anvil is back

    assert len(anvils) == 2
    assert swarm.ledgers[0].sender.stats.unavailable_retries >= 1
    ledger = swarm.ledgers[1]
    assert ledger.current_round() == 3
    assert ledger.round(1).status == RoundStatus.FINAL
    assert ledger.round(2).status == RoundStatus.FINAL
    assert ledger.round(2).participants == tuple(a.address for a in swarm.accounts)
    assert [swarm.nonce(i) for i in (0, 1)] == swarm.calls
    events = cursor.poll()  # the filter died with the first anvil: fall back, then go on
    assert cursor.filter_fallbacks == 1
    assert [e.name for e in events] == [
        "Joined",
        "Joined",
        "RoundClosed",
        "AttemptStarted",
        "Reported",
        "Reported",
        "RoundFinalized",
        "RoundOpened",
    ]
    assert all(e.args["round"] in (2, 3) for e in events)


def test_sigkill_loses_blocks_and_the_client_resends_the_same_transactions(
    tmp_path: Path, anvils: list[AnvilProcess]
) -> None:
    # The kill must land before anvil's next periodic write, a race the test retries; a loaded
    # machine can take longer than a second for the two calls, so each try doubles the window
    for interval in (1, 2, 4, 8):
        state = tmp_path / f"state-{len(anvils)}.json"
        first = AnvilProcess(state=state, state_interval=interval)
        anvils.append(first)
        url = first.start()
        swarm = Swarm(url)
        for i in (0, 1):
            swarm.do(
                i,
                lambda led, i=i: led.register(
                    f"127.0.0.1:{9200 + i}", f"cert-{i}:{led.account.lower()}".encode()
                ),
            )
        swarm.play_round(1)
        wait_until(state.exists, 10 + 2 * interval, "anvil's first state write")
        written = state.stat().st_mtime_ns
        wait_until(
            lambda s=state, w=written: s.stat().st_mtime_ns != w, 10 + 2 * interval, "a state write"
        )

        # Right after a write: these calls get receipts, then the chain dies without them.
        swarm.do(0, lambda led: led.update_endpoint("127.0.0.1:9300"))
        swarm.do(0, lambda led: led.join(2, h("2-a"), 10, 1))
        first.kill()
        second = AnvilProcess(port=first.port, state=state)
        anvils.append(second)
        second.start()
        if swarm.nonce(0) < swarm.calls[0]:
            break
        second.kill()
    else:
        pytest.fail("anvil wrote its state before every kill: could not lose a block")

    lost = swarm.calls[0] - swarm.nonce(0)
    swarm.do(0, lambda led: led.update_endpoint("127.0.0.1:9301"))  # re-sends what was lost
    assert swarm.ledgers[0].sender.stats.restored == lost
    swarm.do(1, lambda led: led.join(2, h("2-b"), 10, 1))
    for i in (0, 1):
        swarm.do(i, lambda led: led.report(2, 1, h("merged-2")))

    ledger = swarm.ledgers[1]
    assert ledger.round(2).status == RoundStatus.FINAL
    assert ledger.round(2).participants == tuple(a.address for a in swarm.accounts)
    assert ledger.current_round() == 3
    node = ledger.node(swarm.accounts[0].address)
    assert node is not None and node.endpoint == "127.0.0.1:9301"
    assert [swarm.nonce(i) for i in (0, 1)] == swarm.calls
