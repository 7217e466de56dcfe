"""A round's waits wake on a change of the embedded chain instead of polling it
(docs/chain.md#waiting-for-blocks): no change is missed, whatever the threads' timing, and
on the embedded chain a change is read once for every node."""

from __future__ import annotations

import threading

import pytest

from swarmnode.ledger.base import ChainChanges
from swarmnode.ledger.contract import ContractLedger
from swarmnode.ledger.embedded import EmbeddedChain
from swarmnode.ledger.memory import InMemoryChain
from swarmnode.ledger.types import RoundState
from swarmnode.rules import SwarmParams


def test_a_change_between_the_read_and_the_wait_still_wakes_the_waiter() -> None:
    changes = ChainChanges()
    mark = changes.mark()
    changes.changed()  # lands after the waiter's read, before its wait
    assert changes.wait(mark, timeout=30)  # returns at once: nothing to be notified of
    assert not changes.wait(changes.mark(), timeout=0)  # no change since: the timeout


def test_a_waiting_thread_wakes_on_a_change_from_another_thread() -> None:
    changes = ChainChanges()
    marked = threading.Event()
    woke: list[bool] = []

    def waiter() -> None:
        mark = changes.mark()
        marked.set()
        woke.append(changes.wait(mark, timeout=30))

    thread = threading.Thread(target=waiter)
    thread.start()
    assert marked.wait(30), "the waiter never took its mark"
    changes.changed()  # before or after the waiter's wait begins: it wakes either way
    thread.join(30)
    assert woke == [True]


def test_the_in_memory_ledger_keeps_polling() -> None:
    """Its rounds are cheap to read; woken at once, honest nodes left a slower checker behind
    in tests/test_adversarial.py (docs/chain.md#waiting-for-blocks)."""
    chain = InMemoryChain()
    owner = chain.new_account()
    ledger = chain.ledger(chain.deploy(SwarmParams(min_peers=2, max_peers=2), owner), owner)
    assert ledger.head() is None


def test_embedded_handles_wake_on_each_others_transactions_and_share_their_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    chain = EmbeddedChain()
    deployment, _ = chain.deploy(SwarmParams(min_peers=2, max_peers=3))
    a, b = (chain.ledger(deployment, chain.new_account()) for _ in range(2))
    for i, ledger in enumerate((a, b)):
        ledger.register(f"127.0.0.1:{7400 + i}", f"cert-{i}:{ledger.account.lower()}".encode())
    mark = b.head()
    assert mark is not None
    a.join(1, b"\x01" * 32, 10, 1)
    assert b.wait_change(mark, timeout=0)  # a's join woke b
    assert b.round(1).joined == 1
    contract_reads: list[int] = []
    read = ContractLedger.round

    def counted(self: ContractLedger, number: int) -> RoundState:
        contract_reads.append(number)
        return read(self, number)

    monkeypatch.setattr(ContractLedger, "round", counted)
    assert a.round(1).joined == 1  # b read it since the last change: a takes that read
    assert contract_reads == []
    b.join(1, b"\x02" * 32, 10, 1)
    assert a.round(1).joined == 2  # a change: read again, and seen at once
    assert contract_reads == [1]
