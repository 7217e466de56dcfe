"""Rules that merge each coordinate on its own: weighted mean, median, trimmed mean.

They need no exchange between segment owners, so a segment merged alone is bit-identical to
the same coordinates merged as part of the whole vector.
"""

from __future__ import annotations

import torch

from swarmnode.merge.base import (
    ACCUMULATE,
    DTYPE,
    FinishedMerge,
    MergeRule,
    SegmentMerge,
    WeightsLike,
    anchored_sum,
    column_blocks,
    normalized,
)
from swarmnode.rules import PPM, MergeRuleId


def weighted_mean(contributions: torch.Tensor, weights: list[float], name: str) -> torch.Tensor:
    """sum_i w_i x_i / sum_i w_i, as x_0 + sum_i p_i (x_i - x_0) in participant order."""
    p = normalized(weights, name)
    return anchored_sum(contributions[1:], p[1:], contributions[0])


def coordinate_median(contributions: torch.Tensor) -> torch.Tensor:
    """Per coordinate, the middle value; for even n the average of the two middle values.

    The average (not torch.median's lower median) is the textbook median, is what numpy and
    flwr's aggregate_median compute, and treats the two middle contributions alike. It is
    computed as (lo + hi) * 0.5, numpy's rounding.
    """
    n, d = contributions.shape
    out = torch.empty(d, dtype=DTYPE, device=contributions.device)
    for cols in column_blocks(n, d):
        ordered = torch.sort(contributions[:, cols], dim=0).values
        if n % 2:
            out[cols] = ordered[n // 2]
        else:
            out[cols] = (ordered[n // 2 - 1] + ordered[n // 2]) * 0.5
    return out


def trimmed_count(beta_ppm: int, n: int) -> int:
    """Values cut from each side: floor(beta * n), in integers so that no rounding of beta
    changes it (flwr computes int(beta * n) in floats, which can land one lower)."""
    return beta_ppm * n // PPM


def coordinate_trimmed_mean(contributions: torch.Tensor, cut: int) -> torch.Tensor:
    """Per coordinate, the mean of the values left after cutting `cut` from each side, summed
    as differences from the lowest kept value in float64 (exact for equal inputs)."""
    n, d = contributions.shape
    kept = n - 2 * cut
    out = torch.empty(d, dtype=DTYPE, device=contributions.device)
    for cols in column_blocks(n, d):
        ordered = torch.sort(contributions[:, cols], dim=0).values
        low = ordered[cut].to(ACCUMULATE, copy=True)
        acc = torch.zeros_like(low)
        for i in range(cut + 1, n - cut):
            acc.add_(ordered[i].to(ACCUMULATE, copy=True).sub_(low))
        out[cols] = low.add_(acc.div_(kept))
    return out


class Mean(MergeRule):
    """Weighted mean (FedAvg): weights are sample counts, optionally times a node weight.

    Not robust: one contribution can move it anywhere. Matches flwr's aggregate().
    """

    rule_id = MergeRuleId.MEAN

    def begin(
        self,
        contributions: torch.Tensor,
        weights: WeightsLike,
        reference: torch.Tensor | None = None,
    ) -> SegmentMerge:
        x, w = self._check(contributions, weights)
        return FinishedMerge(weighted_mean(x, w, self.name))


class Median(MergeRule):
    """Coordinate-wise median, unweighted; matches flwr's aggregate_median."""

    rule_id = MergeRuleId.MEDIAN

    def begin(
        self,
        contributions: torch.Tensor,
        weights: WeightsLike,
        reference: torch.Tensor | None = None,
    ) -> SegmentMerge:
        x, _ = self._check(contributions, weights)
        return FinishedMerge(coordinate_median(x))


class TrimmedMean(MergeRule):
    """Coordinate-wise trimmed mean, unweighted; params[0] = beta_ppm, the fraction cut from
    each side (floor(beta * n) values per side; beta < 0.5 always leaves at least one).

    Matches flwr's aggregate_trimmed_avg with proportiontocut = beta."""

    rule_id = MergeRuleId.TRIMMED_MEAN

    @property
    def beta_ppm(self) -> int:
        return self.rule.params[0]

    @property
    def name(self) -> str:
        return f"trimmed mean (beta={self.beta_ppm / PPM:g})"

    def begin(
        self,
        contributions: torch.Tensor,
        weights: WeightsLike,
        reference: torch.Tensor | None = None,
    ) -> SegmentMerge:
        x, _ = self._check(contributions, weights)
        cut = trimmed_count(self.beta_ppm, x.shape[0])
        return FinishedMerge(coordinate_trimmed_mean(x, cut))
