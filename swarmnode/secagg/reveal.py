"""The shares a node holds of its peers' secrets, and the rules for revealing them
(docs/secure-aggregation.md#unmasking).

For each peer a survivor reveals either its share of the peer's self-mask seed (the peer's
update is in the sum) or its share of the peer's X25519 key (the chain dropped the peer),
never both in one round: with both, anyone holding the peer's masked vector could strip
every mask from it. And it never reveals for two different sets of inputs over overlapping
chunk ranges: the difference of the two sums would be the update of whoever is in one set
and not the other, the trap of "just sum again without the dropped node". The record of
what was revealed is kept per round and checked under a lock, so two owners asking at once
cannot both pass the check.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from swarmnode.address import normalize
from swarmnode.secagg.errors import RevealRefused, ShareError
from swarmnode.secagg.masking import DealtShares, RoundContext
from swarmnode.secagg.shamir import Share


@dataclass(frozen=True)
class RevealRequest:
    """Unmask the sum over `elements` of the inputs of `stayed`; `dropped` are the
    participants whose inputs are not in it. The two must cover the round's participants."""

    round: int
    elements: range
    stayed: frozenset[str]
    dropped: frozenset[str]

    @classmethod
    def of(
        cls, round_: int, elements: range, stayed: Iterable[str], dropped: Iterable[str]
    ) -> RevealRequest:
        return cls(
            round_,
            elements,
            frozenset(normalize(a) for a in stayed),
            frozenset(normalize(a) for a in dropped),
        )


@dataclass(frozen=True)
class Reveal:
    """One revealer's answer: its shares of the seeds of `stayed` and the keys of
    `dropped`, for exactly the request it answers."""

    revealer: str
    request: RevealRequest
    seeds: Mapping[str, Share]
    keys: Mapping[str, Share]


@dataclass
class _Record:
    seeds: set[str] = field(default_factory=set)  # peers whose seed share went out
    keys: set[str] = field(default_factory=set)  # peers whose key share went out
    sums: list[tuple[range, frozenset[str]]] = field(default_factory=list)


class Revealer:
    """One node's held shares for one round and its record of what it revealed."""

    def __init__(self, context: RoundContext, account: str) -> None:
        self.context = context
        self.account = normalize(account)
        self._seat = context.seat(self.account)
        self._held: dict[str, DealtShares] = {}
        self._record = _Record()
        self._lock = threading.Lock()

    def receive(self, dealt: DealtShares) -> None:
        """Keep a dealer's shares for this node; one dealing per dealer, at this seat."""
        dealer = normalize(dealt.dealer)
        self.context.seat(dealer)  # a participant, or ConfigError
        if normalize(dealt.holder) != self.account or not (
            dealt.seed.x == dealt.key.x == self._seat
        ):
            raise ShareError(f"shares from {dealer} are not for {self.account}'s seat")
        with self._lock:
            if dealer in self._held and self._held[dealer] != dealt:
                raise ShareError(f"{dealer} dealt this node two different sets of shares")
            self._held[dealer] = dealt

    def reveal(self, request: RevealRequest) -> Reveal:
        """This node's shares for `request`, or RevealRefused naming the rule it breaks."""
        stayed, dropped = request.stayed, request.dropped
        everyone = frozenset(self.context.participants)
        if request.round != self.context.round:
            raise RevealRefused(
                f"a reveal for round {request.round}; this node holds round "
                f"{self.context.round}'s shares"
            )
        both = stayed & dropped
        if both:
            raise RevealRefused(
                f"refused to reveal both the self-mask share and the key share of "
                f"{_names(both)}: together they unmask its update"
            )
        if stayed | dropped != everyone:
            strangers, missing = (stayed | dropped) - everyone, everyone - stayed - dropped
            raise RevealRefused(
                f"a reveal must place every participant of round {request.round} as stayed "
                f"or dropped; strangers: {_names(strangers)}, missing: {_names(missing)}"
            )
        if self.account not in stayed:
            raise RevealRefused(f"{self.account} is not among the inputs it would unmask")
        if len(stayed) < self.context.threshold:
            raise RevealRefused(
                f"a sum of {len(stayed)} inputs, fewer than the threshold {self.context.threshold}"
            )
        if request.elements.step != 1 or not len(request.elements):
            raise RevealRefused(f"a reveal covers a non-empty range, got {request.elements}")
        with self._lock:
            self._check_history(request)
            lacking = everyone - set(self._held)
            if lacking:
                raise RevealRefused(f"this node holds no shares from {_names(lacking)}")
            self._record.seeds |= stayed
            self._record.keys |= dropped
            if (request.elements, stayed) not in self._record.sums:
                self._record.sums.append((request.elements, stayed))
            seeds = {peer: self._held[peer].seed for peer in stayed}
            keys = {peer: self._held[peer].key for peer in dropped}
        return Reveal(self.account, request, seeds, keys)

    def history(self) -> list[tuple[range, frozenset[str]]]:
        """Every (element range, inputs) this node revealed shares for in the round: what a
        test searches for two sums whose difference would be one node's update."""
        with self._lock:
            return list(self._record.sums)

    def _check_history(self, request: RevealRequest) -> None:
        for elements, inputs in self._record.sums:
            if inputs != request.stayed and _overlap(elements, request.elements):
                raise RevealRefused(
                    f"refused to re-sum elements {_span(request.elements)} over a different "
                    f"set of inputs than the one revealed for {_span(elements)} (differing "
                    f"in {_names(inputs ^ request.stayed)}): two such sums give away an update"
                )
        flipped = (request.stayed & self._record.keys) | (request.dropped & self._record.seeds)
        if flipped:
            raise RevealRefused(
                f"refused to reveal both the self-mask share and the key share of "
                f"{_names(flipped)} in round {request.round}: one was revealed already"
            )


def _overlap(a: range, b: range) -> bool:
    return max(a.start, b.start) < min(a.stop, b.stop)


def _span(elements: range) -> str:
    return f"[{elements.start}, {elements.stop})"


def _names(accounts: Iterable[str]) -> str:
    return ", ".join(sorted(accounts)) or "none"
