"""Signing and delivering one account's transactions so that each logical call lands once.

A chain endpoint goes away and comes back; a dev chain killed with SIGKILL can come back
without its last second of blocks. The rules that keep a node from paying twice or losing
a call:

- a call is signed once, with the nonce this sender owns, and only those signed bytes are
  ever (re-)sent: never a second transaction for the same logical call;
- before a new call, the chain's nonce for the account is compared with ours: if the chain
  is behind (it lost blocks), the journaled signed transactions it lost are sent again,
  in nonce order, before anything new;
- while waiting for a receipt, a transaction the node no longer knows is sent again.

Connection failures before anything was sent are retried with backoff; so are failures
while delivering, because re-sending the same signed bytes is always safe.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes
from tenacity import (
    RetryCallState,
    Retrying,
    retry_base,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)
from web3 import Web3
from web3.contract.contract import ContractFunction
from web3.exceptions import TransactionNotFound
from web3.types import TxParams

from swarmnode.exceptions import ChainUnavailable, LedgerError
from swarmnode.ledger.background import in_background
from swarmnode.ledger.errors import contract_error_from

log = logging.getLogger(__name__)


def use_c_keccak() -> bool:
    """Makes eth-hash's keccak256 (every hash py-evm, its trie, eth-account and eth-utils
    take) run on safe-pysha3's C code instead of pycryptodome's, unless ETH_HASH_BACKEND
    names a backend. eth-hash prefers pycryptodome whenever it is installed, and its keccak
    costs about 11 us a call here against 1.3 us: a full-fidelity round on the embedded chain
    hashes some 16,000 times (docs/chain.md#three-chains). False where pysha3 is missing."""
    if os.environ.get("ETH_HASH_BACKEND"):
        return False
    try:
        from eth_hash.backends.pysha3 import backend
    except ImportError:
        return False
    from eth_hash.auto import keccak

    # what eth-hash itself does after its first call: the instance's methods replaced
    vars(keccak).update(hasher=backend.keccak256, preimage=backend.preimage)
    return True


use_c_keccak()

# Estimates are exact for the state they ran on; a round's state can move between estimate
# and inclusion (another join lands first and this one closes the round), so leave room.
GAS_MARGIN = 1.3
GAS_EXTRA = 50_000
# A join or report estimated as an ordinary one can land as the one that closes or finalizes
# the round (another node's transaction got in first), which does the round's work: the
# limit must cover that. Unused gas is never paid for.
ROUND_WORK_GAS = 250_000
ROUND_WORK_GAS_PER_PEER = 3_000
JOURNAL_SIZE = 256
# The first look again for a receipt that was not there yet (see _await_receipt), seconds.
FIRST_RECHECK = 0.002
_ALREADY_SENT = ("already known", "known transaction", "nonce too low", "already imported")


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with a bounded number of tries and an injectable sleep.

    `attempts` counts tries, the first included. The sleep is injectable so that tests can
    move a chain's clock instead of waiting; tenacity takes it as is."""

    first_delay: float = 0.25
    max_delay: float = 2.0
    attempts: int = 12
    sleep: Callable[[float], None] = field(default=time.sleep)

    def retrying(
        self,
        retry: retry_base,
        before_sleep: Callable[[RetryCallState], None] | None = None,
    ) -> Retrying:
        """A tenacity loop with these knobs; the last failure is raised as itself."""
        return Retrying(
            retry=retry,
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=self.first_delay, max=self.max_delay),
            sleep=self.sleep,
            before_sleep=before_sleep,
            reraise=True,
        )


@dataclass(frozen=True)
class SentTransaction:
    nonce: int
    call: str
    raw: bytes
    tx_hash: bytes


@dataclass
class DeliveryStats:
    """What delivery had to do; the restart tests read it."""

    sent: int = 0
    resent: int = 0
    restored: int = 0
    unavailable_retries: int = 0


class TransactionSender:
    """Owns one account's nonce on one chain."""

    def __init__(
        self,
        w3: Web3,
        account: LocalAccount,
        *,
        lock: contextlib.AbstractContextManager[Any],
        prepare: Callable[[], None],
        estimate_on: Literal["pending", "latest"] = "pending",
        fixed_gas: int | None = None,
        min_gas: Callable[[], int] = lambda: 0,
        unavailable: Backoff | None = None,
        receipt_timeout: float = 120.0,
        poll_interval: float = 0.05,
    ) -> None:
        self._w3 = w3
        self._account = account
        self._lock = lock
        self._prepare = prepare
        self._estimate_on = estimate_on
        self._fixed_gas = fixed_gas
        # Shorter ways to the same chain than web3's, where the chain has them
        # (EmbeddedLedger, RpcLedger): how a fixed-gas preflight runs the call on a block
        # ("pending"), how a call's transaction is built from the sender's fields, and how
        # signed bytes are handed over. None: web3's own call, build_transaction and
        # send_raw_transaction.
        self.preflight: Callable[[ContractFunction, str], object] | None = None
        self.build: Callable[[ContractFunction, TxParams], TxParams] | None = None
        self.submit: Callable[[bytes], object] | None = None
        # The same for the rest of a call's way (RpcLedger, over swarmnode.ledger.jsonrpc):
        # a view on a block tag or number, the gas estimate on a block tag, the account's
        # pending nonce, a receipt as web3 formats it (None while there is none), and whether
        # the chain knows a transaction. None: web3's own.
        self.view: Callable[[ContractFunction, str | int], object] | None = None
        self.estimate: Callable[[ContractFunction, str], int] | None = None
        self.pending_nonce: Callable[[], int] | None = None
        self.receipt: Callable[[bytes], Any] | None = None
        self.known: Callable[[bytes], bool] | None = None
        self._min_gas = min_gas
        self._unavailable = unavailable or Backoff(first_delay=0.2, max_delay=2.0, attempts=40)
        self._receipt_timeout = receipt_timeout
        self._poll_interval = poll_interval
        # the pause between looks for a receipt; a test hands in its own to see the pauses
        # and to mine a block in one, instead of waiting
        self.receipt_sleep: Callable[[float], None] = time.sleep
        self._nonce: int | None = None
        self._chain_id: int | None = None
        self._journal: OrderedDict[int, SentTransaction] = OrderedDict()
        self.stats = DeliveryStats()

    # ------------------------------------------------------------------ public

    def send(self, fn: ContractFunction) -> Any:
        """Delivers one logical call and returns its receipt (status 1 or 0)."""
        sent = self.retry_unavailable(fn.fn_name, lambda: self._sign(fn))
        return self.retry_unavailable(fn.fn_name, lambda: self._deliver(sent))

    def call(self, fn: ContractFunction, **kwargs: Any) -> Any:
        """A read-only call with the chain's errors named."""

        # a view names its caller: without one, eth-tester's provider asks the chain for
        # its accounts on every call to pick a default sender (a third of a view's cost)
        kwargs.setdefault("transaction", {"from": self._account.address})
        block: str | int = kwargs.get("block_identifier", "latest")
        view = self.view
        if set(kwargs) - {"transaction", "block_identifier"} or kwargs["transaction"] != {
            "from": self._account.address
        }:
            view = None  # anything but this account on a block: web3's own call

        def once() -> Any:
            with self.guard(fn.fn_name):
                try:
                    return fn.call(**kwargs) if view is None else view(fn, block)
                except (LedgerError, ConnectionError, OSError, TimeoutError):
                    raise  # named already, or no answer: `guard` makes that ChainUnavailable
                except Exception as exc:
                    named = contract_error_from(exc, fn.fn_name)
                    if named is not None:
                        raise named from exc
                    if view is None:
                        raise  # web3's own error, as web3 raised it
                    raise LedgerError(f"{fn.fn_name}: the call failed: {exc}") from exc

        return self.retry_unavailable(fn.fn_name, once)

    def retry_unavailable(self, what: str, action: Callable[[], Any]) -> Any:
        """Runs `action`, retrying while the chain does not answer.

        One warning per call, at its first retry; the later ones are debug lines, so that
        an outage does not flood the log with a line per try."""

        def note_retry(state: RetryCallState) -> None:
            self.stats.unavailable_retries += 1
            first = state.attempt_number == 1 and not in_background()
            level = logging.WARNING if first else logging.DEBUG
            log.log(level, "%s: chain unavailable, retrying with backoff", what)

        unavailable = retry_if_exception_type(ChainUnavailable)
        return self._unavailable.retrying(unavailable, note_retry)(action)

    # ------------------------------------------------------------------ steps

    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Holds the chain lock and turns connection failures into ChainUnavailable."""
        with self._lock:
            try:
                yield
            except (ConnectionError, OSError, TimeoutError) as exc:
                raise ChainUnavailable(f"{what}: no chain answered ({exc})") from exc

    def _sign(self, fn: ContractFunction) -> SentTransaction:
        name = fn.fn_name
        sender = self._account.address
        with self.guard(name):
            self._prepare()
            self._restore_lost()
            gas = self._gas_for(fn)
            if self._chain_id is None:
                self._chain_id = int(self._w3.eth.chain_id)
            assert self._nonce is not None
            params = cast(
                TxParams,
                {"from": sender, "nonce": self._nonce, "gas": gas, "chainId": self._chain_id},
            )
            tx = fn.build_transaction(params) if self.build is None else self.build(fn, params)
            signed = self._account.sign_transaction(cast(dict[str, Any], tx))
            sent = SentTransaction(self._nonce, name, bytes(signed.raw_transaction), signed.hash)
            self._journal[sent.nonce] = sent
            while len(self._journal) > JOURNAL_SIZE:
                self._journal.popitem(last=False)
            self._nonce += 1
            return sent

    def _gas_for(self, fn: ContractFunction) -> int:
        name = fn.fn_name
        sender = self._account.address
        try:
            if self._fixed_gas is None:
                if self.estimate is not None:
                    estimate = self.estimate(fn, self._estimate_on)
                else:
                    estimate = fn.estimate_gas({"from": sender}, block_identifier=self._estimate_on)
                return max(int(estimate * GAS_MARGIN) + GAS_EXTRA, self._min_gas())
            # Preflight on the pending block to name a revert before paying for it.
            if self.preflight is not None:
                self.preflight(fn, self._estimate_on)
            else:
                fn.call({"from": sender}, block_identifier=self._estimate_on)
            return self._fixed_gas
        except (ConnectionError, OSError, TimeoutError):
            raise
        except LedgerError:
            raise
        except Exception as exc:
            named = contract_error_from(exc, name)
            if named is not None:
                raise named from exc
            raise LedgerError(f"{name}: gas estimation failed: {exc}") from exc

    def _restore_lost(self) -> None:
        """Brings the chain's nonce up to ours by re-sending what it lost."""
        if self.pending_nonce is not None:
            chain_nonce = self.pending_nonce()
        else:
            chain_nonce = int(self._w3.eth.get_transaction_count(self._account.address, "pending"))
        if self._nonce is None or chain_nonce > self._nonce:
            if self._nonce is not None:
                log.warning(
                    "account %s: chain nonce %d is ahead of ours (%d): another process uses "
                    "this key",
                    self._account.address,
                    chain_nonce,
                    self._nonce,
                )
            self._nonce = chain_nonce
            return
        for nonce in range(chain_nonce, self._nonce):
            lost = self._journal.get(nonce)
            if lost is None:
                raise LedgerError(
                    f"account {self._account.address}: the chain lost transaction nonce {nonce} "
                    "and it is no longer in this node's journal"
                )
            log.warning("re-sending %s (nonce %d): the chain lost it", lost.call, nonce)
            self.stats.restored += 1
            self._send_raw(lost)
            self._await_receipt(lost)

    def _deliver(self, sent: SentTransaction) -> Any:
        with self.guard(sent.call):
            self._send_raw(sent)
            self.stats.sent += 1
        return self._await_receipt(sent)

    def _send_raw(self, sent: SentTransaction) -> None:
        try:
            if self.submit is None:
                self._w3.eth.send_raw_transaction(sent.raw)
            else:
                self.submit(sent.raw)
        except (ConnectionError, OSError, TimeoutError):
            raise
        except Exception as exc:
            if any(marker in str(exc).lower() for marker in _ALREADY_SENT):
                return  # an earlier try got through: wait for its receipt
            named = contract_error_from(exc, sent.call)
            if named is not None:
                raise named from exc
            raise LedgerError(f"{sent.call}: transaction refused: {exc}") from exc

    def _await_receipt(self, sent: SentTransaction) -> Any:
        """The receipt of `sent`, re-sending it when the chain forgot it.

        anvil sometimes answers eth_sendRawTransaction before the receipt exists: the first
        looks again come after 2 ms, doubling up to `poll_interval`, since a round's joins
        go one after another and a whole poll interval here is in the round's critical
        path; a chain slower than that is still polled every `poll_interval`."""
        deadline = time.monotonic() + self._receipt_timeout
        pause = min(FIRST_RECHECK, self._poll_interval)
        while True:
            with self.guard(sent.call):
                receipt = self._receipt_of(sent)
                if receipt is not None:
                    return receipt
                if not self._known(sent):
                    log.warning(
                        "re-sending %s (nonce %d): the chain forgot it", sent.call, sent.nonce
                    )
                    self.stats.resent += 1
                    self._send_raw(sent)
            if time.monotonic() > deadline:
                raise LedgerError(
                    f"{sent.call}: no receipt for {sent.tx_hash.hex()} "
                    f"within {self._receipt_timeout:g} s"
                )
            self.receipt_sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(2 * pause, self._poll_interval)

    def _receipt_of(self, sent: SentTransaction) -> Any:
        """The receipt, or None while the chain has none."""
        if self.receipt is not None:
            return self.receipt(sent.tx_hash)
        try:
            return self._w3.eth.get_transaction_receipt(HexBytes(sent.tx_hash))
        except TransactionNotFound:
            return None

    def _known(self, sent: SentTransaction) -> bool:
        if self.known is not None:
            return self.known(sent.tx_hash)
        try:
            self._w3.eth.get_transaction(HexBytes(sent.tx_hash))
            return True
        except TransactionNotFound:
            return False
