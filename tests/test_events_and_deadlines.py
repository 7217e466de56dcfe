"""Event cursors read only new blocks; the deadline helpers agree with the contract."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from swarmnode.exceptions import ContractError
from swarmnode.ledger.contract import EVENT_BLOCK_RANGE
from swarmnode.ledger.embedded import EmbeddedChain
from swarmnode.ledger.events import EventCursor, EventTimeout
from swarmnode.ledger.types import RoundStatus
from swarmnode.rules import SwarmParams
from tests.backends import Backend

PARAMS = SwarmParams(
    min_peers=2, max_peers=4, join_window=30, transfer_deadline=40, round_deadline=200
)


def h(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def test_deadline_helpers_match_what_the_contract_accepts(backend: Backend) -> None:
    owner = backend.deploy(PARAMS)
    # a fourth node trains on and never joins, so only the join window closes the round
    a, b, c, d = (backend.new_ledger() for _ in range(4))
    for i, node in enumerate((a, b, c, d)):
        node.register(f"127.0.0.1:{8000 + i}", f"cert-{i}:{node.account.lower()}".encode())
    params = owner.params()
    assert owner.round(1).close_allowed_at(params) is None  # nobody joined
    assert owner.round(1).expires_at(params) is None

    a.join(1, h("a"), 10, 1)
    assert owner.round(1).close_allowed_at(params) is None  # fewer than min_peers
    b.join(1, h("b"), 10, 1)
    c.join(1, h("c"), 10, 1)
    state = owner.round(1)
    close_at = state.close_allowed_at(params)
    assert close_at == state.first_join_at + PARAMS.join_window
    assert owner.now() < close_at
    with pytest.raises(ContractError, match="TooEarly"):
        owner.close(1)
    backend.advance_to(close_at)
    owner.close(1)

    state = owner.round(1)
    assert state.status == RoundStatus.CLOSED
    drop_at = state.drop_allowed_at(params)
    assert drop_at == state.attempt_start + PARAMS.transfer_deadline
    assert state.report_overdue_at(params) == state.attempt_start + 2 * PARAMS.transfer_deadline
    expire_at = state.expires_at(params)
    assert expire_at == state.closed_at + PARAMS.round_deadline
    assert a.now() < drop_at
    with pytest.raises(ContractError, match="TooEarly"):
        a.drop(1, 1, b.account)
    backend.advance_to(drop_at)
    a.drop(1, 1, c.account)  # accepted now; one vote of two others does not drop
    assert owner.drop_votes(1, 1, c.account) == 1
    with pytest.raises(ContractError, match="TooEarly"):
        a.expire(1)
    backend.advance_to(expire_at)
    a.expire(1)
    assert owner.round(1).status == RoundStatus.FAILED
    assert owner.round(1).expires_at(params) is None


def test_cursor_hands_out_each_event_once_and_waits_for_one(backend: Backend) -> None:
    owner = backend.deploy(PARAMS)
    a, b = backend.new_ledger(), backend.new_ledger()
    cursor = EventCursor(owner)
    assert [e.name for e in cursor.poll()] == ["RoundOpened"]
    assert cursor.poll() == []
    a.register("127.0.0.1:1", f"cert-a:{a.account.lower()}".encode())
    b.register("127.0.0.1:2", f"cert-b:{b.account.lower()}".encode())

    # wait_for returns the matching event and keeps the later ones for the next poll
    first = cursor.wait_for(lambda e: e.name == "Registered", timeout=0)
    assert first.args["node"] == a.account
    rest = cursor.poll()
    assert [(e.name, e.args["node"]) for e in rest] == [("Registered", b.account)]

    # the event arrives while the cursor waits: the injected sleep is where it happens
    def the_chain_moves_on(_: float) -> None:
        a.join(1, h("a"), 10, 1)

    joined = cursor.wait_for(lambda e: e.name == "Joined", timeout=10, sleep=the_chain_moves_on)
    assert joined.args["node"] == a.account

    ticks = iter(range(100))
    with pytest.raises(EventTimeout):
        cursor.wait_for(
            lambda e: e.name == "RoundClosed",
            timeout=3,
            sleep=lambda _: None,
            clock=lambda: float(next(ticks)),
        )


@pytest.mark.chain
@pytest.mark.slow
def test_polling_reads_only_new_blocks_in_bounded_ranges() -> None:
    chain = EmbeddedChain()
    deployment, owner_account = chain.deploy(PARAMS)
    owner = chain.ledger(deployment, owner_account)
    cursor = EventCursor(owner, use_filters=False)
    cursor.poll()
    ranges: list[tuple[int, int]] = []
    real_get_logs = chain.w3.eth.get_logs

    def recording_get_logs(filter_params: Any) -> Any:
        ranges.append((int(filter_params["fromBlock"]), int(filter_params["toBlock"])))
        return real_get_logs(filter_params)

    chain.w3.eth.get_logs = recording_get_logs  # type: ignore[method-assign]
    seen = cursor.position
    for _ in range(EVENT_BLOCK_RANGE + 20):  # empty blocks: a long idle spell
        chain.w3.provider.ethereum_tester.mine_blocks()  # type: ignore[attr-defined]
    node = chain.ledger(deployment, chain.new_account())
    node.register("127.0.0.1:1", f"cert:{node.account.lower()}".encode())
    events = cursor.poll()
    assert [e.name for e in events] == ["Registered"]
    assert ranges[0][0] == seen  # starts where the last poll ended, not at the deployment
    assert all(hi - lo < EVENT_BLOCK_RANGE for lo, hi in ranges)
    assert all(ranges[i + 1][0] == ranges[i][1] + 1 for i in range(len(ranges) - 1))
    ranges.clear()
    assert cursor.poll() == []
    assert ranges == []  # nothing mined since: nothing read


@pytest.mark.chain
def test_a_forgotten_filter_falls_back_to_logs_and_loses_nothing() -> None:
    chain = EmbeddedChain()
    deployment, owner_account = chain.deploy(PARAMS)
    owner = chain.ledger(deployment, owner_account)
    cursor = EventCursor(owner)
    assert [e.name for e in cursor.poll()] == ["RoundOpened"]
    nodes = [chain.ledger(deployment, chain.new_account()) for _ in range(3)]
    nodes[0].register("127.0.0.1:1", f"cert-0:{nodes[0].account.lower()}".encode())
    assert [e.args["node"] for e in cursor.poll()] == [nodes[0].account]  # through the filter

    # The chain forgets the filter (as a restarted node does); two events land meanwhile.
    assert cursor._filter_id is not None
    chain.w3.eth.uninstall_filter(cursor._filter_id)
    nodes[1].register("127.0.0.1:2", f"cert-1:{nodes[1].account.lower()}".encode())
    nodes[2].register("127.0.0.1:3", f"cert-2:{nodes[2].account.lower()}".encode())
    events = cursor.poll()
    assert [e.args["node"] for e in events] == [nodes[1].account, nodes[2].account]
    assert cursor.filter_fallbacks == 1
    nodes[0].join(1, h("a"), 10, 1)
    assert [e.name for e in cursor.poll()] == ["Joined"]  # a new filter, no repeats
    assert cursor.poll() == []
