"""Local DP-SGD (swarmnode/privacy.py, docs/privacy.md): settings, the model a DP node
shares, the accountant's epsilon, the budget that ends a node's rounds, and the report.

Small models on the in-memory ledger and transport; Opacus's own accountant is the
reference every epsilon is compared with.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch
from opacus.accountants import RDPAccountant
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from swarmnode import canonical
from swarmnode.cli.status import _print_node_status, _with_epsilon
from swarmnode.config import NodeConfig
from swarmnode.exceptions import ConfigError
from swarmnode.node import SwarmCallback, SwarmNode
from swarmnode.privacy import (
    BudgetSpent,
    PrivacySettings,
    epsilon_of,
    make_private,
    plain_state_dict,
)
from swarmnode.records import NodeRoundRecord
from swarmnode.round import RoundSettings
from swarmnode.rules import Rule, SwarmParams, SyncPolicyId
from swarmnode.simulation.engine import run_tasks
from swarmnode.simulation.local import memory_swarm, run_in_threads
from swarmnode.simulation.report import build_report
from swarmnode.simulation.results import Curve
from swarmnode.simulation.scenario import Scenario
from swarmnode.training import LocalTrainer, example_task

DELTA = 1e-5


def accountant(noise: float, q: float, steps: int) -> float:
    """Opacus's RDP accountant's own epsilon for `steps` steps at sample rate q."""
    reference = RDPAccountant()
    reference.history = [(noise, q, steps)]
    return float(reference.get_epsilon(delta=DELTA))


# --------------------------------------------------------------------------------------------
# Settings


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ((0.0, 1.0), "noise_multiplier must be a finite number > 0"),
        ((1.0, -1.0), "max_grad_norm must be a finite number > 0"),
        ((1.0, math.inf), "max_grad_norm must be a finite number > 0"),
        ((1.0, 1.0, 0.0), "delta must be a number between 0 and 1"),
        ((1.0, 1.0, 1e-5, 0.0), "epsilon_budget must be a finite number > 0"),
        (("1", 1.0), "noise_multiplier must be a finite number > 0"),
    ],
)
def test_bad_privacy_settings_are_one_line_naming_the_setting(
    values: tuple[object, ...], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        PrivacySettings(*values)  # type: ignore[arg-type]
    assert "\n" not in str(caught.value)


def test_node_toml_privacy_beside_node_and_its_errors(tmp_path: Path) -> None:
    toml = tmp_path / "node.toml"
    node = '[node]\nidentity_dir = "id"\ndeployment = "d.json"\n'
    toml.write_text(node + "[privacy]\nnoise_multiplier = 1.1\nmax_grad_norm = 0.5\n")
    settings = NodeConfig.load(toml).privacy
    assert settings is not None
    assert settings.settings() == PrivacySettings(1.1, 0.5, DELTA, None)
    toml.write_text(node + "[privacy]\nnoise_multiplier = 1.1\nmax_grad_norm = 0\n")
    with pytest.raises(ConfigError, match=rf"{toml}: privacy max_grad_norm must be"):
        NodeConfig.load(toml)
    toml.write_text(node + "[privacy]\nnoise = 1.1\n")
    with pytest.raises(ConfigError, match=r"field privacy\.noise"):
        NodeConfig.load(toml)


def test_scenario_dp_keys_are_checked_and_the_fast_engine_refuses_them() -> None:
    assert Scenario.load(None, {"dp_noise": 1.1}).privacy() == PrivacySettings(1.1, 1.0)
    with pytest.raises(ConfigError, match="dp_budget without dp_noise"):
        Scenario.load(None, {"dp_budget": 3.0})
    with pytest.raises(ConfigError, match="privacy delta must be"):
        Scenario.load(None, {"dp_noise": 1.0, "dp_delta": 2.0})
    with pytest.raises(ConfigError, match="the fast engine does not run dp_noise"):
        Scenario.load(None, {"dp_noise": 1.0, "engine": "fast"})


# --------------------------------------------------------------------------------------------
# The model a DP node shares


def test_a_dp_node_shares_the_plain_layout_and_names_of_a_non_dp_node() -> None:
    task = example_task(samples=96)
    plain = LocalTrainer(task, "cpu", 0, init_seed=7)
    private = LocalTrainer(task, "cpu", 1, init_seed=7, privacy=PrivacySettings(1.0, 1.0))
    assert private.layout == plain.layout
    assert canonical.digest(private.snapshot()) == canonical.digest(plain.snapshot())
    private.train_batches(4)
    assert private.privacy is not None
    wrapped = private.privacy.module.state_dict()
    assert all(key.startswith("_module.") for key in wrapped)  # Opacus's own names...
    assert not any("_module." in key for key in private.model.state_dict())  # ...never shared
    vector = private.snapshot()
    assert canonical.digest(canonical.flatten(plain_state_dict(wrapped))) == canonical.digest(
        vector
    )
    plain.load(vector)  # a DP node's model is every node's model
    assert canonical.digest(plain.snapshot()) == canonical.digest(vector)


def test_batchnorm_is_fixed_alike_on_every_dp_node_before_the_initial_digest() -> None:
    task = example_task(samples=64, batchnorm=True)
    settings = PrivacySettings(1.0, 1.0)
    nodes = [LocalTrainer(task, "cpu", seed, init_seed=3, privacy=settings) for seed in (1, 2)]
    names = [entry.name for entry in nodes[0].layout.entries]
    assert not any("running_mean" in name for name in names)  # GroupNorm: no batch stats
    assert isinstance(nodes[0].model.norm, nn.GroupNorm)
    assert nodes[0].layout == nodes[1].layout
    assert canonical.digest(nodes[0].snapshot()) == canonical.digest(nodes[1].snapshot())
    plain = LocalTrainer(task, "cpu", 1, init_seed=3)
    assert plain.layout != nodes[0].layout  # a BatchNorm node without DP is another model
    with pytest.raises(ConfigError, match=r"cannot train with DP-SGD: .*fix_model"):
        make_private(plain.model, plain.optimizer, task.train_data, settings, batch_size=8)
    nodes[0].train_batches(2)
    assert math.isfinite(nodes[0].last_train_loss or math.nan)


def test_poisson_batches_of_any_size_even_none_train_and_count() -> None:
    """Four rows, batches of one: each step draws each row with probability 1/4. A twin
    trainer (same seed, so the same draws from its own generators) shows that the 40 steps
    include empty batches and batches of several rows."""
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    task = example_task(samples=4, batch_size=1)
    task.train_data = TensorDataset(x, torch.tensor([0, 1, 2, 3]))
    trainer, twin = (LocalTrainer(task, "cpu", 0, privacy=PrivacySettings(1.0, 1.0)) for _ in "ab")
    assert trainer.privacy is not None and twin.privacy is not None
    # its own generators, not torch's global one that every thread shares
    assert trainer.privacy.loader.batch_sampler.generator is not None  # type: ignore[union-attr]
    assert trainer.privacy.optimizer.generator is not None  # type: ignore[attr-defined]
    sizes = [len(y) for _ in range(10) for _, y in twin.privacy.loader]
    assert len(sizes) == 40 and 0 in sizes and max(sizes) > 1
    assert trainer.train_batches(40) == 40
    assert trainer.privacy.steps == 40  # the empty ones too
    assert math.isfinite(trainer.last_train_loss or math.nan)
    assert torch.isfinite(torch.from_numpy(trainer.snapshot())).all()


def test_epsilon_grows_step_by_step_as_the_accountant_counts() -> None:
    task = example_task(samples=160, batch_size=32)  # 5 batches: q = 1/5
    trainer = LocalTrainer(task, "cpu", 0, privacy=PrivacySettings(1.3, 1.0))
    assert trainer.privacy is not None
    assert trainer.privacy.epsilon() == 0.0
    spent = []
    for _ in range(3):
        trainer.train_batches(4)
        spent.append(trainer.privacy.epsilon())
    assert spent[0] < spent[1] < spent[2]
    assert spent[2] == pytest.approx(accountant(1.3, 1 / 5, 12), rel=1e-9)
    ahead = trainer.privacy.epsilon_after(4)
    assert trainer.privacy.epsilon() == spent[2]  # looking ahead spends nothing
    trainer.train_batches(4)
    assert trainer.privacy.epsilon() == pytest.approx(ahead, rel=1e-12)
    trainer.reset_optimizer()  # a fresh optimizer is still private and still counted
    trainer.train_batches(1)
    assert trainer.privacy.steps == 17


# --------------------------------------------------------------------------------------------
# The budget, in a swarm


def test_a_dp_node_whose_next_round_would_pass_its_budget_stops_before_training() -> None:
    """What `swarmnode run` does with it: logs the one line, finishes on chain, exits 0."""
    task = example_task(samples=64)
    params = SwarmParams(
        min_peers=2,
        max_peers=2,
        sync_policy=Rule(SyncPolicyId.EVERY_N_BATCHES, (4, 0, 0, 0)),
        initial_model_digest=bytes(31) + b"\x01",  # not checked: check_initial_digest off
    )
    peer = memory_swarm(params, 2).peers[0]
    node = SwarmNode(
        ledger=peer.ledger,
        transport=peer.transport,
        inbox=peer.inbox,
        task=task,
        device="cpu",
        check_initial_digest=False,
        privacy=PrivacySettings(1.0, 1.0, DELTA, 0.5),
    )
    with pytest.raises(
        BudgetSpent, match=r"epsilon 0\.000 so far, \d+\.\d+ after the next 4 steps"
    ):
        node.step()
    assert node.trainer.batches_done == 0  # no step taken, no model shared
    assert node.finish()  # rounds stop waiting for it


def test_a_node_out_of_budget_stops_joining_and_the_others_finish() -> None:
    """Node 0 holds 48 rows (q = 1/2), nodes 1 and 2 hold 512 (q = 1/16): with the budget
    between node 0's epsilon after one round and after two, node 0 joins round 1 only."""
    noise, every = 1.0, 2
    small, large = epsilon_of([(noise, 1 / 2, every)], DELTA), epsilon_of([(noise, 0.5, 4)], DELTA)
    budget = (small + large) / 2
    assert epsilon_of([(noise, 1 / 16, 3 * every)], DELTA) < budget  # 1 and 2 never stop
    tasks = [example_task(samples=n, node=0, nodes=1) for n in (48, 512, 512)]
    scenario = Scenario.load(
        None,
        {"nodes": 3, "rounds": 3, "local_batches": every, "dp_noise": noise, "dp_budget": budget},
    )
    assert tasks[1].val_data is not None
    started = time.perf_counter()
    run = run_tasks(scenario, tasks, tasks[1].val_data, backend="memory")
    seconds = time.perf_counter() - started
    statuses = [[node.status for node in r.per_node] for r in run.rounds]
    assert statuses == [["final"] * 3] + [["budget_spent", "final", "final"]] * 2, seconds
    assert all(r.digest_agreed or r.round > 1 for r in run.rounds)
    assert [r.participants for r in run.rounds] == [3, 2, 2]
    node1 = [r.per_node[1].epsilon for r in run.rounds]
    assert node1[0] is not None and node1[0] < node1[1] < node1[2]  # type: ignore[operator]
    assert node1[2] == pytest.approx(accountant(noise, 1 / 16, 3 * every), rel=1e-9)
    node0 = [r.per_node[0].epsilon for r in run.rounds]
    assert node0 == [pytest.approx(small, rel=1e-9)] * 3  # it spent no more
    assert "epsilon" in run.rounds[0].per_node[0].to_json()
    report = build_report(scenario, run, [Curve([0.5] * 3)], Curve([0.9] * 3), seconds)
    assert report["privacy"] == {
        "secure_aggregation": False,
        "noise_multiplier": noise,
        "epsilon": pytest.approx(small, rel=1e-9),  # the most any node spent: node 0's
        "delta": DELTA,
        "dp": "local",
    }
    without = scenario.model_copy(update={"dp_noise": None, "dp_budget": None})
    plain = build_report(without, run, [Curve([0.5] * 3)], Curve([0.9] * 3), seconds)
    assert plain["privacy"]["noise_multiplier"] is None


def test_dp_nodes_side_by_side_in_threads_repeat_bit_for_bit() -> None:
    """Their Poisson draws and noise come from generators of their own: torch's global one,
    which the threads share, would make each run's merged models differ."""
    tasks = [example_task(samples=n, node=0, nodes=1) for n in (96, 160)]
    scenario = Scenario.load(None, {"nodes": 2, "rounds": 2, "local_batches": 3, "dp_noise": 1.0})
    assert tasks[0].val_data is not None
    runs = [run_tasks(scenario, tasks, tasks[0].val_data, backend="memory") for _ in range(2)]
    digests = [[r.digest for r in run.rounds] for run in runs]
    assert digests[0] == digests[1] and all(digests[0])


def test_a_hook_with_privacy_reports_epsilon_and_stops_syncing_at_the_budget() -> None:
    """The user's own loop: make_private wraps the model, optimizer and loader; the hook
    syncs every 3 batches until another 3 would spend past the budget."""
    noise, every = 1.2, 3
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
    y = (x.sum(dim=1) > 0).long()
    loader = DataLoader(TensorDataset(x, y), batch_size=16)  # q = 1/4
    after_one = epsilon_of([(noise, 1 / 4, every)], DELTA)
    after_two = epsilon_of([(noise, 1 / 4, 2 * every)], DELTA)
    settings = PrivacySettings(noise, 1.0, DELTA, (after_one + after_two) / 2)

    def net() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

    models = [net(), net()]
    params = SwarmParams(
        min_peers=2,
        max_peers=2,
        sync_policy=Rule(SyncPolicyId.EVERY_N_BATCHES, (every, 0, 0, 0)),
        initial_model_digest=canonical.digest(canonical.flatten(models[0])),
    )
    peers = memory_swarm(params, 2).peers
    private = [
        make_private(m, torch.optim.SGD(m.parameters(), lr=0.1), loader, settings, seed=i)
        for i, m in enumerate(models)
    ]

    def my_loop(i: int) -> SwarmCallback:
        p = private[i]
        hook = SwarmCallback(
            p.module,  # the wrapped model: the hook shares the plain one inside
            ledger=peers[i].ledger,
            transport=peers[i].transport,
            inbox=peers[i].inbox,
            num_samples=64,
            settings=RoundSettings(poll=0.01),
            privacy=p,
        )
        for _ in range(5):  # epochs; the budget ends it first
            for inputs, targets in p.loader:
                p.optimizer.zero_grad()
                nn.functional.cross_entropy(p.module(inputs), targets).backward()
                p.optimizer.step()
                hook.on_batch_end()
                if hook.budget_spent:
                    break
            if hook.budget_spent:
                break
        hook.on_train_end()  # no sync once spent: it returns the last round
        return hook

    with torch.random.fork_rng():
        torch.manual_seed(5)
        hooks = run_in_threads([lambda i=i: my_loop(i) for i in range(2)], timeout=60)
    for hook in hooks:
        assert hook.budget_spent
        assert [r.status for r in hook.rounds] == ["final"]
        assert hook.epsilon == pytest.approx(after_one, rel=1e-12)
    assert after_one == pytest.approx(accountant(noise, 1 / 4, every), rel=1e-9)
    merged = {canonical.digest(canonical.flatten(hook.model)) for hook in hooks}
    assert len(merged) == 1
    assert not any("_module." in e.name for e in hooks[0].layout.entries)
    with pytest.raises(BudgetSpent, match="privacy budget spent"):
        hooks[0].privacy.check_budget(every)  # type: ignore[union-attr]


# --------------------------------------------------------------------------------------------
# Status


def test_status_shows_the_epsilon_a_node_logged(capsys: pytest.CaptureFixture[str]) -> None:
    entry = {
        "round": 4,
        "status": "final",
        "attempt": 0,
        "part": "reported",
        "report": "0xab",
        "report_attempt": 0,
        "final_digest": "0xab",
        "agreed": True,
        "fail_reason": "none",
    }
    logged = NodeRoundRecord(round=4, status="final", digest="ab", epsilon=2.345678)
    shown = _with_epsilon(entry, logged)
    assert shown["epsilon"] == 2.345678
    assert "epsilon" not in _with_epsilon(entry, NodeRoundRecord(round=4, status="final"))
    report = {
        "chain_id": 1,
        "address": "0x" + "1" * 40,
        "node": {"account": "0x" + "2" * 40, "active": True, "endpoint": "127.0.0.1:1"},
        "rounds": [shown],
    }
    _print_node_status(report)
    out = capsys.readouterr().out
    assert "epsilon" in out and "2.346" in out
