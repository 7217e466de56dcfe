"""What one node holds and answers for one round of secure aggregation
(docs/secure-aggregation.md#in-a-round).

A round's secure aggregation has three moments, and this module keeps one node's state
across them; it sends nothing itself (the all-reduce carries its messages):

1. Before join (`Prepared`): the round's X25519 key, self-mask seed and a salt are drawn,
   and the join's commitment is C = SHA256(JOIN_DOMAIN || announcement || H), with the
   hiding hash H = SHA256(salt || plain digest). C goes on chain, so no node can later show
   two announcements; H is never opened, so the plain digest never leaves the node.
2. After close (`Session`): the participants are known, so the RoundContext is. The node
   deals its shares, sends each participant its opening (H, announcement, that holder's
   shares), checks every opening it gets against the sender's C (or, for an opening that
   missed it, an announcement another participant relays), masks its vector once for the
   round and publishes the Merkle root of the masked vector's chunk hashes, signed by its
   account; two roots signed by one participant prove it equivocated.
3. Per attempt: an owner that holds every row of its segments says so (rows complete, with
   the digest of the masked roots it checked rows against); this node answers a reveal for
   an attempt only once every owner of that attempt has said so with the digest it holds
   itself, so no reveal leaves while a drop is still possible in that attempt.

Every method that can be called from a server thread takes a deadline and raises NotYet
when what it needs has not come by then: the caller asks again.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from swarmnode import canonical, merkle
from swarmnode.address import normalize
from swarmnode.secagg import shamir
from swarmnode.secagg.errors import (
    Equivocation,
    NotYet,
    RevealRefused,
    SecAggError,
    ShareError,
)
from swarmnode.secagg.fixedpoint import Words
from swarmnode.secagg.masking import (
    SECRET_BYTES,
    Announcement,
    DealtShares,
    Masker,
    RoundContext,
    commit_seed,
)
from swarmnode.secagg.prg import account_bytes
from swarmnode.secagg.reveal import Reveal, Revealer, RevealRequest
from swarmnode.secagg.signing import root_message, signer_of
from swarmnode.secagg.unmask import unmask

log = logging.getLogger(__name__)

JOIN_DOMAIN = b"swarmnode/secagg/v1/join"
ROOTS_DOMAIN = b"swarmnode/secagg/v1/roots"
SALT_BYTES = 32

SignedRoot = tuple[str, bytes, bytes]  # (account, masked root, its signature), as wire.py's


def announcement_bytes(announcement: Announcement) -> bytes:
    """The announcement as the join commitment binds it: account (20 bytes), public key (32)
    and seed commitment (32)."""
    return (
        account_bytes(announcement.account) + announcement.public_key + announcement.seed_commitment
    )


def hiding_hash(salt: bytes, plain_digest: bytes) -> bytes:
    """H = SHA256(salt || plain digest): binds the node to its plain update without showing
    its digest (a digest travelling beside masked rows would tell which chunks changed)."""
    return hashlib.sha256(salt + plain_digest).digest()


def join_commitment(announcement: Announcement, hiding: bytes) -> bytes:
    """C = SHA256(JOIN_DOMAIN || announcement || H): what the node joins with."""
    return hashlib.sha256(JOIN_DOMAIN + announcement_bytes(announcement) + hiding).digest()


def roots_digest(participants: Sequence[str], roots: Mapping[str, bytes]) -> bytes:
    """The digest of the masked roots of `participants`, in their order: two nodes that
    checked rows against the same roots hold the same digest."""
    parts = [ROOTS_DOMAIN]
    for account in participants:
        parts += [account_bytes(account), roots[account]]
    return hashlib.sha256(b"".join(parts)).digest()


class Prepared:
    """The round's secrets, drawn before join, and the commitment the node joins with."""

    def __init__(self, swarm: bytes, round_: int, account: str, plain_digest: bytes) -> None:
        self.swarm, self.round, self.account = bytes(swarm), round_, normalize(account)
        self.key = X25519PrivateKey.generate()
        self.seed = secrets.token_bytes(SECRET_BYTES)
        self.hiding = hiding_hash(secrets.token_bytes(SALT_BYTES), plain_digest)
        self.announcement = Announcement(
            self.account,
            self.key.public_key().public_bytes_raw(),
            commit_seed(self.swarm, round_, self.account, self.seed),
        )
        self.commitment = join_commitment(self.announcement, self.hiding)


@dataclass(frozen=True)
class Opening:
    """What a node sends each participant after close: the opening of its join commitment
    (H and the announcement) and the shares it dealt that holder."""

    hiding: bytes
    announcement: Announcement
    dealt: DealtShares


@dataclass(frozen=True)
class _AttemptView:
    live: tuple[str, ...]  # the attempt's live participants, chain order
    owners: frozenset[str]  # those that own a segment in it
    digest: bytes  # of the live participants' masked roots, as this node holds them


class Session:
    """One node's secure aggregation in one closed round: its masker and revealer, what it
    received from every participant, and per attempt who said its rows are complete."""

    def __init__(
        self,
        prepared: Prepared,
        context: RoundContext,
        joins: Mapping[str, bytes],
        weights: Mapping[str, int],
        sign: Callable[[bytes], bytes],
    ) -> None:
        """`sign`: this node's account signing a message (`Ledger.sign`), for its masked
        root."""
        if (prepared.swarm, prepared.round) != (context.swarm, context.round):
            raise SecAggError(
                f"secrets drawn for round {prepared.round} used in round {context.round}"
            )
        self.context = context
        self.me = prepared.account
        self.joins = {normalize(a): bytes(c) for a, c in joins.items()}
        self.weights = {normalize(a): int(w) for a, w in weights.items()}
        lacking = [p for p in context.participants if p not in self.joins or p not in self.weights]
        if lacking:
            raise SecAggError(f"no join commitment or weight for {', '.join(lacking)}")
        if self.joins.get(self.me) != prepared.commitment:
            raise SecAggError(f"{self.me} joined round {context.round} with another commitment")
        self.masker = Masker(context, self.me, prepared.key, prepared.seed)
        self.revealer = Revealer(context, self.me)
        self._hiding = prepared.hiding
        self._dealt = {d.holder: d for d in self.masker.deal()}
        self.revealer.receive(self._dealt[self.me])
        self.announcements: dict[str, Announcement] = {self.me: prepared.announcement}
        self.hidings: dict[str, bytes] = {self.me: prepared.hiding}  # openings, to relay
        self._sign = sign
        self.equivocators: dict[str, str] = {}  # who signed two masked roots, and the proof
        self.roots: dict[str, bytes] = {}
        self.signatures: dict[str, bytes] = {}
        self.masked: Words | None = None
        self.hashes = b""
        self._attempts: dict[int, _AttemptView] = {}
        self._complete: dict[int, dict[str, bytes]] = {}
        self._cond = threading.Condition()

    # -- after close: openings and masked roots

    def opening(self, holder: str) -> Opening:
        """The opening and shares for `holder`."""
        return Opening(self._hiding, self.announcements[self.me], self._dealt[normalize(holder)])

    def receive_opening(self, sender: str, opening: Opening) -> None:
        """Keeps a participant's announcement and the shares it dealt this node, once its
        opening matches the commitment it joined with."""
        sender = self._participant(sender)
        announcement = opening.announcement
        if normalize(announcement.account) != sender or normalize(opening.dealt.dealer) != sender:
            raise SecAggError(f"{sender} sent an announcement or shares in another's name")
        if join_commitment(announcement, opening.hiding) != self.joins[sender]:
            raise SecAggError(
                f"{sender}'s announcement does not open the commitment it joined with"
            )
        with self._cond:
            known = self.announcements.get(sender)
            if known is not None and known != announcement:
                raise SecAggError(f"{sender} sent two announcements")  # unreachable: C binds
            self.revealer.receive(opening.dealt)  # ShareError if not for this seat
            self.announcements[sender] = announcement
            self.hidings[sender] = bytes(opening.hiding)
            self._cond.notify_all()

    def receive_announcement(self, account: str, hiding: bytes, announcement: Announcement) -> None:
        """A participant's announcement relayed by another, for a node its opening did not
        reach: kept once it opens `account`'s join commitment, so no relay can forge it.
        This node then masks with it but holds no shares of its secrets
        (docs/secure-aggregation.md#failures)."""
        account = self._participant(account)
        if normalize(announcement.account) != account:
            raise SecAggError(f"an announcement in {announcement.account}'s name for {account}")
        if join_commitment(announcement, hiding) != self.joins[account]:
            raise SecAggError(
                f"the announcement relayed for {account} does not open its join commitment"
            )
        with self._cond:
            self.announcements.setdefault(account, announcement)
            self.hidings.setdefault(account, bytes(hiding))
            self._cond.notify_all()

    def wait_opening(self, account: str, deadline: float) -> bool:
        """Whether `account`'s announcement is held here by `deadline` (time.monotonic)."""
        with self._cond:
            return self._cond.wait_for(
                lambda: account in self.announcements, max(0.0, deadline - time.monotonic())
            )

    def opened(self, account: str, deadline: float) -> tuple[bytes, Announcement]:
        """`account`'s hiding hash and announcement as this node checked them, to relay;
        NotYet when its opening has not come by `deadline`."""
        account = self._participant(account)
        with self._cond:
            while account not in self.announcements:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise NotYet(f"no opening from {account} here either")
                self._cond.wait(left)
            return self.hidings[account], self.announcements[account]

    def mask(self, vector: npt.ArrayLike) -> Words:
        """This node's vector masked once for the round (its weight from the chain), its
        chunk hashes and Merkle root; UpdateOutOfBound when the vector breaks the bound."""
        with self._cond:
            lacking = [p for p in self.context.participants if p not in self.announcements]
        if lacking:
            raise NotYet(f"no announcement yet from {', '.join(lacking)}")
        masked = self.masker.mask(self.weights[self.me], vector, self.announcements)
        self.hashes = canonical.word_chunk_hashes(masked)
        self.masked = masked
        root = merkle.root(self.hashes)
        self.receive_root(self.me, root, self._sign(self._root_message(root)))
        return masked

    def _root_message(self, root: bytes) -> bytes:
        return root_message(self.context.swarm, self.context.round, root)

    def _signed_by(self, account: str, root: bytes, signature: bytes) -> bool:
        return signer_of(self._root_message(root), signature) == account

    def receive_root(self, sender: str, root: bytes, signature: bytes) -> None:
        """A participant's masked root, signed by its account: the commitment its masked
        rows are checked against. The same root again is a retry; one not signed by its
        sender is refused; another signed root proves the sender equivocated."""
        sender = self._participant(sender)
        if len(root) != 32:
            raise SecAggError(f"a masked root is 32 bytes, {sender} sent {len(root)}")
        if not self._signed_by(sender, root, signature):
            raise SecAggError(f"{sender}'s masked root is not signed by {sender}")
        with self._cond:
            known = self.roots.get(sender)
            if known is not None and known != root:
                self._equivocated(sender)
                raise SecAggError(f"{sender} sent two different signed masked roots")
            self.roots[sender] = bytes(root)
            self.signatures[sender] = bytes(signature)
            self._cond.notify_all()

    def signed_roots(self, accounts: Iterable[str]) -> list[SignedRoot]:
        """The masked roots of `accounts` this node holds, with their signatures."""
        with self._cond:
            return [(a, self.roots[a], self.signatures[a]) for a in accounts if a in self.roots]

    def roots_unless(self, attempt: int, digest: bytes) -> list[SignedRoot]:
        """Nothing when `digest` is this node's digest of `attempt`'s masked roots; else the
        signed roots behind its own (those of every participant if the attempt has not begun
        here), so the owner that sent `digest` can find which differ and who signed both."""
        with self._cond:
            view = self._attempts.get(attempt)
        if view is not None and view.digest == digest:
            return []
        return self.signed_roots(self.context.participants if view is None else view.live)

    def check_roots(self, sender: str, signed: Sequence[SignedRoot]) -> list[SignedRoot]:
        """Compares the signed roots `sender` relayed with those held here; returns those
        held here that differ. Each such pair, both signed by one account, proves it sent
        two roots: it is kept as an equivocator (the round votes it out). A relayed root
        that its account did not sign is refused (the relay forged it)."""
        differing: list[SignedRoot] = []
        for account, root, signature in signed:
            account = self._participant(account)
            with self._cond:
                known = self.roots.get(account)
            if known is None or known == root:
                continue  # nothing to compare, or what this node checked itself
            if not self._signed_by(account, root, signature):
                raise SecAggError(f"{sender} relayed a masked root {account} did not sign")
            with self._cond:
                self._equivocated(account)
                differing.append((account, known, self.signatures[account]))
        return differing

    def _equivocated(self, account: str) -> None:
        if account not in self.equivocators:
            log.warning(
                "%s: round %d: %s signed two different masked roots",
                self.me,
                self.context.round,
                account,
            )
            self.equivocators[account] = "signed two different masked roots"
        self._cond.notify_all()

    def lacking(self, roots: bool = True) -> list[str]:
        """Participants whose opening (or, with `roots`, masked root) has not come."""
        with self._cond:
            return self._lacking_locked(roots)

    def wait_all(
        self, deadline: float, what: str = "openings and masked roots", roots: bool = True
    ) -> list[str]:
        """Waits until `deadline` (time.monotonic) for every participant's opening and, with
        `roots`, masked root; returns those still lacking (the round votes them out)."""
        with self._cond:
            while lacking := self._lacking_locked(roots):
                left = deadline - time.monotonic()
                if left <= 0:
                    log.info("%s: %s never came from %s", self.me, what, ", ".join(lacking))
                    return lacking
                self._cond.wait(left)
        return []

    def _lacking_locked(self, roots: bool = True) -> list[str]:
        return [
            p
            for p in self.context.participants
            if p not in self.announcements or (roots and p not in self.roots)
        ]

    # -- per attempt

    def begin_attempt(self, attempt: int, live: Sequence[str], owners: Iterable[str]) -> bytes:
        """Declares an attempt the chain started, its live participants and segment owners;
        returns the digest of their masked roots (what rows-complete notices carry)."""
        live = tuple(normalize(p) for p in live)
        with self._cond:
            if any(p not in self.roots for p in live):
                raise NotYet("masked roots of the attempt's participants not all held")
            digest = roots_digest(live, self.roots)
            self._attempts[attempt] = _AttemptView(
                live, frozenset(normalize(o) for o in owners), digest
            )
            self._cond.notify_all()
        return digest

    def receive_rows_complete(
        self, sender: str, attempt: int, digest: bytes, signed: Sequence[SignedRoot] = ()
    ) -> list[SignedRoot]:
        """An owner holds every row of its segments in `attempt`, checked against the masked
        roots whose digest is `digest` (`signed`: the owner's signed copies of roots held
        here otherwise); returns the signed roots held here that differ from them
        (check_roots). A digest other than this node's, without signed roots, is answered
        (roots_unless) but not kept yet: the owner sends its copies next, and only with that
        proof in hand does the mismatch end the wait for owners, as an Equivocation."""
        sender = self._participant(sender)
        differing = self.check_roots(sender, signed)
        with self._cond:
            view = self._attempts.get(attempt)
            if not signed and view is not None and view.digest != digest:
                return differing
            held = self._complete.setdefault(attempt, {})
            if held.get(sender, digest) != digest:
                raise SecAggError(f"{sender} sent two rows-complete digests for {attempt}")
            held[sender] = bytes(digest)
            self._cond.notify_all()
        return differing

    def answer_reveal(
        self, sender: str, attempt: int, request: RevealRequest, digest: bytes, deadline: float
    ) -> Reveal:
        """This node's shares for `request`, asked by `sender` in `attempt`: only for the
        attempt's live participants as inputs, only for the masked roots this node holds,
        and only once every owner of the attempt said its rows are complete with them (else
        NotYet at `deadline`). RevealRefused names the rule a request breaks."""
        self._participant(sender)
        with self._cond:
            while (view := self._attempts.get(attempt)) is None:
                if max(self._attempts, default=-1) > attempt:
                    raise RevealRefused(f"attempt {attempt} is over here")
                if not self._cond.wait(max(0.0, deadline - time.monotonic())):
                    raise NotYet(f"attempt {attempt} has not started here")
            if max(self._attempts) > attempt:
                raise RevealRefused(f"attempt {attempt} is over here")
            if normalize(sender) not in view.live:
                raise RevealRefused(f"{sender} is not live in attempt {attempt}")
            self._refuse_equivocators(view)
            if request.stayed != frozenset(view.live):
                raise RevealRefused(
                    f"a reveal in attempt {attempt} must sum exactly its live participants"
                )
            if digest != view.digest:
                raise RevealRefused(
                    f"{sender} checked rows against other masked roots than this node holds: "
                    f"a participant sent different roots to different nodes"
                )
            while waiting := self._owners_waited_for(attempt, view):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise NotYet(f"rows complete not yet said by {', '.join(sorted(waiting))}")
                self._cond.wait(left)
        try:
            return self.revealer.reveal(request)
        except RevealRefused as refused:
            log.warning(
                "%s: round %d attempt %d: reveal refused: %s",
                self.me,
                self.context.round,
                attempt,
                refused,
            )
            raise

    def wait_owners(self, attempt: int, deadline: float) -> list[str]:
        """Waits until `deadline` for every owner of `attempt` to say its rows are complete;
        returns those that had not (RevealRefused if one said so with other roots)."""
        with self._cond:
            view = self._attempts[attempt]
            while waiting := self._owners_waited_for(attempt, view):
                left = deadline - time.monotonic()
                if left <= 0:
                    return sorted(waiting)
                self._cond.wait(left)
        return []

    def _refuse_equivocators(self, view: _AttemptView) -> None:
        caught = [p for p in view.live if p in self.equivocators]
        if caught:
            raise Equivocation(caught)

    def _owners_waited_for(self, attempt: int, view: _AttemptView) -> set[str]:
        self._refuse_equivocators(view)  # no reveal for a set with two roots of one input
        said = self._complete.get(attempt, {})
        wrong = {o for o in view.owners if o in said and said[o] != view.digest}
        if wrong:
            raise RevealRefused(
                f"{', '.join(sorted(wrong))} checked rows against other masked roots than this "
                f"node holds: a participant sent different roots to different nodes"
            )
        return {o for o in view.owners if o not in said}

    def request(self, attempt: int, elements: range) -> RevealRequest:
        """The reveal request for `elements` in `attempt`: its live participants stayed."""
        view = self._attempts[attempt]
        return RevealRequest.of(
            self.context.round,
            elements,
            view.live,
            [p for p in self.context.participants if p not in view.live],
        )

    def digest(self, attempt: int) -> bytes:
        return self._attempts[attempt].digest

    def unmask(
        self, request: RevealRequest, masked_sum: Words, reveals: Sequence[Reveal]
    ) -> npt.NDArray[np.float32]:
        """The weighted mean over `request.elements`: SumRefused when a mask was left out,
        ShareError when a share lied."""
        return unmask(
            self.context, self.announcements, self.weights, masked_sum, request, reveals
        ).mean

    def find_liar(self, request: RevealRequest, reveals: Sequence[Reveal]) -> str | None:
        """The revealer whose share keeps a secret from rebuilding to what its dealer
        committed to, found by leaving each out in turn (t honest shares among the rest); None
        when every secret rebuilds from the first t shares, or no single one is to blame."""
        for dealer in sorted(request.stayed | request.dropped):
            seed = dealer in request.stayed
            shares = [
                (r.revealer, r.seeds[dealer] if seed else r.keys[dealer])
                for r in reveals
                if dealer in (r.seeds if seed else r.keys)
            ]
            if self._rebuilds(dealer, seed, [s for _, s in shares]):
                continue
            for i, (revealer, _) in enumerate(shares):
                if self._rebuilds(dealer, seed, [s for j, (_, s) in enumerate(shares) if j != i]):
                    return revealer
            return None
        return None

    def _rebuilds(self, dealer: str, seed: bool, shares: Sequence[shamir.Share]) -> bool:
        """Whether the first t shares give the dealer's committed seed (or announced key)."""
        t = self.context.threshold
        if len(shares) < t:
            return False
        try:
            secret = shamir.combine(shares[:t], t, SECRET_BYTES)
        except ShareError:
            return False
        announced = self.announcements[dealer]
        if seed:
            swarm, round_ = self.context.swarm, self.context.round
            return commit_seed(swarm, round_, dealer, secret) == announced.seed_commitment
        key = X25519PrivateKey.from_private_bytes(secret)
        return key.public_key().public_bytes_raw() == announced.public_key

    def check_reveal(self, revealer: str, request: RevealRequest, reveal: Reveal) -> Reveal:
        """A peer's answer, if it answers `request` in its own name; ShareError otherwise."""
        if normalize(reveal.revealer) != normalize(revealer) or reveal.request != request:
            raise ShareError(f"{revealer} answered another request than the one asked")
        return reveal

    def _participant(self, account: str) -> str:
        account = normalize(account)
        if account not in self.context.participants:
            raise SecAggError(f"{account} is not a participant of round {self.context.round}")
        return account
