"""Split a training set among virtual nodes: IID, label skew, label shards and quantity skew.

A swarm's value shows only against data that is spread unevenly, so a simulation names how the
training indices are dealt to its nodes (docs/simulator.md#partitions):

- ``"iid"``: one shuffle, cut into near-equal parts (sizes differ by at most one), the
  baseline every skewed split is compared with.
- ``"dirichlet"``: label skew, the recipe of Hsu et al. (2019) as NIID-Bench (Li et al., 2022)
  codes it: for each class, proportions over the nodes are drawn from Dirichlet(alpha) and the
  class's (shuffled) samples are cut by them; nodes already holding more than an equal share
  get none of the classes still to come, so the skew is in the labels rather than in the
  sizes. Small alpha: each node sees few classes; large alpha: close to IID.
- ``"shards"``: the pathological split of McMahan et al. (2017): the samples sorted by label
  are cut into ``n * shards_per_node`` equal shards and each node gets ``shards_per_node`` of
  them at random. A shard that straddles a class boundary carries two labels (more when a
  class is smaller than a shard), so a node holds at most ``shards_per_node`` labels only when
  the shards fall on class boundaries; over all nodes the (node, label) pairs number at most
  ``n * shards_per_node + classes - 1``.
- ``"quantity"``: quantity skew: node sizes in proportion to a Dirichlet(alpha) draw, the
  samples themselves IID. Each node first gets ``min_samples`` and the rest is dealt by the
  draw, so the split never fails when ``n * min_samples`` fits: rejecting draws whose
  smallest share is too small would almost never accept one at small alpha (ten nodes at
  alpha 0.1 put some node under 1% nearly always) and would bias the sizes anyway.

Every kind returns ``n`` sorted int64 index arrays that are disjoint and cover every index
exactly once, so no sample is lost or duplicated, and the result depends only on the
arguments: the draws come from a numpy Generator seeded from ``(seed, attempt)``, never from
global state. A draw that leaves some node under ``min_samples`` (possible for ``"dirichlet"``
and ``"shards"``) is redrawn from the next attempt's seed, at most ``MAX_TRIES`` times, the
retry loop NIID-Bench uses with a bound so an impossible request fails instead of spinning.

numpy only (no torch, no pydantic): the fast engine and the GPU machine use it as is.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeAlias, get_args

import numpy as np
import numpy.typing as npt

from swarmnode.exceptions import ConfigError

__all__ = [
    "MAX_TRIES",
    "PARTITION_KINDS",
    "IndexArray",
    "PartitionKind",
    "label_histogram",
    "partition",
]

PartitionKind: TypeAlias = Literal["iid", "dirichlet", "shards", "quantity"]
PARTITION_KINDS: tuple[PartitionKind, ...] = get_args(PartitionKind)
IndexArray: TypeAlias = npt.NDArray[np.int64]
"""Sorted indices into the training set: one node's share."""

MAX_TRIES = 1000
"""Draws tried before a partition is declared impossible. A draw costs under a millisecond on
the packaged data sets (0.7 ms for 64 nodes on digits), so an infeasible request is refused in
under a second. Measured acceptance per draw of the Dirichlet split, min_samples 10: digits
(1437 training samples, 10 classes) with 8 nodes at alpha 0.5: 100%, 32 nodes: 97%, 64 nodes:
6.5% (1000 tries all fail with odds near 1e-29); breast cancer (455 samples, 2 classes; few
classes make label skew harsh) with 8 nodes at alpha 0.5: 35%, 16 nodes: 0.5% (refused about
one seed in 150: a setting at the edge of what the recipe can give)."""

_Draw: TypeAlias = Callable[
    [npt.NDArray[np.int64], int, np.random.Generator, float, int, int], list[IndexArray]
]


def partition(
    labels: npt.ArrayLike,
    n: int,
    kind: str,
    *,
    seed: int,
    alpha: float = 0.5,
    shards_per_node: int = 2,
    min_samples: int = 10,
) -> list[IndexArray]:
    """Deal the indices of ``labels`` to ``n`` nodes; see the module docstring for the kinds.

    ``alpha`` is used by ``"dirichlet"`` and ``"quantity"`` only, ``shards_per_node`` by
    ``"shards"`` only (and checked only there, so a sweep may leave them at any value for the
    other kinds). Raises ConfigError for an unknown kind, a bad parameter, a request that
    cannot give every node ``min_samples`` (``n * min_samples > len(labels)``, or
    ``n * shards_per_node > len(labels)``), or one that no draw in ``MAX_TRIES`` satisfied.
    """
    y = _check_labels(labels)
    n = _check_int("n", n, minimum=1)
    seed = _check_int("seed", seed, minimum=0)
    min_samples = _check_int("min_samples", min_samples, minimum=0)
    total = len(y)
    alpha, shards_per_node = _check_request(kind, n, total, alpha, shards_per_node, min_samples)
    draw = _DRAWS[kind]
    for attempt in range(MAX_TRIES):
        # A fresh Generator per attempt, seeded from (seed, attempt): attempt k's draw does not
        # depend on how many random numbers the failed attempts before it consumed.
        rng = np.random.default_rng([seed, attempt])
        parts = draw(y, n, rng, alpha, shards_per_node, min_samples)
        if min(len(part) for part in parts) >= min_samples:
            return [np.sort(part).astype(np.int64, copy=False) for part in parts]
    raise ConfigError(
        f"{kind} partition: no draw in {MAX_TRIES} gave each of {n} nodes at least "
        f"{min_samples} of the {total} samples (alpha={alpha}, shards_per_node="
        f"{shards_per_node}); use fewer nodes, a lower min_samples, or a larger alpha / more "
        "shards per node"
    )


def _check_request(
    kind: str, n: int, total: int, alpha: float, shards_per_node: int, min_samples: int
) -> tuple[float, int]:
    """(alpha, shards_per_node) checked for `kind`, which must be known and ask for no more
    samples than `total`; the parameters a kind ignores pass unchecked."""
    if kind not in PARTITION_KINDS:
        raise ConfigError(f"unknown partition kind {kind!r}; known: {', '.join(PARTITION_KINDS)}")
    if n * min_samples > total:
        raise ConfigError(
            f"{kind} partition: {n} nodes x min_samples {min_samples} = {n * min_samples} "
            f"samples needed, only {total} to deal"
        )
    if kind in ("dirichlet", "quantity"):
        alpha = float(alpha)
        if not (math.isfinite(alpha) and alpha > 0):
            raise ConfigError(f"{kind} partition: alpha must be a finite number > 0, got {alpha}")
    if kind == "shards":
        shards_per_node = _check_int("shards_per_node", shards_per_node, minimum=1)
        if n * shards_per_node > total:
            raise ConfigError(
                f"shards partition: {n} nodes x {shards_per_node} shards = "
                f"{n * shards_per_node} shards, more than the {total} samples"
            )
    return alpha, shards_per_node


def label_histogram(
    labels: npt.ArrayLike, parts: Sequence[npt.ArrayLike], classes: int | None = None
) -> npt.NDArray[np.int64]:
    """Samples of each class held by each node: an ``(n, classes)`` array of counts.

    For reports and tests of skew. ``classes`` defaults to ``max(labels) + 1``; pass it to keep
    the columns aligned with the data set's classes when the largest class is absent.
    """
    y = _check_labels(labels)
    if len(y) and y.min() < 0:
        raise ConfigError("label_histogram: labels must be class indices >= 0")
    width = int(y.max()) + 1 if len(y) else 0
    if classes is not None:
        classes = _check_int("classes", classes, minimum=0)
        if classes < width:
            raise ConfigError(f"label_histogram: label {width - 1} but only {classes} classes")
        width = classes
    out = np.zeros((len(parts), width), dtype=np.int64)
    for row, part in enumerate(parts):
        index = np.asarray(part, dtype=np.int64)
        out[row] = np.bincount(y[index], minlength=width)
    return out


def _draw_iid(
    y: npt.NDArray[np.int64], n: int, rng: np.random.Generator, *_: Any
) -> list[IndexArray]:
    return np.array_split(rng.permutation(len(y)), n)


def _draw_quantity(
    y: npt.NDArray[np.int64],
    n: int,
    rng: np.random.Generator,
    alpha: float,
    _shards_per_node: int,
    min_samples: int,
) -> list[IndexArray]:
    shares = rng.dirichlet(np.full(n, alpha))
    sizes = min_samples + _apportion(len(y) - n * min_samples, shares)
    return np.split(rng.permutation(len(y)), np.cumsum(sizes)[:-1])


def _draw_dirichlet(
    y: npt.NDArray[np.int64], n: int, rng: np.random.Generator, alpha: float, *_: Any
) -> list[IndexArray]:
    classes, counts = np.unique(y, return_counts=True)
    by_class = np.split(np.argsort(y, kind="stable"), np.cumsum(counts)[:-1])
    pieces: list[list[IndexArray]] = [[np.empty(0, dtype=np.int64)] for _ in range(n)]
    held = np.zeros(n, dtype=np.int64)
    fair_share = len(y) / n
    # Classes in a random order: with the balancing below, later classes are spread more
    # evenly, and which ones come last should not depend on the label values.
    for c in rng.permutation(len(classes)):
        members = rng.permutation(by_class[c])
        shares = rng.dirichlet(np.full(n, alpha))
        # NIID-Bench's balancing: nodes already over an equal share take no more classes.
        open_shares = np.where(held < fair_share, shares, 0.0)
        if open_shares.sum() > 0:  # the open nodes may all have drawn exactly 0 at tiny alpha
            shares = open_shares / open_shares.sum()
        sizes = _apportion(len(members), shares)
        for node, piece in enumerate(np.split(members, np.cumsum(sizes)[:-1])):
            pieces[node].append(piece)
        held += sizes
    return [np.concatenate(p) for p in pieces]


def _draw_shards(
    y: npt.NDArray[np.int64],
    n: int,
    rng: np.random.Generator,
    _alpha: float,
    shards_per_node: int,
    _min_samples: int,
) -> list[IndexArray]:
    # Shuffle first, then a stable sort by label: sorted by label, in random order within a
    # class, so which samples of a straddled class land in which shard varies with the seed.
    shuffled = rng.permutation(len(y))
    ordered = shuffled[np.argsort(y[shuffled], kind="stable")]
    shards = np.array_split(ordered, n * shards_per_node)
    dealt = rng.permutation(n * shards_per_node).reshape(n, shards_per_node)
    return [np.concatenate([shards[s] for s in row]) for row in dealt]


_DRAWS: dict[str, _Draw] = {
    "iid": _draw_iid,
    "dirichlet": _draw_dirichlet,
    "shards": _draw_shards,
    "quantity": _draw_quantity,
}


def _apportion(total: int, shares: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Integer counts summing to exactly ``total``, in proportion to ``shares`` (summing to 1).

    Cumulative rounding down, with the last boundary pinned to ``total`` so float round-off in
    the cumulative sum can neither drop nor invent a sample.
    """
    bounds = np.floor(np.cumsum(shares) * total).astype(np.int64)
    bounds = np.minimum(bounds, total)
    bounds[-1] = total
    return np.diff(bounds, prepend=0)


def _check_labels(labels: npt.ArrayLike) -> npt.NDArray[np.int64]:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ConfigError(f"labels must be one-dimensional, got shape {y.shape}")
    if not (np.issubdtype(y.dtype, np.integer) or (y.size == 0 and y.dtype == np.float64)):
        raise ConfigError(f"labels must be integer class labels, got dtype {y.dtype}")
    return y.astype(np.int64, copy=False)


def _check_int(name: str, value: int, *, minimum: int) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None
    if number < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {number}")
    return number
