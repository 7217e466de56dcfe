"""Secure aggregation over the network: a round's openings and masked roots, the attempts'
rows-complete notices, and how an owner turns masked rows into its merged segment
(docs/secure-aggregation.md#in-a-round).

swarmnode/secagg/session.py holds one node's state and decides what it answers;
swarmnode/secagg/wire.py lays out the messages' bodies; this module carries them over the
transport's SecAgg call and serves them from the inbox. The all-reduce asks it for the
attempt's rows (masked words and their masked roots) and for each merged segment, and
otherwise runs unchanged (swarmnode/allreduce.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from swarmnode.address import normalize
from swarmnode.exceptions import ConfigError, MergeError, PeerError
from swarmnode.ownership import Owners
from swarmnode.p2p.errors import InvalidMessage, NotReady, Refused
from swarmnode.p2p.messages import SecAggKind, SecAggMessage
from swarmnode.p2p.transport import Transport
from swarmnode.secagg import wire
from swarmnode.secagg.errors import NotYet, RevealRefused, SecAggError, ShareError
from swarmnode.secagg.fixedpoint import Words
from swarmnode.secagg.reveal import Reveal, RevealRequest
from swarmnode.secagg.session import Opening, Session
from swarmnode.secagg.unmask import sum_rows

log = logging.getLogger(__name__)

CALL_TIMEOUT = 10.0  # seconds one message may take at most, within the caller's own deadline
FETCH_AFTER = 0.5  # seconds (at most a quarter of the setup's time) before openings still
# missing are asked of the others: direct ones come within milliseconds, and a relayed
# announcement asked too early costs one small message
FETCH_PAUSE = 0.1  # seconds between the first two rounds of asking for one, then doubling:
# an opening that reached nobody (its sender died) costs each node about log2(setup / 0.1)
# rounds of small refusals, not one a second


class SecureRound:
    """One node's secure aggregation for one round, over its transport: the session of the
    attempt that set it up (its live participants are the RoundContext's), served from the
    inbox while the round lasts."""

    def __init__(
        self, session: Session, transport: Transport, setup_attempt: int, workers: int = 8
    ) -> None:
        self.session = session
        self.transport = transport
        self.setup_attempt = setup_attempt
        self.me = session.me
        self.round = session.context.round
        self._workers = workers
        self._count = len(session.context.participants)  # bounds what a decoder reads

    @property
    def dtype(self) -> np.dtype[np.unsignedinteger]:
        return self.session.context.fixed.dtype

    @property
    def others(self) -> list[str]:
        return [p for p in self.session.context.participants if p != self.me]

    # -- after close

    def exchange(self, vector: npt.ArrayLike, deadline: float) -> list[str]:
        """Sends every participant its opening, masks this node's vector once every
        announcement is in, sends every participant the masked root; returns the
        participants whose opening or root had not come by `deadline` (time.monotonic)."""
        session = self.session
        self._each(
            lambda peer: self._send(
                peer,
                self.setup_attempt,
                SecAggKind.ANNOUNCE,
                _announce_body(session.opening(peer)),
                deadline,
            ),
            deadline,
        )
        now = time.monotonic()
        fetch_at = now + min(FETCH_AFTER, max(0.0, deadline - now) / 4)
        lacking = session.wait_all(fetch_at, what="openings, for now,", roots=False)
        if lacking:  # an opening that reached only some: its announcement from the others
            self._each(lambda account: self._fetch(account, deadline), deadline, lacking)
            lacking = session.wait_all(deadline, what="announcements", roots=False)
        if lacking:
            return lacking
        session.mask(vector)
        root = session.roots[self.me]
        body = wire.encode_masked_root(root, session.signatures[self.me])
        self._each(
            lambda peer: self._send(
                peer, self.setup_attempt, SecAggKind.MASKED_ROOT, body, deadline
            ),
            deadline,
        )
        return session.wait_all(deadline)

    def _fetch(self, account: str, deadline: float) -> None:
        """`account`'s announcement relayed by the other participants, asked in seat order
        until one has it (its opening may reach them late: asked again, pausing longer each
        time, until `deadline` or until the opening comes here directly). Each answer is
        checked against `account`'s join commitment, so a relay cannot forge it."""
        body = wire.encode_fetch(account)
        pause = FETCH_PAUSE
        while account in self.session.lacking(roots=False):
            for peer in self.others:
                if peer == account or peer in self.session.lacking(roots=False):
                    continue
                try:
                    reply = self._send(
                        peer, self.setup_attempt, SecAggKind.FETCH_ANNOUNCEMENT, body, deadline
                    )
                    self.session.receive_announcement(account, *wire.decode_opened(reply))
                except (PeerError, SecAggError) as exc:
                    log.debug("%s: %s's announcement from %s: %s", self.me, account, peer, exc)
                    continue
                log.info("%s: %s's announcement relayed by %s", self.me, account, peer)
                return
            until = min(deadline, time.monotonic() + pause)
            if self.session.wait_opening(account, until) or time.monotonic() >= deadline:
                return
            pause *= 2

    # -- each attempt

    def begin(self, attempt: int, live: Sequence[str], owners: Owners) -> None:
        """The attempt's live participants and owners, as the chain fixed them."""
        owning = [p for p in owners.order if owners.owned_by(p)]
        self.session.begin_attempt(attempt, live, owning)

    def rows_complete(self, attempt: int, live: Sequence[str], deadline: float) -> None:
        """Tells every live participant (and this node's own session) that this owner holds
        every row of its segments, checked against the masked roots it holds."""
        session = self.session
        digest = session.digest(attempt)
        session.receive_rows_complete(self.me, attempt, digest)
        body = wire.encode_rows_complete(digest)
        peers = [p for p in live if p != self.me]

        def send(peer: str) -> None:
            reply = self._send(peer, attempt, SecAggKind.ROWS_COMPLETE, body, deadline)
            if not reply:  # the peer holds the same masked roots
                return
            # it holds others: its signed roots, compared with ours, show who signed two
            theirs = wire.decode_evidence(reply, participants=self._count)
            try:
                differing = session.check_roots(peer, theirs)
            except SecAggError as exc:  # a root its participant did not sign: forged
                raise InvalidMessage(f"{peer}'s masked roots: {exc}") from None
            if differing:  # our copies: the peer then holds the proof as well
                proof = wire.encode_rows_complete(digest, differing)
                self._send(peer, attempt, SecAggKind.ROWS_COMPLETE, proof, deadline)

        self._each(send, deadline, peers)

    def silent_owners(self, attempt: int, deadline: float) -> list[str]:
        """The owners that had not said their rows are complete by `deadline`; Equivocation
        as soon as a live participant is proved to have signed two masked roots."""
        return self.session.wait_owners(attempt, deadline)

    def merge(
        self, attempt: int, elements: range, rows: Sequence[npt.NDArray[Any]], deadline: float
    ) -> npt.NDArray[np.float32]:
        """The merged segment over `elements` from every live participant's masked row: the
        rows summed modulo 2^k, unmasked with the first t reveals that check, decoded.
        MergeError when the sum is refused or too few revealers answer."""
        if not len(elements):  # an empty segment (fewer chunks than owners): nothing to ask
            return np.empty(0, dtype=np.float32)
        session = self.session
        masked_sum = sum_rows(session.context.fixed, cast(Sequence[Words], rows))
        request = session.request(attempt, elements)
        digest = session.digest(attempt)
        body = wire.encode_reveal_request(request, digest)
        t = session.context.threshold
        stayed = [self.me, *(p for p in session.context.participants if p in request.stayed)]
        asked = list(dict.fromkeys(stayed))
        refused: dict[str, str] = {}
        reveals = self._reveals(asked, attempt, request, digest, body, deadline, t, refused)
        if len(reveals) < t:
            why = "; ".join(f"{p}: {w}" for p, w in sorted(refused.items()))
            raise MergeError(
                f"round {self.round} attempt {attempt}: {len(reveals)} of the {t} reveals "
                f"needed for elements [{elements.start}, {elements.stop}) ({why})"
            )
        try:
            return session.unmask(request, masked_sum, reveals)
        except ShareError:  # a share lied: ask everyone else too and decode around it
            rest = [p for p in asked if p not in {r.revealer for r in reveals} | set(refused)]
            reveals += self._reveals(rest, attempt, request, digest, body, deadline, None, refused)
        while (liar := session.find_liar(request, reveals)) is not None:
            log.warning(
                "%s: round %d attempt %d: %s revealed a share that does not rebuild its "
                "dealer's secret; unmasking without it",
                self.me,
                self.round,
                attempt,
                liar,
            )
            reveals = [r for r in reveals if r.revealer != liar]
            if len(reveals) < t:
                break
            try:
                return session.unmask(request, masked_sum, reveals[:t])
            except ShareError:
                continue
        raise MergeError(
            f"round {self.round} attempt {attempt}: the reveals for elements "
            f"[{elements.start}, {elements.stop}) do not rebuild the committed secrets"
        )

    def _reveals(
        self,
        peers: Sequence[str],
        attempt: int,
        request: RevealRequest,
        digest: bytes,
        body: bytes,
        deadline: float,
        enough: int | None,
        refused: dict[str, str],
    ) -> list[Reveal]:
        """The answers of `peers` in turn (this node's own from its session), until `enough`
        (all, if None); those that refuse or fail are noted in `refused`."""
        answers: list[Reveal] = []
        for peer in peers:
            if enough is not None and len(answers) == enough:
                break
            try:
                if peer == self.me:
                    answer = self.session.answer_reveal(peer, attempt, request, digest, deadline)
                else:
                    reply = self._send(peer, attempt, SecAggKind.REVEAL, body, deadline)
                    answer = self.session.check_reveal(
                        peer, request, wire.decode_reveal(reply, participants=self._count)
                    )
            except (PeerError, SecAggError) as exc:
                refused[peer] = str(exc)
                log.info("%s: reveal from %s refused: %s", self.me, peer, exc)
                continue
            answers.append(answer)
        return answers

    # -- serving

    def handle(self, caller: str, message: SecAggMessage, deadline: float) -> bytes:
        """A peer's message for this round (caller roster-checked by the transport)."""
        session, kind, body = self.session, message.kind, message.body
        try:
            if kind in _SETUP:
                if message.attempt != self.setup_attempt:
                    raise Refused(
                        f"round {self.round} was set up in attempt {self.setup_attempt}, "
                        f"not {message.attempt}"
                    )
                if kind == SecAggKind.ANNOUNCE:
                    session.receive_opening(caller, Opening(*wire.decode_announce(body)))
                elif kind == SecAggKind.FETCH_ANNOUNCEMENT:
                    account = wire.decode_fetch(body)
                    try:
                        return wire.encode_opened(*session.opened(account, time.monotonic()))
                    except NotYet as exc:  # at once: the asker asks the others
                        raise Refused(str(exc)) from None
                else:
                    root, signature = wire.decode_masked_root(body)
                    session.receive_root(caller, root, signature)
                return b""
            if message.attempt < self.setup_attempt:
                raise Refused(f"attempt {message.attempt} is before this round's setup")
            if kind == SecAggKind.ROWS_COMPLETE:
                digest, signed = wire.decode_rows_complete(body, participants=self._count)
                session.receive_rows_complete(caller, message.attempt, digest, signed)
                held = session.roots_unless(message.attempt, digest)
                return wire.encode_evidence(held) if held else b""
            if kind == SecAggKind.REVEAL:
                request, digest = wire.decode_reveal_request(body, participants=self._count)
                answer = session.answer_reveal(caller, message.attempt, request, digest, deadline)
                return wire.encode_reveal(answer)
        except NotYet as exc:
            raise NotReady(str(exc)) from None
        except RevealRefused as exc:
            raise Refused(str(exc)) from None
        except (SecAggError, ConfigError, ValueError) as exc:  # wire.py's, the session's checks
            raise InvalidMessage(str(exc)) from None
        raise InvalidMessage(f"unknown secure-aggregation message kind {kind}")

    # -- sending

    def _send(
        self, peer: str, attempt: int, kind: SecAggKind, body: bytes, deadline: float
    ) -> bytes:
        timeout = max(0.05, min(CALL_TIMEOUT, deadline - time.monotonic()))
        message = SecAggMessage(self.round, attempt, kind, body)
        return bytes(self.transport.secagg(peer, message, timeout))

    def _each(
        self,
        send: Callable[[str], object],
        deadline: float,
        peers: Sequence[str] | None = None,
    ) -> None:
        """`send(peer)` to every other participant at once; a peer that fails is logged (its
        data will be missing on its side, or ours, and the waits name it)."""
        targets = self.others if peers is None else list(peers)
        if not targets:
            return
        with ThreadPoolExecutor(max_workers=min(self._workers, len(targets))) as pool:
            futures = {peer: pool.submit(send, peer) for peer in targets}
        for peer, future in futures.items():
            error = future.exception()
            if isinstance(error, PeerError):
                log.info("%s: secure-aggregation message to %s failed: %s", self.me, peer, error)
            elif error is not None:
                raise error


class SecureRouter:
    """A round's SecAgg handler for the inbox: hands each message to the SecureRound of the
    attempt that set the round up, waiting (bounded by the caller's deadline) while this
    node has not set it up yet."""

    def __init__(self) -> None:
        self._current: SecureRound | None = None
        self._cond = threading.Condition()

    def use(self, secure: SecureRound) -> None:
        with self._cond:
            self._current = secure
            self._cond.notify_all()

    def __call__(self, caller: str, message: SecAggMessage, deadline: float) -> bytes:
        with self._cond:
            while (secure := self._current) is None or (
                message.kind in _SETUP and message.attempt > secure.setup_attempt
            ):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise NotReady(f"secure aggregation of attempt {message.attempt} not set up")
                self._cond.wait(left)
        return secure.handle(normalize(caller), message, deadline)


_SETUP = (SecAggKind.ANNOUNCE, SecAggKind.MASKED_ROOT, SecAggKind.FETCH_ANNOUNCEMENT)


def _announce_body(opening: Opening) -> bytes:
    return wire.encode_announce(opening.hiding, opening.announcement, opening.dealt)
