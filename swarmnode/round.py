"""One swarm round, end to end, as one node takes part in it: join, close, all-reduce,
report, final (docs/round-protocol.md).

The chain decides everything that must be agreed: who is in, in which order, who was
dropped, which digest won. Deadlines are judged by this node's clock from the start times
the chain stores (docs/round-protocol.md#clocks); a deadline call that the chain finds too
early is retried by the ledger, and a call that only finds the round moved on is read as
news, not as an error.

`Round` is one node's part in one round: its steps (wait for an open round, join, await the
close, one attempt, settle) are methods that share the round's running totals, and
`RoundSettings` holds what a node fixes once for all its rounds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import partial
from typing import TypeVar, cast

import numpy as np
import numpy.typing as npt

from swarmnode import canonical
from swarmnode.address import normalize
from swarmnode.allreduce import (
    AllReduceResult,
    AllReduceRunner,
    Attempt,
    MissingContributions,
    Traffic,
)
from swarmnode.error_names import ErrorName
from swarmnode.exceptions import ContractError, MergeError, PeerError
from swarmnode.ledger.base import Ledger
from swarmnode.ledger.types import FailReason, RoundState, RoundStatus
from swarmnode.merge import MergeRule
from swarmnode.p2p.errors import NotFound, NotReady
from swarmnode.p2p.inbox import Inbox
from swarmnode.p2p.transport import ByteSplit, Transport
from swarmnode.secagg.errors import Equivocation, UpdateOutOfBound
from swarmnode.secagg.fixedpoint import FixedPoint
from swarmnode.secagg.masking import RoundContext
from swarmnode.secagg.session import Prepared, Session
from swarmnode.secure_merge import SecureRound, SecureRouter
from swarmnode.sync import loss_to_int

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class RoundOutcome(StrEnum):
    """How a round ended for this node (docs/round-protocol.md#outcomes).

    The values are what log lines, node.jsonl and report.json carry: a member compares equal
    to its string, formats as it and is written to JSON as it; its repr is the string's too,
    so that a list of outcomes prints as a user reads it (['final', 'caught_up'])."""

    def __repr__(self) -> str:
        return repr(self.value)

    FINAL = "final"  # the round finalized the digest this node reported
    CAUGHT_UP = "caught_up"  # final without or against this node: it fetched the winner
    LOST = "lost"  # final against this node (on the way to caught_up, unless no peer served)
    FAILED_TOO_FEW = "failed_too_few"  # drops or withdrawals left too few live participants
    FAILED_DISAGREED = "failed_disagreed"  # the reports could no longer make a quorum
    EXPIRED = "expired"  # the round deadline passed first
    NOT_ADMITTED = "not_admitted"  # the round closed before this node's join
    STOPPED = "stopped"  # asked to stop before joining
    LEFT = "left"  # asked to stop (or restarted) before the round closed
    WITHDRAWN = "withdrawn"  # asked to stop, and the closed round did not end within the grace
    DROPPED = "dropped"  # voted out, and asked to stop before the survivors finished
    NO_PEERS = "no_peers"  # fewer nodes still training than min_peers, itself included


@dataclass(frozen=True)
class RoundSettings:
    """How a node runs all its rounds, fixed when the node is made (Syncer, SwarmNode,
    SwarmCallback and FlowerNode take one) instead of patched onto it afterwards."""

    poll: float = 0.05  # seconds between reads of the round while waiting on the chain
    # chunks per data-plane frame; None: about 2 MiB of payload (docs/round-protocol.md#data-plane)
    frame_chunks: int | None = None
    # set (SIGTERM): do not join; leave a round that has not closed; finish a closed one if
    # it ends within `stop_grace`, else withdraw (docs/round-protocol.md#withdrawing)
    stop: threading.Event | None = None
    # seconds a closed round may still take once this round sees `stop`; None: twice the
    # transfer deadline, room to vote out a silent peer and run the attempt again
    stop_grace: float | None = None
    # called once the round has closed, e.g. to re-read the roster: a participant may have
    # registered just now
    on_closed: Callable[[], object] | None = None
    sleep: Callable[[float], None] = time.sleep  # how a wait between polls passes
    # seconds a wait on the chain or the peers lasts before it says, at INFO, what it waits
    # for (round, peers, deadline), and again every as many seconds while it lasts
    wait_log_every: float = 5.0


DEFAULT_SETTINGS = RoundSettings()

# Refusals that say the round moved on, or that this node's call had already counted: the
# node reads the round again (docs/round-protocol.md#clocks).
_NEWS = frozenset({ErrorName.DUPLICATE_REPORT, ErrorName.DUPLICATE_VOTE, ErrorName.NOT_LIVE})


@dataclass
class RoundResult:
    """What one round did for this node."""

    round: int
    attempt: int
    status: RoundOutcome
    participants: tuple[str, ...]
    merged: npt.NDArray[np.float32] | None
    digest: bytes | None
    seconds: dict[str, float] = field(default_factory=dict)
    traffic: Traffic = field(default_factory=Traffic)
    transactions: int = 0
    gas: int = 0  # what this node's mined transactions of the round used, from receipts
    checked: int = 0  # segments its last all-reduce checked itself (AllReduceResult.checked)
    accused: tuple[str, ...] = ()  # peers its last all-reduce saw fail it (evidence, not votes)


class Round:
    """This node's part in one round: make one per round and call `run()` once.

    The steps add to the round's totals (seconds per kind, traffic, transactions) and record
    what they learn (the attempt this node last reduced, whether it withdrew); `run()` turns
    them into a RoundResult.

    With `settings.stop`, each transfer runs in a helper thread while this one watches the
    request and the chain: waiting on a silent peer holds neither the withdrawal back nor
    the move to a new attempt that another participant's withdrawal or drop started.
    """

    def __init__(
        self,
        *,
        ledger: Ledger,
        transport: Transport,
        inbox: Inbox,
        rule: MergeRule,
        vector: npt.NDArray[np.float32],
        weight: int,
        val_loss: float,
        reference: npt.NDArray[np.float32] | None = None,
        settings: RoundSettings = DEFAULT_SETTINGS,
    ) -> None:
        self.ledger, self.transport, self.inbox, self.rule = ledger, transport, inbox, rule
        self.settings = settings
        self.me = ledger.account
        self.params = ledger.params()
        self._started = time.perf_counter()
        self.seconds = {"chain": 0.0, "transfer": 0.0, "merge": 0.0}
        self.traffic = Traffic()
        self.transactions = 0
        self._gas_before = ledger.gas_used
        self.vector, self.weight, self.val_loss = vector, weight, val_loss
        self.reference = reference  # the last merged model, for rules that need one
        self.hashes = canonical.chunk_hashes(vector)
        self.commitment = canonical.digest_from_chunk_hashes(self.hashes)
        grace = settings.stop_grace
        self._stopping = _Stopping(
            settings.stop, 2.0 * self.params.transfer_deadline if grace is None else grace
        )
        self._give_up = self._stopping.overdue if settings.stop is not None else None
        self._reduced: tuple[Attempt, AllReduceResult] | None = None  # the last one reported
        self._withdrawn = False
        self._alone = False  # left the open round because no peers are left to merge with
        self._wire_mark: tuple[ByteSplit, ByteSplit] | None = None  # the wire when it joined
        self._mark: int | None = None  # the chain's head at the last read (_read, _pause)
        # secure aggregation (docs/secure-aggregation.md#in-a-round): secrets drawn at join,
        # the session set up after close, the handler serving peers' messages meanwhile
        self._prepared: Prepared | None = None
        self._secure: SecureRound | None = None
        self._router: SecureRouter | None = None

    # -- the steps

    def run(self) -> RoundResult:
        """Contributes `vector` (the snapshot this node commits to) to the current round."""
        found = self._wait_open()
        if found is None:  # asked to stop before joining: nothing to leave
            return self._finish(self.ledger.current_round(), RoundOutcome.STOPPED)
        opened, missed = found
        number = opened.number
        if missed is not None:
            # A round went on without us: take its model (docs/round-protocol.md#catch-up)
            # rather than join the next one with a model that never saw it.
            caught = self._catch_up_on(self.ledger.round(missed))
            if caught is not None:
                return caught
        if self._no_peers_left(opened):  # nobody to merge with: do not join at all
            return self._finish(number, RoundOutcome.NO_PEERS)
        if not self._join(number):
            return self._after_late_join(number)
        # the first attempt's traffic counts from here: peers that see the round close first
        # push before this node declares it, and their frames wait in its Inbox
        # (docs/round-protocol.md#not-ready)
        self._wire_mark = self.transport.wire.split()
        state = self._wait_closed(number)
        if state.status == RoundStatus.OPEN:  # we left: asked to stop, or no peers are left
            self.inbox.finish_round(number)
            alone = self._alone
            return self._finish(number, RoundOutcome.NO_PEERS if alone else RoundOutcome.LEFT)
        if self.settings.on_closed is not None and state.status == RoundStatus.CLOSED:
            self.settings.on_closed()
        state = self._take_part(state)
        self.inbox.finish_round(number)
        return self._settle(state)

    def _join(self, number: int) -> bool:
        """Joins with the commitment, weight and loss (docs/round-protocol.md#joining);
        False if the round had closed or moved on first."""
        loss = loss_to_int(self.val_loss)
        commitment = self.commitment
        if self.params.secure_aggregation is not None:
            # the join binds the announcement and hides the plain digest
            # (docs/secure-aggregation.md#in-a-round); peers' messages wait for the session
            self._prepared = Prepared(_swarm_id(self.ledger), number, self.me, self.commitment)
            commitment = self._prepared.commitment
            self._router = SecureRouter()
            self.inbox.serve_secagg(number, self._router)
        return self._chain(partial(self.ledger.join, number, commitment, self.weight, loss))

    def _after_late_join(self, number: int) -> RoundResult:
        """The round closed (or moved on) before our join: wait for it to end, then take its
        model like a node that missed it, instead of training a little and knocking again."""
        caught = self._catch_up_on(self._wait_ended(number))
        return caught if caught is not None else self._finish(number, RoundOutcome.NOT_ADMITTED)

    def _take_part(self, state: RoundState) -> RoundState:
        """Attempts until the closed round ends, this node is dropped (it then waits the
        round out, to catch up like a late node), or it withdraws to stop."""
        while state.status == RoundStatus.CLOSED:
            if self.me not in state.live_participants:
                log.warning("%s: dropped from round %d in attempt %d", *self._where(state))
                return self._wait_ended(state.number)
            if self._stopping.overdue():  # asked to stop and the round did not end in time
                self._withdrawn = self._chain(partial(self.ledger.withdraw, state.number))
                if self._withdrawn:
                    return state
                state = self.ledger.round(state.number)  # it moved on meanwhile: see how
                continue
            state = self._attempt(state)
        return state

    def _attempt(self, state: RoundState) -> RoundState:
        """One attempt: the all-reduce, then the report (docs/round-protocol.md#reporting),
        or votes against the peers it missed (docs/round-protocol.md#faults-and-votes).
        Returns the round as it stands once the attempt is over for this node."""
        attempt = _attempt_of(state, self.params.checked_merge)
        try:
            if self._prepared is not None:
                attempt = self._set_up_secure(state, attempt)
            reduced = self._transfer(state, attempt)
        except MissingContributions as missing:
            log.warning("%s: round %d attempt %d: %s", *self._where(state), missing)
            if self._stopping.overdue():  # withdraw rather than vote
                return state
            self._vote_out(state, missing.peers)
            return self._wait_moved(state)
        except Equivocation as caught:  # proved by two roots it signed: voted out
            log.warning("%s: round %d attempt %d: %s", *self._where(state), caught)
            if self._stopping.overdue():
                return state
            self._vote_out(state, caught.accounts)
            return self._wait_moved(state)
        except (MergeError, PeerError) as exc:
            log.warning("%s: round %d attempt %d failed here: %s", *self._where(state), exc)
            return self._wait_moved(state)
        if reduced is None:  # stopping past the grace, or the chain moved to a new attempt
            return self.ledger.round(state.number)
        self._count(reduced)
        self._reduced = (attempt, reduced)
        self._chain(partial(self.ledger.report, state.number, attempt.attempt, reduced.digest))
        for peer, why in reduced.accused.items():
            log.warning("%s: round %d attempt %d: %s %s", *self._where(state), peer, why)
        return self._wait_moved(state, tuple(reduced.accused))

    def _set_up_secure(self, state: RoundState, attempt: Attempt) -> Attempt:
        """Secure aggregation's setup, in the first attempt this node takes part in:
        openings and masked roots exchanged among that attempt's participants
        (MissingContributions names those that sent none in time). Once masked, never again
        in the round; a setup that ended before masking (an opening missing: nobody can mask
        without it) runs again in the next attempt, among its participants, with the same
        secrets (docs/secure-aggregation.md#failures). Returns the attempt with the masked
        roots as the commitments rows are checked against."""
        again = self._secure is not None and self._secure.session.masked is None
        if self._secure is None or (again and attempt.attempt > self._secure.setup_attempt):
            assert self._prepared is not None and self._router is not None
            secure = self.params.secure_aggregation
            assert secure is not None
            fixed = FixedPoint(
                peers=self.params.max_peers,
                max_weight=secure.max_weight,
                bound=float(secure.bound),
                fraction_bits=secure.fraction_bits,
            )
            context = RoundContext.of(
                self._prepared.swarm, state.number, attempt.participants, fixed
            )
            weights = dict(zip(attempt.participants, attempt.weights, strict=True))
            session = Session(
                self._prepared, context, attempt.commitments, weights, sign=self.ledger.sign
            )
            self._secure = SecureRound(session, self.transport, attempt.attempt)
            self._router.use(self._secure)
            deadline = time.monotonic() + max(
                1.0, state.attempt_start + self.params.transfer_deadline - self.ledger.now()
            )
            try:
                lacking = self._secure.exchange(self.vector, deadline)
            except UpdateOutOfBound as exc:  # not encoded at all: the others vote it out
                raise MergeError(f"round {state.number}: this node's update: {exc}") from None
            if lacking:
                raise MissingContributions("secure-aggregation setup", lacking)
        session = self._secure.session
        if session.masked is None:
            raise MergeError(
                f"round {state.number}: secure aggregation was not set up in attempt "
                f"{self._secure.setup_attempt} here, so this node cannot take part"
            )
        unknown = [p for p in attempt.participants if p not in session.roots]
        if unknown:
            raise MergeError(f"no masked roots from {', '.join(unknown)}")
        roots = {p: session.roots[p] for p in attempt.participants}
        return replace(attempt, commitments=roots)

    def _transfer(self, state: RoundState, attempt: Attempt) -> AllReduceResult | None:
        """This attempt's all-reduce, bounded by its transfer deadline; None if abandoned
        (with `stop`, it runs in a helper thread watched against the request and the chain)."""
        deadline = state.attempt_start + self.params.transfer_deadline
        secure = self._secure
        work = AllReduceRunner(
            me=self.me,
            attempt=attempt,
            update=self.vector if secure is None else secure.session.masked,  # type: ignore[arg-type]
            hashes=self.hashes if secure is None else secure.session.hashes,
            rule=self.rule,
            transport=self.transport,
            inbox=self.inbox,
            reference=self.reference,
            timeout=max(1.0, deadline - self.ledger.now()),
            frame_chunks=self.settings.frame_chunks,
            counted_from=self._wire_mark,
            secure=secure,
        ).run
        self._wire_mark = None  # a later attempt counts from its own start
        give_up = self._give_up
        # without `stop` nothing abandons the transfer; it is watched only to say what it
        # waits for when it lasts (its own timeout bounds it)
        watch = None if give_up is None else _transfer_watch(self.ledger, state, give_up)
        patience = self._patience()

        def watched() -> bool:
            patience(lambda: self._waiting_for_transfer(attempt, deadline))
            return watch is not None and watch()

        return _unless(watched, self.settings.poll, work)

    def _settle(self, state: RoundState) -> RoundResult:
        """The result once the round ended for this node, with the model it ends with, which
        it then serves to peers catching up."""
        if self._withdrawn:
            log.info("%s withdrew from round %d (attempt %d) to stop", *self._where(state))
            return self._finish(state.number, RoundOutcome.WITHDRAWN, state.attempt)
        outcome, merged, hashes = self._model(state)
        if merged is not None:
            self.inbox.publish_model(state.number, merged, hashes)
        digest = state.final_digest if merged is not None else None
        last = self._reduced[0].participants if self._reduced is not None else None
        participants = state.live_participants if last is None else last
        return self._finish(state.number, outcome, state.attempt, participants, merged, digest)

    def _model(
        self, state: RoundState
    ) -> tuple[RoundOutcome, npt.NDArray[np.float32] | None, bytes]:
        """How the round ended for this node, and the model it ends with and its chunk
        hashes: its own merge if its digest won, else the winner fetched from a participant;
        none if the round failed."""
        reduced = self._reduced[1] if self._reduced is not None else None
        outcome = _ended(state, reduced is not None)
        if outcome == RoundOutcome.FINAL and reduced is not None:
            if state.final_digest == reduced.digest:
                return outcome, reduced.merged, reduced.hashes  # hashed once, by the all-reduce
            outcome = RoundOutcome.LOST  # our digest lost the quorum
        if outcome == RoundOutcome.LOST and state.final_digest is not None:
            merged = self._fetch_winner(state, state.final_digest)
            if merged is not None:
                return RoundOutcome.CAUGHT_UP, merged, canonical.chunk_hashes(merged)
        return outcome, None, b""

    # -- catching up (docs/round-protocol.md#catch-up)

    def _catch_up_on(self, state: RoundState) -> RoundResult | None:
        """caught_up with a final round's model from its participants, checked against its
        digest; None if the round is not final or no participant had the model."""
        if state.status != RoundStatus.FINAL or state.final_digest is None:
            return None
        t0 = time.perf_counter()
        try:
            merged = catch_up(
                self.transport,
                state.number,
                state.final_digest,
                len(self.vector),
                state.live_participants,
                timeout=float(self.params.transfer_deadline),
            )
        except PeerError as exc:
            log.warning("%s: %s", self.me, exc)
            return None
        finally:
            self.seconds["transfer"] += time.perf_counter() - t0
        self.inbox.publish_model(state.number, merged, canonical.chunk_hashes(merged))
        participants = state.live_participants
        return self._finish(
            state.number, RoundOutcome.CAUGHT_UP, 0, participants, merged, state.final_digest
        )

    def _fetch_winner(self, state: RoundState, digest: bytes) -> npt.NDArray[np.float32] | None:
        """The round is final without (or against) us: its model, from another participant;
        None (the round ends lost, the local model kept) if no participant served the model
        whose digest is on chain, so that a dishonest or failing peer costs this node one
        round's merge, never its process (docs/round-protocol.md#catch-up)."""
        t0 = time.perf_counter()
        peers = [p for p in state.live_participants if p != self.me]
        try:
            return catch_up(
                self.transport,
                state.number,
                digest,
                len(self.vector),
                peers,
                timeout=float(self.params.transfer_deadline),
            )
        except PeerError as exc:
            log.warning("%s: round %d: %s", self.me, state.number, exc)
            return None
        finally:
            self.seconds["transfer"] += time.perf_counter() - t0

    # -- the chain

    def _chain(self, call: Callable[[], None]) -> bool:
        """Sends one transaction; False when the round had moved on (a stale view)."""
        t0 = time.perf_counter()
        try:
            call()
            self.transactions += 1
            return True
        except ContractError as err:
            if err.stale_view or err.name in _NEWS:
                # a stale view is a race the round settles by reading the chain (a close sent
                # second, a report the quorum beat: docs/round-protocol.md#clocks), no news
                log.log(logging.DEBUG if err.stale_view else logging.INFO, "%s: %s", self.me, err)
                return False
            raise
        finally:
            self.seconds["chain"] += time.perf_counter() - t0

    def _read(self, number: int) -> RoundState:
        """Round `number` now, noting how far the chain was first: `_pause` then waits for
        a change after this read, and one that lands before the wait still wakes it."""
        self._mark = self.ledger.head()
        return self.ledger.round(number)

    def _pause(self) -> None:
        """Between two reads of a wait: until the chain changes (a block, on a ledger that
        can say so: docs/chain.md#waiting-for-blocks) or WAKE_RECHECK passes, for the
        deadlines that only time brings; on a chain that cannot wake it (or with a sleep of
        the caller's, such as a test's), `poll` seconds."""
        mark = self._mark
        if mark is None or self.settings.sleep is not time.sleep:
            self.settings.sleep(self.settings.poll)
        else:
            self.ledger.wait_change(mark, max(self.settings.poll, WAKE_RECHECK))

    def _wait_open(self) -> tuple[RoundState, int | None] | None:
        """(the current round once this node can join it, the round it waited out or None);
        None if asked to stop first.

        A round under way without this node is waited out (a join would only be refused,
        and training on meanwhile would drift from the swarm), until it ends or its round
        deadline lets this node expire it; a seat it holds without the round's state is
        given up first (`leave_unfinished`)."""
        missed: int | None = None
        patience = self._patience()
        while not self._stop_requested():
            self._mark = self.ledger.head()
            number = self.ledger.current_round()
            state = self.ledger.round(number)
            if _holds_seat(state, self.me):
                given_up = leave_unfinished(self.ledger)
                if given_up is not None:
                    log.warning(
                        "%s held a seat in round %d without its state: %s", self.me, *given_up
                    )
                continue
            if state.status == RoundStatus.OPEN:
                return state, missed
            missed = number
            if not self._expire_if_due(state):
                patience(partial(self._waiting_out, state))
                self._pause()
        return None

    def _wait_closed(self, number: int) -> RoundState:
        """Until the round closes (closing it ourselves once the window allows, see
        docs/round-protocol.md#closing) or ends; if asked to stop first, or once no peers
        are left to merge with (docs/round-protocol.md#finishing), leaves the open round and
        returns it still open. Bounded by the round deadline, from the first join."""
        patience = self._patience()
        while True:
            state = self._read(number)
            if state.status != RoundStatus.OPEN:
                return state
            if self._stop_requested() or self._no_peers_left(state):
                self._alone = not self._stop_requested()
                if self._chain(partial(self.ledger.leave, number)):
                    return self.ledger.round(number)
                self._alone = False
                continue  # it closed meanwhile: take part after all
            close_at = state.close_allowed_at(self.params)
            if self._expire_if_due(state):
                continue
            if close_at is not None and self.ledger.now() >= close_at:
                self._chain(partial(self.ledger.close, number))
            else:
                patience(partial(self._waiting_for_joins, state))
                self._pause()

    def _wait_ended(self, number: int) -> RoundState:
        """Until a round this node is not (or no longer) part of is final or failed; expires
        it when its deadline passes, so nothing waits forever. Returns early if asked to
        stop."""
        patience = self._patience()
        while True:
            state = self._read(number)
            if state.status in (RoundStatus.FINAL, RoundStatus.FAILED):
                return state
            if self._stop_requested():
                return state
            if not self._expire_if_due(state):
                patience(partial(self._waiting_out, state))
                self._pause()

    def _wait_moved(self, seen: RoundState, accused: tuple[str, ...] = ()) -> RoundState:
        """Until the round ends or leaves `seen`'s attempt, or stopping says to stop waiting;
        votes out the peers this node saw fail it (`accused`) once drop votes count, and
        those that have not reported once that is overdue, and expires the round when its
        deadline passes, so nothing waits forever."""
        voted: set[str] = set()
        patience = self._patience()
        while True:
            state = self._read(seen.number)
            if state.status != RoundStatus.CLOSED or state.attempt != seen.attempt:
                return state
            if self._give_up is not None and self._give_up():
                return state
            if self._expire_if_due(state):
                continue
            allowed = state.drop_allowed_at(self.params)
            due = [p for p in accused if p not in voted and p in state.live_participants]
            if due and allowed is not None and self.ledger.now() >= allowed:
                self._vote_out(state, due)
                voted.update(due)
            overdue = state.report_overdue_at(self.params)
            if overdue is not None and self.ledger.now() >= overdue:
                silent = [
                    s.account
                    for s in state.seats
                    if s.live and s.reported_at != seen.attempt and s.account not in voted
                ]
                self._vote_out(state, silent)  # past the drop deadline already: votes at once
                voted.update(silent)
            patience(partial(self._waiting_for_reports, state))
            self._pause()

    def _vote_out(self, state: RoundState, peers: tuple[str, ...] | list[str]) -> None:
        """Votes to drop `peers` once the attempt's transfer deadline has passed by our clock."""
        allowed = state.drop_allowed_at(self.params)
        if allowed is None:
            return
        if allowed - self.ledger.now() > self.settings.wait_log_every:
            log.info(
                "%s: round %d attempt %d: waiting until drop votes count, %s, to vote out %s",
                *self._where(state),
                self._when(allowed),
                _accounts(peers),
            )
        while (wait := allowed - self.ledger.now()) > 0:  # again if the clock lagged the sleep
            self.settings.sleep(wait)
        for peer in peers:
            if peer != self.me:
                self._chain(partial(self.ledger.drop, state.number, state.attempt, peer))

    def _expire_if_due(self, state: RoundState) -> bool:
        """Expires the round once its deadline has passed by our clock; True if it tried."""
        expire_at = state.expires_at(self.params)
        if expire_at is None or self.ledger.now() < expire_at:
            return False
        self._chain(partial(self.ledger.expire, state.number))
        return True

    # -- who is left, and what a long wait waits for

    def _no_peers_left(self, state: RoundState) -> bool:
        """Fewer nodes still training than min_peers, this one included: no round can close,
        so waiting would only end in an expired round (docs/round-protocol.md#finishing).

        Only once the swarm has had a final round: before that, peers may still be on their
        way to registering, and the round deadline bounds the wait for them. The count comes
        with every read of the round; the roster is read only when it is short."""
        needed = self.params.min_peers
        if state.training is None or state.training >= needed:
            return False
        others = sum(1 for account in self.ledger.training_nodes() if account != self.me)
        if others + 1 >= needed or self.ledger.latest_model()[0] == 0:
            return False
        log.info(
            "%s: no peers left: %d other node(s) still training, round %d needs %d: "
            "not waiting for round %d",
            self.me,
            others,
            state.number,
            needed,
            state.number,
        )
        return True

    def _patience(self) -> _Patience:
        return _Patience(self.settings.wait_log_every)

    def _when(self, at: int | None) -> str:
        """A chain time as a log line gives it: the UTC time and how far off it is."""
        if at is None:
            return "never"
        clock = time.strftime("%H:%M:%S", time.gmtime(at))
        return f"at {clock} UTC (in {at - self.ledger.now()} s)"

    def _waiting_out(self, state: RoundState) -> str:
        return (
            f"{self.me}: waiting for round {state.number} ({state.status.name.lower()}, "
            f"without this node; participants {_accounts(state.live_participants)}) to end; "
            f"its round deadline is {self._when(state.expires_at(self.params))}"
        )

    def _waiting_for_joins(self, state: RoundState) -> str:
        joined = set(state.participants)
        missing = [a for a in self.ledger.training_nodes() if a not in joined]
        close_at = state.close_allowed_at(self.params)
        closes = (
            f"it closes once they have, or {self._when(close_at)} (join window)"
            if close_at is not None
            else f"it needs {self.params.min_peers} joined to close"
        )
        return (
            f"{self.me}: round {state.number}: {state.joined} of {state.training} nodes still "
            f"training joined; waiting for {_accounts(missing)} to join; {closes}; "
            f"it expires {self._when(state.expires_at(self.params))} (round deadline)"
        )

    def _waiting_for_transfer(self, attempt: Attempt, deadline: int) -> str:
        return (
            f"{self.me}: round {attempt.round} attempt {attempt.attempt}: all-reduce with "
            f"{_accounts(attempt.participants)} under way; its transfer deadline is "
            f"{self._when(deadline)}"
        )

    def _waiting_for_reports(self, state: RoundState) -> str:
        silent = [s.account for s in state.seats if s.live and s.reported_at != state.attempt]
        return (
            f"{self.me}: round {state.number} attempt {state.attempt}: waiting for reports "
            f"from {_accounts(silent)} ({state.reports} of {state.live} in, "
            f"{self.params.quorum(state.live)} agreeing needed); silent ones may be voted out "
            f"{self._when(state.report_overdue_at(self.params))}; the round expires "
            f"{self._when(state.expires_at(self.params))}"
        )

    # -- bookkeeping

    def _stop_requested(self) -> bool:
        return self.settings.stop is not None and self.settings.stop.is_set()

    def _where(self, state: RoundState) -> tuple[str, int, int]:
        return self.me, state.number, state.attempt

    def _count(self, reduced: AllReduceResult) -> None:
        for name, value in reduced.seconds.items():
            self.seconds["merge" if name == "merge" else "transfer"] += value
        self.traffic.add(reduced.traffic.sent_split, reduced.traffic.received_split)

    def _finish(
        self,
        number: int,
        outcome: RoundOutcome,
        attempt: int = 0,
        participants: tuple[str, ...] = (),
        merged: npt.NDArray[np.float32] | None = None,
        digest: bytes | None = None,
    ) -> RoundResult:
        """The result, with the round's total time and the gas its receipts show."""
        self.seconds["total"] = time.perf_counter() - self._started
        gas = self.ledger.gas_used - self._gas_before
        return RoundResult(
            number,
            attempt,
            outcome,
            participants,
            merged,
            digest,
            self.seconds,
            self.traffic,
            self.transactions,
            gas,
            0 if self._reduced is None else self._reduced[1].checked,
            () if self._reduced is None else tuple(self._reduced[1].accused),
        )


def leave_unfinished(ledger: Ledger) -> tuple[int, RoundOutcome] | None:
    """Gives up a seat this account holds in the current round without the round's state.

    A restarted daemon (or a node whose part in a round ended in an error) no longer has the
    snapshot it committed to or anything it received, so it cannot take part: it leaves the
    round while open and withdraws while closed (docs/round-protocol.md#withdrawing), so
    that the others go on at once instead of waiting out the transfer deadline to vote it
    out; it joins the next round. Returns (round, left or withdrawn), or None if it held no
    live seat.
    """
    number = ledger.current_round()
    state = ledger.round(number)
    if not _holds_seat(state, ledger.account):
        return None
    try:
        if state.status == RoundStatus.OPEN:
            ledger.leave(number)
            return number, RoundOutcome.LEFT
        if state.status == RoundStatus.CLOSED:
            ledger.withdraw(number)
            return number, RoundOutcome.WITHDRAWN
    except ContractError as err:
        if err.stale_view or err.name == ErrorName.NOT_LIVE:
            return None  # the round moved on, or the others voted us out, meanwhile
        raise
    return None


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
    a peer with a wrong or corrupt model is refused and not asked again. A peer that does
    not hold the model yet (it has not seen the round final: NotFound, NotReady) is asked
    again, a little later, until `timeout`: a node whose digest lost is often the first to
    see the round final, before any winner has published its model."""
    deadline = time.monotonic() + timeout
    failures: dict[str, str] = {}
    waiting = list(peers)
    delay = 0.05
    while waiting:
        later: list[str] = []
        for peer in waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                return transport.fetch_model(peer, round, digest, numel, left)
            except (NotFound, NotReady) as exc:
                failures[peer] = str(exc)
                later.append(peer)
            except PeerError as exc:
                log.warning("catch-up of round %d from %s refused: %s", round, peer, exc)
                failures[peer] = str(exc)
        if not later or time.monotonic() + delay >= deadline:
            break
        time.sleep(delay)
        delay = min(2 * delay, 1.0)
        waiting = later
    raise PeerError(
        f"no peer had round {round}'s final model: "
        + "; ".join(f"{p}: {why}" for p, why in failures.items())
    )


def _swarm_id(ledger: Ledger) -> bytes:
    """What secure aggregation binds its keys to: the contract's 20 address bytes."""
    return bytes.fromhex(normalize(ledger.address)[2:])


def _holds_seat(state: RoundState, account: str) -> bool:
    """A live seat in a round that is still under way."""
    if state.status not in (RoundStatus.OPEN, RoundStatus.CLOSED):
        return False
    return any(s.live and s.account == account for s in state.seats)


def _attempt_of(state: RoundState, checked: bool = True) -> Attempt:
    """What the chain fixed for the current attempt, in the contract's participant order;
    `checked`: the swarm's checked_merge (docs/trust.md#unchecked-merge)."""
    seats = {s.account: s for s in state.seats if s.live}
    live = state.live_participants
    return Attempt(
        round=state.number,
        attempt=state.attempt,
        participants=live,
        weights=tuple(seats[p].weight for p in live),
        commitments={p: seats[p].commitment for p in live},
        seed=state.seed,
        checked=checked,
    )


def _ended(state: RoundState, reduced: bool) -> RoundOutcome:
    """How the round ended, as far as the chain says, for a node that did (or did not)
    finish an attempt's all-reduce."""
    if state.status == RoundStatus.FINAL:
        return RoundOutcome.FINAL if reduced else RoundOutcome.LOST
    if state.status == RoundStatus.CLOSED:
        return RoundOutcome.DROPPED  # and asked to stop before the survivors finished
    return {
        FailReason.EXPIRED: RoundOutcome.EXPIRED,
        FailReason.TOO_FEW_LIVE: RoundOutcome.FAILED_TOO_FEW,
        FailReason.REPORTS_DISAGREE: RoundOutcome.FAILED_DISAGREED,
    }.get(state.fail_reason, RoundOutcome.FAILED_TOO_FEW)


def _accounts(accounts: tuple[str, ...] | list[str]) -> str:
    """Accounts as a log line names them: short, and all of them."""
    return ", ".join(a[:10] for a in accounts) or "nobody"


class _Patience:
    """Says what a wait waits for, at INFO, once it has lasted `every` seconds, and again
    every `every` seconds while it lasts: a wait of a few polls says nothing, a long one is
    never silent, and none floods the log."""

    def __init__(self, every: float) -> None:
        self._every = every
        self._next = time.monotonic() + every

    def __call__(self, describe: Callable[[], str]) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self._every
        log.info("%s", describe())


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
# seconds a wait on a chain that wakes it (Ledger.wait_change) lasts without a new block:
# deadlines come with time, not blocks; they are whole seconds, so this is at most a
# quarter of one late
WAKE_RECHECK = 0.25


def _transfer_watch(
    ledger: Ledger, state: RoundState, give_up: Callable[[], bool]
) -> Callable[[], bool]:
    """True once `give_up()` is, or once the chain has left `state`'s attempt: its result
    could no longer be reported, and the next attempt reuses what was received.

    The first read comes WATCH_EVERY after the transfer started, by which time it has long
    declared its expectations to the inbox: an abandoned transfer never overwrites the next
    attempt's (those calls come first in AllReduceRunner.run and do not block)."""
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
