"""Any JSON-RPC chain: connect, deploy, fund, and hand out ledgers for a deployment.

The ledgers it hands out (RpcLedger) read and send through swarmnode.ledger.jsonrpc, not
web3: web3's layers cost about ten times the request itself in Python, and on anvil that
Python was most of a round (docs/chain.md#the-json-rpc-path). Deployment, funding and the
other cold paths keep web3.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import HTTPProvider, Web3
from web3._utils.method_formatters import log_entry_formatter, receipt_formatter
from web3.contract.contract import ContractFunction
from web3.datastructures import AttributeDict
from web3.types import TxParams

from swarmnode.exceptions import ChainUnavailable, ConfigError, LedgerError
from swarmnode.ledger.abi_codec import ViewAbi, call_data, contract_transaction
from swarmnode.ledger.contract import ContractLedger
from swarmnode.ledger.deploy import deploy_swarm
from swarmnode.ledger.deployment import Deployment
from swarmnode.ledger.jsonrpc import JsonRpc, RpcError
from swarmnode.ledger.transactions import Backoff
from swarmnode.rules import SwarmParams

ETHER = 10**18


def connect(url: str, timeout: float = 10.0) -> Web3:
    """A Web3 for `url` that fails fast and leaves retrying to swarmnode's own backoff."""
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{url}: an RPC URL starts with http:// or https://")
    provider = HTTPProvider(
        url, request_kwargs={"timeout": timeout}, exception_retry_configuration=None
    )
    return Web3(provider)


class RpcChain:
    """A chain behind a JSON-RPC URL."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url = url
        self.w3 = connect(url, timeout)
        self.rpc = JsonRpc(url, timeout=timeout)  # shared by every ledger handed out here
        try:
            self.chain_id = int(self.w3.eth.chain_id)
        except (ConnectionError, OSError, TimeoutError) as exc:
            raise ChainUnavailable(f"no chain answered at {url}") from exc
        except Exception as exc:  # an HTTP server that is not a chain
            raise ChainUnavailable(
                f"{url} did not answer as an Ethereum JSON-RPC node: {exc}"
            ) from exc

    def now(self) -> int:
        return int(time.time())

    def deploy(
        self, params: SwarmParams, deployer: LocalAccount, *, validate: bool = True
    ) -> Deployment:
        deployment = deploy_swarm(self.w3, deployer, params, validate=validate)
        return Deployment(
            deployment.chain_id, deployment.address, deployment.block, deployment.params, self.url
        )

    def check(self, deployment: Deployment) -> None:
        """Refuses a deployment that lives on another chain, or whose contract is not here."""
        if deployment.chain_id != self.chain_id:
            raise ConfigError(
                f"the deployment is on chain id {deployment.chain_id}, "
                f"but {self.url} serves chain id {self.chain_id}"
            )
        code = self.w3.eth.get_code(Web3.to_checksum_address(deployment.address))
        if not code:
            raise ConfigError(f"no contract at {deployment.address} on {self.url}")

    def ledger(
        self,
        deployment: Deployment,
        account: LocalAccount,
        *,
        clock: Callable[[], float] = time.time,
        too_early: Backoff | None = None,
        unavailable: Backoff | None = None,
    ) -> ContractLedger:
        return RpcLedger(
            self.rpc,
            self.w3,
            deployment.address,
            account,
            deploy_block=deployment.block,
            clock=clock,
            too_early=too_early,
            unavailable=unavailable,
        )

    def balance(self, address: str) -> int:
        return int(self.w3.eth.get_balance(Web3.to_checksum_address(address)))

    def fund(self, funder: LocalAccount, address: str, wei: int) -> None:
        """Sends `wei` from `funder`; waits for the receipt."""
        to = Web3.to_checksum_address(address)
        tx: dict[str, Any] = {
            "to": to,
            "value": wei,
            "gas": 21_000,
            "nonce": self.w3.eth.get_transaction_count(funder.address, "pending"),
            "chainId": self.chain_id,
            "maxFeePerGas": 2 * int(self.w3.eth.gas_price) + 1,
            "maxPriorityFeePerGas": 1,
        }
        signed = funder.sign_transaction(tx)
        try:
            tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
            receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60)
        except (ConnectionError, OSError, TimeoutError) as exc:
            raise ChainUnavailable(f"fund: no chain answered at {self.url}") from exc
        except ValueError as exc:
            raise LedgerError(f"fund {to}: {exc}") from exc
        if receipt["status"] != 1:
            raise LedgerError(f"fund {to}: transaction failed")


def _block_tag(block: str | int) -> str:
    return block if isinstance(block, str) else hex(block)


class RpcLedger(ContractLedger):
    """A ContractLedger whose hot path is plain JSON-RPC (swarmnode.ledger.jsonrpc): views,
    gas estimates, transactions, receipts, nonces, logs and blocks, each one request with
    no web3 in between, and answers formatted as web3 formats them
    (tests/test_jsonrpc.py compares the two ways). Errors keep their meaning: a revert
    carries its data (named by TransactionSender), no answer is a ConnectionError
    (ChainUnavailable, retried with backoff)."""

    def __init__(self, rpc: JsonRpc, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rpc = rpc
        sender = self.sender
        sender.view = self._call
        sender.preflight = self._call
        sender.estimate = self._estimate
        sender.build = self._build
        sender.submit = self._submit
        sender.pending_nonce = self._pending_nonce
        sender.receipt = self._receipt
        sender.known = self._known

    # -- the sender's way

    def _call(self, fn: ContractFunction, block: str | int) -> Any:
        """`fn` run from this account on `block` (tag or number), decoded as web3 does."""
        call = {"from": self.account, "to": self.address, "data": call_data(fn)}
        output: str = self._rpc.request("eth_call", [call, _block_tag(block)])
        return ViewAbi.of(fn).decode(bytes.fromhex(output.removeprefix("0x")))

    def _estimate(self, fn: ContractFunction, block: str) -> int:
        call = {"from": self.account, "to": self.address, "data": call_data(fn)}
        return int(self._rpc.request("eth_estimateGas", [call, block]), 16)

    def _build(self, fn: ContractFunction, fields: TxParams) -> TxParams:
        """`fn`'s transaction with the sender's fields (from, nonce, gas, chain id) as web3's
        build_transaction makes it: call data, no value, the node's suggested tip
        (eth_maxPriorityFeePerGas) and a fee cap of the tip plus twice the newest base fee,
        web3's default strategy (tests/test_jsonrpc.py checks the two are equal)."""
        try:
            tip = int(self._rpc.request("eth_maxPriorityFeePerGas"), 16)
        except RpcError:  # not every node has it: web3's own way, from the fee history
            tip = int(self._w3.eth.max_priority_fee)
        latest = self._rpc.request("eth_getBlockByNumber", ["latest", False])
        return contract_transaction(fn, self.address, fields, tip, int(latest["baseFeePerGas"], 16))

    def _submit(self, raw: bytes) -> None:
        self._rpc.request("eth_sendRawTransaction", ["0x" + raw.hex()])

    def _pending_nonce(self) -> int:
        return int(self._rpc.request("eth_getTransactionCount", [self.account, "pending"]), 16)

    def _receipt(self, tx_hash: bytes) -> Any:
        found = self._rpc.request("eth_getTransactionReceipt", ["0x" + tx_hash.hex()])
        return None if found is None else AttributeDict.recursive(receipt_formatter(found))

    def _known(self, tx_hash: bytes) -> bool:
        return self._rpc.request("eth_getTransactionByHash", ["0x" + tx_hash.hex()]) is not None

    # -- the ledger's reads of blocks and logs

    def _block_number(self) -> int:
        return int(self._rpc.request("eth_blockNumber"), 16)

    def _logs(self, start: int, end: int) -> list[Any]:
        query = {"address": self.address, "fromBlock": hex(start), "toBlock": hex(end)}
        return self._formatted_logs(self._rpc.request("eth_getLogs", [query]))

    def _new_filter(self, start: int) -> str:
        query = {"address": self.address, "fromBlock": hex(start)}
        return str(self._rpc.request("eth_newFilter", [query]))

    def _filter_logs(self, filter_id: str) -> list[Any]:
        return self._formatted_logs(self._rpc.request("eth_getFilterChanges", [filter_id]))

    def _block_at(self, height: int | None) -> tuple[int, bytes] | None:
        tag = "latest" if height is None else hex(height)
        block = self._rpc.request("eth_getBlockByNumber", [tag, False])
        if block is None:
            return None
        return int(block["number"], 16), bytes.fromhex(block["hash"].removeprefix("0x"))

    @staticmethod
    def _formatted_logs(logs: Any) -> list[Any]:
        if not isinstance(logs, list):
            raise LedgerError(f"the node sent logs that are not a list: {str(logs)[:120]!r}")
        return [AttributeDict.recursive(log_entry_formatter(log)) for log in logs]
