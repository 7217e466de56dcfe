"""Geometric median by Weiszfeld's iteration, each segment on its own.

The geometric median minimises F(v) = sum_i ||x_i - v||: a minority of contributions, however
far away, moves it only a bounded distance (breakdown point 1/2). Weiszfeld's step

    v_{k+1} = v_k + sum_i beta_i (x_i - v_k),  beta_i = (1 / d_i) / sum_j (1 / d_j),
    d_i = ||x_i - v_k|| within the owner's segment,

needs the distances d_i. They are taken over the segment's rows only, not summed with other
owners' parts, so no peer can steer the weights with forged sums
(docs/round-protocol.md#partial-sums): the result is the geometric median of the segment's rows.
The first estimate is the coordinate-wise median: already robust, so a low iteration cap still
gives a robust result. Contributions are unweighted: a Byzantine node
could claim any sample count, and a weight above half the total makes its contribution the
geometric median.

When the estimate sits exactly on contributions (d_i = 0; the coordinate-wise median start does
this whenever one contribution lies between the others in every coordinate, which a single
attacker among three can arrange), plain Weiszfeld is undefined or, smoothed, stays stuck there.
The step then follows Vardi and Zhang (2000): with eta contributions on the estimate and
R = sum_{d_i > 0} (x_i - v) / d_i, the estimate is optimal if ||R|| <= eta, and otherwise moves
by (1 - eta / ||R||) times the Weiszfeld step over the other contributions. ||R|| is a norm over
the segment, so that iteration takes a second step, on a (1,) sum.

Stopping, decided from the segment's sums only:
at least half the contributions sit on the estimate (then it is a geometric median), or the
last step was no longer than tolerance x the median of the distances d_i, or k reached the
iteration cap. The test is scale- and translation-invariant, and the median, unlike the mean
distance, cannot be inflated by a far minority to make the iteration stop early. The step's
length ||v_k - v_{k-1}|| rides along with the distances, so it costs no extra step. (A test on the
objective's relative improvement would be free too, but F is flat at its minimum: a 1e-6
change in F leaves the estimate ~1e-3 of the spread away from the optimum.)
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
    sq_distances_to,
    sq_norm_of_offsets,
)
from swarmnode.merge.coordinate import coordinate_median
from swarmnode.rules import PPM, MergeRuleId


class WeiszfeldMerge(SegmentMerge):
    """One segment's Weiszfeld iteration: per iteration one step on (n + 1,) sums (the squared
    distances to the estimate, then the last step's squared length), plus one on a (1,) squared
    norm when the estimate sits on a contribution."""

    def __init__(self, contributions: torch.Tensor, tolerance: float, max_iterations: int) -> None:
        self._x = contributions
        self._tolerance = tolerance
        self._max_iterations = max_iterations
        self._estimate = coordinate_median(contributions)
        self._iterations = 0
        self._objective: float | None = None
        self._done = False
        # Set between the two exchanges of a Vardi-Zhang step: 1/d_i off the estimate (0 on
        # it) and how many contributions sit on it.
        self._inverse: list[float] | None = None
        self._on_estimate = 0
        self._last_step = torch.zeros(1, dtype=ACCUMULATE, device=contributions.device)

    @property
    def done(self) -> bool:
        return self._done

    @property
    def iterations(self) -> int:
        """Weiszfeld steps taken so far."""
        return self._iterations

    @property
    def objective(self) -> float | None:
        """F at the latest estimate whose distances were computed (sum of L2 distances)."""
        return self._objective

    @property
    def partials_shape(self) -> tuple[int, ...]:
        return (1,) if self._inverse is not None else (self._x.shape[0] + 1,)

    def partials(self) -> torch.Tensor:
        if self._inverse is not None:
            return sq_norm_of_offsets(self._x, self._inverse, self._estimate)
        return torch.cat([sq_distances_to(self._x, self._estimate), self._last_step])

    def advance(self, totals: torch.Tensor) -> None:
        values = self._check_totals(totals)
        pending, self._inverse = self._inverse, None
        if pending is not None:
            self._finish_vardi_zhang(pending, math.sqrt(values[0]))
            return
        distances = [math.sqrt(v) for v in values[:-1]]
        last_step = math.sqrt(values[-1])
        n = len(distances)
        self._objective = math.fsum(distances)
        on_estimate = sum(1 for d in distances if d == 0.0)
        typical = sorted(distances)[(n - 1) // 2]
        if 2 * on_estimate >= n or (
            self._iterations > 0 and last_step <= self._tolerance * typical
        ):
            self._done = True
            return
        inverse = [0.0 if d == 0.0 else 1.0 / d for d in distances]
        if on_estimate:
            self._inverse, self._on_estimate = inverse, on_estimate
            return
        self._step(inverse, 1.0)

    def _finish_vardi_zhang(self, inverse: list[float], pull: float) -> None:
        if pull <= self._on_estimate:
            self._done = True  # the contributions on the estimate hold it: it is optimal
            return
        self._step(inverse, 1.0 - self._on_estimate / pull)

    def _step(self, inverse: list[float], scale: float) -> None:
        total = math.fsum(inverse)
        coefficients = [scale * v / total for v in inverse]
        estimate = anchored_sum(self._x, coefficients, self._estimate)
        step = estimate.to(ACCUMULATE) - self._estimate.to(ACCUMULATE)
        self._last_step = (step * step).sum().reshape(1)
        self._estimate = estimate
        self._iterations += 1
        if self._iterations >= self._max_iterations:
            self._done = True

    def result(self) -> torch.Tensor:
        if not self._done:
            raise RuntimeError("the Weiszfeld iteration has not finished")
        return self._estimate


class GeometricMedian(MergeRule):
    """Geometric median. params[0] = tolerance_ppm: stop when a step moves the estimate by at
    most tolerance_ppm / 1e6 of the median distance from it to the contributions;
    params[1] = max_iterations: the most Weiszfeld steps. Each segment is merged on its own."""

    rule_id = MergeRuleId.GEOMETRIC_MEDIAN

    @property
    def tolerance(self) -> float:
        return self.rule.params[0] / PPM

    @property
    def max_iterations(self) -> int:
        return self.rule.params[1]

    @property
    def name(self) -> str:
        return f"geometric median (tolerance={self.tolerance:g}, cap={self.max_iterations})"

    def begin(
        self,
        contributions: torch.Tensor,
        weights: WeightsLike,
        reference: torch.Tensor | None = None,
    ) -> WeiszfeldMerge:
        x, _ = self._check(contributions, weights)
        return WeiszfeldMerge(x, self.tolerance, self.max_iterations)
