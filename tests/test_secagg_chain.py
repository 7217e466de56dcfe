"""Secure aggregation fixed at deploy (issue 18): the modulus both sides compute, the
deployment file, the command line, and a node whose sample count is above the cap.

The refusals and the weight cap on every ledger backend are in tests/test_ledger_behaviour.py;
tests/test_rules.py draws secure-aggregation settings into its Python-against-contract
comparison. Here: what those leave out, each cheap.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from swarmnode.exceptions import ConfigError, ContractError
from swarmnode.ledger.deployment import Deployment
from swarmnode.ledger.devchain import AnvilChain
from swarmnode.ledger.embedded import EmbeddedChain
from swarmnode.node import Syncer
from swarmnode.rules import (
    SECAGG_HEADROOM_BITS,
    SECAGG_MAX_BITS,
    ParamsRefused,
    SecureAggregation,
    SwarmParams,
)
from swarmnode.secagg.fixedpoint import FixedPoint
from swarmnode.simulation.fast import FastRounds, Swarm, masked_mean
from swarmnode.simulation.local import memory_swarm
from swarmnode.simulation.report import privacy_block
from swarmnode.simulation.results import SwarmRun
from swarmnode.simulation.scenario import Scenario
from swarmnode.simulation.tasks import scenario_data

# (max_peers, max_weight, bound, fraction_bits): FixedPoint's own examples
# (docs/secure-aggregation.md#fixed-point), odd sizes, and both sides of k = 64
# (8 x 2^31 x 1 x 2^20 = 2^54: 55 bits + 1 + 8 = 64; one more doubling is 65).
MODULI = [
    (8, 2**16, 16, 20),
    (32, 2**16, 16, 20),
    (8, 1, 4, 16),
    (32, 1, 4, 14),
    (3, 1, 1, 0),
    (7, 1000, 3, 17),
    (256, 2**64 - 1, 2**32 - 1, 48),
    (8, 2**31, 1, 20),
    (8, 2**32, 1, 20),
    (9, 2**31 - 1, 1, 20),
    (200, 12_345, 100, 30),
]


@pytest.fixture(scope="module")
def chain() -> Iterator[EmbeddedChain]:
    yield EmbeddedChain()


@pytest.mark.chain
def test_the_modulus_is_fixed_points_and_the_contracts(chain: EmbeddedChain) -> None:
    """k from rules.py equals FixedPoint.bits at headroom 8 for each set of numbers, and the
    contract accepts exactly those with k <= 64, naming k when it refuses."""
    assert FixedPoint(8, 1, 1.0, 0).headroom_bits == SECAGG_HEADROOM_BITS
    seen = set()
    for peers, max_weight, bound, fraction_bits in MODULI:
        numbers = SecureAggregation(bound, fraction_bits, max_weight)
        bits = numbers.modulus_bits(peers)
        seen.add(bits <= SECAGG_MAX_BITS)
        params = SwarmParams(min_peers=3, max_peers=peers, secure_aggregation=numbers)
        if bits <= SECAGG_MAX_BITS:
            assert FixedPoint(peers, max_weight, float(bound), fraction_bits).bits == bits
            params.validate()
            deployment, owner = chain.deploy(params, validate=False)
            assert chain.ledger(deployment, owner).params() == params
        else:
            with pytest.raises(ConfigError, match=f"{bits} bits"):
                FixedPoint(peers, max_weight, float(bound), fraction_bits)
            with pytest.raises(ParamsRefused, match=f"a modulus of {bits} bits"):
                params.validate()
            with pytest.raises(ContractError) as refused:
                chain.deploy(params, validate=False)
            assert refused.value.name == "SecureAggregationModulusTooWide"
            assert refused.value.details == {"bits": bits, "limit": SECAGG_MAX_BITS}
    assert seen == {True, False}
    edge = SecureAggregation(1, 20, 2**31)
    assert (edge.modulus_bits(8), dataclasses.replace(edge, max_weight=2**32).modulus_bits(8)) == (
        64,
        65,
    )


def test_the_deployment_file_keeps_the_settings_and_older_files_read_as_off(
    tmp_path: Path,
) -> None:
    numbers = SecureAggregation(bound=8, fraction_bits=16, max_weight=500)
    params = SwarmParams(min_peers=3, max_peers=5, secure_aggregation=numbers)
    path = tmp_path / "deployment.json"
    Deployment(31337, "0x" + "ab" * 20, 7, params).save(path)
    saved = json.loads(path.read_text())
    assert saved["params"]["secure_aggregation"] == {
        "bound": 8,
        "fraction_bits": 16,
        "max_weight": 500,
    }
    assert Deployment.load(path).params == params

    del saved["params"]["secure_aggregation"]  # written before the setting existed
    path.write_text(json.dumps(saved))
    assert Deployment.load(path).params.secure_aggregation is None

    saved["params"]["secure_aggregation"] = {"bound": 2**32, "fraction_bits": 16, "max_weight": 1}
    path.write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match=r"params\.secure_aggregation: .*bound .*uint32"):
        Deployment.load(path)


def swarmnode(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "swarmnode", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": os.environ["PATH"], "COLUMNS": "200"},
    )


def test_a_robust_rule_with_secure_aggregation_is_one_line_at_deploy() -> None:
    """Refused before any chain is asked (the URL answers nothing): the rule, and why."""
    result = swarmnode(
        *("deploy", "--rpc", "http://127.0.0.1:1", "--secure-aggregation"),
        *("--merge-rule", "median"),
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "swarmnode: secure aggregation merges a masked sum: --merge-rule median needs each "
        "node's update; use --merge-rule mean"
    ]


def test_a_node_above_the_max_weight_joins_with_it_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    numbers = SecureAggregation(max_weight=100)
    swarm = memory_swarm(SwarmParams(min_peers=3, max_peers=3, secure_aggregation=numbers), 3)
    peer = swarm.peers[0]
    syncer = Syncer(
        ledger=peer.ledger,
        transport=peer.transport,
        inbox=peer.inbox,
        initial=np.zeros(4, dtype=np.float32),
        check_initial_digest=False,
    )
    caplog.set_level(logging.WARNING, logger="swarmnode.node")
    assert [syncer.join_weight(w) for w in (1, 100, 101, 5000, 7)] == [1, 100, 100, 100, 7]
    said = [r.getMessage() for r in caplog.records if "max weight" in r.getMessage()]
    assert said == [
        f"{peer.ledger.account}: weight 101 (samples) is above the swarm's max weight 100 "
        "for secure aggregation: joining with 100"
    ]
    plain = memory_swarm(SwarmParams(min_peers=2, max_peers=2), 2).peers[0]
    uncapped = Syncer(
        ledger=plain.ledger,
        transport=plain.transport,
        inbox=plain.inbox,
        initial=np.zeros(4, dtype=np.float32),
        check_initial_digest=False,
    )
    assert uncapped.join_weight(10**9) == 10**9


@pytest.mark.chain
def test_deploy_fixes_it_on_chain_and_status_shows_it(
    anvil_chain: AnvilChain, tmp_path: Path
) -> None:
    """`swarmnode deploy --secure-aggregation` on anvil: three peers by default, the numbers
    in the file and on chain, and `status` says the swarm sums under masks."""
    out = tmp_path / "deployment.json"
    deployed = swarmnode(
        *("deploy", "--rpc", anvil_chain.url, "--out", str(out), "--secure-aggregation"),
        *("--secagg-bound", "8", "--secagg-max-weight", "1000"),
    )
    assert deployed.returncode == 0, deployed.stderr
    known = Deployment.load(out)
    assert known.params.min_peers == 3
    assert known.params.secure_aggregation == SecureAggregation(8, 20, 1000)
    on_chain = anvil_chain.ledger(known, anvil_chain.new_account()).params()
    assert on_chain == known.params
    status = swarmnode("status", "--deployment", str(out))
    assert status.returncode == 0, status.stderr
    assert "secure aggregation (bound 8, 20 fraction bits, max weight 1000)" in status.stdout


# ---------------------------------------------------------------------------- the simulator


def test_the_fast_engines_masked_mean_is_the_masked_sums_and_near_the_float_mean() -> None:
    """masked_mean against the weighted mean in float64: within FixedPoint.error_bound plus
    half a float32 unit; and the same bits when every row carries masks that cancel
    modulo 2^k, as the pair masks do (what the owners decode)."""
    generator = np.random.default_rng(18)
    fp = FixedPoint(peers=6, max_weight=1000, bound=8.0, fraction_bits=20)
    vectors = generator.uniform(-8, 8, size=(5, 3000)).astype(np.float32)
    weights = [1, 1000, 37, 5000, 999]  # 5000 joins capped at 1000, as a node does
    merged = masked_mean(fp, torch.from_numpy(vectors.copy()), weights).numpy()

    capped = np.array([min(w, 1000) for w in weights], dtype=np.float64)
    exact = (vectors.astype(np.float64) * capped[:, None]).sum(axis=0) / capped.sum()
    half_ulp = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64) / 2
    bound = fp.error_bound(len(weights), int(capped.sum()))
    assert np.all(np.abs(merged.astype(np.float64) - exact) <= bound + half_ulp)
    assert np.abs(merged - exact).max() > 0  # fixed point is not float: the check can fail

    masks = generator.integers(0, 2**63, size=(5, 3000), dtype=np.uint64).astype(fp.dtype)
    masks[-1] = -masks[:-1].sum(axis=0, dtype=fp.dtype)  # the rows' masks cancel
    total = np.zeros(3000, dtype=fp.dtype)
    for vector, weight, mask in zip(vectors, capped, masks, strict=True):
        total += fp.encode(int(weight), vector) + mask
    unmasked = fp.decode_mean(total, int(capped.sum()), len(weights))
    assert unmasked.tobytes() == merged.tobytes()


TINY = {"nodes": 4, "hidden": 16, "local_batches": 3, "rounds": 1, "dataset": "digits"}


def test_the_fast_engine_with_secure_aggregation() -> None:
    """`--set secure_aggregation=true` on the fast engine: three peers at least, the numbers
    deployed, the merge within the bound of the plain mean, and the report says so."""
    secure = Scenario.load(None, {**TINY, "engine": "fast", "secure_aggregation": True})
    params = secure.swarm_params(4, b"\x01" * 32)
    assert (params.min_peers, params.secure_aggregation) == (3, SecureAggregation())
    plain = Scenario.load(None, {**TINY, "engine": "fast"})
    data, parts = scenario_data(plain)
    merged, runs = [], []
    for scenario in (plain, secure):
        rounds = FastRounds(scenario, Swarm(scenario, data, parts), data)
        runs.append(SwarmRun.of([rounds.round(1)]))
        merged.append(rounds.reference.double())
    fp = FixedPoint(4, 65_536, 16.0, 20)
    sizes = [len(p) for p in parts]
    room = fp.error_bound(4, sum(sizes)) + float(np.spacing(np.float32(16))) / 2
    assert 0 < (merged[0] - merged[1]).abs().max().item() <= room  # the plain mean is float32

    # report.json's privacy entry
    assert privacy_block(secure, runs[1])["secure_aggregation"] is True
    assert privacy_block(plain, runs[0])["secure_aggregation"] is False


@pytest.mark.parametrize(
    ("settings", "said"),
    [
        (
            {"merge_rule": "median"},
            "secure aggregation merges a masked sum: merge_rule median needs each node's "
            'update; use merge_rule = "mean"',
        ),
        ({"nodes": 2}, "secure aggregation needs at least 3 nodes, not 2"),
        ({"byzantine": 1, "attack": "lying_owner"}, "attack lying_owner tampers with plain rows"),
        ({"secagg_max_weight": 2**40}, "needs a modulus of 77 bits for maxPeers=8"),
        ({"secure_aggregation": False, "secagg_bound": 4}, "secagg_bound without secure_agg"),
    ],
)
def test_the_simulator_refuses_what_secure_aggregation_cannot_run(
    settings: dict[str, object], said: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        Scenario.load(None, {"secure_aggregation": True, **settings})
    assert said in str(refused.value) and "\n" not in str(refused.value)
