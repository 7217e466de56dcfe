"""Simulation data and partitions: every kind deals each training index to exactly one node,
reproducibly, with the skew its name promises; the packaged data sets load offline with a
stratified held-out split scaled from training statistics only; impossible requests are refused
up front (ConfigError), never answered with a node that has nothing to train on.

Property tests run derandomized and without an example database, so every run checks the same
examples (a failure here is a bug, never a flake).
"""

from __future__ import annotations

import dataclasses
import math
import socket
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmnode.exceptions import ConfigError
from swarmnode.simulation import partition as partition_module
from swarmnode.simulation.data import DATASETS, Dataset, load_dataset
from swarmnode.simulation.partition import (
    MAX_TRIES,
    PARTITION_KINDS,
    IndexArray,
    label_histogram,
    partition,
)

Labels = npt.NDArray[np.int64]

# Uneven classes, like real data: 10 classes of 40..80 samples in random order.
TEN_CLASSES: Labels = (
    np.random.default_rng(7)
    .permutation(np.repeat(np.arange(10), np.random.default_rng(8).integers(40, 81, size=10)))
    .astype(np.int64)
)
# Two unbalanced classes, like breast_cancer (37% / 63%).
TWO_CLASSES: Labels = (
    np.random.default_rng(9).permutation(np.repeat(np.arange(2), [110, 190])).astype(np.int64)
)

PROPERTY = settings(derandomize=True, database=None, max_examples=80, deadline=None)


def _check_exact_cover(parts: list[IndexArray], total: int, n: int, min_samples: int) -> None:
    assert len(parts) == n
    for part in parts:
        assert part.dtype == np.int64
        assert part.ndim == 1
        assert np.all(np.diff(part) > 0), "each part is sorted, without repeats"
        assert len(part) >= min_samples
    everything = np.concatenate(parts)
    assert len(everything) == total, "disjoint: no index dealt twice"
    assert np.array_equal(np.sort(everything), np.arange(total)), "every index dealt"


def _same(a: list[IndexArray], b: list[IndexArray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def _labels_per_node(labels: Labels, parts: list[IndexArray]) -> npt.NDArray[np.int64]:
    present: npt.NDArray[np.int64] = (label_histogram(labels, parts) > 0).sum(axis=1)
    return present


# --- every kind: an exact, reproducible cover ------------------------------------------------


@PROPERTY
@given(
    kind=st.sampled_from(PARTITION_KINDS),
    n=st.integers(2, 12),
    seed=st.integers(0, 2**63),
    alpha=st.floats(0.2, 100.0),
    shards_per_node=st.integers(1, 4),
    min_samples=st.integers(0, 10),
)
def test_every_kind_deals_each_index_once_reproducibly(
    kind: str, n: int, seed: int, alpha: float, shards_per_node: int, min_samples: int
) -> None:
    kwargs: dict[str, Any] = {
        "alpha": alpha,
        "shards_per_node": shards_per_node,
        "min_samples": min_samples,
    }
    parts = partition(TEN_CLASSES, n, kind, seed=seed, **kwargs)
    _check_exact_cover(parts, len(TEN_CLASSES), n, min_samples)
    assert _same(parts, partition(TEN_CLASSES, n, kind, seed=seed, **kwargs))
    assert not _same(parts, partition(TEN_CLASSES, n, kind, seed=seed + 1, **kwargs))


@PROPERTY
@given(kind=st.sampled_from(PARTITION_KINDS), n=st.integers(1, 6), seed=st.integers(0, 2**32))
def test_two_unbalanced_classes(kind: str, n: int, seed: int) -> None:
    parts = partition(TWO_CLASSES, n, kind, seed=seed, alpha=1.0)
    _check_exact_cover(parts, len(TWO_CLASSES), n, 10)


def test_one_node_gets_everything_and_labels_may_be_any_integers() -> None:
    for kind in PARTITION_KINDS:
        (only,) = partition(TEN_CLASSES, 1, kind, seed=3)
        assert np.array_equal(only, np.arange(len(TEN_CLASSES)))
    # Labels need not be 0..C-1 (nor int64) for dealing; only label_histogram needs indices.
    odd = TEN_CLASSES.astype(np.int32) * 7 - 20
    for kind in PARTITION_KINDS:
        _check_exact_cover(partition(odd, 5, kind, seed=1), len(odd), 5, 10)


# --- the skew each kind promises ------------------------------------------------------------


def test_dirichlet_small_alpha_is_far_more_skewed_than_large_alpha() -> None:
    """Skew measured as the mean over nodes of the largest class's share of the node's data:
    1/classes (0.1 here) for a perfectly IID split, 1 when every node holds a single class."""

    def skew(alpha: float, seed: int) -> float:
        parts = partition(TEN_CLASSES, 8, "dirichlet", seed=seed, alpha=alpha)
        hist = label_histogram(TEN_CLASSES, parts, classes=10)
        return float(np.mean(hist.max(axis=1) / hist.sum(axis=1)))

    for seed in range(5):
        small, large = skew(0.1, seed), skew(100.0, seed)
        assert small > 0.4, small
        assert large < 0.2, large
    assert np.mean([skew(0.5, s) for s in range(5)]) > np.mean([skew(5.0, s) for s in range(5)])


def test_shards_with_class_aligned_shards_give_exactly_shards_per_node_labels() -> None:
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 30))
    pairings = set()
    for seed in range(5):
        parts = partition(labels, 5, "shards", seed=seed, shards_per_node=2)
        assert np.all(_labels_per_node(labels, parts) == 2)
        assert all(len(p) == 60 for p in parts)
        pairings.add(frozenset(frozenset(np.unique(labels[p]).tolist()) for p in parts))
    # Shards are dealt at random, not in label order (which would pair class 0 with class 1).
    assert len(pairings) == 5


@pytest.mark.parametrize(("n", "shards_per_node"), [(5, 1), (5, 2), (10, 2), (8, 3), (20, 1)])
def test_shards_straddle_class_boundaries_at_most_once_per_boundary(
    n: int, shards_per_node: int
) -> None:
    """With uneven classes shards straddle boundaries, so a node can hold more labels than
    shards (measured on TEN_CLASSES: up to 2 * shards_per_node). What holds for every draw: a
    shard has one label plus one per class boundary inside it, so the (node, label) pairs number
    at most n * shards_per_node + classes - 1; and where no shard is longer than the smallest
    class, no shard holds more than two labels, so no node more than 2 * shards_per_node."""
    classes = 10
    shard_len = math.ceil(len(TEN_CLASSES) / (n * shards_per_node))
    smallest = int(np.bincount(TEN_CLASSES).min())
    seen = []
    for seed in range(20):
        parts = partition(TEN_CLASSES, n, "shards", seed=seed, shards_per_node=shards_per_node)
        per_node = _labels_per_node(TEN_CLASSES, parts)
        assert per_node.sum() <= n * shards_per_node + classes - 1
        assert np.all(per_node >= 1)
        if shard_len <= smallest:
            assert np.all(per_node <= 2 * shards_per_node)
        seen.append(per_node.mean())
    # Far from IID all the same: about shards_per_node labels each, plus a few straddles.
    assert np.mean(seen) <= shards_per_node + (classes - 1) / n


@PROPERTY
@given(n=st.integers(2, 30), seed=st.integers(0, 2**32))
def test_iid_sizes_differ_by_at_most_one(n: int, seed: int) -> None:
    sizes = [len(p) for p in partition(TEN_CLASSES, n, "iid", seed=seed)]
    assert max(sizes) - min(sizes) <= 1


def test_quantity_skew_gives_unequal_sizes_and_respects_min_samples() -> None:
    for seed in range(10):
        sizes = np.array(
            [
                len(p)
                for p in partition(
                    TEN_CLASSES, 10, "quantity", seed=seed, alpha=0.5, min_samples=10
                )
            ]
        )
        assert sizes.min() >= 10
        assert sizes.max() >= 3 * sizes.min(), sizes
    # Small alpha: nearly everything on a few nodes, the rest at the floor; never refused.
    sizes = np.array([len(p) for p in partition(TEN_CLASSES, 20, "quantity", seed=0, alpha=0.05)])
    assert sizes.min() == 10 and sizes.max() > len(TEN_CLASSES) / 4
    # Large alpha: close to equal.
    sizes = np.array([len(p) for p in partition(TEN_CLASSES, 10, "quantity", seed=0, alpha=1e4)])
    assert sizes.max() - sizes.min() <= 0.1 * sizes.mean()


def test_apportioning_never_drops_a_sample_to_float_round_off() -> None:
    """Ten shares of 0.1 sum to 0.9999999999999999 in floating point: cutting 1000 samples at
    floor(cumsum * 1000) would lose the last one without the pinned final boundary."""
    shares = np.full(10, 0.1)
    assert np.cumsum(shares)[-1] < 1.0
    counts = partition_module._apportion(1000, shares)
    assert counts.sum() == 1000 and np.all(counts >= 0)
    assert np.array_equal(partition_module._apportion(0, shares), np.zeros(10))


def test_label_histogram_counts_each_node_and_class() -> None:
    parts = partition(TEN_CLASSES, 6, "dirichlet", seed=2)
    hist = label_histogram(TEN_CLASSES, parts)
    assert hist.shape == (6, 10) and hist.dtype == np.int64
    assert np.array_equal(hist.sum(axis=1), [len(p) for p in parts])
    assert np.array_equal(hist.sum(axis=0), np.bincount(TEN_CLASSES))
    padded = label_histogram(TEN_CLASSES, parts, classes=12)
    assert padded.shape == (6, 12) and not padded[:, 10:].any()
    with pytest.raises(ConfigError):
        label_histogram(TEN_CLASSES, parts, classes=5)
    with pytest.raises(ConfigError):
        label_histogram(TEN_CLASSES - 1, parts)


# --- refused requests -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((TEN_CLASSES, 3, "random"), {}, "known: iid, dirichlet, shards, quantity"),
        ((TEN_CLASSES, 0, "iid"), {}, "n must be >= 1"),
        ((TEN_CLASSES, 2, "iid"), {"seed": -1}, "seed must be >= 0"),
        ((TEN_CLASSES, 2, "iid"), {"seed": 1.5}, "seed must be an integer"),
        ((TEN_CLASSES, 2, "iid"), {"min_samples": -1}, "min_samples must be >= 0"),
        ((TEN_CLASSES[:50], 6, "iid"), {}, "only 50 to deal"),
        ((TEN_CLASSES[:50], 5, "quantity"), {"min_samples": 11}, "only 50 to deal"),
        ((TEN_CLASSES, 2, "dirichlet"), {"alpha": 0.0}, "alpha"),
        ((TEN_CLASSES, 2, "quantity"), {"alpha": -1.0}, "alpha"),
        ((TEN_CLASSES, 2, "dirichlet"), {"alpha": math.nan}, "alpha"),
        ((TEN_CLASSES, 2, "dirichlet"), {"alpha": math.inf}, "alpha"),
        ((TEN_CLASSES, 2, "shards"), {"shards_per_node": 0}, "shards_per_node must be >= 1"),
        ((TEN_CLASSES[:30], 3, "shards"), {"shards_per_node": 11, "min_samples": 0}, "shards"),
        ((TEN_CLASSES.reshape(2, -1), 2, "iid"), {}, "one-dimensional"),
        ((TEN_CLASSES.astype(float), 2, "iid"), {}, "integer class labels"),
    ],
)
def test_impossible_or_malformed_requests_are_refused(
    args: tuple[Any, ...], kwargs: dict[str, Any], match: str
) -> None:
    kwargs = {"seed": 0, **kwargs}
    with pytest.raises(ConfigError, match=match):
        partition(*args, **kwargs)


def test_unsatisfiable_draws_are_refused_after_bounded_tries() -> None:
    """100 samples, 10 nodes, 10 each: only an exactly equal deal passes, which Dirichlet label
    skew at alpha 0.1 never draws, so every try fails and the error says so."""
    with pytest.raises(ConfigError, match=f"no draw in {MAX_TRIES}"):
        partition(TEN_CLASSES[:100], 10, "dirichlet", seed=0, alpha=0.1, min_samples=10)
    # The same request with a smaller floor goes through; the floor is what was impossible.
    parts = partition(TEN_CLASSES[:100], 10, "dirichlet", seed=0, alpha=0.1, min_samples=0)
    _check_exact_cover(parts, 100, 10, 0)


def test_parameters_a_kind_does_not_use_are_not_checked() -> None:
    """A sweep may leave alpha or shards_per_node at any value for the kinds that ignore them."""
    parts = partition(TEN_CLASSES, 4, "iid", seed=0, alpha=0.0, shards_per_node=0)
    assert _same(parts, partition(TEN_CLASSES, 4, "iid", seed=0))


# --- packaged data sets ---------------------------------------------------------------------


SHAPES = {"digits": (1797, 64, 10), "breast_cancer": (569, 30, 2)}


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.usefixtures("no_network")
@pytest.mark.parametrize("name", DATASETS)
def test_datasets_load_offline_with_a_stratified_held_out_split(name: str) -> None:
    rows, features, classes = SHAPES[name]
    data = load_dataset(name, seed=0)
    assert isinstance(data, Dataset) and data.name == name
    assert (data.features, data.classes) == (features, classes)
    n_test = math.ceil(0.2 * rows)  # scikit-learn rounds the test side up
    assert data.x_train.shape == (rows - n_test, features)
    assert data.x_test.shape == (n_test, features)
    assert data.y_train.shape == (rows - n_test,) and data.y_test.shape == (n_test,)
    assert data.x_train.dtype == data.x_test.dtype == torch.float32
    assert data.y_train.dtype == data.y_test.dtype == torch.int64
    assert torch.isfinite(data.x_train).all() and torch.isfinite(data.x_test).all()
    # Stratified: each class's share of the test set is its share of the whole, to one row.
    whole = np.bincount(np.concatenate([data.y_train.numpy(), data.y_test.numpy()]))
    test_counts = np.bincount(data.y_test.numpy(), minlength=classes)
    assert len(whole) == classes
    assert np.all(np.abs(test_counts - whole * n_test / rows) <= 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.name = "other"  # type: ignore[misc]


def test_digits_split_is_a_partition_of_the_original_rows() -> None:
    """Digits are scaled by the fixed 1/16, so the raw pixels come back exactly: train and test
    together are the original 1797 images, each once (the images are all distinct)."""
    from sklearn.datasets import load_digits

    raw = np.asarray(load_digits().data)
    data = load_dataset("digits", seed=4)
    back = torch.cat([data.x_train, data.x_test]).numpy() * 16
    assert np.allclose(back, np.round(back), atol=1e-4)
    assert data.x_train.min() >= 0 and data.x_train.max() <= 1
    assert len(np.unique(raw, axis=0)) == len(raw)
    assert np.array_equal(np.unique(np.round(back), axis=0), np.unique(raw, axis=0))


def test_breast_cancer_is_standardized_with_training_statistics_only() -> None:
    from sklearn.datasets import load_breast_cancer

    data = load_dataset("breast_cancer", seed=0)
    train = data.x_train.double().numpy()
    test = data.x_test.double().numpy()
    assert np.allclose(train.mean(axis=0), 0, atol=1e-5)
    assert np.allclose(train.std(axis=0), 1, atol=1e-5)
    # The test rows were shifted and scaled by the training statistics, not their own.
    assert np.abs(test.mean(axis=0)).max() > 1e-3
    assert not np.allclose(test.std(axis=0), 1, atol=1e-3)
    # Disjoint: the same affine map was applied to both sides and the raw rows are distinct,
    # so a row in both splits would show up as identical rows.
    raw = np.asarray(load_breast_cancer().data)
    assert len(np.unique(raw, axis=0)) == len(raw)
    gaps = np.linalg.norm(test[:, None, :] - train[None, :, :], axis=2)
    assert gaps.min() > 1e-3
    assert len(np.unique(np.concatenate([train, test]), axis=0)) == len(raw)


def test_split_follows_the_seed_and_fraction() -> None:
    a = load_dataset("breast_cancer", seed=1)
    b = load_dataset("breast_cancer", seed=1)
    c = load_dataset("breast_cancer", seed=2)
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.y_test, c.y_test) or not torch.equal(a.x_test, c.x_test)
    big = load_dataset("breast_cancer", seed=1, test_fraction=0.5)
    assert len(big.y_test) == math.ceil(0.5 * 569)
    assert load_dataset("digits", seed=2**70).x_train.shape == (1437, 64)  # any seed >= 0


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("mnist", {}, "known: digits, breast_cancer"),
        ("Digits", {}, "unknown data set"),
        ("digits", {"test_fraction": 0.0}, "test_fraction"),
        ("digits", {"test_fraction": 1.0}, "test_fraction"),
        ("digits", {"test_fraction": math.nan}, "test_fraction"),
        ("digits", {"test_fraction": 0.002}, "cannot be stratified"),  # 4 test rows, 10 classes
        ("digits", {"seed": -1}, "seed must be >= 0"),
    ],
)
def test_bad_data_requests_are_refused(name: str, kwargs: dict[str, Any], match: str) -> None:
    kwargs = {"seed": 0, **kwargs}
    with pytest.raises(ConfigError, match=match):
        load_dataset(name, **kwargs)


def test_partitions_of_a_real_training_split() -> None:
    """The simulation's own path: the digits training labels dealt to 8 nodes, every kind."""
    labels = load_dataset("digits", seed=0).y_train.numpy()
    for kind in PARTITION_KINDS:
        parts = partition(labels, 8, kind, seed=0)
        _check_exact_cover(parts, len(labels), 8, 10)
        assert label_histogram(labels, parts, classes=10).sum() == len(labels)
