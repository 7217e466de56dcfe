"""Centered clipping (Karimireddy, He and Jaggi, ICML 2021), each segment on its own.

Starting from the last merged model v_0, each iteration moves the estimate by the average of
the contributions' offsets, each offset clipped to an L2 radius tau within the owner's segment:

    v_{l+1} = v_l + (1/n) sum_i (x_i - v_l) * min(1, tau / ||x_i - v_l||)

A contribution can pull the estimate at most tau / n per iteration, however far away it is and
whatever direction it picks, which is what holds up against "a little is enough" and
inner-product attacks that stay inside the coordinate-wise rules' blind spots. Each iteration
needs the norms ||x_i - v_l||, taken over the segment's rows only (the ButterflyClip idea,
Gorbunov et al. 2022): no other party's sums enter the clip factors, so forged ones cannot
steer them (docs/round-protocol.md#partial-sums). The average is unweighted (1/n): a weight by
claimed sample count would let one node buy a larger pull.

tau is tau_ppm / 1e6, an absolute L2 radius in the model's parameter units, applied to each
segment: a contribution moves each segment by at most tau / n per iteration, so the whole vector
by at most sqrt(segments) x tau / n (docs/trust.md#threat-model).
"""

from __future__ import annotations

import math

import torch

from swarmnode.merge.base import (
    MergeRule,
    SegmentMerge,
    WeightsLike,
    anchored_sum,
    check_reference,
    sq_distances_to,
)
from swarmnode.rules import PPM, MergeRuleId


def clip_factors(sq_norms: list[float], tau: float) -> list[float]:
    """min(1, tau / ||x_i - v||) per contribution; 1 for a zero offset."""
    factors = []
    for sq in sq_norms:
        norm = math.sqrt(sq)
        factors.append(1.0 if norm <= tau else tau / norm)
    return factors


class CenteredClippingMerge(SegmentMerge):
    """One segment's centered clipping; one step on (n,) squared norms per iteration."""

    def __init__(
        self, contributions: torch.Tensor, reference: torch.Tensor, tau: float, iterations: int
    ) -> None:
        self._x = contributions
        self._estimate = reference.clone()
        self._tau = tau
        self._iterations = iterations
        self._done_iterations = 0
        self._done = False

    @property
    def done(self) -> bool:
        return self._done

    @property
    def iterations(self) -> int:
        """Clipping iterations applied so far."""
        return self._done_iterations

    @property
    def partials_shape(self) -> tuple[int, ...]:
        return (self._x.shape[0],)

    def partials(self) -> torch.Tensor:
        return sq_distances_to(self._x, self._estimate)

    def advance(self, totals: torch.Tensor) -> None:
        sq_norms = self._check_totals(totals)
        n = len(sq_norms)
        if all(sq == 0.0 for sq in sq_norms):
            # Every contribution equals the estimate: later iterations cannot move it.
            self._done = True
            return
        coefficients = [c / n for c in clip_factors(sq_norms, self._tau)]
        self._estimate = anchored_sum(self._x, coefficients, self._estimate)
        self._done_iterations += 1
        if self._done_iterations >= self._iterations:
            self._done = True

    def result(self) -> torch.Tensor:
        if not self._done:
            raise RuntimeError("centered clipping has not finished its iterations")
        return self._estimate


class CenteredClipping(MergeRule):
    """Centered clipping around the last merged model. params[0] = tau_ppm: the clipping radius
    tau_ppm / 1e6 (absolute L2, per segment); params[1] = iterations.
    begin() needs the last merged model's segment as `reference`."""

    rule_id = MergeRuleId.CENTERED_CLIP
    uses_reference = True

    @property
    def tau(self) -> float:
        return self.rule.params[0] / PPM

    @property
    def iterations(self) -> int:
        return self.rule.params[1]

    @property
    def name(self) -> str:
        return f"centered clipping (tau={self.tau:g}, iterations={self.iterations})"

    def begin(
        self,
        contributions: torch.Tensor,
        weights: WeightsLike,
        reference: torch.Tensor | None = None,
    ) -> CenteredClippingMerge:
        x, _ = self._check(contributions, weights)
        ref = check_reference(reference, x, self.name)
        return CenteredClippingMerge(x, ref, self.tau, self.iterations)
