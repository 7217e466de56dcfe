"""What every merge rule shares: input checks, the step protocol, and the exact-order arithmetic.

A segment owner merges one segment of the canonical vector from all contributions, and decides
from the rows it holds only (the ButterflyClip idea of Gorbunov et al., ICML 2022). Rules that
iterate on distances or norms (Krum, the geometric median, centered clipping) take them within
the segment: no partial sum comes from another party, so no peer can steer an owner's decision
by lying about its part (docs/round-protocol.md#partial-sums, docs/trust.md#threat-model).
A rule still runs as explicit steps, because the iteration is easier to test that way:

    state = rule.begin(segment, weights, reference)
    while not state.done:
        state.advance(combine_partials([state.partials()]))
    merged_segment = state.result()

`drive` runs that loop for each segment on its own; `MergeRule.merge_segment` is what an owner
(the all-reduce, the simulator) calls.

Determinism, and why the arithmetic looks the way it does:
- Every decision (Krum's selection, Weiszfeld's weights and stopping test, centered clipping's
  clip factors) is computed in Python float64 on the CPU from the segment's sums, so a
  segment's merge depends only on its rows, weights and reference, whatever device it runs on.
- Sums over contributions are written as `anchor + sum_i c_i * (x_i - anchor)`, added one row at
  a time in participant order with separate elementwise ops (no fused or atomic reductions),
  in float64, rounded to float32 once. Contributions are models that differ by small updates,
  so the differences carry the information and lose nothing; equal inputs give back exactly
  that input; and elementwise IEEE ops give the same bits on CPU and CUDA.
- The only reductions over the segment length are the sums of squares (float64, so a huge
  Byzantine value cannot overflow them), which use torch.sum: deterministic on CPU and on CUDA
  for a given shape, though not bit-identical between the two.
- On the CPU the row-by-row steps of those sums, and the finiteness check, run in numpy on
  the same memory: the same IEEE operations in the same order, so the same bits, but numpy
  keeps the GIL for a short array where every torch call lets it go. A node that merges
  among many busy threads (the simulator's eight nodes in one process) waits for the GIL
  again after each release, which made a 0.1 ms merge take tens of milliseconds
  (docs/architecture.md#transfer-speed).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import ClassVar

import numpy as np
import numpy.typing as npt
import torch

from swarmnode.exceptions import ConfigError, MergeError
from swarmnode.rules import MergeRuleId, Rule, merge_rule_needs

DTYPE = torch.float32
"""Contributions, references and results are float32, like the canonical vector."""

ACCUMULATE = torch.float64
"""Partial sums and running sums: see anchored_sum and sq_distances_to for why."""

BLOCK_ELEMENTS = 1 << 22
"""Most elements a temporary of a column-blocked computation holds (sorts, distances), so that a
long segment does not need several copies of itself in memory at once."""

WeightsLike = Sequence[float] | torch.Tensor
"""Per-contribution weights: sample counts, optionally times a node weight."""


def column_blocks(rows: int, length: int) -> Iterator[slice]:
    """Slices of [0, length) wide enough that `rows` x width stays within BLOCK_ELEMENTS."""
    width = max(1, BLOCK_ELEMENTS // max(rows, 1))
    for start in range(0, length, width):
        yield slice(start, min(start + width, length))


def check_contributions(
    contributions: torch.Tensor, need: int, name: str, why: str = ""
) -> torch.Tensor:
    """Returns the (n, d) contributions detached; MergeError if they cannot be merged.

    Non-finite values are refused here as well as at receive time: one NaN would poison every
    norm-based rule for the whole vector, not just this segment.
    """
    if not isinstance(contributions, torch.Tensor) or contributions.dim() != 2:
        raise MergeError(f"{name}: contributions must be a 2-D tensor (n, segment length)")
    if contributions.dtype != DTYPE:
        raise MergeError(f"{name}: contributions must be float32, got {contributions.dtype}")
    n = contributions.shape[0]
    if n < need:
        raise MergeError(f"{name} needs at least {need} contributions{why}, got {n}")
    if not _all_finite(contributions):
        raise MergeError(f"{name}: contributions hold non-finite values")
    return contributions.detach()


def _all_finite(values: torch.Tensor) -> bool:
    """Whether every value is finite; on the CPU in numpy (see the module docstring)."""
    if values.device.type == "cpu":
        return bool(np.isfinite(values.detach().numpy()).all())
    return bool(torch.isfinite(values).all())


def check_reference(
    reference: torch.Tensor | None, contributions: torch.Tensor, name: str
) -> torch.Tensor:
    """Returns the reference segment (the last merged model's) detached; MergeError if unusable."""
    if reference is None:
        raise MergeError(f"{name} needs the last merged model's segment as its reference")
    if not isinstance(reference, torch.Tensor) or reference.shape != contributions.shape[1:]:
        raise MergeError(
            f"{name}: the reference must have shape ({contributions.shape[1]},), "
            f"got {tuple(getattr(reference, 'shape', ()))}"
        )
    if reference.dtype != DTYPE or reference.device != contributions.device:
        raise MergeError(f"{name}: the reference must be float32 on the contributions' device")
    if not bool(torch.isfinite(reference).all()):
        raise MergeError(f"{name}: the reference holds non-finite values")
    return reference.detach()


def check_weights(weights: WeightsLike, n: int, name: str) -> list[float]:
    """Returns the weights as Python floats; MergeError unless n finite non-negative values."""
    values = (
        [float(w) for w in weights.detach().cpu().reshape(-1).tolist()]
        if isinstance(weights, torch.Tensor)
        else [float(w) for w in weights]
    )
    if len(values) != n:
        raise MergeError(f"{name}: {n} contributions but {len(values)} weights")
    if not all(math.isfinite(w) and w >= 0.0 for w in values):
        raise MergeError(f"{name}: weights must be finite and non-negative")
    return values


def normalized(weights: Sequence[float], name: str) -> list[float]:
    """w_i / sum(w), with the sum exactly rounded (math.fsum) so it does not depend on order."""
    total = math.fsum(weights)
    if not total > 0.0:
        raise MergeError(f"{name}: the weights sum to zero")
    return [w / total for w in weights]


def contribution_weights(
    sample_counts: Sequence[int], node_weights: Sequence[float] | None = None
) -> list[float]:
    """Each contribution's weight: its sample count, times its node weight when one is given."""
    counts = [float(c) for c in sample_counts]
    if node_weights is None:
        return counts
    if len(node_weights) != len(counts):
        raise MergeError(f"{len(counts)} sample counts but {len(node_weights)} node weights")
    return [c * float(w) for c, w in zip(counts, node_weights, strict=True)]


def _offset_blocks(
    rows: torch.Tensor, coefficients: Sequence[float], anchor: torch.Tensor
) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
    """Per column block: the anchor and sum_i coefficients[i] * (rows[i] - anchor), in float64.

    The terms are added in row order with separate elementwise ops; a zero coefficient skips
    its row. float64, so a contribution near the float32 range cannot overflow a step even
    when its coefficient makes its pull small.
    """
    if _on_cpu(rows, anchor):  # the same steps in numpy, on the same memory (module docstring)
        for cols, low, offsets in _offset_blocks_numpy(rows, coefficients, anchor):
            yield cols, torch.from_numpy(low), torch.from_numpy(offsets)
        return
    for cols in column_blocks(len(coefficients), anchor.shape[0]):
        base = anchor[cols].to(ACCUMULATE, copy=True)
        acc = torch.zeros_like(base)
        for i, c in enumerate(coefficients):
            if c == 0.0:
                continue
            step = rows[i, cols].to(ACCUMULATE, copy=True)
            step.sub_(base).mul_(c)
            acc.add_(step)
        yield cols, base, acc


def _on_cpu(rows: torch.Tensor, anchor: torch.Tensor) -> bool:
    return rows.device.type == "cpu" and anchor.device.type == "cpu"


def _offset_blocks_numpy(
    rows: torch.Tensor, coefficients: Sequence[float], anchor: torch.Tensor
) -> Iterator[tuple[slice, npt.NDArray[np.float64], npt.NDArray[np.float64]]]:
    """_offset_blocks on the CPU, as numpy arrays over the tensors' memory: per block
    float64 copies, then per row with a non-zero coefficient (x - anchor) * c added to the
    running sum, in row order. Few torch calls: each one lets the GIL go."""
    values = rows.detach().numpy()
    anchored = anchor.detach().numpy()
    for cols in column_blocks(len(coefficients), anchored.shape[0]):
        base = anchored[cols].astype(np.float64)
        acc = np.zeros_like(base)
        step = np.empty_like(base)
        for i, c in enumerate(coefficients):
            if c == 0.0:
                continue
            np.subtract(values[i, cols], base, out=step, dtype=np.float64)
            np.multiply(step, c, out=step)
            np.add(acc, step, out=acc)
        yield cols, base, acc


def anchored_sum(
    rows: torch.Tensor, coefficients: Sequence[float], anchor: torch.Tensor
) -> torch.Tensor:
    """anchor + sum_i coefficients[i] * (rows[i] - anchor), in row order, rounded to float32 once.

    See the module docstring for why: fixed order, elementwise only, exact for equal inputs.
    """
    if _on_cpu(rows, anchor):  # the same sums and float32 rounding in numpy (module docstring)
        values = np.empty(anchor.shape[0], dtype=np.float32)
        with np.errstate(over="ignore"):  # a sum beyond float32 is inf, as torch rounds it
            for cols, low, offsets in _offset_blocks_numpy(rows, coefficients, anchor):
                values[cols] = np.add(low, offsets)
        return torch.from_numpy(values)
    out = torch.empty_like(anchor, dtype=DTYPE)
    for cols, base, acc in _offset_blocks(rows, coefficients, anchor):
        out[cols] = base.add_(acc)
    return out


def sq_norm_of_offsets(
    rows: torch.Tensor, coefficients: Sequence[float], anchor: torch.Tensor
) -> torch.Tensor:
    """(1,) float64: this segment's part of ||sum_i coefficients[i] * (rows[i] - anchor)||^2."""
    out = torch.zeros(1, dtype=ACCUMULATE, device=anchor.device)
    for _, _, acc in _offset_blocks(rows, coefficients, anchor):
        out.add_((acc * acc).sum())
    return out


def sq_distances_to(contributions: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
    """(n,) float64: this segment's part of ||x_i - point||^2 for every contribution.

    float64, because a float32 sum of squares overflows once a contribution (a Byzantine one,
    say) holds values around 1e19, and the robust rules must still merge then.
    """
    n, d = contributions.shape
    out = torch.zeros(n, dtype=ACCUMULATE, device=contributions.device)
    for cols in column_blocks(n, d):
        diff = contributions[:, cols].to(ACCUMULATE, copy=True)
        diff.sub_(point[cols].to(ACCUMULATE))
        out.add_((diff * diff).sum(dim=1))
    return out


def combine_partials(partials: Sequence[torch.Tensor]) -> torch.Tensor:
    """Float64 sums added in the given order, on the CPU, checked.

    An owner passes its own segment's sums alone (no rule takes another party's any more), so
    this moves them to the CPU and refuses what a sum of squares cannot be: negative or
    non-finite values, or shapes that differ.
    """
    if not partials:
        raise MergeError("no partial sums to combine")
    shape = tuple(partials[0].shape)
    total = torch.zeros(shape, dtype=torch.float64)
    for j, part in enumerate(partials):
        if tuple(part.shape) != shape:
            raise MergeError(
                f"partial sums of segment {j} have shape {tuple(part.shape)}, expected {shape}"
            )
        value = part.detach().to(device="cpu", dtype=torch.float64)
        if not bool(torch.isfinite(value).all()) or bool((value < 0).any()):
            raise MergeError(f"partial sums of segment {j} are negative or non-finite")
        total = total + value
    return total


class SegmentMerge(ABC):
    """One owner's merge of one segment, as steps driven locally (see the module doc)."""

    @property
    @abstractmethod
    def done(self) -> bool:
        """True once result() is ready."""

    @property
    def partials_shape(self) -> tuple[int, ...]:
        """Shape of the sums the next step takes, so advance() can check them.

        It can change from one step to the next (the geometric median's extra step)."""
        raise MergeError("this merge exchanges no partial sums")

    def partials(self) -> torch.Tensor:
        """This segment's sums for the next step (float64, this segment's device)."""
        raise MergeError("this merge exchanges no partial sums")

    def advance(self, totals: torch.Tensor) -> None:
        """Takes this segment's sums, checked by combine_partials, one step on."""
        raise MergeError("this merge exchanges no partial sums")

    @abstractmethod
    def result(self) -> torch.Tensor:
        """The merged segment, shape (d,), float32 on the contributions' device."""

    def _check_totals(self, totals: torch.Tensor) -> list[float]:
        if self.done:
            raise MergeError("the merge is already finished")
        if tuple(totals.shape) != self.partials_shape:
            raise MergeError(
                f"combined partial sums have shape {tuple(totals.shape)}, "
                f"expected {self.partials_shape}"
            )
        return [float(v) for v in totals.reshape(-1).tolist()]


class FinishedMerge(SegmentMerge):
    """A merge that needs no exchange: coordinate-wise rules finish at begin()."""

    def __init__(self, merged: torch.Tensor) -> None:
        self._merged = merged

    @property
    def done(self) -> bool:
        return True

    def result(self) -> torch.Tensor:
        return self._merged


def run_locally(state: SegmentMerge) -> torch.Tensor:
    """Steps one segment's merge to its end on its own sums only."""
    while not state.done:
        state.advance(combine_partials([state.partials()]))
    return state.result()


def drive(states: Sequence[SegmentMerge]) -> list[torch.Tensor]:
    """Runs every segment's merge to its end, each from its own rows: no segment's sums reach
    another's decision (docs/round-protocol.md#partial-sums)."""
    return [run_locally(state) for state in states]


class MergeRule(ABC):
    """A merge rule built from the swarm's Rule (id + four uint64, fractions in PPM).

    Construction validates the parameters through swarmnode.rules.merge_rule_needs, the table
    the contract shares, so a bad rule fails with ConfigError when the swarm is configured.
    Weights are per contribution (sample counts, optionally times a node weight); rules that
    must stay robust against a minority ignore them, because a Byzantine node can claim any
    sample count it likes.
    """

    rule_id: ClassVar[MergeRuleId]
    uses_reference: ClassVar[bool] = False
    """Whether begin() needs the last merged model's segment."""
    needs_reason: ClassVar[str] = ""
    """Why the rule needs min_contributions, for the MergeError when fewer arrive."""

    def __init__(self, rule: Rule) -> None:
        if rule.id != self.rule_id:
            raise ConfigError(f"{type(self).__name__} cannot run merge rule id {rule.id}")
        self.min_contributions = merge_rule_needs(rule)
        self.rule = rule

    @property
    def name(self) -> str:
        """The rule and its parameters, for messages."""
        return self.rule_id.name.lower()

    def _check(
        self, contributions: torch.Tensor, weights: WeightsLike
    ) -> tuple[torch.Tensor, list[float]]:
        x = check_contributions(contributions, self.min_contributions, self.name, self.needs_reason)
        return x, check_weights(weights, x.shape[0], self.name)

    @abstractmethod
    def begin(
        self,
        contributions: torch.Tensor,
        weights: WeightsLike,
        reference: torch.Tensor | None = None,
    ) -> SegmentMerge:
        """Starts merging one segment: contributions (n, d) in participant order, n weights, and
        for rules that use it the last merged model's segment (d,)."""

    def merge_segment(
        self,
        contributions: torch.Tensor,
        weights: WeightsLike,
        reference: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One owner's merged segment, decided from that segment's rows, weights and reference
        only: what every node computes the same, and nothing a peer says can change."""
        return run_locally(self.begin(contributions, weights, reference))

    def merge_segments(
        self,
        segments: Sequence[torch.Tensor],
        weights: WeightsLike,
        references: Sequence[torch.Tensor] | None = None,
    ) -> list[torch.Tensor]:
        """Merges every segment of the vector, each on its own, as its owner would."""
        if references is not None and len(references) != len(segments):
            raise MergeError(f"{len(segments)} segments but {len(references)} references")
        return [
            self.merge_segment(seg, weights, None if references is None else references[j])
            for j, seg in enumerate(segments)
        ]

    def merge(
        self,
        contributions: torch.Tensor,
        weights: WeightsLike,
        reference: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Merges a whole vector held as one segment."""
        refs = None if reference is None else [reference]
        return self.merge_segments([contributions], weights, refs)[0]
