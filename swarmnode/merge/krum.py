"""Krum and multi-Krum (Blanchard et al. 2017): keep the contributions closest to their peers.

Each contribution's score is the sum of its squared distances to its n - f - 2 nearest other
contributions; Krum keeps the one with the lowest score, multi-Krum averages the m lowest
(weighted by sample count, as flwr does). The squared distances are taken within the segment
the owner holds, not over the whole vector: no other party's distances enter the selection, so
nobody can steer it with forged sums (docs/round-protocol.md#partial-sums). Owners of different
segments may therefore keep different contributions (docs/trust.md#threat-model). Selection is
computed in float64 on the CPU. On a whole vector held as one segment this is flwr's Krum.
"""

from __future__ import annotations

import math

import torch

from swarmnode.merge.base import (
    ACCUMULATE,
    MergeRule,
    SegmentMerge,
    WeightsLike,
    anchored_sum,
    column_blocks,
    normalized,
)
from swarmnode.rules import MergeRuleId


def pairwise_sq_distances(contributions: torch.Tensor) -> torch.Tensor:
    """(n, n) float64: this segment's part of ||x_i - x_j||^2, exactly symmetric, zero diagonal.

    Computed from the differences, not from |a|^2 + |b|^2 - 2ab: contributions are models that
    differ by small updates, and the Gram form would cancel away most of the distance in float32.
    """
    n, d = contributions.shape
    upper = torch.zeros((n, n), dtype=ACCUMULATE, device=contributions.device)
    for cols in column_blocks(n, d):
        block = contributions[:, cols].to(ACCUMULATE, copy=True)
        for i in range(n - 1):
            diff = block[i + 1 :] - block[i]
            upper[i, i + 1 :] += (diff * diff).sum(dim=1)
    return upper + upper.T


def krum_scores(distances: list[list[float]], f: int) -> list[float]:
    """Per contribution, the sum of its n - f - 2 smallest squared distances to the others.

    The sum runs over the sorted values with math.fsum, so it is exactly rounded and does not
    depend on participant order.
    """
    n = len(distances)
    closest = max(1, n - f - 2)
    scores = []
    for i, row in enumerate(distances):
        others = sorted(v for j, v in enumerate(row) if j != i)
        scores.append(math.fsum(others[:closest]))
    return scores


def krum_select(scores: list[float], keep: int) -> list[int]:
    """Indices of the `keep` lowest scores, ties to the lower index, in participant order."""
    ranked = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    return sorted(ranked[:keep])


class KrumMerge(SegmentMerge):
    """One segment's Krum: one step on the segment's (n, n) squared distances, then the
    selection."""

    def __init__(self, contributions: torch.Tensor, weights: list[float], rule: Krum) -> None:
        self._x = contributions
        self._weights = weights
        self._rule = rule
        self._selected: list[int] | None = None
        self._merged: torch.Tensor | None = None

    @property
    def done(self) -> bool:
        return self._merged is not None

    @property
    def partials_shape(self) -> tuple[int, ...]:
        n = self._x.shape[0]
        return (n, n)

    @property
    def selected(self) -> list[int]:
        """The contributions kept, in participant order (for logs and diagnostics)."""
        if self._selected is None:
            raise RuntimeError("nothing is selected before the distances are computed")
        return self._selected

    def partials(self) -> torch.Tensor:
        return pairwise_sq_distances(self._x)

    def advance(self, totals: torch.Tensor) -> None:
        flat = self._check_totals(totals)
        n = self._x.shape[0]
        distances = [flat[i * n : (i + 1) * n] for i in range(n)]
        keep = max(1, self._rule.m)
        self._selected = krum_select(krum_scores(distances, self._rule.f), keep)
        if keep == 1:
            self._merged = self._x[self._selected[0]].clone()
            return
        kept_weights = [self._weights[i] for i in self._selected]
        p = normalized(kept_weights, self._rule.name)
        rows = self._x[self._selected]
        self._merged = anchored_sum(rows[1:], p[1:], rows[0])

    def result(self) -> torch.Tensor:
        if self._merged is None:
            raise RuntimeError("Krum has no result before the distances are computed")
        return self._merged


class Krum(MergeRule):
    """Krum / multi-Krum. params[0] = f, the Byzantine contributions tolerated; params[1] = m,
    how many lowest-score contributions are averaged (0 or 1: plain Krum, which returns one
    contribution unchanged). Needs n >= max(2f + 3, m) contributions.

    Matches flwr's aggregate_krum(results, num_malicious=f, to_keep=m)."""

    rule_id = MergeRuleId.KRUM
    needs_reason = " (n > 2f + 2 and n >= m)"

    @property
    def f(self) -> int:
        return self.rule.params[0]

    @property
    def m(self) -> int:
        return self.rule.params[1]

    @property
    def name(self) -> str:
        return f"krum (f={self.f}, m={self.m})"

    def begin(
        self,
        contributions: torch.Tensor,
        weights: WeightsLike,
        reference: torch.Tensor | None = None,
    ) -> KrumMerge:
        x, w = self._check(contributions, weights)
        return KrumMerge(x, w, self)
