"""The JSON-RPC path (swarmnode.ledger.jsonrpc, RpcLedger) gives what web3's way gives.

RpcLedger reads and sends over plain JSON-RPC instead of web3 (docs/chain.md#the-json-rpc-path):
every view must come back equal to web3's, type for type; a revert must be named the same;
a transaction must be built as web3 builds it and its receipt read as web3 reads it; a chain
that is down must be ChainUnavailable; a URL that does not speak JSON-RPC a clear error.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

import pytest
from eth_abi.abi import encode as abi_encode
from eth_utils.abi import function_signature_to_4byte_selector
from web3 import Web3
from web3.types import FilterParams, TxParams

from swarmnode.error_names import ErrorName
from swarmnode.exceptions import ChainUnavailable, ContractError
from swarmnode.ledger.artifacts import load
from swarmnode.ledger.devchain import AnvilChain
from swarmnode.ledger.errors import contract_error_from, revert_data_from_exception
from swarmnode.ledger.jsonrpc import JsonRpc, NotJsonRpc, RpcError, RpcUnavailable
from swarmnode.ledger.rpc import RpcLedger
from swarmnode.ledger.transactions import Backoff
from swarmnode.rules import SwarmParams

pytestmark = pytest.mark.chain


def digest(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def _shape(value: Any) -> Any:
    """The value with every container's type spelled out, so that a tuple where web3 gives
    a list (or a lowercase address where it gives a checksummed one) is a difference."""
    if isinstance(value, list | tuple):
        return (type(value).__name__, [_shape(v) for v in value])
    if isinstance(value, dict):
        return (type(value).__name__, {k: _shape(v) for k, v in value.items()})
    return (type(value).__name__, value)


@pytest.fixture(scope="module")
def swarm(anvil_chain: AnvilChain) -> tuple[RpcLedger, list[RpcLedger]]:
    """A restricted swarm of three on the session's anvil; their joins closed round 1."""
    deployment, owner = anvil_chain.deploy(SwarmParams(min_peers=2, max_peers=3, restricted=True))
    admin = anvil_chain.ledger(deployment, owner)
    ledgers = [anvil_chain.ledger(deployment, anvil_chain.new_account()) for _ in range(3)]
    for i, ledger in enumerate(ledgers):
        admin.allow(ledger.account)
        ledger.register(f"127.0.0.1:{7000 + i}", f"cert-{i}:{ledger.account.lower()}".encode())
    for i, ledger in enumerate(ledgers):
        ledger.join(1, digest(f"u{i}"), 10 + i, 500 + i)
    assert isinstance(admin, RpcLedger)
    assert all(isinstance(led, RpcLedger) for led in ledgers)
    return admin, ledgers  # type: ignore[return-value]


def test_every_view_comes_back_as_web3_gives_it(
    swarm: tuple[RpcLedger, list[RpcLedger]], anvil_chain: AnvilChain
) -> None:
    admin, ledgers = swarm
    f = admin._contract.functions
    me = ledgers[0].account
    example = {"address": me, "bool": True}
    views = []
    for entry in load().abi:
        if entry["type"] == "function" and entry["stateMutability"] == "view":
            args = [example.get(i["type"], 1) for i in entry["inputs"]]
            views.append(f[entry["name"]](*args))
    views.append(f.getRound(99))  # a round that never was: zeros
    assert len(views) >= 26
    head = anvil_chain.rpc.w3.eth.block_number
    for fn in views:
        web3_way = fn.call({"from": admin.account})
        assert _shape(admin._view(fn)) == _shape(web3_way), fn.fn_name
        # the replay of a failed transaction reads on a block number
        old = fn.call({"from": admin.account}, block_identifier=head)
        assert _shape(admin._call(fn, head)) == _shape(old), fn.fn_name
    assert admin.round(1).participants == tuple(led.account for led in ledgers)
    assert admin.block_id() == (head, bytes(anvil_chain.rpc.w3.eth.get_block(head)["hash"]))
    assert admin.block_id(head + 1000) is None


def test_a_revert_is_named_the_same_both_ways(swarm: tuple[RpcLedger, list[RpcLedger]]) -> None:
    admin, _ = swarm
    late_join = admin._contract.functions.join(1, b"\x01" * 32, 1, 1)  # round 1 closed

    def named(action: Callable[[], object]) -> ErrorName:
        with pytest.raises(ContractError) as refused:
            action()
        return refused.value.name

    # as a view (eth_call), the JSON-RPC way and web3's
    assert named(lambda: admin._view(late_join)) == ErrorName.ROUND_NOT_OPEN
    assert admin.sender.view is not None
    lean_view, admin.sender.view = admin.sender.view, None
    try:
        assert named(lambda: admin._view(late_join)) == ErrorName.ROUND_NOT_OPEN
    finally:
        admin.sender.view = lean_view
    # as a transaction: refused at its gas estimate, nothing sent, either way
    nonce = admin._pending_nonce()
    sent = len(admin.gas_log)
    assert named(lambda: admin.join(1, b"\x01" * 32, 1, 1)) == ErrorName.ROUND_NOT_OPEN
    lean_estimate, admin.sender.estimate = admin.sender.estimate, None
    try:
        assert named(lambda: admin.join(1, b"\x01" * 32, 1, 1)) == ErrorName.ROUND_NOT_OPEN
    finally:
        admin.sender.estimate = lean_estimate
    assert admin._pending_nonce() == nonce
    assert len(admin.gas_log) == sent


def test_a_transaction_is_built_and_its_receipt_read_as_web3_does(
    swarm: tuple[RpcLedger, list[RpcLedger]], anvil_chain: AnvilChain
) -> None:
    admin, ledgers = swarm
    w3 = anvil_chain.rpc.w3
    fn = admin._contract.functions.report(1, 1, digest("merged"))
    fields = cast(
        TxParams,
        {
            "from": ledgers[0].account,
            "nonce": ledgers[0]._pending_nonce(),
            "gas": 400_000,
            "chainId": anvil_chain.rpc.chain_id,
        },
    )
    assert _shape(ledgers[0]._build(fn, fields)) == _shape(fn.build_transaction(fields))

    receipt = ledgers[0]._transact(ledgers[0]._contract.functions.report(1, 1, digest("merged")))
    web3_receipt = w3.eth.get_transaction_receipt(receipt["transactionHash"])
    assert _shape(dict(receipt)) == _shape(dict(web3_receipt))
    assert type(receipt) is type(web3_receipt)
    assert receipt["status"] == 1 and receipt["gasUsed"] == ledgers[0].gas_log[-1][1]
    assert receipt["blockNumber"] == admin._block_number()
    assert len(receipt["logs"]) >= 1
    # the logs of that block, read the JSON-RPC way and decoded, are what web3 reads
    block = receipt["blockNumber"]
    where = {"address": admin.address, "toBlock": block}
    logs = admin._logs(block, block)
    assert _shape([dict(log) for log in logs]) == _shape(
        [dict(log) for log in w3.eth.get_logs(cast(FilterParams, {"fromBlock": block, **where}))]
    )
    events, cursor = admin.events(block)
    assert cursor == block + 1
    assert [e.name for e in events] == [admin._decode(log).name for log in logs]
    assert "Reported" in [e.name for e in events]


def test_the_first_looks_for_a_receipt_come_soon_and_back_off(
    swarm: tuple[RpcLedger, list[RpcLedger]], anvil_chain: AnvilChain
) -> None:
    """With automine off, the receipt exists only once a block is mined: the sender looks
    again after 2, 4, 8 ms..., and this test mines the block in its third pause."""
    _, ledgers = swarm
    ledger = ledgers[1]
    provider = anvil_chain.rpc.w3.provider
    pauses: list[float] = []

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 3:
            provider.make_request("evm_mine", [])  # type: ignore[arg-type]

    ledger.sender.receipt_sleep = pause
    provider.make_request("evm_setAutomine", [False])  # type: ignore[arg-type]
    try:
        ledger.report(1, 1, digest("merged"))
    finally:
        provider.make_request("evm_setAutomine", [True])  # type: ignore[arg-type]
    assert pauses == pytest.approx([0.002, 0.004, 0.008])
    assert ledger.gas_log[-1][0] == "report"


def test_nodes_of_one_process_send_at_once_through_one_client(
    anvil_chain: AnvilChain,
) -> None:
    deployment, _ = anvil_chain.deploy(SwarmParams(min_peers=2, max_peers=6))
    ledgers = [anvil_chain.ledger(deployment, anvil_chain.new_account()) for _ in range(6)]
    errors: list[BaseException] = []
    start, registered = threading.Barrier(len(ledgers)), threading.Barrier(len(ledgers))

    def enrol_and_join(i: int) -> None:
        try:
            start.wait()
            led = ledgers[i]
            led.register(f"127.0.0.1:{7600 + i}", f"cert-{i}:{led.account.lower()}".encode())
            # all registered before any joins: a round closes once every active node joined
            registered.wait()
            led.join(1, digest(f"j{i}"), 10, 1)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)
            registered.abort()  # the others stop waiting for this one

    threads = [threading.Thread(target=enrol_and_join, args=(i,)) for i in range(len(ledgers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert sorted(ledgers[0].round(1).participants) == sorted(led.account for led in ledgers)


def test_a_chain_that_is_down_is_unavailable_and_retried(own_anvil: AnvilChain) -> None:
    deployment, owner = own_anvil.deploy(SwarmParams())
    waits: list[float] = []
    ledger = own_anvil.rpc.ledger(
        deployment, owner, unavailable=Backoff(attempts=3, sleep=waits.append)
    )
    assert ledger.current_round() == 1
    own_anvil.stop()
    with pytest.raises(ChainUnavailable, match="no chain answered"):
        ledger.current_round()
    assert len(waits) == 2  # three tries
    with pytest.raises(ChainUnavailable):
        ledger.close(1)
    with pytest.raises(RpcUnavailable) as refused:
        JsonRpc(own_anvil.url, timeout=2).request("eth_blockNumber")
    assert isinstance(refused.value, ConnectionError)
    assert own_anvil.url in str(refused.value)


class _Canned(BaseHTTPRequestHandler):
    """Answers every POST with the server's canned status and body."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        status, body = self.server.canned  # type: ignore[attr-defined]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:  # quiet test output
        pass


@pytest.fixture
def canned() -> Iterator[ThreadingHTTPServer]:
    """An HTTP server on 127.0.0.1, port 0, answering what a test sets in `.canned`."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Canned)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_a_server_that_is_not_json_rpc_is_named(canned: ThreadingHTTPServer) -> None:
    url = f"http://127.0.0.1:{canned.server_address[1]}/rpc"
    client = JsonRpc(url)
    canned.canned = (200, b"<html>a web page</html>")  # type: ignore[attr-defined]
    with pytest.raises(NotJsonRpc, match="did not answer as a JSON-RPC node") as wrong:
        client.request("eth_blockNumber")
    assert url in str(wrong.value) and "a web page" in str(wrong.value)
    canned.canned = (200, b'{"jsonrpc":"2.0","id":1}')  # type: ignore[attr-defined]
    with pytest.raises(NotJsonRpc, match=url):
        client.request("eth_blockNumber")
    # a gateway whose node is down: unavailable, retried like a refused connection
    canned.canned = (503, b"<html>upstream down</html>")  # type: ignore[attr-defined]
    with pytest.raises(RpcUnavailable, match="HTTP 503"):
        client.request("eth_blockNumber")


def test_an_error_reply_carries_code_message_and_revert_data(
    canned: ThreadingHTTPServer,
) -> None:
    account = "0x" + "ab" * 20
    selector = function_signature_to_4byte_selector("AlreadyRegistered(address)")
    data = "0x" + (bytes(selector) + abi_encode(["address"], [account])).hex()
    error = {"code": 3, "message": "execution reverted", "data": data}
    canned.canned = (  # type: ignore[attr-defined]
        200,
        json.dumps({"jsonrpc": "2.0", "id": 1, "error": error}).encode(),
    )
    with pytest.raises(RpcError) as failed:
        JsonRpc(f"http://127.0.0.1:{canned.server_address[1]}").request("eth_call", [{}])
    assert (failed.value.code, failed.value.message, failed.value.data) == (
        3,
        "execution reverted",
        data,
    )
    assert revert_data_from_exception(failed.value) == bytes.fromhex(data[2:])
    named = contract_error_from(failed.value, "register")
    assert named is not None and named.name == ErrorName.ALREADY_REGISTERED
    assert named.details == {"account": Web3.to_checksum_address(account)}


def test_a_url_that_is_not_http_is_refused() -> None:
    from swarmnode.exceptions import ConfigError

    with pytest.raises(ConfigError, match=r"ws://127\.0\.0\.1:1"):
        JsonRpc("ws://127.0.0.1:1")
