"""A whole round of secure aggregation in one process, no network: what the tests and the
PRG benchmark drive (docs/secure-aggregation.md#the-in-process-driver).

Every node announces, deals its shares to every participant and masks its update; then any
chunk range can be summed over any set of stayed inputs, each stayed node's revealer
answering (or refusing) exactly as it would for a segment owner over the wire. Rounds over
the network keep the same objects in swarmnode/secagg/session.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy.typing as npt

from swarmnode.address import normalize
from swarmnode.secagg.fixedpoint import Words
from swarmnode.secagg.masking import Announcement, Masker, RoundContext
from swarmnode.secagg.reveal import Reveal, Revealer, RevealRequest
from swarmnode.secagg.unmask import Unmasked, sum_rows, unmask


class LocalRound:
    """The participants of one round, their secrets, shares and masked vectors."""

    def __init__(
        self, context: RoundContext, updates: Mapping[str, tuple[int, npt.ArrayLike]]
    ) -> None:
        self.context = context
        updates = {normalize(a): update for a, update in updates.items()}
        self.maskers = {a: Masker(context, a) for a in context.participants}
        self.revealers = {a: Revealer(context, a) for a in context.participants}
        self.announcements: dict[str, Announcement] = {
            a: m.announcement for a, m in self.maskers.items()
        }
        for masker in self.maskers.values():
            for dealt in masker.deal():
                self.revealers[dealt.holder].receive(dealt)
        self.weights = {a: updates[a][0] for a in context.participants}
        self.masked: dict[str, Words] = {
            a: m.mask(updates[a][0], updates[a][1], self.announcements)
            for a, m in self.maskers.items()
        }

    def request(self, elements: range, stayed: Iterable[str]) -> RevealRequest:
        inputs = frozenset(stayed)
        return RevealRequest.of(
            self.context.round, elements, inputs, set(self.context.participants) - inputs
        )

    def reveals(self, request: RevealRequest, revealers: Iterable[str]) -> list[Reveal]:
        return [self.revealers[a].reveal(request) for a in revealers]

    def aggregate(
        self,
        elements: range,
        stayed: Iterable[str],
        revealers: Iterable[str] | None = None,
        rows: Mapping[str, Words] | None = None,
    ) -> Unmasked:
        """Sum the stayed inputs' rows over `elements` (the masked vectors' slices, unless
        `rows` says otherwise) and unmask the sum with the reveals of `revealers` (all the
        stayed, unless given)."""
        request = self.request(elements, stayed)
        held = (
            rows
            if rows is not None
            else {a: self.masked[a][elements.start : elements.stop] for a in request.stayed}
        )
        masked_sum = sum_rows(self.context.fixed, held.values())
        answers = self.reveals(request, sorted(request.stayed if revealers is None else revealers))
        return unmask(self.context, self.announcements, self.weights, masked_sum, request, answers)
