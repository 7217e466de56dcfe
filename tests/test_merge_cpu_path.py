"""On the CPU the merge rules' anchored sums run in numpy (swarmnode/merge/base.py's module
docstring): the same bits as the documented torch steps, anchor + sum_i c_i * (x_i - anchor)
in float64, row by row, a zero coefficient skipping its row, rounded to float32 once, for
ordinary, huge, signed-zero and near-equal rows."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch

from swarmnode.exceptions import MergeError
from swarmnode.merge.base import anchored_sum, check_contributions, sq_norm_of_offsets


def torch_steps(
    rows: torch.Tensor, coefficients: Sequence[float], anchor: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The sum and its offsets' squared norm as separate torch ops, as on a CUDA device."""
    base = anchor.to(torch.float64, copy=True)
    acc = torch.zeros_like(base)
    for i, c in enumerate(coefficients):
        if c == 0.0:
            continue
        step = rows[i].to(torch.float64, copy=True)
        step.sub_(base).mul_(c)
        acc.add_(step)
    norm = (acc * acc).sum().reshape(1)
    return base.add_(acc).to(torch.float32), norm


def cases() -> list[tuple[str, np.ndarray, list[float]]]:
    rng = np.random.default_rng(7)
    plain = rng.standard_normal((6, 301)).astype(np.float32)
    huge = plain * np.float32(3e37)
    zeros = plain.copy()
    zeros[:, ::3] = 0.0
    zeros[:, 1::3] = -0.0
    close = (plain[:1] + np.float32(1e-6) * plain).astype(np.float32)
    weights = [float(w) for w in rng.random(5)]
    skipped = [0.0, *weights[1:3], 0.0, weights[4]]
    return [
        ("plain", plain, weights),
        ("huge", huge, [3.0, 2.0, 4.0, 1.5, 2.5]),  # sums past float32: inf, as torch rounds
        ("signed zeros", zeros, skipped),
        ("near-equal", close, weights),
        ("one row", plain[:1], []),
    ]


@pytest.mark.parametrize(("name", "values", "coefficients"), cases())
def test_numpy_sums_give_the_bits_of_the_torch_steps(
    name: str, values: np.ndarray, coefficients: list[float]
) -> None:
    x = torch.from_numpy(values)
    want, want_norm = torch_steps(x[1:], coefficients, x[0])
    got = anchored_sum(x[1:], coefficients, x[0])
    assert got.dtype == torch.float32
    assert got.numpy().tobytes() == want.numpy().tobytes(), name
    norm = sq_norm_of_offsets(x[1:], coefficients, x[0])
    assert norm.numpy().tobytes() == want_norm.numpy().tobytes(), name


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_contributions_are_still_refused(bad: float) -> None:
    x = torch.zeros((3, 5), dtype=torch.float32)
    x[1, 2] = bad
    with pytest.raises(MergeError, match="non-finite"):
        check_contributions(x, 1, "mean")
