"""Distributed DP for the mean (swarmnode/distributed_dp.py, docs/privacy.md#distributed-dp):
the clipping bound, the noise each node adds and what the survivors' noise sums to, the
accountant's epsilon per round, the budget, the journal and the one-line refusals.

The noise checks are statistical, over 200,000 coordinates with fixed seeds: the standard
deviation measured there has a relative standard error of 1/sqrt(2 x 200,000) = 0.16 %, so
a 1.5 % tolerance never fails by chance, while noise sized for m instead of m - f nodes (5 %
off here) or not split at all fails it.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from torch import nn
from torch.utils.data import TensorDataset

from swarmnode import canonical
from swarmnode.config import NodeConfig
from swarmnode.distributed_dp import DistributedDP, MeanPrivacySettings, clip_update
from swarmnode.exceptions import ConfigError
from swarmnode.node import SwarmCallback, SwarmNode
from swarmnode.privacy import (
    BudgetSpent,
    PrivacySettings,
    epsilon_of,
    read_journal,
    write_journal,
)
from swarmnode.round import RoundSettings
from swarmnode.rules import Rule, SecureAggregation, SwarmParams, SyncPolicyId
from swarmnode.simulation.engine import run_tasks
from swarmnode.simulation.fast import run_fast
from swarmnode.simulation.local import memory_swarm, run_in_threads
from swarmnode.simulation.report import build_report
from swarmnode.simulation.results import Curve
from swarmnode.simulation.scenario import Scenario
from swarmnode.simulation.tasks import node_tasks, scenario_data
from swarmnode.training import example_task

DELTA = 1e-5
COORDINATES = 200_000
TOLERANCE = 0.015


def secure_params(min_peers: int = 5, bound: int = 16) -> SwarmParams:
    return SwarmParams(
        min_peers=min_peers,
        max_peers=8,
        sync_policy=Rule(SyncPolicyId.EVERY_N_BATCHES, (2, 0, 0, 0)),
        initial_model_digest=bytes(31) + b"\x01",  # not checked: check_initial_digest off
        secure_aggregation=SecureAggregation(bound=bound),
    )


def test_an_update_is_clipped_to_the_norm_and_a_short_one_is_left_alone() -> None:
    rng = np.random.default_rng(3)
    for scale in (0.01, 0.5, 3.0, 400.0):
        update = rng.normal(0.0, scale, size=1000)
        clipped = clip_update(update, 2.0)
        assert np.linalg.norm(clipped) <= 2.0 * (1 + 1e-12)
        if np.linalg.norm(update) <= 2.0:
            assert clipped is update
        else:  # the same direction, scaled down
            assert np.linalg.norm(clipped) == pytest.approx(2.0, rel=1e-12)
            assert np.allclose(clipped / np.linalg.norm(clipped), update / np.linalg.norm(update))


def test_a_node_sends_reference_plus_clipped_update_plus_its_noise() -> None:
    """Two generators of the same seed: the second's contribution of no update is the first
    one's noise, so the difference is exactly the clipped update."""
    settings = MeanPrivacySettings(1.0, 0.5, assumed_colluders=1)
    rng = np.random.default_rng(4)
    reference = rng.normal(0.0, 1.0, size=5000).astype(np.float32)
    vector = (reference + rng.normal(0.0, 0.1, size=5000)).astype(np.float32)  # norm ~7 > 0.5
    sent = DistributedDP(settings, 5, seed=11).contribute(vector, reference)
    noise_only = DistributedDP(settings, 5, seed=11).contribute(reference, reference)
    update = sent.astype(np.float64) - noise_only.astype(np.float64)
    expected = clip_update(vector.astype(np.float64) - reference.astype(np.float64), 0.5)
    assert np.abs(update - expected).max() < 1e-5  # float32 rounding of the sent values
    assert float(np.linalg.norm(update)) == pytest.approx(0.5, rel=1e-3)


def test_each_node_adds_sigma_c_over_root_m_minus_f_and_m_minus_f_of_them_sum_to_sigma_c() -> None:
    sigma, clip, m, f = 1.2, 2.0, 5, 1
    settings = MeanPrivacySettings(sigma, clip, assumed_colluders=f)
    zero = np.zeros(COORDINATES, dtype=np.float32)
    noises = [
        DistributedDP(settings, m, seed=100 + k).contribute(zero, zero).astype(np.float64)
        for k in range(m - f)
    ]
    each = sigma * clip / math.sqrt(m - f)
    assert DistributedDP(settings, m, seed=1).std == pytest.approx(each, rel=1e-12)
    for noise in noises:
        assert abs(float(noise.mean())) < 5 * each / math.sqrt(COORDINATES)
        assert float(noise.std()) == pytest.approx(each, rel=TOLERANCE)
    # the honest survivors' noise, the colluder's own taken off: the target, sigma C
    assert float(np.sum(noises, axis=0).std()) == pytest.approx(sigma * clip, rel=TOLERANCE)
    # independent draws: no two nodes' noise is correlated
    assert abs(float(np.corrcoef(noises[0], noises[1])[0, 1])) < 0.01


def test_the_noise_seed_is_secret_unless_given() -> None:
    settings = MeanPrivacySettings(1.0, 1.0)
    zero = np.zeros(64, dtype=np.float32)
    first, second = (DistributedDP(settings, 3).contribute(zero, zero) for _ in range(2))
    assert not np.array_equal(first, second)
    again = [DistributedDP(settings, 3, seed=5).contribute(zero, zero) for _ in range(2)]
    assert np.array_equal(again[0], again[1])


def test_epsilon_grows_each_round_as_opacus_counts_it_and_the_budget_stops_the_next() -> None:
    sigma = 2.0
    dp = DistributedDP(MeanPrivacySettings(sigma, 1.0, 1, DELTA, 8.0), 3, seed=0)
    zero = np.zeros(8, dtype=np.float32)
    assert dp.epsilon() == 0.0
    spent = []
    with pytest.raises(BudgetSpent, match=r"budget 8 \(delta 1e-05, distributed DP\)"):
        for _ in range(50):
            dp.check_budget()
            dp.contribute(zero, zero)
            spent.append(dp.epsilon())
    assert len(spent) >= 3 and all(a < b for a, b in itertools.pairwise(spent))
    assert spent[-1] <= 8.0 < dp.epsilon_after(1)
    reference = RDPAccountant()
    reference.history = [(sigma, 1.0, len(spent))]
    assert spent[-1] == pytest.approx(reference.get_epsilon(delta=DELTA), rel=1e-9)


def test_the_rounds_are_kept_in_the_journal_beside_local_dps_history(tmp_path: Path) -> None:
    journal = tmp_path / "checkpoints" / "privacy.json"
    write_journal(journal, "history", [[1.0, 0.5, 4]])
    dp = DistributedDP(MeanPrivacySettings(1.0, 1.0), 3, seed=0)
    dp.restore(journal)
    zero = np.zeros(4, dtype=np.float32)
    dp.contribute(zero, zero)
    dp.record()
    assert read_journal(journal) == {"history": [[1.0, 0.5, 4]], "mean_rounds": 1}
    again = DistributedDP(MeanPrivacySettings(1.0, 1.0), 3, seed=0)
    again.restore(journal)
    assert again.rounds == 1 and again.epsilon() == dp.epsilon()
    journal.write_text(json.dumps({"mean_rounds": "two"}))
    with pytest.raises(ConfigError, match="not a privacy journal"):
        again.restore(journal)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: MeanPrivacySettings(0.0, 1.0), "mean_noise_multiplier must be a finite"),
        (lambda: MeanPrivacySettings(1.0, math.nan), "mean_clip_norm must be a finite"),
        (lambda: MeanPrivacySettings(1.0, 1.0, -1), "assumed_colluders must be an integer"),
        (lambda: MeanPrivacySettings(1.0, 1.0, 1, 1.5), "delta must be a number between"),
        (lambda: MeanPrivacySettings(1.0, 1.0, 1, DELTA, -2.0), "epsilon_budget must be"),
        (
            lambda: DistributedDP.for_swarm(MeanPrivacySettings(1.0, 1.0), SwarmParams()),
            "needs secure aggregation in the swarm",
        ),
        (
            lambda: DistributedDP.for_swarm(MeanPrivacySettings(1.0, 1.0, 3), secure_params(3)),
            "assumed_colluders 3 must be below the 3 participants",
        ),
        (
            lambda: DistributedDP.for_swarm(MeanPrivacySettings(5.0, 4.0), secure_params(5, 32)),
            "does not fit secure aggregation's bound 32",
        ),
    ],
)
def test_what_cannot_protect_is_refused_in_one_line(make: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        make()  # type: ignore[operator]
    assert "\n" not in str(caught.value)


def test_node_toml_mean_keys_and_their_refusals(tmp_path: Path) -> None:
    toml = tmp_path / "node.toml"
    node = '[node]\nidentity_dir = "id"\ndeployment = "d.json"\n'
    toml.write_text(node + "[privacy]\nmean_noise_multiplier = 1.0\nmean_clip_norm = 0.5\n")
    config = NodeConfig.load(toml).privacy
    assert config is not None and config.settings() is None
    assert config.mean_settings() == MeanPrivacySettings(1.0, 0.5, 1, DELTA, None)
    for body, message in (
        ("mean_noise_multiplier = 1.0\n", "mean_noise_multiplier needs mean_clip_norm"),
        (
            "mean_noise_multiplier = 1.0\nmean_clip_norm = 1.0\nnoise_multiplier = 1.0\n"
            "max_grad_norm = 1.0\n",
            "cannot both be on",
        ),
        ("delta = 1e-6\n", "privacy needs noise_multiplier and max_grad_norm"),
        ("mean_noise_multiplier = 1.0\nmean_clip_norm = 1.0\nassumed_colluders = -1\n", "integer"),
    ):
        toml.write_text(node + "[privacy]\n" + body)
        with pytest.raises(ConfigError, match=message) as caught:
            NodeConfig.load(toml)
        assert str(caught.value).startswith(str(toml)) and "\n" not in str(caught.value)


def test_a_node_refuses_a_swarm_without_secure_aggregation_and_stops_at_its_budget() -> None:
    """Both before any training: a swarm without secure aggregation is refused when the
    node is made, and a budget below one round's epsilon stops the first step."""
    task = example_task(samples=32)

    def node(params: SwarmParams, **privacy: object) -> SwarmNode:
        peer = memory_swarm(params, 2).peers[0]
        return SwarmNode(
            ledger=peer.ledger,
            transport=peer.transport,
            inbox=peer.inbox,
            task=task,
            device="cpu",
            check_initial_digest=False,
            **privacy,  # type: ignore[arg-type]
        )

    plain = SwarmParams(initial_model_digest=bytes(31) + b"\x01")
    with pytest.raises(ConfigError, match="needs secure aggregation"):
        node(plain, mean_privacy=MeanPrivacySettings(1.0, 1.0))
    with pytest.raises(ConfigError, match="cannot both be on"):
        node(
            secure_params(),
            privacy=PrivacySettings(1.0, 1.0),
            mean_privacy=MeanPrivacySettings(1.0, 1.0),
        )
    spender = node(secure_params(), mean_privacy=MeanPrivacySettings(1.0, 1.0, 1, DELTA, 0.5))
    with pytest.raises(BudgetSpent, match=r"epsilon 0\.000 so far"):
        spender.step()
    assert spender.trainer.batches_done == 0 and spender.epsilon() == 0.0


def test_a_hook_with_distributed_dp_contributes_noised_updates_until_the_budget() -> None:
    """Three loops of their own on a secure swarm, a budget between one and two rounds'
    epsilon: each syncs once (weight 1, its update noised), then stops; they end on one
    merged model, which is not the plain mean of their trained models (the noise is in)."""
    sigma, every = 1.0, 3
    one, two = (epsilon_of([(sigma, 1.0, k)], DELTA) for k in (1, 2))
    x = torch.randn(48, 4, generator=torch.Generator().manual_seed(1))
    y = (x.sum(dim=1) > 0).long()

    def net() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

    models = [net() for _ in range(3)]
    params = replace(
        secure_params(3),
        max_peers=3,
        sync_policy=Rule(SyncPolicyId.EVERY_N_BATCHES, (every, 0, 0, 0)),
        initial_model_digest=canonical.digest(canonical.flatten(models[0])),
    )
    peers = memory_swarm(params, 3).peers
    trained: list[torch.Tensor] = [torch.empty(0)] * 3

    def my_loop(i: int) -> SwarmCallback:
        model = models[i]
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        hook = SwarmCallback(
            model,
            ledger=peers[i].ledger,
            transport=peers[i].transport,
            inbox=peers[i].inbox,
            num_samples=16 * (i + 1),  # unequal: distributed DP joins with 1 anyway
            settings=RoundSettings(poll=0.01),
            mean_privacy=MeanPrivacySettings(sigma, 0.5, 1, DELTA, (one + two) / 2),
        )
        for _ in range(5):  # epochs; the budget ends it first
            for start in range(0, 48, 16):
                optimizer.zero_grad()
                rows = slice(start, start + 16)
                nn.functional.cross_entropy(model(x[rows]), y[rows]).backward()
                optimizer.step()
                if hook.batches_since_sync == every - 1:
                    trained[i] = canonical.flatten(model).clone()
                hook.on_batch_end()
                if hook.budget_spent:
                    return hook
        raise AssertionError("the budget did not end the loop")

    hooks = run_in_threads([lambda i=i: my_loop(i) for i in range(3)], timeout=60)
    for hook in hooks:
        assert hook.budget_spent and [r.status for r in hook.rounds] == ["final"]
        assert hook.epsilon == pytest.approx(one, rel=1e-12)
    seats = peers[0].ledger.round(1).seats  # on chain: every join's weight is 1
    assert [seat.weight for seat in seats] == [1, 1, 1]
    merged = [canonical.flatten(hook.model) for hook in hooks]
    assert all(torch.equal(merged[0], m) for m in merged)
    assert float((merged[0] - torch.stack(trained).mean(dim=0)).abs().max()) > 0.05


# --------------------------------------------------------------------------------------------
# The simulator


def test_both_engines_run_distributed_dp_on_secure_aggregation_until_the_budget() -> None:
    """Three nodes, a budget between two and three rounds' epsilon: both engines take two
    rounds and stop, every node at the accountant's epsilon; their merged models score the
    same test loss (the same training, the same seeded noise, the same fixed-point sum; a
    node's weight or noise drawn otherwise moves it by far more), and the report names the
    distributed settings."""
    sigma = 1.0
    two, three = (epsilon_of([(sigma, 1.0, k)], DELTA) for k in (2, 3))
    fields = {
        "nodes": 3,
        "rounds": 3,
        "local_batches": 2,
        "partition": "iid",
        "secure_aggregation": True,
        "dp_mean_noise": sigma,
        "dp_mean_clip": 0.5,
        "dp_budget": (two + three) / 2,
    }
    full = Scenario.load(None, fields)
    data, parts = scenario_data(full)
    test = TensorDataset(data.x_test, data.y_test)
    runs = [
        run_tasks(full, node_tasks(full, data, parts), test, backend="memory"),
        run_fast(full.model_copy(update={"engine": "fast"}), data, parts),
    ]
    for run in runs:
        assert [r.participants for r in run.rounds] == [3, 3]
        spent = [[n.epsilon for n in r.per_node] for r in run.rounds]
        assert spent == [[pytest.approx(epsilon_of([(sigma, 1.0, 1)], DELTA))] * 3, [two] * 3]
    for full_round, fast_round in zip(*(run.rounds for run in runs), strict=True):
        # the same model within training's float error (tests/test_fast_engine.py: 1e-5)
        assert fast_round.loss == pytest.approx(full_round.loss, rel=1e-4)
    report = build_report(full, runs[0], [Curve([0.5] * 2)], Curve([0.9] * 2), 1.0)
    assert report["privacy"] == {
        "secure_aggregation": True,
        "noise_multiplier": sigma,
        "epsilon": pytest.approx(two),
        "delta": DELTA,
        "dp": "distributed",
        "clip_norm": 0.5,
        "assumed_colluders": 1,
        "min_participants": 3,
        "node_noise_std": pytest.approx(sigma * 0.5 / math.sqrt(2)),
    }


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"dp_mean_noise": 1.0}, "dp_mean_noise needs secure_aggregation = true"),
        ({"dp_mean_noise": 1.0, "dp_noise": 1.0}, "cannot both be on"),
        ({"dp_colluders": 1}, "dp_colluders without dp_mean_noise"),
        (
            {"dp_mean_noise": 1.0, "secure_aggregation": True, "dp_colluders": 3},
            "assumed_colluders 3 must be below the 3 participants",
        ),
        (
            {"dp_mean_noise": 1.0, "secure_aggregation": True, "dp_clip": 1.0},
            "dp_clip is DP-SGD's",
        ),
        ({"min_peers": 9}, "min_peers 9 is more than the 8 nodes"),
    ],
)
def test_scenario_refusals_are_one_line(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        Scenario.load(None, fields)
    assert "\n" not in str(caught.value)
