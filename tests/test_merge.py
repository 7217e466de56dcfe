"""Merge rules: against flwr's reference aggregations, against float64 references where flwr has
none, and the properties the swarm relies on (permutation invariance, equal inputs, segments
merged apart equal the whole vector, robustness to a minority of huge outliers, parameters
refused at configuration).

flwr is imported inside the tests that use it (the GPU machine has no flwr).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmnode.exceptions import ConfigError, MergeError
from swarmnode.merge import (
    CenteredClipping,
    GeometricMedian,
    Krum,
    MergeRule,
    WeiszfeldMerge,
    combine_partials,
    contribution_weights,
    drive,
    make_rule,
)
from swarmnode.merge import base as merge_base
from swarmnode.rules import PPM, MergeRuleId, Rule, SwarmParams

Array = np.ndarray[Any, np.dtype[Any]]

MEAN = Rule(MergeRuleId.MEAN)
MEDIAN = Rule(MergeRuleId.MEDIAN)
TRIMMED = Rule(MergeRuleId.TRIMMED_MEAN, (250_000, 0, 0, 0))
KRUM = Rule(MergeRuleId.KRUM, (1, 0, 0, 0))
MULTI_KRUM = Rule(MergeRuleId.KRUM, (1, 3, 0, 0))
GEOMEDIAN = Rule(MergeRuleId.GEOMETRIC_MEDIAN, (1, 200, 0, 0))
CCLIP = Rule(MergeRuleId.CENTERED_CLIP, (50_000, 3, 0, 0))  # tau = 0.05

ALL_RULES = [MEAN, MEDIAN, TRIMMED, KRUM, MULTI_KRUM, GEOMEDIAN, CCLIP]
RULE_IDS = ["mean", "median", "trimmed", "krum", "multi-krum", "geomedian", "cclip"]
# Rules with no sums of squares, or whose sums only pick contributions: bit-exact under column
# blocking. The others agree to float tolerance.
EXACT_UNDER_SEGMENTATION = {MEAN, MEDIAN, TRIMMED, KRUM, MULTI_KRUM}
# Rules with no sums over the vector: merging segments apart gives the whole vector's merge.
COORDINATE_WISE = {MEAN, MEDIAN, TRIMMED}

BIG = float(np.float32(1e30))
PROPERTY_SETTINGS = settings(derandomize=True, deadline=None, max_examples=50, database=None)


# ----------------------------------------------------------------------------- helpers


def models(
    seed: int, n: int, d: int, spread: float = 0.05, device: str = "cpu"
) -> tuple[torch.Tensor, list[int], torch.Tensor]:
    """n contributions that look like models after a round: a shared model plus small local
    updates; sample counts; and the last merged model (the shared one plus a little drift)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(d, generator=g)
    x = base + spread * torch.randn(n, d, generator=g)
    counts = [int(c) for c in torch.randint(1, 500, (n,), generator=g)]
    last = base + 0.2 * spread * torch.randn(d, generator=g)
    return x.to(device), counts, last.to(device)


def merge(rule: Rule, x: torch.Tensor, w: Sequence[float], ref: torch.Tensor) -> torch.Tensor:
    merger = make_rule(rule)
    return merger.merge(x, w, ref if merger.uses_reference else None)


def split(t: torch.Tensor, cuts: Sequence[int]) -> list[torch.Tensor]:
    """Cuts the last dimension at the given points, each piece its own contiguous tensor."""
    edges = [0, *sorted(cuts), t.shape[-1]]
    return [t[..., a:b].contiguous() for a, b in itertools.pairwise(edges)]


def as_results(x: torch.Tensor, counts: Sequence[int], layer: int) -> list[tuple[list[Array], int]]:
    """flwr's shape: per client a list of layers and a sample count; two layers here, so the
    comparison also checks that flwr's per-layer work equals ours on the flat vector."""
    return [
        ([x[i, :layer].numpy().reshape(-1, 1), x[i, layer:].numpy()], counts[i])
        for i in range(x.shape[0])
    ]


def flat(layers: Sequence[Array]) -> Array:
    out: Array = np.concatenate([np.asarray(a).reshape(-1) for a in layers])
    return out


@pytest.fixture(scope="module")
def flwr_agg() -> ModuleType:
    module: ModuleType = pytest.importorskip("flwr.server.strategy.aggregate")
    return module


def weiszfeld_reference(x: Array, iterations: int = 5000) -> Array:
    """Float64 Weiszfeld from the mean, run far past convergence."""
    v: Array = x.mean(axis=0)
    for _ in range(iterations):
        dist = np.maximum(np.linalg.norm(x - v, axis=1), 1e-300)
        beta = (1 / dist) / np.sum(1 / dist)
        nxt = beta @ x
        if np.array_equal(nxt, v):
            break
        v = nxt
    return v


def objective(x: Array, v: Array) -> float:
    return float(np.linalg.norm(x - v, axis=1).sum())


def centered_clipping_reference(x: Array, v: Array, tau: float, iterations: int) -> Array:
    """Karimireddy et al.'s update, written directly in float64."""
    for _ in range(iterations):
        offsets = x - v
        norms = np.linalg.norm(offsets, axis=1)
        scale = np.minimum(1.0, tau / np.maximum(norms, 1e-300))
        v = v + (offsets * scale[:, None]).mean(axis=0)
    return v


# ----------------------------------------------------------------------------- against flwr


@pytest.mark.parametrize(("seed", "n"), [(0, 1), (1, 2), (2, 5), (3, 8), (4, 13)])
def test_mean_matches_flwr_aggregate(flwr_agg: ModuleType, seed: int, n: int) -> None:
    x, counts, _ = models(seed, n, 300)
    expected = flat(flwr_agg.aggregate(as_results(x, counts, 120)))
    got = make_rule(MEAN).merge(x, counts).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_mean_with_node_weights_matches_flwr_on_scaled_counts(flwr_agg: ModuleType) -> None:
    x, counts, _ = models(5, 6, 200)
    node_weights = [1.0, 2.0, 0.5, 3.0, 1.0, 0.0]
    weights = contribution_weights(counts, node_weights)
    scaled = [round(c * w * 2) for c, w in zip(counts, node_weights, strict=True)]
    expected = flat(flwr_agg.aggregate(as_results(x, scaled, 50)))
    np.testing.assert_allclose(make_rule(MEAN).merge(x, weights).numpy(), expected, atol=1e-6)


@pytest.mark.parametrize(("seed", "n"), [(0, 1), (1, 2), (2, 3), (3, 6), (4, 9), (5, 10)])
def test_median_equals_flwr_aggregate_median_bit_for_bit(
    flwr_agg: ModuleType, seed: int, n: int
) -> None:
    """Even n: the average of the two middle values (numpy's), not torch's lower median."""
    x, counts, _ = models(seed, n, 400)
    expected = flat(flwr_agg.aggregate_median(as_results(x, counts, 100)))
    assert np.array_equal(make_rule(MEDIAN).merge(x, counts).numpy(), expected)


@pytest.mark.parametrize(
    ("seed", "n", "beta_ppm"),
    [
        (0, 5, 0),
        (1, 5, 200_000),
        (2, 10, 100_000),
        (3, 10, 250_000),
        (4, 11, 450_000),
        (5, 12, 499_999),
        (6, 3, 400_000),
        (7, 20, 150_000),
    ],
)
def test_trimmed_mean_matches_flwr_aggregate_trimmed_avg(
    flwr_agg: ModuleType, seed: int, n: int, beta_ppm: int
) -> None:
    beta = beta_ppm / PPM
    assert int(beta * n) == beta_ppm * n // PPM  # cases where flwr's float floor agrees
    x, counts, _ = models(seed, n, 300)
    expected = flat(flwr_agg.aggregate_trimmed_avg(as_results(x, counts, 77), beta))
    rule = Rule(MergeRuleId.TRIMMED_MEAN, (beta_ppm, 0, 0, 0))
    np.testing.assert_allclose(make_rule(rule).merge(x, counts).numpy(), expected, atol=1e-6)


@pytest.mark.parametrize(
    ("seed", "n", "f", "m"),
    [
        (0, 5, 1, 0),
        (1, 7, 2, 0),
        (2, 9, 3, 0),
        (3, 8, 1, 1),
        (4, 7, 1, 3),
        (5, 10, 2, 5),
        (6, 6, 1, 6),
        (7, 3, 0, 0),
    ],
)
def test_krum_matches_flwr_aggregate_krum(
    flwr_agg: ModuleType, seed: int, n: int, f: int, m: int
) -> None:
    x, counts, _ = models(seed, n, 250, spread=float(1 + seed % 3))
    expected = flat(flwr_agg.aggregate_krum(as_results(x, counts, 90), f, m))
    got = make_rule(Rule(MergeRuleId.KRUM, (f, m, 0, 0))).merge(x, counts).numpy()
    if m == 0:
        assert np.array_equal(got, expected)  # Krum returns one contribution unchanged
    else:
        np.testing.assert_allclose(got, expected, atol=1e-6)


# ----------------------------------------------------------------------------- no flwr reference


@pytest.mark.parametrize(("seed", "n"), [(0, 3), (1, 4), (2, 7), (3, 10)])
def test_geometric_median_reaches_the_float64_optimum(seed: int, n: int) -> None:
    x, counts, _ = models(seed, n, 200, spread=1.0)
    x64 = x.double().numpy()
    merger = make_rule(GEOMEDIAN)
    state = merger.begin(x, counts)
    got = drive([state])[0].double().numpy()
    best = weiszfeld_reference(x64)
    assert objective(x64, got) <= objective(x64, best) * (1 + 2e-6)
    assert objective(x64, got) <= objective(x64, x64.mean(axis=0))
    assert np.linalg.norm(got - best) <= 1e-5 * np.linalg.norm(x64 - best, axis=1).mean()


def weiszfeld(tolerance_ppm: int, cap: int, x: torch.Tensor) -> WeiszfeldMerge:
    rule = make_rule(Rule(MergeRuleId.GEOMETRIC_MEDIAN, (tolerance_ppm, cap, 0, 0)))
    state = rule.begin(x, [1] * x.shape[0])
    assert isinstance(state, WeiszfeldMerge)
    return state


def test_geometric_median_stops_at_the_iteration_cap_or_the_tolerance() -> None:
    x, _, _ = models(0, 7, 100, spread=1.0)
    capped = weiszfeld(1, 2, x)
    exchanges = 0
    while not capped.done:
        capped.advance(combine_partials([capped.partials()]))
        exchanges += 1
    assert capped.iterations == 2 and exchanges == 2
    loose, tight = weiszfeld(PPM // 10, 1000, x), weiszfeld(1, 1000, x)
    drive([loose])
    drive([tight])
    assert 1 <= loose.iterations < tight.iterations < 1000


def test_geometric_median_does_not_stick_to_a_contribution_it_starts_on() -> None:
    """The middle point lies between the others in every coordinate, so the coordinate-wise
    median start is exactly that contribution (an attacker among three can arrange this), yet
    the angle there is below 120 degrees, so it is not the geometric median."""
    x = torch.tensor([[0.0, 0.9], [1.0, 1.0], [1.1, 2.0]])
    x = torch.cat([x, torch.zeros(3, 5)], dim=1)  # a few dimensions where all agree
    state = make_rule(GEOMEDIAN).begin(x, [1, 1, 1])
    shapes = []
    while not state.done:
        shapes.append(state.partials_shape)
        state.advance(combine_partials([state.partials()]))
    assert shapes[:2] == [(4,), (1,)]  # on a contribution: the Vardi-Zhang step
    got = state.result().double().numpy()
    x64 = x.double().numpy()
    best = weiszfeld_reference(x64)
    assert np.linalg.norm(got - best) <= 1e-4
    assert objective(x64, got) < objective(x64, x64[1]) - 1e-3


def test_geometric_median_of_a_majority_on_one_point_is_that_point() -> None:
    point = torch.linspace(0, 1, 20)
    x = torch.stack([point, point, point, point + 5, point - 7])
    assert torch.equal(make_rule(GEOMEDIAN).merge(x, [1] * 5), point)


@pytest.mark.parametrize(
    ("seed", "tau_ppm", "iterations"),
    [(0, 50_000, 1), (1, 20_000, 3), (2, 1_000_000, 2), (3, 5_000, 10)],
)
def test_centered_clipping_matches_the_formula_in_float64(
    seed: int, tau_ppm: int, iterations: int
) -> None:
    x, counts, last = models(seed, 9, 300)
    x[:2] += 10.0  # two far contributions, so some offsets are clipped
    rule = Rule(MergeRuleId.CENTERED_CLIP, (tau_ppm, iterations, 0, 0))
    got = make_rule(rule).merge(x, counts, last).double().numpy()
    expected = centered_clipping_reference(
        x.double().numpy(), last.double().numpy(), tau_ppm / PPM, iterations
    )
    np.testing.assert_allclose(got, expected, atol=2e-6)


# ----------------------------------------------------------------------------- properties


@pytest.mark.parametrize("rule", ALL_RULES, ids=RULE_IDS)
@PROPERTY_SETTINGS
@given(seed=st.integers(0, 2**31), n=st.integers(5, 9), d=st.integers(0, 40), data=st.data())
def test_permutation_invariance(rule: Rule, seed: int, n: int, d: int, data: st.DataObject) -> None:
    x, counts, last = models(seed, n, d)
    order = data.draw(st.permutations(range(n)))
    before = merge(rule, x, counts, last)
    after = merge(rule, x[order], [counts[i] for i in order], last)
    if rule in (MEDIAN, TRIMMED, KRUM):
        assert torch.equal(before, after)  # sorted values / one selected contribution
    else:
        torch.testing.assert_close(before, after, rtol=0, atol=1e-6)


@pytest.mark.parametrize("rule", ALL_RULES, ids=RULE_IDS)
@PROPERTY_SETTINGS
@given(
    values=st.lists(st.floats(-BIG, BIG, width=32), min_size=0, max_size=12),
    n=st.integers(5, 8),
    counts=st.lists(st.integers(1, 10**6), min_size=8, max_size=8),
)
def test_equal_inputs_give_that_input_exactly(
    rule: Rule, values: list[float], n: int, counts: list[int]
) -> None:
    point = torch.tensor(values, dtype=torch.float32)
    x = point.repeat(n, 1)
    # For centered clipping the last merged model is the same point: nothing to move.
    assert torch.equal(merge(rule, x, counts[:n], point.clone()), point)


def test_centered_clipping_reaches_equal_inputs_within_tau() -> None:
    point = torch.linspace(-1, 1, 64)
    last = point + 0.001
    got = make_rule(Rule(MergeRuleId.CENTERED_CLIP, (PPM, 1, 0, 0))).merge(
        point.repeat(5, 1), [1] * 5, last
    )
    torch.testing.assert_close(got, point, rtol=0, atol=1e-6)


@pytest.mark.parametrize("rule", ALL_RULES, ids=RULE_IDS)
@PROPERTY_SETTINGS
@given(
    seed=st.integers(0, 2**31),
    n=st.integers(5, 8),
    d=st.integers(1, 300),
    fractions=st.lists(st.floats(0, 1), min_size=1, max_size=6),
)
def test_segment_wise_equals_whole_vector(
    rule: Rule, seed: int, n: int, d: int, fractions: list[float]
) -> None:
    """Splitting the vector into segments (some may be empty) changes nothing for the
    coordinate-wise rules; the others decide per segment (docs/round-protocol.md#partial-sums),
    so each piece is the rule's merge of that segment alone, with the same bits."""
    x, counts, last = models(seed, n, d)
    cuts = [int(f * d) for f in fractions]
    merger = make_rule(rule)
    refs = split(last, cuts) if merger.uses_reference else None
    pieces = merger.merge_segments(split(x, cuts), counts, refs)
    if rule in COORDINATE_WISE:
        assert torch.equal(torch.cat(pieces), merge(rule, x, counts, last))
        return
    for piece, seg, ref in zip(pieces, split(x, cuts), split(last, cuts), strict=True):
        assert torch.equal(piece, merge(rule, seg, counts, ref))


@pytest.mark.parametrize("rule", [KRUM, MULTI_KRUM, GEOMEDIAN, CCLIP], ids=str)
def test_an_owner_decides_from_its_own_segment_only(rule: Rule) -> None:
    """The all-reduce's view: each owner holds only its segment. Whatever the other segments
    hold (one contributor far off there, as a forger of partial sums would make them look),
    an owner's merged segment keeps its bits: nothing from outside enters its decision."""
    x, counts, last = models(11, 7, 500)
    cuts = [70, 71, 300, 300]
    merger = make_rule(rule)
    honest = merger.merge_segments(
        split(x, cuts), counts, split(last, cuts) if merger.uses_reference else None
    )
    bent = x.clone()
    bent[2, 70:] += 1e6  # far off everywhere but the first segment
    moved = merger.merge_segments(
        split(bent, cuts), counts, split(last, cuts) if merger.uses_reference else None
    )
    assert torch.equal(moved[0], honest[0])
    assert float((moved[-1] - honest[-1]).abs().max()) < 1.0  # robust within its segment


@pytest.mark.parametrize("rule", ALL_RULES, ids=RULE_IDS)
def test_column_blocking_does_not_change_the_result(
    rule: Rule, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, counts, last = models(3, 7, 1000)
    whole = merge(rule, x, counts, last)
    monkeypatch.setattr(merge_base, "BLOCK_ELEMENTS", 50)
    blocked = merge(rule, x, counts, last)
    if rule in EXACT_UNDER_SEGMENTATION:
        assert torch.equal(blocked, whole)
    else:
        torch.testing.assert_close(blocked, whole, rtol=0, atol=1e-6)


@PROPERTY_SETTINGS
@given(
    seed=st.integers(0, 2**31),
    tau_ppm=st.integers(1, 3 * PPM),
    iterations=st.integers(1, 5),
    pull=st.floats(0, 1e6),
)
def test_centered_clipping_moves_at_most_iterations_times_tau(
    seed: int, tau_ppm: int, iterations: int, pull: float
) -> None:
    """However the contributions are chosen, each iteration moves by an average of vectors no
    longer than tau: the bound Karimireddy et al.'s robustness argument rests on."""
    x, counts, last = models(seed, 6, 50)
    x[:2] += pull * torch.sign(torch.randn(50, generator=torch.Generator().manual_seed(seed)))
    got = make_rule(Rule(MergeRuleId.CENTERED_CLIP, (tau_ppm, iterations, 0, 0))).merge(
        x, counts, last
    )
    moved = float(torch.linalg.vector_norm(got.double() - last.double()))
    assert moved <= iterations * tau_ppm / PPM * (1 + 1e-5) + 1e-6


# ----------------------------------------------------------------------------- robustness


ROBUST = {
    "median": MEDIAN,
    "trimmed": Rule(MergeRuleId.TRIMMED_MEAN, (250_000, 0, 0, 0)),  # cuts 2 of 9 per side
    "krum": Rule(MergeRuleId.KRUM, (2, 0, 0, 0)),
    "multi-krum": Rule(MergeRuleId.KRUM, (2, 4, 0, 0)),
    "geomedian": Rule(MergeRuleId.GEOMETRIC_MEDIAN, (100, 50, 0, 0)),
    "cclip": Rule(MergeRuleId.CENTERED_CLIP, (100_000, 3, 0, 0)),
}


@pytest.mark.parametrize("attack", ["same-direction", "opposite", "near-float32-max"])
@pytest.mark.parametrize("name", sorted(ROBUST))
def test_a_minority_of_huge_outliers_cannot_move_robust_rules_far(name: str, attack: str) -> None:
    honest, counts, last = models(21, 7, 400)
    g = torch.Generator().manual_seed(5)
    direction = torch.randn(400, generator=g)
    magnitude = 3e37 if attack == "near-float32-max" else 1e6
    if attack == "opposite":
        outliers = torch.stack([direction, -direction]) * magnitude
    else:
        outliers = torch.stack([direction, direction]) * magnitude
    x = torch.cat([honest, outliers])
    weights = [*counts, 10**9, 10**9]  # the attackers also claim huge sample counts
    honest_mean = honest.double().mean(dim=0)
    spread = float(torch.linalg.vector_norm(honest.double() - honest_mean, dim=1).max())

    got = merge(ROBUST[name], x, weights, last)

    assert bool(torch.isfinite(got).all())
    assert float(torch.linalg.vector_norm(got.double() - honest_mean)) <= spread
    if attack == "same-direction":
        mean = make_rule(MEAN).merge(x, weights).double()
        assert float(torch.linalg.vector_norm(mean - honest_mean)) > 1e4 * spread


# ----------------------------------------------------------------------------- refused


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (Rule(MergeRuleId.TRIMMED_MEAN, (PPM // 2, 0, 0, 0)), "beta must be below 0.5"),
        (Rule(MergeRuleId.TRIMMED_MEAN, (PPM, 0, 0, 0)), "beta must be below 0.5"),
        (Rule(MergeRuleId.KRUM, (127, 0, 0, 0)), "f too large"),
        (Rule(MergeRuleId.KRUM, (1, 257, 0, 0)), "m too large"),
        (Rule(MergeRuleId.GEOMETRIC_MEDIAN, (0, 10, 0, 0)), "tolerance must be positive"),
        (Rule(MergeRuleId.GEOMETRIC_MEDIAN, (10, 0, 0, 0)), "iteration cap must be 1-1000"),
        (Rule(MergeRuleId.CENTERED_CLIP, (0, 3, 0, 0)), "tau must be positive"),
        (Rule(MergeRuleId.CENTERED_CLIP, (10, 0, 0, 0)), "iterations must be 1-1000"),
        (Rule(MergeRuleId.MEAN, (1, 0, 0, 0)), "takes no parameters"),
        (Rule(MergeRuleId.MEDIAN, (0, 0, 0, 5)), "takes no parameters"),
        (Rule(6), "unknown merge rule"),
    ],
)
def test_bad_parameters_are_refused_at_configuration(rule: Rule, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_rule(rule)


def test_a_rule_class_refuses_another_rules_id() -> None:
    with pytest.raises(ConfigError):
        Krum(GEOMEDIAN)


def test_krum_without_enough_peers_is_refused_when_the_swarm_is_configured() -> None:
    params = SwarmParams(min_peers=2, max_peers=4, merge_rule=Rule(MergeRuleId.KRUM, (1, 0, 0, 0)))
    with pytest.raises(ConfigError, match="needs more peers than maxPeers"):
        params.validate()
    assert make_rule(Rule(MergeRuleId.KRUM, (1, 0, 0, 0))).min_contributions == 5
    assert make_rule(Rule(MergeRuleId.KRUM, (1, 7, 0, 0))).min_contributions == 7


def test_too_few_contributions_at_merge_time_is_a_clear_merge_error() -> None:
    x, counts, _ = models(0, 4, 10)
    with pytest.raises(
        MergeError,
        match=r"krum \(f=1, m=0\) needs at least 5 contributions "
        r"\(n > 2f \+ 2 and n >= m\), got 4",
    ):
        make_rule(KRUM).begin(x, counts)
    with pytest.raises(MergeError, match="needs at least 1 contributions, got 0"):
        make_rule(MEDIAN).merge(torch.empty(0, 10), [])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda x, w, r: (x.double(), w, r), "must be float32"),
        (lambda x, w, r: (x[0], w, r), "2-D tensor"),
        (lambda x, w, r: (x.index_fill(1, torch.tensor([3]), math.nan), w, r), "non-finite"),
        (lambda x, w, r: (x, w[:-1], r), "6 contributions but 5 weights"),
        (lambda x, w, r: (x, [-1.0, *w[1:]], r), "non-negative"),
        (lambda x, w, r: (x, [0] * len(w), r), "sum to zero"),
    ],
)
def test_unusable_inputs_are_merge_errors(
    mutate: Callable[[torch.Tensor, list[int], torch.Tensor], tuple[Any, Any, Any]], message: str
) -> None:
    x, counts, last = models(0, 6, 10)
    bad_x, bad_w, bad_ref = mutate(x, counts, last)
    with pytest.raises(MergeError, match=message):
        make_rule(MEAN).merge(bad_x, bad_w, bad_ref)


def test_centered_clipping_needs_a_matching_reference() -> None:
    x, counts, last = models(0, 5, 10)
    rule = make_rule(CCLIP)
    assert isinstance(rule, CenteredClipping) and rule.uses_reference
    with pytest.raises(MergeError, match="needs the last merged model"):
        rule.merge(x, counts)
    with pytest.raises(MergeError, match="reference must have shape"):
        rule.merge(x, counts, last[:5])


def test_mismatched_segments_and_weights_are_merge_errors() -> None:
    x, counts, last = models(0, 5, 10)
    with pytest.raises(MergeError, match="2 segments but 1 references"):
        make_rule(CCLIP).merge_segments(split(x, [4]), counts, [last])
    with pytest.raises(MergeError, match="5 sample counts but 2 node weights"):
        contribution_weights(counts, [1.0, 2.0])
    state = make_rule(CCLIP).begin(x, counts, last)
    drive([state])
    with pytest.raises(MergeError, match="already finished"):
        state.advance(torch.zeros(5, dtype=torch.float64))


def test_bad_partial_sums_are_refused() -> None:
    x, counts, _ = models(0, 5, 10)
    state = make_rule(GEOMEDIAN).begin(x, counts)
    assert isinstance(make_rule(GEOMEDIAN), GeometricMedian)
    good = state.partials()
    with pytest.raises(MergeError, match="shape"):
        combine_partials([good, torch.zeros(4, dtype=torch.float64)])
    with pytest.raises(MergeError, match="negative or non-finite"):
        combine_partials([good, torch.full_like(good, -1.0)])
    with pytest.raises(MergeError, match="expected"):
        state.advance(torch.zeros(3, dtype=torch.float64))
    coordinate = make_rule(MEDIAN).begin(x, counts)
    assert coordinate.done
    with pytest.raises(MergeError, match="no partial sums"):
        coordinate.partials()


def test_rule_table_is_complete() -> None:
    for rule_id in MergeRuleId:
        assert isinstance(make_rule(Rule(rule_id, _valid_params(rule_id))), MergeRule)


def _valid_params(rule_id: MergeRuleId) -> tuple[int, int, int, int]:
    if rule_id in (MergeRuleId.MEAN, MergeRuleId.MEDIAN):
        return (0, 0, 0, 0)
    return (1, 1, 0, 0)


# ----------------------------------------------------------------------------- gpu


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("rule", ALL_RULES, ids=RULE_IDS)
def test_merging_on_cuda_matches_the_cpu(rule: Rule) -> None:
    x, counts, last = models(8, 9, 100_003)
    x[:2] *= 50.0  # make clipping and selection do something
    on_cpu = merge(rule, x, counts, last)
    on_gpu = merge(rule, x.cuda(), counts, last.cuda())
    assert on_gpu.device.type == "cuda" and on_gpu.dtype == torch.float32
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=0, atol=1e-5)
    if rule in (MEDIAN, TRIMMED, MEAN):  # elementwise only: same bits on both
        assert torch.equal(on_gpu.cpu(), on_cpu)
