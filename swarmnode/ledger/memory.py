"""An in-memory SwarmLedger: the contract's rules in plain Python, with an injected clock.

It exists for fast tests of the layers above the ledger (sync, all-reduce, node, the
simulator's sweeps), where a real chain would cost seconds per round. It is not a second
source of truth: tests/test_ledger_behaviour.py runs the same behaviour tests against it
and against the compiled contract on py-evm and anvil, so they cannot drift apart unnoticed
(docs/architecture.md#backends-and-behaviour-suites).
Every check runs before any state changes, as in the contract, so a refused call leaves
nothing behind.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import secrets
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from swarmnode.error_names import ErrorName
from swarmnode.exceptions import ConfigError, ContractError, LedgerError
from swarmnode.ledger.base import Ledger
from swarmnode.ledger.types import (
    FailReason,
    LedgerEvent,
    NodeRecord,
    RoundState,
    RoundStatus,
    Seat,
    san_offset,
)
from swarmnode.rules import ParamsRefused, SwarmParams


def _account(value: str) -> str:
    """`value` in the one spelling the layers above compare with `==`: every account that
    enters this ledger passes here, as a contract read does (docs/architecture.md#addresses)."""
    # imported here: eth_utils takes about 0.6 s to import, and fast tests of the layers
    # above need nothing else from it
    from swarmnode.address import normalize

    return normalize(value)


def _random_address() -> str:
    return _account("0x" + secrets.token_hex(20))


def _address_of(key: bytes) -> str:
    """The account a secp256k1 private key signs for."""
    from eth_keys.datatypes import PrivateKey

    return _account(PrivateKey(key).public_key.to_checksum_address())


class ManualClock:
    """A clock that moves only when told to: time in tests never depends on sleeping."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds


@dataclass
class _Round:
    status: RoundStatus = RoundStatus.NONE
    fail_reason: FailReason = FailReason.NONE
    attempt: int = 0
    live: int = 0
    reports: int = 0
    lead: bytes | None = None
    lead_count: int = 0
    max_count: int = 0
    first_join_at: int = 0
    closed_at: int = 0
    attempt_start: int = 0
    order: list[str] = field(default_factory=list)
    seats: dict[str, dict[str, Any]] = field(default_factory=dict)
    other_counts: dict[tuple[int, bytes], int] = field(default_factory=lambda: defaultdict(int))
    voted: set[tuple[int, str, str]] = field(default_factory=set)
    votes: dict[tuple[int, str], int] = field(default_factory=lambda: defaultdict(int))
    final_digest: bytes | None = None
    seed: bytes = b""


class _Swarm:
    """One deployed contract's state and rules. Methods take the caller and the time."""

    def __init__(
        self, address: str, owner: str, params: SwarmParams, now: int, salt: bytes
    ) -> None:
        try:
            params.validate()
        except ParamsRefused as exc:  # a refusal the contract names on its own
            raise ContractError(exc.error, exc.details, "deploy") from exc
        except ConfigError as exc:  # the contract's constructor refuses the same way
            raise ContractError(ErrorName.BAD_PARAMETERS, {"reason": str(exc)}, "deploy") from exc
        self.address = address
        self.owner = owner
        self.salt = salt
        self.params = params
        self.min_live = params.min_live
        self.allowed: dict[str, bool] = {}
        self.nodes: dict[str, NodeRecord] = {}
        self.active: list[str] = []  # the contract's _active: swap-and-pop on deregister
        self.finished: set[str] = set()  # active nodes that said their training is over
        self.rounds: dict[int, _Round] = defaultdict(_Round)
        self.current = 0
        self.last_final = 0
        self.events: list[LedgerEvent] = []
        self._block = 0
        self._log = 0
        self.new_block()
        self._open(1)

    # -- bookkeeping
    def new_block(self) -> None:
        self._block += 1
        self._log = 0

    @property
    def block(self) -> int:
        return self._block

    def emit(self, name: str, **args: Any) -> None:
        self.events.append(LedgerEvent(name, (self._block, self._log), args))
        self._log += 1

    # -- admission
    def allow(self, sender: str, account: str) -> None:
        self._only_owner(sender)
        self.allowed[account] = True
        self.emit("Allowed", account=account)

    def revoke(self, sender: str, account: str, now: int) -> None:
        self._only_owner(sender)
        self.allowed[account] = False
        self.emit("Revoked", account=account)
        node = self.nodes.get(account)
        if self.params.restricted and node is not None and node.active:
            self._deregister(account, now)

    def _only_owner(self, sender: str) -> None:
        if sender != self.owner:
            raise ContractError(ErrorName.NOT_OWNER, {"caller": sender})

    # -- roster
    def register(self, sender: str, endpoint: str, certificate: bytes) -> None:
        if self.params.restricted and not self.allowed.get(sender, False):
            raise ContractError(ErrorName.NOT_ALLOWED, {"account": sender})
        node = self.nodes.get(sender)
        if node is not None and node.active:
            raise ContractError(ErrorName.ALREADY_REGISTERED, {"account": sender})
        _check_endpoint(endpoint)
        if not 0 < len(certificate) <= 8192:
            raise ContractError(
                ErrorName.BAD_PARAMETERS, {"reason": "certificate must be 1-8192 bytes"}
            )
        offset = san_offset(certificate, sender)
        if offset == len(certificate):
            raise ContractError(
                ErrorName.CERTIFICATE_NOT_BOUND, {"account": sender, "sanOffset": offset}
            )
        fingerprint = hashlib.sha256(certificate).digest()
        self.nodes[sender] = NodeRecord(sender, endpoint, fingerprint, True)
        self.active.append(sender)
        self.finished.discard(sender)
        self.emit(
            "Registered",
            node=sender,
            endpoint=endpoint,
            fingerprint=fingerprint,
            certificate=bytes(certificate),
        )

    def update_endpoint(self, sender: str, endpoint: str) -> None:
        node = self.nodes.get(sender)
        if node is None or not node.active:
            raise ContractError(ErrorName.NOT_REGISTERED, {"account": sender})
        _check_endpoint(endpoint)
        self.nodes[sender] = NodeRecord(sender, endpoint, node.fingerprint, True)
        self.emit("EndpointUpdated", node=sender, endpoint=endpoint)

    def deregister(self, sender: str, now: int) -> None:
        node = self.nodes.get(sender)
        if node is None or not node.active:
            raise ContractError(ErrorName.NOT_REGISTERED, {"account": sender})
        self._deregister(sender, now)

    def _deregister(self, account: str, now: int) -> None:
        node = self.nodes[account]
        self.nodes[account] = NodeRecord(account, node.endpoint, node.fingerprint, False)
        index = self.active.index(account)
        last = self.active.pop()
        if last != account:
            self.active[index] = last
        self.finished.discard(account)
        self.emit("Deregistered", node=account)
        rd = self.rounds[self.current]
        seat = rd.seats.get(account)
        if rd.status == RoundStatus.OPEN:
            if seat is not None:
                self._leave(self.current, account)
            self._close_if_all_joined(self.current, rd, now)
        elif rd.status == RoundStatus.CLOSED and seat is not None and seat["dropped_at"] == 0:
            self._withdraw(self.current, account, now)

    def finish(self, sender: str, now: int) -> None:
        node = self.nodes.get(sender)
        if node is None or not node.active:
            raise ContractError(ErrorName.NOT_REGISTERED, {"account": sender})
        if sender in self.finished:
            raise ContractError(ErrorName.ALREADY_FINISHED, {"account": sender})
        self.finished.add(sender)
        self.emit("Finished", node=sender)
        rd = self.rounds[self.current]
        if rd.status != RoundStatus.OPEN:
            return
        if sender in rd.seats:
            self._leave(self.current, sender)
        self._close_if_all_joined(self.current, rd, now)

    @property
    def training(self) -> int:
        """The contract's `training`: active nodes that have not finished."""
        return len(self.active) - len(self.finished)

    def training_nodes(self) -> list[str]:
        return [a for a in self.active if a not in self.finished]

    # -- rounds
    def join(
        self, sender: str, number: int, commitment: bytes, weight: int, val_loss: int, now: int
    ) -> None:
        rd = self._open_round_for(number)
        node = self.nodes.get(sender)
        if node is None or not node.active:
            raise ContractError(ErrorName.NOT_REGISTERED, {"account": sender})
        if sender in rd.seats:
            raise ContractError(ErrorName.ALREADY_JOINED, {"round": number, "node": sender})
        if not any(commitment):
            raise ContractError(ErrorName.BAD_PARAMETERS, {"reason": "commitment must be set"})
        if weight == 0:
            raise ContractError(ErrorName.BAD_PARAMETERS, {"reason": "weight must be positive"})
        _check_uint(weight, 64, "weight")
        cap = self.params.secure_aggregation
        if cap is not None and weight > cap.max_weight:
            raise ContractError(
                ErrorName.WEIGHT_ABOVE_MAX, {"weight": weight, "maxWeight": cap.max_weight}
            )
        _check_uint(val_loss, 64, "valLoss")
        self.finished.discard(sender)  # a finished node that joins trains again
        index = len(rd.order)
        rd.order.append(sender)
        rd.seats[sender] = {
            "commitment": bytes(commitment),
            "weight": weight,
            "val_loss": val_loss,
            "dropped_at": 0,
            "reported_at": 0,
        }
        if index == 0:
            rd.first_join_at = now
        self.emit(
            "Joined",
            round=number,
            node=sender,
            commitment=bytes(commitment),
            weight=weight,
            valLoss=val_loss,
        )
        joined = index + 1
        if joined == self.params.max_peers:
            self._close(number, rd, now)
        else:
            self._close_if_all_joined(number, rd, now)

    def leave(self, sender: str, number: int) -> None:
        rd = self._open_round_for(number)
        if sender not in rd.seats:
            raise ContractError(ErrorName.NOT_A_PARTICIPANT, {"round": number, "node": sender})
        self._leave(number, sender)

    def _leave(self, number: int, account: str) -> None:
        rd = self.rounds[number]
        index = rd.order.index(account)
        last = len(rd.order) - 1
        if index != last:
            rd.order[index] = rd.order[last]
        rd.order.pop()
        del rd.seats[account]
        if not rd.order:
            rd.first_join_at = 0
        self.emit("Left", round=number, node=account)

    def close(self, number: int, now: int) -> None:
        rd = self._open_round_for(number)
        if len(rd.order) < self.params.min_peers:
            raise ContractError(
                ErrorName.TOO_FEW_JOINED,
                {"round": number, "joined": len(rd.order), "needed": self.params.min_peers},
            )
        _not_before(rd.first_join_at + self.params.join_window, now)
        self._close(number, rd, now)

    def _close_if_all_joined(self, number: int, rd: _Round, now: int) -> None:
        """Closes an open round that every node still training has joined, with min_peers."""
        joined = len(rd.order)
        if joined >= self.params.min_peers and joined >= self.training:
            self._close(number, rd, now)

    def _close(self, number: int, rd: _Round, now: int) -> None:
        rd.status = RoundStatus.CLOSED
        rd.live = len(rd.order)
        rd.closed_at = now
        # stands in for the closing block's hash (docs/chain.md#the-round-seed): fixed at
        # close, the same for every handle, chosen by nobody in the round
        rd.seed = hashlib.sha256(self.salt + number.to_bytes(8, "big")).digest()
        self.emit("RoundClosed", round=number, participants=list(rd.order))
        self._start_attempt(number, rd, 1, now)

    def drop(self, sender: str, number: int, attempt: int, peer: str, now: int) -> None:
        rd = self._closed_round_for(number, attempt)
        self._require_live(number, sender)
        self._require_live(number, peer)
        if peer == sender:
            raise ContractError(ErrorName.BAD_PARAMETERS, {"reason": "cannot vote to drop oneself"})
        _not_before(rd.attempt_start + self.params.transfer_deadline, now)
        if (attempt, sender, peer) in rd.voted:
            raise ContractError(
                ErrorName.DUPLICATE_VOTE,
                {"round": number, "attempt": attempt, "voter": sender, "peer": peer},
            )
        rd.voted.add((attempt, sender, peer))
        rd.votes[(attempt, peer)] += 1
        votes = rd.votes[(attempt, peer)]
        self.emit("DropVoted", round=number, attempt=attempt, voter=sender, peer=peer)
        if 2 * votes > rd.live - 1:
            self.emit("Dropped", round=number, attempt=attempt, peer=peer)
            self._remove_live(number, rd, peer, now)

    def withdraw(self, sender: str, number: int, now: int) -> None:
        if number != self.current:
            raise ContractError(ErrorName.WRONG_ROUND, {"current": self.current, "given": number})
        if self.rounds[number].status != RoundStatus.CLOSED:
            raise ContractError(ErrorName.ROUND_NOT_CLOSED, {"round": number})
        self._require_live(number, sender)
        self._withdraw(number, sender, now)

    def _withdraw(self, number: int, account: str, now: int) -> None:
        rd = self.rounds[number]
        self.emit("Withdrawn", round=number, attempt=rd.attempt, node=account)
        self._remove_live(number, rd, account, now)

    def _remove_live(self, number: int, rd: _Round, peer: str, now: int) -> None:
        rd.seats[peer]["dropped_at"] = rd.attempt
        rd.live -= 1
        if rd.live < self.min_live:
            self._fail(number, rd, FailReason.TOO_FEW_LIVE)
        else:
            self._start_attempt(number, rd, rd.attempt + 1, now)

    def expire(self, number: int, now: int) -> None:
        if number != self.current:
            raise ContractError(ErrorName.WRONG_ROUND, {"current": self.current, "given": number})
        rd = self.rounds[number]
        if rd.status == RoundStatus.CLOSED:
            start = rd.closed_at
        else:
            if not rd.order:
                raise ContractError(
                    ErrorName.TOO_FEW_JOINED,
                    {"round": number, "joined": 0, "needed": self.params.min_peers},
                )
            start = rd.first_join_at
        _not_before(start + self.params.round_deadline, now)
        self._fail(number, rd, FailReason.EXPIRED)

    def report(self, sender: str, number: int, attempt: int, digest: bytes) -> None:
        rd = self._closed_round_for(number, attempt)
        seat = self._require_live(number, sender)
        if seat["reported_at"] == attempt:
            raise ContractError(
                ErrorName.DUPLICATE_REPORT, {"round": number, "attempt": attempt, "node": sender}
            )
        if not any(digest) or digest == _NO_DIGEST:
            raise ContractError(ErrorName.BAD_PARAMETERS, {"reason": "digest must be set"})
        seat["reported_at"] = attempt
        self.emit("Reported", round=number, attempt=attempt, node=sender, digest=bytes(digest))
        if rd.lead is None or rd.lead == digest:
            rd.lead = bytes(digest)
            rd.lead_count += 1
            count = rd.lead_count
        else:
            rd.other_counts[(attempt, bytes(digest))] += 1
            count = rd.other_counts[(attempt, bytes(digest))]
        rd.reports += 1
        rd.max_count = max(rd.max_count, count)
        needed = self.params.quorum(rd.live)
        if count >= needed:
            rd.status = RoundStatus.FINAL
            rd.final_digest = bytes(digest)
            self.last_final = number
            self.emit("RoundFinalized", round=number, attempt=attempt, digest=bytes(digest))
            self._open(number + 1)
        elif rd.max_count + (rd.live - rd.reports) < needed:
            self._fail(number, rd, FailReason.REPORTS_DISAGREE)

    # -- helpers
    def _open_round_for(self, number: int) -> _Round:
        if number != self.current:
            raise ContractError(ErrorName.WRONG_ROUND, {"current": self.current, "given": number})
        rd = self.rounds[number]
        if rd.status != RoundStatus.OPEN:
            raise ContractError(ErrorName.ROUND_NOT_OPEN, {"round": number})
        return rd

    def _closed_round_for(self, number: int, attempt: int) -> _Round:
        if number != self.current:
            raise ContractError(ErrorName.WRONG_ROUND, {"current": self.current, "given": number})
        rd = self.rounds[number]
        if rd.status != RoundStatus.CLOSED:
            raise ContractError(ErrorName.ROUND_NOT_CLOSED, {"round": number})
        if attempt != rd.attempt:
            raise ContractError(ErrorName.WRONG_ATTEMPT, {"current": rd.attempt, "given": attempt})
        return rd

    def _require_live(self, number: int, account: str) -> dict[str, Any]:
        seat = self.rounds[number].seats.get(account)
        if seat is None:
            raise ContractError(ErrorName.NOT_A_PARTICIPANT, {"round": number, "node": account})
        if seat["dropped_at"] != 0:
            raise ContractError(ErrorName.NOT_LIVE, {"round": number, "node": account})
        return seat

    def _start_attempt(self, number: int, rd: _Round, attempt: int, now: int) -> None:
        rd.attempt = attempt
        rd.attempt_start = now
        rd.reports = rd.lead_count = rd.max_count = 0
        rd.lead = None
        self.emit("AttemptStarted", round=number, attempt=attempt, startedAt=now, live=rd.live)

    def _fail(self, number: int, rd: _Round, reason: FailReason) -> None:
        rd.status = RoundStatus.FAILED
        rd.fail_reason = reason
        self.emit("RoundFailed", round=number, reason=int(reason))
        self._open(number + 1)

    def _open(self, number: int) -> None:
        self.current = number
        self.rounds[number].status = RoundStatus.OPEN
        self.emit("RoundOpened", round=number)

    def round_state(self, number: int) -> RoundState:
        rd = self.rounds.get(number) or _Round()
        seats = tuple(
            Seat(
                account=a,
                commitment=rd.seats[a]["commitment"],
                weight=rd.seats[a]["weight"],
                val_loss=rd.seats[a]["val_loss"],
                dropped_at=rd.seats[a]["dropped_at"],
                reported_at=rd.seats[a]["reported_at"],
            )
            for a in rd.order
        )
        return RoundState(
            number=number,
            status=rd.status,
            fail_reason=rd.fail_reason,
            attempt=rd.attempt,
            joined=len(rd.order),
            live=rd.live,
            reports=rd.reports,
            first_join_at=rd.first_join_at,
            closed_at=rd.closed_at,
            attempt_start=rd.attempt_start,
            seats=seats,
            final_digest=rd.final_digest,
            seed=rd.seed,
            training=self.training,
        )


_NO_DIGEST = (1).to_bytes(32, "big")


def _not_before(not_before: int, now: int) -> None:
    if now < not_before:
        raise ContractError(ErrorName.TOO_EARLY, {"notBefore": not_before, "now": now})


def _check_endpoint(endpoint: str) -> None:
    if not 0 < len(endpoint.encode()) <= 255:
        raise ContractError(ErrorName.BAD_PARAMETERS, {"reason": "endpoint must be 1-255 bytes"})


def _check_uint(value: int, bits: int, name: str) -> None:
    if not 0 <= value < 2**bits:
        raise ContractError(
            ErrorName.BAD_PARAMETERS, {"reason": f"{name} does not fit in uint{bits}"}
        )


class InMemoryChain:
    """Holds in-memory swarms and the clock they share; hands out per-account ledgers."""

    def __init__(self, clock: Callable[[], float] | None = None, salt: bytes | None = None) -> None:
        self._clock = clock or ManualClock()
        self._lock = threading.Lock()
        self._swarms: dict[str, _Swarm] = {}
        # made once per chain, so every handle on it (every node) sees the same round seeds,
        # and two chains never share them; a simulation passes its own, so that a seeded run
        # draws the same segment owners again
        self._salt = os.urandom(32) if salt is None else bytes(salt)
        self._given_salt = None if salt is None else bytes(salt)
        self._accounts = 0
        self._keys: dict[str, bytes] = {}  # the private key of each account new_account made

    def now(self) -> int:
        return int(self._clock())

    def advance(self, seconds: float) -> None:
        """Moves time forward; only valid with the default ManualClock."""
        if not isinstance(self._clock, ManualClock):
            raise TypeError("advance() needs the chain's own ManualClock")
        self._clock.advance(seconds)

    def new_account(self) -> str:
        """A fresh account with a private key its ledgers sign with (`Ledger.sign`); the key
        is drawn from the salt when the chain was given one, so that a seeded simulation's
        accounts, and with them its segment owners, repeat."""
        if self._given_salt is None:
            key = secrets.token_bytes(32)
        else:
            with self._lock:
                self._accounts += 1
                count = self._accounts
            drawn = hashlib.sha256(self._given_salt + b"account" + count.to_bytes(8, "big"))
            key = drawn.digest()  # below secp256k1's order but with odds of 2^-128
        account = _address_of(key)
        with self._lock:
            self._keys[account] = key
        return account

    def _sign(self, account: str, message: bytes) -> bytes:
        key = self._keys.get(account)
        if key is None:
            raise LedgerError(f"{account} was not made by this chain's new_account: no key")
        from swarmnode.secagg.signing import sign_with_key

        return sign_with_key(key, message)

    def deploy(self, params: SwarmParams, owner: str, *, validate: bool = True) -> str:
        """`validate=False` skips the caller-side check so that tests reach the swarm's own."""
        if validate:
            params.validate()
        owner = _account(owner)
        with self._lock:
            address = _random_address()
            self._swarms[address] = _Swarm(address, owner, params, self.now(), self._salt)
            return address

    def ledger(self, address: str, account: str) -> InMemoryLedger:
        return InMemoryLedger(self, self._swarms[_account(address)], account)

    def _call(self, swarm: _Swarm, fn: Callable[[], None]) -> None:
        """Runs one state change as one 'block', all or nothing (checks precede writes)."""
        with self._lock:
            swarm.new_block()
            fn()


class InMemoryLedger(Ledger):
    """Ledger over an in-memory swarm: same behaviour as the contract, no chain."""

    def __init__(self, chain: InMemoryChain, swarm: _Swarm, account: str) -> None:
        self._chain = chain
        self._swarm = swarm
        self._account = _account(account)

    @property
    def account(self) -> str:
        return self._account

    @property
    def address(self) -> str:
        return self._swarm.address

    def sign(self, message: bytes) -> bytes:
        return self._chain._sign(self._account, message)

    def now(self) -> int:
        return self._chain.now()

    def _do(self, fn: Callable[[], None]) -> None:
        self._chain._call(self._swarm, fn)

    # roster
    def register(self, endpoint: str, certificate: bytes) -> None:
        self._do(lambda: self._swarm.register(self._account, endpoint, certificate))

    def update_endpoint(self, endpoint: str) -> None:
        self._do(lambda: self._swarm.update_endpoint(self._account, endpoint))

    def deregister(self) -> None:
        self._do(lambda: self._swarm.deregister(self._account, self.now()))

    def allow(self, account: str) -> None:
        account = _account(account)
        self._do(lambda: self._swarm.allow(self._account, account))

    def revoke(self, account: str) -> None:
        account = _account(account)
        self._do(lambda: self._swarm.revoke(self._account, account, self.now()))

    def node(self, account: str) -> NodeRecord | None:
        return self._swarm.nodes.get(_account(account))

    def active_nodes(self) -> list[NodeRecord]:
        nodes = self._swarm.nodes
        return [nodes[a] for a in self._swarm.active]

    def is_allowed(self, account: str) -> bool:
        return self._swarm.allowed.get(_account(account), False)

    def params(self) -> SwarmParams:
        return self._swarm.params

    def owner(self) -> str:
        return self._swarm.owner

    # rounds
    def current_round(self) -> int:
        return self._swarm.current

    def round(self, number: int) -> RoundState:
        with self._chain._lock:
            return self._swarm.round_state(number)

    def latest_model(self) -> tuple[int, bytes]:
        last = self._swarm.last_final
        if last == 0:
            return 0, self._swarm.params.initial_model_digest
        digest = self._swarm.rounds[last].final_digest
        assert digest is not None
        return last, digest

    def drop_votes(self, number: int, attempt: int, peer: str) -> int:
        rd = self._swarm.rounds.get(number)
        return 0 if rd is None else rd.votes.get((attempt, _account(peer)), 0)

    def join(self, number: int, commitment: bytes, weight: int, val_loss: int) -> None:
        self._do(
            lambda: self._swarm.join(
                self._account, number, commitment, weight, val_loss, self.now()
            )
        )

    def leave(self, number: int) -> None:
        self._do(lambda: self._swarm.leave(self._account, number))

    def close(self, number: int) -> None:
        self._do(lambda: self._swarm.close(number, self.now()))

    def drop(self, number: int, attempt: int, peer: str) -> None:
        peer = _account(peer)
        self._do(lambda: self._swarm.drop(self._account, number, attempt, peer, self.now()))

    def withdraw(self, number: int) -> None:
        self._do(lambda: self._swarm.withdraw(self._account, number, self.now()))

    def report(self, number: int, attempt: int, digest: bytes) -> None:
        self._do(lambda: self._swarm.report(self._account, number, attempt, digest))

    def expire(self, number: int) -> None:
        self._do(lambda: self._swarm.expire(number, self.now()))

    def finish(self) -> None:
        self._do(lambda: self._swarm.finish(self._account, self.now()))

    def training_nodes(self) -> list[str]:
        with self._chain._lock:
            return self._swarm.training_nodes()

    # events
    def events(self, cursor: int) -> tuple[list[LedgerEvent], int]:
        with self._chain._lock:
            events = self._swarm.events
            start = bisect.bisect_left(events, (cursor, 0), key=lambda e: e.position)
            return events[start:], self._swarm.block + 1

    def start_cursor(self) -> int:
        return 1
