"""An EVM chain inside this process: eth-tester over py-evm, running the real contract.

eth-tester is not thread-safe, so every node in the process reaches it through one lock.
It also stamps a block with the time its *previous* block was mined, so a deadline call
after an idle spell would run in the past; before every transaction we restamp the
pending block with this chain's clock (wall time plus whatever tests advanced it by).

Every block a handle mines, and every move of the clock, wakes the rounds waiting on this
chain (`ChainChanges`), so they read the chain when it changed instead of every poll
(docs/chain.md#waiting-for-blocks).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, cast

from eth.abc import BlockHeaderAPI
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_tester import EthereumTester, PyEVMBackend
from web3 import EthereumTesterProvider, Web3
from web3.contract.contract import ContractFunction
from web3.types import TxParams

from swarmnode.ledger.abi_codec import ViewAbi, call_data, contract_transaction
from swarmnode.ledger.contract import ContractLedger
from swarmnode.ledger.deploy import deploy_swarm
from swarmnode.ledger.deployment import Deployment
from swarmnode.ledger.shared import SharedChain, SharedLedger
from swarmnode.ledger.transactions import Backoff
from swarmnode.rules import SwarmParams

EMBEDDED_GAS_LIMIT = 3_000_000  # above any single call; unused gas is refunded
FUNDING_WEI = 10**20  # 100 ether: thousands of rounds of gas on the embedded chain


class _Tester(EthereumTester):  # type: ignore[misc]  # eth-tester ships no type hints
    """eth-tester, with a block's logs read once for all log filters instead of once per
    filter: eth-tester fetches every transaction's receipt again for each filter, and each
    node's roster feed keeps one (swarmnode.ledger.events), so with eight nodes every block
    cost eight receipts more (about 4 ms a transaction). The filters get the same entries in
    the same order."""

    def _process_block_logs(self, block: Any) -> None:
        if not self._log_filters:
            return
        logs = [
            entry
            for transaction in block["transactions"]
            for entry in self.get_transaction_receipt(transaction)["logs"]
        ]
        for log_filter in self._log_filters.values():
            for entry in logs:
                log_filter.add(self.normalizer.normalize_inbound_log_entry(entry))


class _ChainLock:
    """The embedded chain's lock (reentrant, as eth-tester is reached through it at several
    depths), which notes the newest block's time each time its holder lets go of it: a block
    is only ever mined under this lock, so between two holders that time is the chain's.
    `EmbeddedChain.now` reads it instead of waiting for the lock."""

    def __init__(self, head_time: Callable[[], int]) -> None:
        self._lock = threading.RLock()
        self._head_time = head_time
        self._depth = 0  # how deep the holder is; only the holder reads or writes it
        self.head_time = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if not self._lock.acquire(blocking, timeout):
            return False
        self._depth += 1
        return True

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.head_time = self._head_time()
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class EmbeddedChain:
    """A private chain for one process: deploy swarms and hand out funded accounts."""

    def __init__(self) -> None:
        self._backend = PyEVMBackend()
        self.tester = _Tester(self._backend)
        self.w3 = Web3(EthereumTesterProvider(self.tester))
        self._lock = _ChainLock(self._head_time)
        self._offset = 0.0
        self._clock = threading.Lock()  # guards _offset, which now() moves without _lock
        # every transaction on this chain is sent by a handle in this process, so the
        # handles' change count and their shared view reads see all of them (EmbeddedLedger)
        self.shared = SharedChain(self._lock)
        self.changes = self.shared.changes
        key = self._backend.account_keys[0].to_bytes()
        self._faucet: LocalAccount = Account.from_key(key)

    # -- time
    def now(self) -> int:
        """Chain time as nodes should see it: running on from the newest block.

        eth-tester stamps every block at least a second after its parent, so a burst of
        transactions (a round's joins, eight registrations) stamps blocks ahead of the wall
        clock. Time then runs on from the newest block instead of standing still until the
        wall clock catches up: a deadline judged by a clock that stands still would pass
        minutes late, and a drop vote sent when it seems due would be refused as too early.

        Every waiting node asks for the time on every wake-up. It does not queue behind a
        transaction or a read for it: while another thread holds the chain, the newest block
        is the one that thread's lock found when it was last released (`_ChainLock`), which is
        what this call would have read just before that thread took the chain.
        """
        if self._lock.acquire(blocking=False):
            try:
                latest = self._head_time()
            finally:
                self._lock.release()
        else:
            latest = self._lock.head_time
        with self._clock:
            running = time.time() + self._offset
            if latest > running:
                self._offset += latest - running
                running = float(latest)
            return int(running)

    def head(self) -> BlockHeaderAPI:
        """The newest block's header."""
        header: BlockHeaderAPI = self._backend.chain.get_canonical_head()
        return header

    def _head_time(self) -> int:
        return int(self.head().timestamp)

    def advance(self, seconds: float) -> None:
        """Moves chain time forward without sleeping; the next block carries the new time."""
        with self._lock:
            target = self.now() + seconds
            with self._clock:
                self._offset = target - time.time()
        self.changes.changed()

    def _restamp_pending_block(self) -> None:
        chain = self._backend.chain
        parent = chain.get_canonical_head().timestamp
        with self._clock:
            stamp = max(parent + 1, int(time.time() + self._offset))
        chain.header = chain.header.copy(timestamp=stamp)

    # -- accounts
    def new_account(self, fund_wei: int = FUNDING_WEI) -> LocalAccount:
        account: LocalAccount = Account.create()
        if fund_wei:
            self.fund(account.address, fund_wei)
        return account

    def fund(self, address: str, wei: int = FUNDING_WEI) -> None:
        with self._lock:
            self._restamp_pending_block()
            nonce = self.w3.eth.get_transaction_count(self._faucet.address, "pending")
            tx = {
                "to": address,
                "value": wei,
                "gas": 21_000,
                "nonce": nonce,
                "chainId": self.w3.eth.chain_id,
                "maxFeePerGas": 10**10,
                "maxPriorityFeePerGas": 10**9,
            }
            signed = self._faucet.sign_transaction(cast(dict[str, Any], tx))
            self.w3.eth.wait_for_transaction_receipt(
                self.w3.eth.send_raw_transaction(signed.raw_transaction)
            )

    # -- swarms
    def deploy(
        self, params: SwarmParams, owner: LocalAccount | None = None, *, validate: bool = True
    ) -> tuple[Deployment, LocalAccount]:
        owner = owner or self.new_account()
        deployment = deploy_swarm(
            self.w3,
            owner,
            params,
            validate=validate,
            lock=self._lock,
            prepare=self._restamp_pending_block,
        )
        return deployment, owner

    def ledger(
        self, deployment: Deployment, account: LocalAccount, too_early: Backoff | None = None
    ) -> ContractLedger:
        return EmbeddedLedger(
            self,
            self.w3,
            deployment.address,
            account,
            deploy_block=deployment.block,
            clock=self.now,
            lock=self._lock,
            prepare=self._restamp_pending_block,
            too_early=too_early,
            fixed_gas=EMBEDDED_GAS_LIMIT,
        )


class EmbeddedLedger(SharedLedger):
    """A ContractLedger on the embedded chain: each transaction it sends wakes the waiters
    (eth-tester mines one block per transaction, before the receipt comes back), and the
    views a waiting round reads are read once per change for every node in the process
    (swarmnode.ledger.shared).

    Measured at n = 8 (simulations/flower_compare.py's recipe), reading the round was most
    of a full-fidelity round's wall time: three contract calls on py-evm, each behind the
    chain's one lock, and every node woken by a block read the same state again. The first
    reader after a change reads it under the chain's lock, so the read is one state; the
    others, queued behind it, take its copy (docs/chain.md#waiting-for-blocks)."""

    def __init__(self, chain: EmbeddedChain, *args: Any, **kwargs: Any) -> None:
        super().__init__(chain.shared, *args, **kwargs)
        self._tester = chain.tester
        self._head = chain.head
        self.sender.view = self._call
        self.sender.preflight = self._call
        self.sender.build = self._build
        self.sender.submit = self._submit

    def _call(self, fn: ContractFunction, block: str | int) -> Any:
        """`fn` run on `block`'s state ("latest", "pending", a number) from this account on
        eth-tester itself rather than through web3: the same call on the same EVM with the
        same answer (tests/test_embedded_views.py compares the two for every view), without
        web3's request middleware and result formatters, which cost a third of a view.
        Decoded as web3 decodes it; a revert raised as eth-tester raises it, for the sender
        to name. Views (the sender's `view`) and preflights take this way."""
        call = {
            "from": self.account,
            "to": self.address,
            "data": call_data(fn),
            "gas": EMBEDDED_GAS_LIMIT,
        }
        output: str = self._tester.call(call, block)
        return ViewAbi.of(fn).decode(bytes.fromhex(output.removeprefix("0x")))

    def _build(self, fn: ContractFunction, fields: TxParams) -> TxParams:
        """`fn`'s transaction with the sender's fields (from, nonce, gas, chain id), as web3's
        build_transaction makes it here: call data, no value, and fees as its default
        strategy sets them (eth-tester's 1 gwei tip plus twice the newest base fee). Called
        under the chain lock, as the sender signs there."""
        base_fee = int(self._head().base_fee_per_gas or 0)
        return contract_transaction(fn, self.address, fields, 10**9, base_fee)

    def _submit(self, raw: bytes) -> None:
        """Signed bytes to eth-tester, which mines them into a block at once."""
        self._tester.send_raw_transaction("0x" + raw.hex())
