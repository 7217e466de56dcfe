"""Byzantine nodes: what each attack really sends or trains on, and what the scenario refuses."""

from __future__ import annotations

import functools
from statistics import NormalDist

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from swarmnode.exceptions import ConfigError
from swarmnode.simulation.attacks import IPM_EPSILON, Colluders, alie_z, make_attack
from swarmnode.simulation.data import load_dataset
from swarmnode.simulation.engine import run_swarm
from swarmnode.simulation.local import run_in_threads
from swarmnode.simulation.partition import partition
from swarmnode.simulation.scenario import Scenario
from swarmnode.simulation.tasks import node_tasks
from swarmnode.training import LocalTrainer


def test_a_label_flipper_trains_on_flipped_labels_and_learns_the_opposite() -> None:
    scenario = Scenario.load(
        None,
        {"dataset": "breast_cancer", "nodes": 4, "byzantine": 1, "attack": "label_flip"},
    )
    data = load_dataset("breast_cancer", seed=0)
    parts = partition(data.y_train.numpy(), 4, "iid", seed=0)
    tasks = node_tasks(scenario, data, parts)
    for i, (task, part) in enumerate(zip(tasks, parts, strict=True)):
        assert isinstance(task.train_data, TensorDataset)
        labels = task.train_data.tensors[1]
        truth = data.y_train[torch.as_tensor(part)]
        assert torch.equal(labels, 1 - truth if i == 3 else truth), i
    # What it trains on is what it learns: the inverse classifier, good on flipped labels.
    attacker = LocalTrainer(tasks[3], "cpu", 0, init_seed=0)
    attacker.train_batches(60)
    true_test = TensorDataset(data.x_test, data.y_test)
    flipped_test = TensorDataset(data.x_test, 1 - data.y_test)
    assert attacker.evaluate(true_test)["accuracy"] < 0.2
    assert attacker.evaluate(flipped_test)["accuracy"] > 0.8
    # ...and it sends that update as it is: no contribution hook
    assert make_attack("label_flip", seed=0) is None


@functools.cache
def _honest_updates(nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """(reference, one row per node): each node's model after 10 batches on its own
    label-skewed slice of digits, from the same start. Cached: the ALIE and IPM tests read
    the same updates and never write to them."""
    scenario = Scenario.load(None, {"nodes": nodes})
    data = load_dataset("digits", seed=0)
    parts = partition(data.y_train.numpy(), nodes, "dirichlet", seed=0, alpha=0.5)
    trainers = [
        LocalTrainer(task, "cpu", i, init_seed=0)
        for i, task in enumerate(node_tasks(scenario, data, parts))
    ]
    reference = trainers[0].snapshot()
    for trainer in trainers:
        trainer.train_batches(10)
    return reference, np.stack([t.snapshot() for t in trainers])


def test_alie_colluders_send_one_vector_that_hides_inside_the_honest_spread() -> None:
    reference, honest = _honest_updates(8)
    colluders = Colluders(2, alie_z(8, 2))
    hooks = [make_attack("alie", seed=m, colluders=colluders, member=m) for m in range(2)]
    for hook in hooks:
        assert hook is not None
    # both colluders must be in before either sends: they run as the nodes do, in threads
    sent = run_in_threads([lambda m=m: hooks[m](honest[6 + m], reference) for m in range(2)])
    assert np.array_equal(sent[0], sent[1])
    others = honest[:6]  # the honest nodes' updates, which the colluders never saw
    low, high = others.min(axis=0), others.max(axis=0)
    varying = high > low

    def inside(vector: np.ndarray) -> float:
        return float(((vector >= low) & (vector <= high))[varying].mean())

    flip = make_attack("sign_flip", seed=0)
    assert flip is not None
    assert inside(sent[0]) > 0.7  # per coordinate it looks like one more honest node...
    assert inside(flip(honest[6], reference)) < 0.4  # ...where a sign flip stands out
    # ...and it is shifted the same way in every coordinate: below the colluders' mean
    updates = honest[6:].astype(np.float64) - reference
    assert np.all(sent[0] - reference <= updates.mean(axis=0) + 1e-6)


def test_alie_pulls_the_mean_away_from_the_honest_one() -> None:
    # Eight nodes for 8 rounds on the in-memory backend, the same seed with and without the
    # two colluders: the mean merges their shift into every round.
    data = load_dataset("digits", seed=0)
    parts = partition(data.y_train.numpy(), 8, "dirichlet", seed=0, alpha=0.5)
    loss = {}
    for attack in ("none", "alie"):
        scenario = Scenario.load(
            None, {"rounds": 8, "attack": attack, "byzantine": 0 if attack == "none" else 2}
        )
        run = run_swarm(scenario, data, parts, backend="memory")
        assert all(r.digest_agreed for r in run.rounds)
        loss[attack] = run.loss
    assert loss["alie"] > loss["none"]


def test_alie_z_is_the_papers_and_a_lone_colluder_goes_on_alone() -> None:
    assert alie_z(8, 2) == pytest.approx(NormalDist().inv_cdf(5 / 8))
    assert alie_z(8, 1) < alie_z(8, 2) < alie_z(8, 3)  # more colluders dare a larger shift
    with pytest.raises(ConfigError, match="alie needs"):
        alie_z(8, 8)
    # the other colluder never shows up: after the bounded wait it sends its honest vector
    colluders = Colluders(2, 1.0, wait=0.05)
    reference = np.zeros(3, dtype=np.float32)
    honest = np.array([1.0, -2.0, 0.5], dtype=np.float32)
    hook = make_attack("alie", seed=0, colluders=colluders, member=0)
    assert hook is not None
    assert np.array_equal(hook(honest, reference), honest)
    with pytest.raises(ConfigError, match="needs its colluders"):
        make_attack("alie", seed=0)


def _krum_pick(vectors: np.ndarray, f: int) -> int:
    """Krum's choice (Blanchard et al. 2017): the vector with the least sum of squared
    distances to its n - f - 2 nearest others; here only to check the paper's claim."""
    d = ((vectors[:, None, :] - vectors[None, :, :]) ** 2).sum(axis=2)
    nearest = np.sort(d, axis=1)[:, 1 : len(vectors) - f - 1]
    return int(nearest.sum(axis=1).argmin())


def test_ipm_colluders_reverse_the_honest_direction_and_krum_picks_them() -> None:
    reference, honest = _honest_updates(8)
    colluders = Colluders(2)
    hooks = [make_attack("ipm", seed=m, colluders=colluders, member=m) for m in range(2)]
    for hook in hooks:
        assert hook is not None
    sent = run_in_threads([lambda m=m: hooks[m](honest[6 + m], reference) for m in range(2)])
    assert np.array_equal(sent[0], sent[1])
    # reference - epsilon x the colluders' mean update, epsilon 0.1 by default...
    own = (honest[6:].astype(np.float64) - reference).mean(axis=0)
    assert IPM_EPSILON == 0.1
    np.testing.assert_allclose(sent[0] - reference, -0.1 * own, atol=1e-6)
    # ...whose inner product with the honest nodes' mean update, which they never saw, is
    # negative: merged in, it moves the model against the descent direction
    true = (honest[:6].astype(np.float64) - reference).mean(axis=0)
    assert float(np.dot(sent[0] - reference, true)) < 0
    # Fall of Empires' point about Krum (f = 2): two identical vectors near the reference are
    # closer to everything than the skewed honest updates are to each other, so Krum picks
    # one, where it would never pick a sign flip
    pool = np.concatenate([honest[:6], np.stack(sent)]).astype(np.float64)
    assert _krum_pick(pool, 2) in (6, 7)
    flip = make_attack("sign_flip", seed=0)
    assert flip is not None
    flipped = np.concatenate([honest[:6], [flip(h, reference) for h in honest[6:]]])
    assert _krum_pick(flipped.astype(np.float64), 2) < 6
    # attack_scale is epsilon; without colluders there is nothing to take the mean of
    large = make_attack("ipm", seed=0, scale=8.0, colluders=Colluders(1), member=0)
    assert large is not None
    np.testing.assert_allclose(
        large(honest[7], reference) - reference, -8.0 * (honest[7] - reference), rtol=1e-5
    )
    with pytest.raises(ConfigError, match="ipm attack needs its colluders"):
        make_attack("ipm", seed=0)


def test_ipm_pulls_the_mean_backwards() -> None:
    # As for ALIE: 8 nodes, 8 rounds in memory, the same seed with and without the two
    # colluders; the mean takes their reversed update into every round.
    data = load_dataset("digits", seed=0)
    parts = partition(data.y_train.numpy(), 8, "dirichlet", seed=0, alpha=0.5)
    loss = {}
    for attack in ("none", "ipm"):
        scenario = Scenario.load(
            None, {"rounds": 8, "attack": attack, "byzantine": 0 if attack == "none" else 2}
        )
        run = run_swarm(scenario, data, parts, backend="memory")
        assert all(r.digest_agreed for r in run.rounds)
        loss[attack] = run.loss
    assert loss["ipm"] > loss["none"]


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"merge_rule": "median", "byzantine": 4, "attack": "alie"}, "fewer than half"),
        (
            {
                "merge_rule": "trimmed_mean",
                "merge_params": (100_000, 0, 0, 0),
                "byzantine": 2,
                "attack": "sign_flip",
            },
            "cuts 0 of 8 values per side",
        ),
        (
            {"merge_rule": "krum", "merge_params": (1, 0, 0, 0), "byzantine": 2, "attack": "noise"},
            "tolerates 1 byzantine, not 2",
        ),
        ({"byzantine": 2}, "need an attack"),
        ({"attack": "bribery", "byzantine": 1}, "field attack"),
    ],
)
def test_a_byzantine_count_a_rule_cannot_stand_is_refused_in_one_line(
    fields: dict[str, object], needle: str
) -> None:
    with pytest.raises(ConfigError, match=needle) as refused:
        Scenario.load(None, fields)
    assert "\n" not in str(refused.value)


def test_the_mean_takes_attackers_as_the_undefended_baseline() -> None:
    scenario = Scenario.load(None, {"merge_rule": "mean", "byzantine": 3, "attack": "alie"})
    assert scenario.byzantine == 3
