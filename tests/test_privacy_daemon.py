"""A `swarmnode run` daemon with a privacy budget, on anvil: it takes part in rounds until
the next one would spend past its budget, says so in one line, finishes on chain so that
the swarm goes on, and, started again, counts what it spent before from its journal
(docs/privacy.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from swarmnode.ledger.devchain import AnvilChain
from swarmnode.ledger.types import RoundStatus
from swarmnode.privacy import PRIVACY_JOURNAL, PrivacySettings, epsilon_of
from swarmnode.records import round_records
from swarmnode.training import LocalTrainer, example_task
from tests.test_daemon import finish, start, two_nodes

pytestmark = [pytest.mark.chain, pytest.mark.slow]

NOISE, CLIP, DELTA = 1.0, 1.0, 1e-5
STEPS_PER_ROUND = 8  # two_nodes' sync policy: every 8 batches, one DP step each


def logged(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "node.jsonl").read_text().splitlines()]


def test_a_daemon_stops_joining_once_its_budget_is_spent_and_remembers_it(
    own_anvil: AnvilChain, tmp_path: Path
) -> None:
    # The budget lies between what one round and two rounds spend, from the sample rate the
    # daemon's own trainer will have
    probe = LocalTrainer(
        example_task(), "cpu", 0, init_seed=0, privacy=PrivacySettings(NOISE, CLIP, DELTA)
    )
    assert probe.privacy is not None
    rate = probe.privacy.sample_rate
    one = epsilon_of([(NOISE, rate, STEPS_PER_ROUND)], DELTA)
    two = epsilon_of([(NOISE, rate, 2 * STEPS_PER_ROUND)], DELTA)
    budget = (one + two) / 2

    deployment, (a, b) = two_nodes(own_anvil, tmp_path, rounds=3)
    a.write_text(
        a.read_text()
        + "\n[privacy]\n"
        + f"noise_multiplier = {NOISE}\nmax_grad_norm = {CLIP}\ndelta = {DELTA}\n"
        + f"epsilon_budget = {budget}\n"
    )
    finish([start(a), start(b)])

    reader = own_anvil.ledger(deployment, own_anvil.new_account())
    assert reader.round(1).status == RoundStatus.FINAL
    events = logged(tmp_path / "a")
    rounds = round_records(events)
    assert [r.status for r in rounds] == ["final"]
    assert rounds[0].epsilon == pytest.approx(one, rel=1e-6)
    spent = [e for e in events if e.get("event") == "privacy_budget_spent"]
    assert len(spent) == 1 and spent[0]["epsilon"] == pytest.approx(one, rel=1e-6)
    # a finished on chain, so b's next round found nobody to merge with and b ended at once
    assert [r.status for r in round_records(logged(tmp_path / "b"))] == ["final", "no_peers"]
    journal = json.loads((tmp_path / "a" / "checkpoints" / PRIVACY_JOURNAL).read_text())
    assert sum(steps for _, _, steps in journal["history"]) == STEPS_PER_ROUND

    # Started again, it counts the journal's steps: the next round would still pass the
    # budget, so it stops before joining anything
    finish([start(a)])
    again = logged(tmp_path / "a")[len(events) :]
    assert round_records(again) == []
    restarted = [e for e in again if e.get("event") == "privacy_budget_spent"]
    assert len(restarted) == 1 and restarted[0]["epsilon"] == pytest.approx(one, rel=1e-6)
