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


@dataclass
class RoundResult:
    """What one round did for this node."""

    round: int
    attempt: int
    status: str  # final | failed_too_few | failed_disagreed | expired | not_admitted | lost
    participants: tuple[str, ...]
    merged: npt.NDArray[np.float32] | None
    digest: bytes | None
    seconds: dict[str, float] = field(default_factory=dict)
    traffic: Traffic = field(default_factory=Traffic)
    transactions: int = 0


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
) -> RoundResult:
    """Contributes `vector` (the snapshot this node commits to) to the current round."""
    me = ledger.account
    params = ledger.params()
    started = time.perf_counter()
    seconds = {"chain": 0.0, "transfer": 0.0, "merge": 0.0}
    traffic = Traffic()
    transactions = 0
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

    number = ledger.current_round()
    scaled_loss = loss_to_int(val_loss)
    if not chain(lambda: ledger.join(number, commitment, weight, scaled_loss)):
        return RoundResult(number, 0, "not_admitted", (), None, None, seconds, traffic, 0)

    state = _wait_closed(ledger, number, params, chain, poll, sleep, stop)
    if state.status == RoundStatus.OPEN:  # asked to stop before the round closed: we left
        inbox.finish_round(number)
        seconds["total"] = time.perf_counter() - started
        return RoundResult(number, 0, "left", (), None, None, seconds, traffic, transactions)
    if on_closed is not None and state.status == RoundStatus.CLOSED:
        on_closed()  # e.g. re-read the roster: a participant may have registered just now
    result: RoundResult | None = None
    while state.status == RoundStatus.CLOSED:
        if me.lower() not in (p.lower() for p in state.live_participants):
            break  # dropped: the survivors finish without us
        seats = {s.account: s for s in state.seats if s.live}
        attempt = Attempt(
            round=number,
            attempt=state.attempt,
            participants=state.live_participants,
            weights=tuple(seats[p].weight for p in state.live_participants),
            commitments={p: seats[p].commitment for p in state.live_participants},
        )
        try:
            reduced = all_reduce(
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
            )
        except MissingContributions as missing:
            log.warning("%s: round %d attempt %d: %s", me, number, state.attempt, missing)
            _vote_out(ledger, state, params, missing.peers, chain, sleep)
            state = _wait_moved(ledger, number, state.attempt, params, chain, poll, sleep)
            continue
        except (MergeError, PeerError) as exc:
            log.warning("%s: round %d attempt %d failed here: %s", me, number, state.attempt, exc)
            state = _wait_moved(ledger, number, state.attempt, params, chain, poll, sleep)
            continue
        for name, value in reduced.seconds.items():
            seconds["merge" if name == "merge" else "transfer"] += value
        traffic.sent += reduced.traffic.sent
        traffic.received += reduced.traffic.received
        result = RoundResult(
            number, state.attempt, "final", attempt.participants, reduced.merged, reduced.digest
        )
        report = partial(ledger.report, number, attempt.attempt, reduced.digest)
        chain(report)
        state = _wait_moved(ledger, number, state.attempt, params, chain, poll, sleep)

    inbox.finish_round(number)
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
        inbox.publish_model(number, merged, canonical.chunk_hashes(merged))
    else:
        merged = None
    seconds["total"] = time.perf_counter() - started
    participants = result.participants if result is not None else state.live_participants
    return RoundResult(
        number,
        state.attempt,
        status,
        participants,
        merged,
        state.final_digest if merged is not None else None,
        seconds,
        traffic,
        transactions,
    )


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
    return {
        FailReason.EXPIRED: "expired",
        FailReason.TOO_FEW_LIVE: "failed_too_few",
        FailReason.REPORTS_DISAGREE: "failed_disagreed",
    }.get(state.fail_reason, "failed_too_few")


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
        expire_at = state.expires_at(params)
        now = ledger.now()
        if expire_at is not None and now >= expire_at:
            chain(lambda: ledger.expire(number))
        elif close_at is not None and now >= close_at:
            chain(lambda: ledger.close(number))
        else:
            sleep(poll)


def _wait_moved(
    ledger: Ledger,
    number: int,
    attempt: int,
    params: SwarmParams,
    chain: Callable[[Callable[[], None]], bool],
    poll: float,
    sleep: Callable[[float], None],
) -> RoundState:
    """Until the round ends or starts a new attempt; votes out silent peers and expires the
    round when their deadlines pass, so nothing waits forever."""
    voted: set[str] = set()
    while True:
        state = ledger.round(number)
        if state.status != RoundStatus.CLOSED or state.attempt != attempt:
            return state
        now = ledger.now()
        expire_at = state.expires_at(params)
        overdue = state.report_overdue_at(params)
        if expire_at is not None and now >= expire_at:
            chain(lambda: ledger.expire(number))
            continue
        if overdue is not None and now >= overdue:
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
    wait = allowed - ledger.now()
    if wait > 0:
        sleep(wait)
    me = ledger.account.lower()
    for peer in peers:
        if peer.lower() == me:
            continue
        chain(partial(ledger.drop, state.number, state.attempt, peer))
