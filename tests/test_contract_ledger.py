"""What only the chain-backed ledger does: threads, clock skew, status-0 receipts, gas."""

from __future__ import annotations

import hashlib
import threading

import pytest

from swarmnode.exceptions import ContractError
from swarmnode.ledger.contract import ContractLedger
from swarmnode.ledger.devchain import AnvilChain
from swarmnode.ledger.embedded import EmbeddedChain
from swarmnode.ledger.transactions import Backoff
from swarmnode.ledger.types import RoundStatus
from swarmnode.rules import SwarmParams

pytestmark = pytest.mark.chain


def digest(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def test_eight_nodes_sending_at_once_all_land() -> None:
    chain = EmbeddedChain()
    deployment, _ = chain.deploy(SwarmParams(min_peers=2, max_peers=8))
    ledgers = [chain.ledger(deployment, chain.new_account()) for _ in range(8)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(ledgers))

    def enrol_and_join(i: int, ledger: ContractLedger) -> None:
        try:
            start.wait()
            ledger.register(f"127.0.0.1:{6000 + i}", f"cert-{i}:{ledger.account.lower()}".encode())
            ledger.join(1, digest(f"update-{i}"), 10 + i, 1000)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [
        threading.Thread(target=enrol_and_join, args=(i, led)) for i, led in enumerate(ledgers)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    state = ledgers[0].round(1)
    # the eighth join closed the round: everyone is in, in the order the chain saw them
    assert state.status == RoundStatus.CLOSED
    assert sorted(state.participants) == sorted(led.account for led in ledgers)
    for ledger in ledgers:
        assert chain.w3.eth.get_transaction_count(ledger.account) == 2


def test_too_early_by_the_chain_but_not_by_the_node_is_retried_until_it_lands() -> None:
    chain = EmbeddedChain()
    params = SwarmParams(min_peers=2, max_peers=4, join_window=30)
    deployment, _ = chain.deploy(params)
    # a third node trains on and never joins: only the join window closes the round
    a, b, c = (chain.ledger(deployment, chain.new_account()) for _ in range(3))
    for i, ledger in enumerate((a, b, c)):
        ledger.register(f"127.0.0.1:{7000 + i}", f"cert-{i}:{ledger.account.lower()}".encode())
    for i, ledger in enumerate((a, b)):
        ledger.join(1, digest(f"u{i}"), 10, 1)
    first_join = a.round(1).first_join_at
    waits: list[float] = []

    def chain_catches_up(seconds: float) -> None:
        waits.append(seconds)
        chain.advance(seconds)

    # This node's clock runs 40 s ahead of the chain: by its clock the window has passed.
    skewed = ContractLedger(
        chain.w3,
        deployment.address,
        chain.new_account(),
        deploy_block=deployment.block,
        clock=lambda: chain.now() + 40,
        lock=chain._lock,
        prepare=chain._restamp_pending_block,
        too_early=Backoff(first_delay=4, max_delay=8, sleep=chain_catches_up),
        fixed_gas=3_000_000,
    )
    assert skewed.now() >= first_join + params.join_window
    skewed.close(1)
    assert a.round(1).status == RoundStatus.CLOSED
    assert len(waits) >= 1


def test_too_early_by_the_nodes_own_clock_is_not_retried() -> None:
    chain = EmbeddedChain()
    deployment, _ = chain.deploy(SwarmParams(min_peers=2, max_peers=4, join_window=30))
    sleeps: list[float] = []
    ledgers = [
        chain.ledger(deployment, chain.new_account(), Backoff(sleep=sleeps.append))
        for _ in range(3)
    ]
    for i, ledger in enumerate(ledgers):
        ledger.register(f"127.0.0.1:{7100 + i}", f"cert-{i}:{ledger.account.lower()}".encode())
    for i, ledger in enumerate(ledgers[:2]):  # the third trains on: the round stays open
        ledger.join(1, digest(f"u{i}"), 10, 1)
    with pytest.raises(ContractError) as refused:
        ledgers[0].close(1)
    assert refused.value.name == "TooEarly"
    assert refused.value.too_early
    assert sleeps == []


def test_a_status_zero_receipt_is_named_by_replaying_the_call() -> None:
    chain = EmbeddedChain()
    deployment, owner = chain.deploy(SwarmParams())
    ledger = chain.ledger(deployment, owner)
    # Send a doomed transaction with a fixed gas limit and no preflight, as a busy node might.
    fn = ledger._contract.functions.close(1)
    tx = fn.build_transaction(
        {
            "from": owner.address,
            "nonce": chain.w3.eth.get_transaction_count(owner.address),
            "gas": 200_000,
        }
    )
    tx_hash = chain.w3.eth.send_raw_transaction(owner.sign_transaction(tx).raw_transaction)
    receipt = chain.w3.eth.wait_for_transaction_receipt(tx_hash)
    assert receipt["status"] == 0
    error = ledger._name_failure(fn, receipt)
    assert isinstance(error, ContractError)
    assert error.name == "TooFewJoined"


def test_a_report_that_failed_behind_the_finalizing_one_in_its_block_is_named(
    anvil_chain: AnvilChain,
) -> None:
    """Two reports mined in one block: the first finalizes the round, the second reverts.
    Replayed on the parent state the late one would pass; it must still be named, as a
    stale view (the round moved on), not as an unknown failure."""
    deployment, _ = anvil_chain.deploy(SwarmParams(min_peers=2, max_peers=3))
    ledgers = [anvil_chain.ledger(deployment, anvil_chain.new_account()) for _ in range(3)]
    for i, ledger in enumerate(ledgers):
        ledger.register(f"127.0.0.1:{7300 + i}", f"cert-{i}:{ledger.account.lower()}".encode())
    for i, ledger in enumerate(ledgers):
        ledger.join(1, digest(f"u{i}"), 10, 1)  # the third join closes the round
    ledgers[0].report(1, 1, digest("merged"))
    w3 = anvil_chain.rpc.w3
    w3.provider.make_request("evm_setAutomine", [False])  # type: ignore[arg-type]
    try:
        sent = []
        for ledger in ledgers[1:]:  # the finalizing report, then the late one
            fn = ledger._contract.functions.report(1, 1, digest("merged"))
            account = ledger._account
            tx = fn.build_transaction(
                {
                    "from": account.address,
                    "nonce": w3.eth.get_transaction_count(account.address),
                    "gas": 400_000,
                }
            )
            sent.append(
                (fn, w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction))
            )
        w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    finally:
        w3.provider.make_request("evm_setAutomine", [True])  # type: ignore[arg-type]
    receipts = [w3.eth.wait_for_transaction_receipt(tx_hash) for _, tx_hash in sent]
    assert receipts[0]["blockNumber"] == receipts[1]["blockNumber"]
    assert [r["status"] for r in receipts] == [1, 0]
    error = ledgers[2]._name_failure(sent[1][0], receipts[1])
    assert isinstance(error, ContractError)
    assert error.stale_view, error


def test_a_participant_that_does_not_finalize_pays_at_most_150k_gas_per_round() -> None:
    chain = EmbeddedChain()
    deployment, _ = chain.deploy(SwarmParams(min_peers=2, max_peers=8, join_window=10))
    ledgers = [chain.ledger(deployment, chain.new_account()) for _ in range(8)]
    for i, ledger in enumerate(ledgers):
        ledger.register(f"127.0.0.1:{7200 + i}", f"cert-{i}:{ledger.account.lower()}".encode())
    for rnd in (1, 2):  # the second round runs on warm storage, as in a long swarm
        for i, ledger in enumerate(ledgers[:6]):
            ledger.join(rnd, digest(f"u{rnd}-{i}"), 10, 1)
        chain.advance(10)
        ledgers[0].close(rnd)
        for ledger in ledgers[:6]:
            if ledger.round(rnd).status == RoundStatus.CLOSED:
                ledger.report(rnd, 1, digest(f"merged-{rnd}"))
        assert ledgers[0].round(rnd).status == RoundStatus.FINAL
    quorum = SwarmParams(min_peers=2, max_peers=8).quorum(6)
    # ledgers[0] closed, ledgers[quorum - 1] finalized; those between only joined and reported
    for ledger in ledgers[1 : quorum - 1]:
        calls = [(name, gas) for name, gas in ledger.gas_log if name != "register"]
        assert [name for name, _ in calls] == ["join", "report"] * 2
        for (_, join_gas), (_, report_gas) in zip(calls[::2], calls[1::2], strict=True):
            assert join_gas + report_gas <= 150_000, (join_gas, report_gas)


def test_polling_a_closed_round_reads_its_seed_block_once(monkeypatch: pytest.MonkeyPatch) -> None:
    chain = EmbeddedChain()
    deployment, _ = chain.deploy(SwarmParams(min_peers=2, max_peers=2))
    a, b = (chain.ledger(deployment, chain.new_account()) for _ in range(2))
    for i, ledger in enumerate((a, b)):
        ledger.register(f"127.0.0.1:{7300 + i}", f"cert-{i}:{ledger.account.lower()}".encode())
        ledger.join(1, digest(f"u{i}"), 10, 1)  # the second join closes the round
    real_get_block = chain.w3.eth.get_block
    read: list[object] = []

    def counted(block: object, *args: object, **kwargs: object) -> object:
        read.append(block)
        return real_get_block(block, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(chain.w3.eth, "get_block", counted)
    seeds = {a.round(1).seed for _ in range(5)}
    assert len(seeds) == 1 and len(seeds.pop()) == 32
    assert len(read) == 1, read  # the first read fetched the closing block; the rest hit the cache
    assert a.round(2).seed == b""  # the open round needs no block at all
    assert len(read) == 1
    b.round(1)  # another handle on the embedded chain takes the read made since the last change
    assert len(read) == 1
    chain.advance(1)  # a change: the round is read again, by a handle with its own seed cache
    b.round(1)
    assert len(read) == 2
