"""The Ledger over the compiled SwarmLedger contract, through web3.

Used for the embedded py-evm chain and for any JSON-RPC endpoint. It signs its own
transactions with the node's key (no unlocked accounts on the chain), names every revert
(ContractError), and follows docs/round-protocol.md#clocks for deadline calls: the caller
decides by its own clock; a "too early" revert that the caller's clock disagrees with is
clock skew between node and chain, and is retried with backoff instead of failing.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address
from tenacity import retry_if_exception
from web3 import Web3
from web3.contract.contract import ContractFunction
from web3.exceptions import BlockNotFound

from swarmnode.exceptions import ContractError, LedgerError
from swarmnode.ledger.artifacts import load
from swarmnode.ledger.base import Ledger
from swarmnode.ledger.transactions import (
    ROUND_WORK_GAS,
    ROUND_WORK_GAS_PER_PEER,
    Backoff,
    TransactionSender,
)
from swarmnode.ledger.types import (
    FailReason,
    LedgerEvent,
    NodeRecord,
    RoundState,
    RoundStatus,
    Seat,
    san_offset,
)
from swarmnode.rules import Rule, SecureAggregation, SwarmParams

EVENT_BLOCK_RANGE = 500
# Seeds of this many (round, block) pairs are kept: a node reads the current round and a few
# before it, never hundreds.
_SEED_CACHE_SIZE = 64


class FilterGone(LedgerError):
    """The chain no longer knows a log filter (it restarted): fall back to get_logs."""


def params_to_abi(p: SwarmParams) -> tuple[Any, ...]:
    return (
        p.min_peers,
        p.max_peers,
        p.join_window,
        p.transfer_deadline,
        p.round_deadline,
        (p.merge_rule.id, list(p.merge_rule.params)),
        (p.sync_policy.id, list(p.sync_policy.params)),
        p.initial_model_digest,
        p.restricted,
        p.checked_merge,
        _secure_aggregation_to_abi(p.secure_aggregation),
    )


def _secure_aggregation_to_abi(s: SecureAggregation | None) -> tuple[bool, int, int, int]:
    """Off is all zeros: the contract ignores the numbers and reads them back as zeros."""
    if s is None:
        return (False, 0, 0, 0)
    return (True, s.bound, s.fraction_bits, s.max_weight)


def _secure_aggregation_from_abi(row: Any) -> SecureAggregation | None:
    enabled, bound, fraction_bits, max_weight = row
    if not enabled:
        return None
    return SecureAggregation(int(bound), int(fraction_bits), int(max_weight))


class ContractLedger(Ledger):
    """One account's handle on a deployed SwarmLedger."""

    def __init__(
        self,
        w3: Web3,
        address: str,
        account: LocalAccount,
        *,
        deploy_block: int = 0,
        clock: Callable[[], float] = time.time,
        lock: contextlib.AbstractContextManager[Any] | None = None,
        prepare: Callable[[], None] | None = None,
        too_early: Backoff | None = None,
        unavailable: Backoff | None = None,
        estimate_on: Literal["pending", "latest"] = "pending",
        fixed_gas: int | None = None,
    ) -> None:
        self._w3 = w3
        self._address = to_checksum_address(address)
        self._contract = w3.eth.contract(address=self._address, abi=load().abi)
        self._account = account
        self._deploy_block = deploy_block
        self._clock = clock
        self._lock = lock if lock is not None else threading.RLock()
        self._too_early = too_early or Backoff()
        # Deadline calls must be checked on the block they will land in: anvil's latest
        # block carries the last transaction's time. eth-tester cannot estimate on pending
        # (it estimates at wall-clock time, whatever the chain's clock says), so there the
        # sender preflights with a call on pending and sends with a fixed gas limit.
        self.sender = TransactionSender(
            w3,
            account,
            lock=self._lock,
            prepare=prepare or (lambda: None),
            estimate_on=estimate_on,
            fixed_gas=fixed_gas,
            min_gas=self._round_work_gas,
            unavailable=unavailable,
        )
        self._params: SwarmParams | None = None
        # (round, closing block number, close time) -> that block's hash: a round's seed
        # never changes once it closed, so polling a closed round costs no extra RPC.
        self._seeds: dict[tuple[int, int, int], bytes] = {}
        # (function, gas used) of every mined transaction this handle sent: for the demo,
        # the gas report, and anyone watching what a node spends.
        self.gas_log: list[tuple[str, int]] = []
        self._topics = {
            bytes.fromhex(event.topic.removeprefix("0x")): event
            for event in (
                self._contract.events[e["name"]] for e in load().abi if e["type"] == "event"
            )
        }

    # ------------------------------------------------------------------ plumbing

    @property
    def account(self) -> str:
        return str(self._account.address)

    def sign(self, message: bytes) -> bytes:
        from swarmnode.secagg.signing import sign_with_key

        return sign_with_key(bytes(self._account.key), message)

    @property
    def address(self) -> str:
        return self._address

    def now(self) -> int:
        return int(self._clock())

    @property
    def gas_used(self) -> int:
        return sum(gas for _, gas in self.gas_log)

    def _view(self, fn: ContractFunction) -> Any:
        return self.sender.call(fn)

    def _transact(self, fn: ContractFunction) -> Any:
        """Sends one state-changing call and returns its receipt; retries clock-skew reverts."""
        retrying = self._too_early.retrying(retry_if_exception(self._chain_clock_behind))
        return retrying(self._transact_once, fn)

    def _transact_once(self, fn: ContractFunction) -> Any:
        receipt = self.sender.send(fn)
        self.gas_log.append((fn.fn_name, int(receipt["gasUsed"])))
        if receipt["status"] != 1:
            raise self._name_failure(fn, receipt)
        return receipt

    def _chain_clock_behind(self, exc: BaseException) -> bool:
        """TooEarly although this node's clock says the time has come: the chain's clock
        lags, so the call waits for it. TooEarly by this node's clock too is not retried."""
        if not isinstance(exc, ContractError) or not exc.too_early:
            return False
        return self.now() >= int(exc.details.get("notBefore", 0))

    def _round_work_gas(self) -> int:
        """Room for the round-level work any join or report may end up doing (see
        transactions.ROUND_WORK_GAS), from the swarm's max_peers."""
        return ROUND_WORK_GAS + ROUND_WORK_GAS_PER_PEER * self.params().max_peers

    def _name_failure(self, fn: ContractFunction, receipt: Any) -> LedgerError:
        """A status-0 receipt says nothing; replaying the call names it."""
        block = int(receipt["blockNumber"])
        sent = self._w3.eth.get_transaction(receipt["transactionHash"])
        if int(receipt["gasUsed"]) >= int(sent["gas"]):
            return LedgerError(
                f"{fn.fn_name}: transaction {receipt['transactionHash'].hex()} ran out of gas "
                f"(limit {int(sent['gas']):,}) in block {block}"
            )
        # On the parent state first; then on the block's own state, for a transaction that
        # another one mined before it in the same block made fail (a late report after the
        # finalizing one: WrongRound), which the parent state knows nothing of.
        for state in (max(block - 1, 0), block):
            try:
                self.sender.call(
                    fn, transaction={"from": self._account.address}, block_identifier=state
                )
            except ContractError as named:
                return named
            except LedgerError:
                pass
        return LedgerError(
            f"{fn.fn_name}: transaction {receipt['transactionHash'].hex()} reverted in block "
            f"{block} and replaying it did not name the error"
        )

    # ------------------------------------------------------------------ roster

    def register(self, endpoint: str, certificate: bytes) -> None:
        offset = san_offset(certificate, self.account)
        self._transact(self._contract.functions.register(endpoint, certificate, offset))

    def update_endpoint(self, endpoint: str) -> None:
        self._transact(self._contract.functions.updateEndpoint(endpoint))

    def deregister(self) -> None:
        self._transact(self._contract.functions.deregister())

    def allow(self, account: str) -> None:
        self._transact(self._contract.functions.allow(to_checksum_address(account)))

    def revoke(self, account: str) -> None:
        self._transact(self._contract.functions.revoke(to_checksum_address(account)))

    def node(self, account: str) -> NodeRecord | None:
        account = to_checksum_address(account)
        fingerprint, endpoint, active = self._view(self._contract.functions.node(account))
        if not any(fingerprint):
            return None
        return NodeRecord(account, endpoint, bytes(fingerprint), active)

    def active_nodes(self) -> list[NodeRecord]:
        accounts, endpoints, fingerprints = self._view(self._contract.functions.activeNodes())
        return [
            NodeRecord(to_checksum_address(a), e, bytes(f), True)
            for a, e, f in zip(accounts, endpoints, fingerprints, strict=True)
        ]

    def is_allowed(self, account: str) -> bool:
        return bool(self._view(self._contract.functions.allowed(to_checksum_address(account))))

    # ------------------------------------------------------------------ parameters

    def params(self) -> SwarmParams:
        if self._params is None:
            f = self._contract.functions
            merge_id, merge_params = self._view(f.mergeRule())
            sync_id, sync_params = self._view(f.syncPolicy())
            self._params = SwarmParams(
                min_peers=self._view(f.minPeers()),
                max_peers=self._view(f.maxPeers()),
                join_window=self._view(f.joinWindow()),
                transfer_deadline=self._view(f.transferDeadline()),
                round_deadline=self._view(f.roundDeadline()),
                merge_rule=Rule(merge_id, tuple(merge_params)),
                sync_policy=Rule(sync_id, tuple(sync_params)),
                initial_model_digest=bytes(self._view(f.initialModelDigest())),
                restricted=self._view(f.restricted()),
                checked_merge=self._view(f.checkedMerge()),
                secure_aggregation=_secure_aggregation_from_abi(self._view(f.secureAggregation())),
            )
        return self._params

    def owner(self) -> str:
        return str(to_checksum_address(self._view(self._contract.functions.owner())))

    # ------------------------------------------------------------------ rounds

    def current_round(self) -> int:
        return int(self._view(self._contract.functions.currentRound()))

    def round(self, number: int) -> RoundState:
        f = self._contract.functions
        row = self._view(f.getRound(number))
        status, fail, attempt, joined, live, reports, first, closed, start, closed_block = row[:10]
        training = int(row[10])  # getRound's trainingNow: the nodes still training now
        nodes, commitments, weights, losses, dropped, reported = self._view(f.participants(number))
        # the contract writes finalDigest when, and only when, it finalizes the round: a
        # round read while open or closed (most reads) costs two calls instead of three
        final = RoundStatus(status) == RoundStatus.FINAL
        digest = bytes(self._view(f.finalDigest(number))) if final else bytes(32)
        seats = tuple(
            Seat(to_checksum_address(a), bytes(c), w, v, d, r)
            for a, c, w, v, d, r in zip(
                nodes, commitments, weights, losses, dropped, reported, strict=True
            )
        )
        return RoundState(
            number=number,
            status=RoundStatus(status),
            fail_reason=FailReason(fail),
            attempt=attempt,
            joined=joined,
            live=live,
            reports=reports,
            first_join_at=first,
            closed_at=closed,
            attempt_start=start,
            seats=seats,
            final_digest=digest if any(digest) else None,
            seed=self._seed(number, int(closed_block), int(closed)),
            training=training,
        )

    def _seed(self, number: int, closed_block: int, closed_at: int) -> bytes:
        """The hash of the block round `number` closed in; b"" while it is open
        (docs/chain.md#the-round-seed). Cached per (round, block number), with the close time
        in the key too: a dev chain that lost blocks and closes the round again at the same
        height (anvil after SIGKILL) mostly does so at another time, and then another hash."""
        if closed_block == 0:
            return b""
        key = (number, closed_block, closed_at)
        seed = self._seeds.get(key)
        if seed is None:
            found = self.block_id(closed_block)
            if found is None:
                raise LedgerError(
                    f"round {number} closed in block {closed_block}, which the chain no "
                    "longer has: it lost blocks since the round was read"
                )
            seed = found[1]
            if len(self._seeds) >= _SEED_CACHE_SIZE:
                self._seeds.pop(next(iter(self._seeds)))
            self._seeds[key] = seed
        return seed

    def latest_model(self) -> tuple[int, bytes]:
        number, digest = self._view(self._contract.functions.latestModel())
        return int(number), bytes(digest)

    def drop_votes(self, number: int, attempt: int, peer: str) -> int:
        return int(
            self._view(
                self._contract.functions.dropVotes(number, attempt, to_checksum_address(peer))
            )
        )

    def join(self, number: int, commitment: bytes, weight: int, val_loss: int) -> None:
        self._transact(self._contract.functions.join(number, commitment, weight, val_loss))

    def leave(self, number: int) -> None:
        self._transact(self._contract.functions.leaveRound(number))

    def close(self, number: int) -> None:
        self._transact(self._contract.functions.close(number))

    def drop(self, number: int, attempt: int, peer: str) -> None:
        self._transact(self._contract.functions.drop(number, attempt, to_checksum_address(peer)))

    def withdraw(self, number: int) -> None:
        self._transact(self._contract.functions.withdraw(number))

    def report(self, number: int, attempt: int, digest: bytes) -> None:
        self._transact(self._contract.functions.report(number, attempt, digest))

    def expire(self, number: int) -> None:
        self._transact(self._contract.functions.expire(number))

    def finish(self) -> None:
        self._transact(self._contract.functions.finish())

    def training_nodes(self) -> list[str]:
        accounts = self._view(self._contract.functions.trainingNodes())
        return [to_checksum_address(a) for a in accounts]

    # ------------------------------------------------------------------ events

    # The chain reads below the ledger's events and seeds, one method each so that a shorter
    # way to the same chain (swarmnode.ledger.rpc.RpcLedger) replaces them alone. Logs come
    # as web3 formats them.

    def _block_number(self) -> int:
        return int(self._w3.eth.block_number)

    def _logs(self, start: int, end: int) -> list[Any]:
        """This contract's logs in blocks `start` to `end`, both included."""
        return list(
            self._w3.eth.get_logs({"address": self._address, "fromBlock": start, "toBlock": end})
        )

    def _new_filter(self, start: int) -> str:
        return str(self._w3.eth.filter({"address": self._address, "fromBlock": start}).filter_id)

    def _filter_logs(self, filter_id: str) -> list[Any]:
        return list(self._w3.eth.get_filter_changes(filter_id))  # type: ignore[arg-type]

    def _block_at(self, height: int | None) -> tuple[int, bytes] | None:
        """(number, hash) of the block at `height` (None: the head), None if there is none."""
        try:
            block = self._w3.eth.get_block("latest" if height is None else height)
        except BlockNotFound:
            return None
        return int(block["number"]), bytes(block["hash"])

    def events(self, cursor: int) -> tuple[list[LedgerEvent], int]:
        def read() -> tuple[list[LedgerEvent], int]:
            with self.sender.guard("events"):
                latest = self._block_number()
                found: list[LedgerEvent] = []
                start = max(cursor, self._deploy_block)
                while start <= latest:
                    end = min(start + EVENT_BLOCK_RANGE - 1, latest)
                    logs = self._logs(start, end)
                    found.extend(self._decode(log) for log in logs)
                    start = end + 1
                return found, latest + 1

        result: tuple[list[LedgerEvent], int] = self.sender.retry_unavailable("events", read)
        return result

    def open_filter(self, from_block: int) -> str:
        """A node-side log filter for this contract: cheaper polling than get_logs."""

        def create() -> str:
            with self.sender.guard("open_filter"):
                # anvil refuses a filter from a block it has not mined yet (it just restarted
                # and nothing happened since): start at its head, whose events the cursor
                # has already read and drops
                head = self._block_number()
                return self._new_filter(min(max(from_block, self._deploy_block), head))

        result: str = self.sender.retry_unavailable("open_filter", create)
        return result

    def filter_changes(self, filter_id: str) -> list[LedgerEvent]:
        """New events on a filter; FilterGone when the node forgot it (it restarted)."""

        def read() -> list[LedgerEvent]:
            with self.sender.guard("filter_changes"):
                try:
                    logs = self._filter_logs(filter_id)
                except (ConnectionError, OSError, TimeoutError):
                    raise
                except Exception as exc:
                    raise FilterGone(f"filter {filter_id}: {exc}") from exc
                return [self._decode(log) for log in logs]

        result: list[LedgerEvent] = self.sender.retry_unavailable("filter_changes", read)
        return result

    def _decode(self, log: Any) -> LedgerEvent:
        event = self._topics[bytes(log["topics"][0])]
        decoded = event().process_log(log)
        args = {
            k: (to_checksum_address(v) if isinstance(v, str) and Web3.is_address(v) else v)
            for k, v in decoded["args"].items()
        }
        if "participants" in args:
            args["participants"] = [to_checksum_address(a) for a in args["participants"]]
        position = (int(log["blockNumber"]), int(log["logIndex"]))
        return LedgerEvent(decoded["event"], position, args, bool(log.get("removed", False)))

    def block_id(self, height: int | None = None) -> tuple[int, bytes] | None:
        """(number, hash) of the block at `height`, or of the head; None where the chain has
        no block there: it lost blocks, and what was read from them may be untrue
        (docs/chain.md#events-and-the-roster-feed)."""

        def read() -> tuple[int, bytes] | None:
            with self.sender.guard("block_id"):
                return self._block_at(height)

        result: tuple[int, bytes] | None = self.sender.retry_unavailable("block_id", read)
        return result

    def start_cursor(self) -> int:
        return self._deploy_block
