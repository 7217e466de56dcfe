"""An unavailable chain is a warning once per foreground call, and never in background work
(the roster follower, swarmnode/peer.py): an outage is reported once, by the daemon."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

import pytest
from eth_account import Account
from web3 import Web3

from swarmnode.exceptions import ChainUnavailable
from swarmnode.ledger.background import quiet_retries
from swarmnode.ledger.transactions import Backoff, TransactionSender


def flaky(fails: int) -> tuple[list[int], Callable[[], str]]:
    calls: list[int] = []

    def action() -> str:
        calls.append(1)
        if len(calls) <= fails:
            raise ChainUnavailable("no chain answered")
        return "answered"

    return calls, action


@pytest.fixture
def sender() -> TransactionSender:
    return TransactionSender(
        Web3(),
        Account.create(),
        lock=contextlib.nullcontext(),
        prepare=lambda: None,
        unavailable=Backoff(first_delay=0.001, max_delay=0.001, attempts=5),
    )


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_foreground_call_warns_once_at_its_first_retry(
    sender: TransactionSender, caplog: pytest.LogCaptureFixture
) -> None:
    calls, action = flaky(3)
    with caplog.at_level(logging.DEBUG, logger="swarmnode.ledger.transactions"):
        assert sender.retry_unavailable("read", action) == "answered"
    assert len(calls) == 4
    assert warnings(caplog) == ["read: chain unavailable, retrying with backoff"]


def test_background_reads_retry_quietly_and_only_in_their_own_thread(
    sender: TransactionSender, caplog: pytest.LogCaptureFixture
) -> None:
    calls, action = flaky(3)
    quiet_done = threading.Event()

    def background() -> None:
        with quiet_retries():
            sender.retry_unavailable("roster", action)
        quiet_done.set()

    with caplog.at_level(logging.DEBUG, logger="swarmnode.ledger.transactions"):
        worker = threading.Thread(target=background)
        worker.start()
        worker.join(10)
        assert quiet_done.is_set() and len(calls) == 4
        assert warnings(caplog) == []
        assert any("roster: chain unavailable" in r.getMessage() for r in caplog.records)
        # the quiet setting did not leak into this thread
        _, again = flaky(1)
        sender.retry_unavailable("read", again)
    assert warnings(caplog) == ["read: chain unavailable, retrying with backoff"]
