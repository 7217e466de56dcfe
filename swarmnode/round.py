"""One swarm round, end to end: join, close, all-reduce, report, final (DESIGN.md, the round
protocol). The chain decides everything that must be agreed: who is in, in which order,
who was dropped, which digest won. Deadlines are judged by this node's clock from the start
times the chain stores; a deadline call that the chain finds too early is retried by the
ledger, and a call that only finds the round moved on is read as news, not as an error.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar, cast

import numpy as np
import numpy.typing as npt

from swarmnode import canonical
from swarmnode.allreduce import Attempt, Fault, MissingContributions, Traffic, all_reduce
from swarmnode.exceptions import ContractError, MergeError, PeerError
from swarmnode.ledger.base import Ledger
from swarmnode.ledger.types import RoundState, RoundStatus
from swarmnode.merge import MergeRule
from swarmnode.p2p.inbox import Inbox
from swarmnode.p2p.transport import Transport
from swarmnode.rules import SwarmParams
from swarmnode.sync import loss_to_int

log = logging.getLogger(__name__)

_T = TypeVar("_T")


@dataclass
class RoundResult:
    """What one round did for this node."""

    round: int
    attempt: int
    # final | caught_up | lost | failed_too_few | failed_disagreed | expired | not_admitted,
    # or, when asked to stop: stopped (before joining) | left (before close) | withdrawn
    status: str
    participants: tuple[str, ...]
    merged: npt.NDArray[np.float32] | None
    digest: bytes | None
    seconds: dict[str, float] = field(default_factory=dict)
    traffic: Traffic = field(default_factory=Traffic)
    transactions: int = 0
    gas: int = 0  # what this node's mined transactions of the round used, from receipts


def run_round(
    *,
    ledger: Ledger,
    transport: Transport,
    inbox: Inbox,
    vector: npt.NDArray[np.float32],
    weight: int,
    val_loss: float,
    rule: MergeRule,
    reference: npt.NDArray[np.float32] | None = None,
    poll: float = 0.05,
    sleep: Callable[[float], None] = time.sleep,
    frame_chunks: int = 128,
    fault: Fault | None = None,
    on_closed: Callable[[], object] | None = None,
    stop: threading.Event | None = None,
    stop_grace: float | None = None,
) -> RoundResult:
    """Contributes `vector` (the snapshot this node commits to) to the current round.

    `stop` set (SIGTERM) means: do not join; leave a round that has not closed; finish a
    closed one if it ends within `stop_grace` seconds of when this round first sees the
    request (default: twice the transfer deadline, room to vote out a silent peer and run
    the attempt again), else withdraw from it, so that the others go on at once without
    waiting out a deadline to vote this node out. A node given `stop` (a long-running one:
    the daemon) runs each transfer in a helper thread while this one watches the request
    and the chain: waiting on a silent peer holds neither the withdrawal back nor the move
    to a new attempt that another participant's withdrawal or drop started.
    """
    me = ledger.account
    params = ledger.params()
    started = time.perf_counter()
    seconds = {"chain": 0.0, "transfer": 0.0, "merge": 0.0}
    traffic = Traffic()
    transactions = 0
    gas_before = ledger.gas_used
    hashes = canonical.chunk_hashes(vector)
    commitment = canonical.digest_from_chunk_hashes(hashes)

    def chain(call: Callable[[], None]) -> bool:
        """Sends one transaction; False when the round had moved on (a stale view)."""
        nonlocal transactions
        t0 = time.perf_counter()
        try:
            call()
            transactions += 1
            return True
        except ContractError as err:
            if err.stale_view or err.name in ("DuplicateReport", "DuplicateVote", "NotLive"):
                log.info("%s: %s", me, err)
                return False
            raise
        finally:
            seconds["chain"] += time.perf_counter() - t0

    def fetch_final(state: RoundState) -> npt.NDArray[np.float32] | None:
        """A final round's model from its participants, checked against its digest."""
        if state.status != RoundStatus.FINAL or state.final_digest is None:
            return None
        t0 = time.perf_counter()
        try:
            return catch_up(
                transport, state.number, state.final_digest, len(vector), state.live_participants
            )
        except PeerError as exc:
            log.warning("%s: %s", me, exc)
            return None
        finally:
            seconds["transfer"] += time.perf_counter() - t0

    def finish(
        number: int,
        status: str,
        attempt: int = 0,
        participants: tuple[str, ...] = (),
        merged: npt.NDArray[np.float32] | None = None,
        digest: bytes | None = None,
    ) -> RoundResult:
        """The result, with the round's total time and the gas its receipts show."""
        seconds["total"] = time.perf_counter() - started
        gas = ledger.gas_used - gas_before
        return RoundResult(
            number,
            attempt,
            status,
            participants,
            merged,
            digest,
            seconds,
            traffic,
            transactions,
            gas,
        )

    def caught_up(state: RoundState, merged: npt.NDArray[np.float32]) -> RoundResult:
        inbox.publish_model(state.number, merged, canonical.chunk_hashes(merged))
        return finish(
            state.number, "caught_up", 0, state.live_participants, merged, state.final_digest
        )

    found = _wait_open(ledger, params, chain, poll, sleep, stop)
    if found is None:  # asked to stop before joining: nothing to leave
        return finish(ledger.current_round(), "stopped")
    number, missed = found
    if missed is not None:
        # A round went on without us: take its model (DESIGN.md point 6, a node that missed
        # rounds catches up) rather than join the next one with a model that never saw it.
        missed_state = ledger.round(missed)
        merged = fetch_final(missed_state)
        if merged is not None:
            return caught_up(missed_state, merged)
    scaled_loss = loss_to_int(val_loss)
    if not chain(lambda: ledger.join(number, commitment, weight, scaled_loss)):
        # The round closed (or moved on) before our join: wait for it to end, then take its
        # model like a node that missed it, instead of training a little and knocking again.
        state = _wait_ended(ledger, number, params, chain, poll, sleep, stop)
        merged = fetch_final(state)
        if merged is not None:
            return caught_up(state, merged)
        return finish(number, "not_admitted")

    state = _wait_closed(ledger, number, params, chain, poll, sleep, stop)
    if state.status == RoundStatus.OPEN:  # asked to stop before the round closed: we left
        inbox.finish_round(number)
        return finish(number, "left")
    if on_closed is not None and state.status == RoundStatus.CLOSED:
        on_closed()  # e.g. re-read the roster: a participant may have registered just now
    result: RoundResult | None = None
    merged_hashes = b""  # of our own merged vector, hashed once by the all-reduce
    grace = 2.0 * params.transfer_deadline if stop_grace is None else stop_grace
    stopping = _Stopping(stop, grace)
    give_up = stopping.overdue if stop is not None else None
    withdrawn = False
    while state.status == RoundStatus.CLOSED:
        if me.lower() not in (p.lower() for p in state.live_participants):
            # dropped: the survivors finish without us; then we catch up like a late node
            log.warning("%s: dropped from round %d in attempt %d", me, number, state.attempt)
            state = _wait_ended(ledger, number, params, chain, poll, sleep, stop)
            break
        if stopping.overdue():  # asked to stop and the round did not end in time
            withdrawn = chain(lambda: ledger.withdraw(number))
            if withdrawn:
                break
            state = ledger.round(number)  # it moved on meanwhile: see how
            continue
        seats = {s.account: s for s in state.seats if s.live}
        attempt = Attempt(
            round=number,
            attempt=state.attempt,
            participants=state.live_participants,
            weights=tuple(seats[p].weight for p in state.live_participants),
            commitments={p: seats[p].commitment for p in state.live_participants},
        )
        try:
            reduced = _unless(
                None if give_up is None else _transfer_watch(ledger, state, give_up),
                poll,
                partial(
                    all_reduce,
                    me=me,
                    attempt=attempt,
                    update=vector,
                    hashes=hashes,
                    rule=rule,
                    transport=transport,
                    inbox=inbox,
                    reference=reference,
                    timeout=max(1.0, state.attempt_start + params.transfer_deadline - ledger.now()),
                    frame_chunks=frame_chunks,
                    fault=fault,
                ),
            )
        except MissingContributions as missing:
            log.warning("%s: round %d attempt %d: %s", me, number, state.attempt, missing)
            if not stopping.overdue():  # else withdraw rather than vote
                _vote_out(ledger, state, params, missing.peers, chain, sleep)
                state = _wait_moved(
                    ledger, number, state.attempt, params, chain, poll, sleep, give_up
                )
            continue
        except (MergeError, PeerError) as exc:
            log.warning("%s: round %d attempt %d failed here: %s", me, number, state.attempt, exc)
            state = _wait_moved(ledger, number, state.attempt, params, chain, poll, sleep, give_up)
            continue
        if reduced is None:  # stopping past the grace, or the chain moved to a new attempt
            state = ledger.round(number)
            continue
        for name, value in reduced.seconds.items():
            seconds["merge" if name == "merge" else "transfer"] += value
        traffic.sent += reduced.traffic.sent
        traffic.received += reduced.traffic.received
        result = RoundResult(
            number, state.attempt, "final", attempt.participants, reduced.merged, reduced.digest
        )
        merged_hashes = reduced.hashes
        report = partial(ledger.report, number, attempt.attempt, reduced.digest)
        chain(report)
        state = _wait_moved(ledger, number, state.attempt, params, chain, poll, sleep, give_up)

    inbox.finish_round(number)
    if withdrawn:
        log.info("%s withdrew from round %d (attempt %d) to stop", me, number, state.attempt)
        return finish(number, "withdrawn", state.attempt)
    status = _outcome(state, result)
    merged = result.merged if result is not None else None
    if status == "final" and result is not None and state.final_digest != result.digest:
        status = "lost"  # our digest lost the quorum
    if status == "lost" and state.final_digest is not None:
        # The round is final without (or against) us: fetch the winner from a participant.
        t0 = time.perf_counter()
        peers = [p for p in state.live_participants if p.lower() != me.lower()]
        merged = catch_up(transport, number, state.final_digest, len(vector), peers)
        seconds["transfer"] += time.perf_counter() - t0
        status = "caught_up"
    if status in ("final", "caught_up") and merged is not None:
        hashes = merged_hashes if status == "final" else canonical.chunk_hashes(merged)
        inbox.publish_model(number, merged, hashes)
    else:
        merged = None
    participants = result.participants if result is not None else state.live_participants
    return finish(
        number,
        status,
        state.attempt,
        participants,
        merged,
        state.final_digest if merged is not None else None,
    )


def leave_unfinished(ledger: Ledger) -> tuple[int, str] | None:
    """Gives up a seat this account holds in the current round without the round's state.

    A restarted daemon (or a node whose part in a round ended in an error) no longer has the
    snapshot it committed to or anything it received, so it cannot take part: it leaves the
    round while open and withdraws while closed (DESIGN.md point 7), so that the others go
    on at once instead of waiting out the transfer deadline to vote it out; it joins the
    next round. Returns (round, "left" or "withdrawn"), or None if it held no live seat.
    """
    number = ledger.current_round()
    state = ledger.round(number)
    if not _holds_seat(state, ledger.account):
        return None
    try:
        if state.status == RoundStatus.OPEN:
            ledger.leave(number)
            return number, "left"
        if state.status == RoundStatus.CLOSED:
            ledger.withdraw(number)
            return number, "withdrawn"
    except ContractError as err:
        if err.stale_view or err.name == "NotLive":
            return None  # the round moved on, or the others voted us out, meanwhile
        raise
    return None


def _holds_seat(state: RoundState, account: str) -> bool:
    """A live seat in a round that is still under way."""
    if state.status not in (RoundStatus.OPEN, RoundStatus.CLOSED):
        return False
    return any(s.live and s.account.lower() == account.lower() for s in state.seats)


class _Stopping:
    """A stop request as one round sees it: the grace counts from the first time the round
    notices it, which is within a poll (transfers run in a helper thread meanwhile)."""

    def __init__(self, stop: threading.Event | None, grace: float) -> None:
        self._stop = stop
        self._grace = grace
        self._seen: float | None = None

    def overdue(self) -> bool:
        if self._stop is None or not self._stop.is_set():
            return False
        now = time.monotonic()
        if self._seen is None:
            self._seen = now
            log.info("asked to stop: finishing this round if it ends within %.1f s", self._grace)
        return now - self._seen >= self._grace


WATCH_EVERY = 0.5  # seconds between reads of the round while a transfer runs


def _transfer_watch(
    ledger: Ledger, state: RoundState, give_up: Callable[[], bool]
) -> Callable[[], bool]:
    """True once `give_up()` is, or once the chain has left `state`'s attempt: its result
    could no longer be reported, and the next attempt reuses what was received.

    The first read comes WATCH_EVERY after the transfer started, by which time it has long
    declared its expectations to the inbox: an abandoned transfer never overwrites the next
    attempt's (those calls come first in all_reduce and do not block)."""
    next_read = time.monotonic() + WATCH_EVERY

    def stop_waiting() -> bool:
        nonlocal next_read
        if give_up():
            return True
        if time.monotonic() < next_read:
            return False
        next_read = time.monotonic() + WATCH_EVERY
        now = ledger.round(state.number)
        return now.status != RoundStatus.CLOSED or now.attempt != state.attempt

    return stop_waiting


def _unless(give_up: Callable[[], bool] | None, poll: float, work: Callable[[], _T]) -> _T | None:
    """`work()`, or None as soon as `give_up()` is true while it runs.

    Without `give_up` it runs here. With it, it runs in a daemon thread that is abandoned
    when giving up: an all-reduce only waits on peers and the inbox, never on the chain, and
    it ends by its own timeout.
    """
    if give_up is None:
        return work()
    outcome: list[tuple[bool, object]] = []
    done = threading.Event()

    def run() -> None:
        try:
            outcome.append((True, work()))
        except BaseException as exc:  # handed to the caller's thread below
            outcome.append((False, exc))
        finally:
            done.set()

    threading.Thread(target=run, name="round-transfer", daemon=True).start()
    while not done.wait(poll):
        if give_up():
            return None
    ok, value = outcome[0]
    if not ok:
        assert isinstance(value, BaseException)
        raise value
    return cast(_T, value)


def _wait_open(
    ledger: Ledger,
    params: SwarmParams,
    chain: Callable[[Callable[[], None]], bool],
    poll: float,
    sleep: Callable[[float], None],
    stop: threading.Event | None,
) -> tuple[int, int | None] | None:
    """(the current round once this node can join it, the round it waited out or None);
    None if `stop` is set first.

    A round under way without this node is waited out (a join would only be refused, and
    training on meanwhile would drift from the swarm); a seat it holds without the round's
    state is given up first (`leave_unfinished`)."""
    missed: int | None = None
    while True:
        if stop is not None and stop.is_set():
            return None
        number = ledger.current_round()
        state = ledger.round(number)
        if _holds_seat(state, ledger.account):
            given_up = leave_unfinished(ledger)
            if given_up is not None:
                log.warning(
                    "%s held a seat in round %d without its state: %s", ledger.account, *given_up
                )
            continue
        if state.status == RoundStatus.OPEN:
            return number, missed
        missed = number
        if not _expire_if_due(ledger, state, params, chain):
            sleep(poll)


def catch_up(
    transport: Transport,
    round: int,
    digest: bytes,
    numel: int,
    peers: list[str] | tuple[str, ...],
    timeout: float = 60.0,
) -> npt.NDArray[np.float32]:
    """A final round's model from the first peer whose copy matches the digest on chain.

    Every chunk is checked against the peer's hash list and the list against the digest, so
    a peer with a wrong or corrupt model is refused and the next one is asked."""
    failures: list[str] = []
    for peer in peers:
        try:
            return transport.fetch_model(peer, round, digest, numel, timeout)
        except PeerError as exc:
            log.warning("catch-up of round %d from %s refused: %s", round, peer, exc)
            failures.append(f"{peer}: {exc}")
    raise PeerError(f"no peer had round {round}'s final model: " + "; ".join(failures))


def _outcome(state: RoundState, result: RoundResult | None) -> str:
    from swarmnode.ledger.types import FailReason

    if state.status == RoundStatus.FINAL:
        return "final" if result is not None else "lost"
    if state.status == RoundStatus.CLOSED:
        return "dropped"  # and asked to stop before the survivors finished
    return {
        FailReason.EXPIRED: "expired",
        FailReason.TOO_FEW_LIVE: "failed_too_few",
        FailReason.REPORTS_DISAGREE: "failed_disagreed",
    }.get(state.fail_reason, "failed_too_few")


def _expire_if_due(
    ledger: Ledger,
    state: RoundState,
    params: SwarmParams,
    chain: Callable[[Callable[[], None]], bool],
) -> bool:
    """Expires the round once its deadline has passed by our clock; True if it tried."""
    expire_at = state.expires_at(params)
    if expire_at is None or ledger.now() < expire_at:
        return False
    chain(partial(ledger.expire, state.number))
    return True


def _wait_closed(
    ledger: Ledger,
    number: int,
    params: SwarmParams,
    chain: Callable[[Callable[[], None]], bool],
    poll: float,
    sleep: Callable[[float], None],
    stop: threading.Event | None = None,
) -> RoundState:
    """Until the round closes (closing it ourselves once the window allows) or ends; if
    `stop` is set first, leaves the open round and returns it still open."""
    while True:
        state = ledger.round(number)
        if state.status != RoundStatus.OPEN:
            return state
        if stop is not None and stop.is_set():
            if chain(lambda: ledger.leave(number)):
                return ledger.round(number)
            continue  # it closed meanwhile: take part after all
        close_at = state.close_allowed_at(params)
        if _expire_if_due(ledger, state, params, chain):
            continue
        if close_at is not None and ledger.now() >= close_at:
            chain(lambda: ledger.close(number))
        else:
            sleep(poll)


def _wait_ended(
    ledger: Ledger,
    number: int,
    params: SwarmParams,
    chain: Callable[[Callable[[], None]], bool],
    poll: float,
    sleep: Callable[[float], None],
    stop: threading.Event | None = None,
) -> RoundState:
    """Until a round this node is not (or no longer) part of is final or failed; expires it
    when its deadline passes, so nothing waits forever. Returns early if `stop` is set."""
    while True:
        state = ledger.round(number)
        if state.status in (RoundStatus.FINAL, RoundStatus.FAILED):
            return state
        if stop is not None and stop.is_set():
            return state
        if not _expire_if_due(ledger, state, params, chain):
            sleep(poll)


def _wait_moved(
    ledger: Ledger,
    number: int,
    attempt: int,
    params: SwarmParams,
    chain: Callable[[Callable[[], None]], bool],
    poll: float,
    sleep: Callable[[float], None],
    give_up: Callable[[], bool] | None = None,
) -> RoundState:
    """Until the round ends or starts a new attempt, or `give_up()` says to stop waiting;
    votes out silent peers and expires the round when their deadlines pass, so nothing
    waits forever."""
    voted: set[str] = set()
    while True:
        state = ledger.round(number)
        if state.status != RoundStatus.CLOSED or state.attempt != attempt:
            return state
        if give_up is not None and give_up():
            return state
        if _expire_if_due(ledger, state, params, chain):
            continue
        overdue = state.report_overdue_at(params)
        if overdue is not None and ledger.now() >= overdue:
            silent = [
                s.account
                for s in state.seats
                if s.live and s.reported_at != attempt and s.account not in voted
            ]
            _vote_out(ledger, state, params, silent, chain, lambda _: None)
            voted.update(silent)
        sleep(poll)


def _vote_out(
    ledger: Ledger,
    state: RoundState,
    params: SwarmParams,
    peers: tuple[str, ...] | list[str],
    chain: Callable[[Callable[[], None]], bool],
    sleep: Callable[[float], None],
) -> None:
    """Votes to drop `peers` once the attempt's transfer deadline has passed by our clock."""
    allowed = state.drop_allowed_at(params)
    if allowed is None:
        return
    while (wait := allowed - ledger.now()) > 0:  # again if the clock lagged the sleep
        sleep(wait)
    me = ledger.account.lower()
    for peer in peers:
        if peer.lower() == me:
            continue
        chain(partial(ledger.drop, state.number, state.attempt, peer))
