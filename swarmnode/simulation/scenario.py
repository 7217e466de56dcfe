"""A simulation scenario: every setting validated, from a TOML file and command-line flags.

A wrong field is named with its file and field in one line (ConfigError), never a pydantic
traceback. With faults.py this is the simulator's bottom layer (docs/simulator.md#layers):
everything else in swarmnode/simulation reads a Scenario, and this module reads nothing of
theirs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from swarmnode.config import read_toml_table, validated
from swarmnode.distributed_dp import DEFAULT_COLLUDERS, DistributedDP, MeanPrivacySettings
from swarmnode.privacy import DEFAULT_DELTA, PrivacySettings
from swarmnode.rules import (
    MAX_PEERS_LIMIT,
    PPM,
    SECAGG_MIN_PEERS,
    MergeRuleId,
    Rule,
    SecureAggregation,
    SwarmParams,
    SyncPolicyId,
    merge_rule_needs,
)
from swarmnode.simulation.faults import Crash, Straggler, check_faults, has_faults

MERGE_RULES: tuple[str, ...] = tuple(rule.name.lower() for rule in MergeRuleId)
"""The merge rules by the names scenarios, flags and sweeps give them: the contract's own."""

ENGINES: tuple[str, ...] = ("full", "fast")
NODE_CAPS: dict[str, int] = {"full": MAX_PEERS_LIMIT, "fast": 10_000}
"""Most virtual nodes per engine: full fidelity runs real nodes against the contract, which
seats at most MAX_PEERS_LIMIT; the fast engine trains them as one batched computation
(docs/simulator.md#the-fast-engine)."""
_PROTOCOL_ATTACKS = ("forge_partials", "lying_owner", "false_blame", "withhold_one")
SMALL_SWARM = 64
"""Past this many nodes a scenario that names no data set or partition takes diamonds and
shards: digits has 1437 training rows, and a Dirichlet draw leaves some node of hundreds
under ten rows every time."""


class Scenario(BaseModel):
    """What to simulate. Defaults are the README's demo: 8 nodes on digits, Dirichlet 0.5."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "demo"
    engine: Literal["full", "fast"] = "full"
    dataset: Literal["digits", "breast_cancer", "diamonds"] = "digits"
    nodes: int = Field(8, ge=2, le=NODE_CAPS["fast"], description="at most NODE_CAPS[engine]")
    partition: Literal["iid", "dirichlet", "shards", "quantity"] = "dirichlet"
    alpha: float = Field(0.5, gt=0)
    shards_per_node: int = Field(2, ge=1)
    rounds: int = Field(25, ge=1, le=1000)
    local_batches: int = Field(10, ge=1, description="batches each node trains between syncs")
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(0.05, gt=0)
    fresh_optimizer: bool = Field(
        False,
        description="a new SGD each round, no momentum carried over, as a Flower client "
        "rebuilt for every fit has (docs/simulator.md#flower-side-by-side)",
    )
    hidden: int = Field(64, ge=1)
    merge_rule: str = Field("mean", description="one of MERGE_RULES")
    merge_params: tuple[int, int, int, int] = (0, 0, 0, 0)
    seed: int = 0
    test_fraction: float = Field(0.2, gt=0, lt=1)
    byzantine: int = Field(0, ge=0, description="the last nodes, which run the attack")
    attack: Literal[
        "none",
        "sign_flip",
        "noise",
        "label_flip",
        "alie",
        "ipm",
        "forge_partials",
        "lying_owner",
        "false_blame",
        "withhold_one",
    ] = "none"
    attack_scale: float | None = Field(
        None,
        gt=0,
        description="sign flip's multiple, noise's std, ipm's epsilon, the shift of "
        "forge_partials and lying_owner; None: 4, 4, 0.1, 1, 1",
    )
    # --processes: every node a `swarmnode run` daemon of its own against one anvil
    processes: bool = False
    # full fidelity's chain in process: the embedded py-evm chain, or a private anvil
    # (docs/simulator.md#the-chain); --processes always runs on anvil
    chain: Literal["embedded", "anvil"] = "embedded"
    # A user's own data set (README, "Your own data in the simulator"): `task` names a
    # function called once per node as f(node=i, nodes=n, seed=s) -> Task, `test_set` the
    # held-out rows (a Dataset, or f(seed=s) returning one); both replace `dataset`.
    task: str | None = None
    test_set: str | None = None
    # Faults (swarmnode/simulation/faults.py; README, "Faults"); the defaults inject none.
    crash: tuple[Crash, ...] = ()
    dropout: float = Field(0.0, ge=0, lt=1, description="chance a node sits a round out")
    stragglers: tuple[Straggler, ...] = ()
    latency: float = Field(0.0, ge=0, le=60, description="seconds added to every peer call")
    bandwidth: float = Field(0.0, ge=0, description="bytes/s per link between peers; 0: no cap")
    join_window: int = Field(60, ge=1, le=3600, description="seconds, from a round's first join")
    transfer_deadline: int = Field(60, ge=1, le=3600, description="seconds before drop votes")
    checked_merge: bool = Field(
        True, description="a second owner checks each merge (docs/trust.md#unchecked-merge)"
    )
    # Local DP-SGD on every node (docs/privacy.md#in-the-simulator): dp_noise turns it on;
    # the others need it. dp_clip: the per-sample clipping norm (default 1.0), dp_delta
    # (default 1e-5), dp_budget: the epsilon a node may spend before it stops joining.
    dp_noise: float | None = None
    dp_clip: float | None = None
    dp_delta: float | None = None
    dp_budget: float | None = None
    # Secure aggregation (docs/secure-aggregation.md): the swarm sums its updates under masks,
    # deployed with it; the mean only, at least 3 nodes. secagg_bound (B), secagg_fraction_bits
    # and secagg_max_weight need it, and default to swarmnode.rules.SecureAggregation's.
    secure_aggregation: bool = False
    secagg_bound: int | None = Field(None, ge=1, lt=2**32)
    secagg_fraction_bits: int | None = Field(None, ge=0, le=48)
    secagg_max_weight: int | None = Field(None, ge=1, lt=2**64)
    # Distributed DP for the mean (docs/privacy.md#distributed-dp), instead of dp_noise: each
    # node clips its round's update to dp_mean_clip (default 1.0) and adds its share of noise
    # of multiplier dp_mean_noise, assuming dp_colluders (default 1); needs secure
    # aggregation; dp_delta and dp_budget as above
    dp_mean_noise: float | None = None
    dp_mean_clip: float | None = None
    dp_colluders: int | None = None
    # the deploy's min_peers: the fewest participants a round may finish with (None: 2, or 3
    # with secure aggregation), m of distributed DP, which sizes each node's share of noise
    min_peers: int | None = Field(None, ge=2, le=MAX_PEERS_LIMIT)

    @model_validator(mode="before")
    @classmethod
    def _scaled_defaults(cls, data: Any) -> Any:
        """A large swarm's defaults: diamonds and shards where the scenario names neither
        (SMALL_SWARM says why), and a join window of a second per node, which the embedded
        chain's clock needs (faults.check_faults)."""
        if not isinstance(data, dict):
            return data
        nodes = data.get("nodes", 0)
        if not isinstance(nodes, int) or isinstance(nodes, bool):
            return data
        if nodes > SMALL_SWARM and data.get("task") is None:
            data = {"dataset": "diamonds", "partition": "shards", **data}
        if nodes > 60 and data.get("engine", "full") == "full":
            data = {"join_window": min(nodes, 3600), **data}
        return data

    @model_validator(mode="after")
    def _node_cap(self) -> Scenario:
        cap = NODE_CAPS[self.engine]
        if self.nodes > cap:
            raise ValueError(f"the {self.engine} engine runs at most {cap} nodes, not {self.nodes}")
        return self

    @model_validator(mode="after")
    def _fast_engine(self) -> Scenario:
        """What the fast engine cannot run: it has no messages to lie in or slow down, no
        processes, and trains the bundled data sets' model only."""
        if self.engine != "fast":
            return self
        refused = [
            name
            for name, on in (
                ("processes", self.processes),
                ("task", self.task is not None),
                ("crash", bool(self.crash)),
                ("stragglers", bool(self.stragglers)),
                ("latency", bool(self.latency)),
                ("bandwidth", bool(self.bandwidth)),
                (f"attack {self.attack}", self.attack in _PROTOCOL_ATTACKS),
                ("dp_noise (DP-SGD needs per-sample gradients)", self.dp_noise is not None),
            )
            if on
        ]
        if refused:
            raise ValueError(
                f'the fast engine does not run {", ".join(refused)}: use engine = "full"'
            )
        return self

    @model_validator(mode="after")
    def _chain(self) -> Scenario:
        """The chain is full fidelity's: the fast engine has none, and the daemons of
        --processes share one anvil, so naming the embedded chain for them is refused."""
        if self.chain == "anvil" and self.engine == "fast":
            raise ValueError('chain = "anvil": the fast engine has no chain; use engine = "full"')
        if self.processes and self.chain == "embedded" and "chain" in self.model_fields_set:
            raise ValueError(
                'chain = "embedded" with processes: the daemons share one anvil chain; '
                'drop chain or set chain = "anvil"'
            )
        return self

    @model_validator(mode="after")
    def _secure_aggregation(self) -> Scenario:
        """Secure aggregation's refusals, one line each: its numbers without it; a rule that
        needs each node's update; too few nodes; attacks on plain rows; numbers whose modulus
        does not fit (the deploy's own check, SwarmParams.validate)."""
        keys = ("secagg_bound", "secagg_fraction_bits", "secagg_max_weight")
        if not self.secure_aggregation:
            given = [k for k in keys if getattr(self, k) is not None]
            if given:
                raise ValueError(
                    f"{', '.join(given)} without secure_aggregation: set secure_aggregation = true"
                )
            return self
        if self.merge_rule != "mean":
            raise ValueError(
                f"secure aggregation merges a masked sum: merge_rule {self.merge_rule} needs "
                'each node\'s update; use merge_rule = "mean"'
            )
        if self.nodes < SECAGG_MIN_PEERS:
            raise ValueError(
                f"secure aggregation needs at least {SECAGG_MIN_PEERS} nodes, not {self.nodes}: "
                "with two, each could subtract its own update from the sum and read the other's"
            )
        if self.attack in _PROTOCOL_ATTACKS:
            raise ValueError(
                f"attack {self.attack} tampers with plain rows and merges, which secure "
                "aggregation masks: run it without secure_aggregation"
            )
        self.swarm_params(self.nodes, b"\x01" * 32).validate()  # the modulus fits
        return self

    def secure_numbers(self) -> SecureAggregation | None:
        """The secure-aggregation numbers the swarm is deployed with, or None when off."""
        if not self.secure_aggregation:
            return None
        default = SecureAggregation()
        return SecureAggregation(
            bound=default.bound if self.secagg_bound is None else self.secagg_bound,
            fraction_bits=(
                default.fraction_bits
                if self.secagg_fraction_bits is None
                else self.secagg_fraction_bits
            ),
            max_weight=default.max_weight
            if self.secagg_max_weight is None
            else self.secagg_max_weight,
        )

    @model_validator(mode="after")
    def _privacy(self) -> Scenario:
        if self.dp_noise is not None and self.dp_mean_noise is not None:
            raise ValueError(
                "dp_noise (local DP-SGD) and dp_mean_noise (distributed DP) cannot both be "
                "on: pick one (docs/privacy.md#both-kinds)"
            )
        if self.dp_mean_noise is not None:
            return self._mean_privacy()
        given = [k for k in ("dp_mean_clip", "dp_colluders") if getattr(self, k) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} without dp_mean_noise: set dp_mean_noise")
        if self.dp_noise is None:
            keys = ("dp_clip", "dp_delta", "dp_budget")
            given = [k for k in keys if getattr(self, k) is not None]
            if given:
                raise ValueError(f"{', '.join(given)} without dp_noise: set dp_noise to use DP")
            return self
        self.privacy()  # the project's own checks, one line each (ConfigError)
        return self

    @model_validator(mode="after")
    def _min_peers(self) -> Scenario:
        if self.min_peers is None:
            return self
        if self.min_peers > self.nodes:
            raise ValueError(f"min_peers {self.min_peers} is more than the {self.nodes} nodes")
        if self.engine == "fast" and self.dropout:
            raise ValueError(
                "min_peers with dropout: the fast engine merges whoever is present; "
                'use engine = "full" (its chain ends a round short of min_peers)'
            )
        return self

    def _mean_privacy(self) -> Scenario:
        """Distributed DP's checks: its settings, secure aggregation, and f below m."""
        if self.dp_clip is not None:
            raise ValueError("dp_clip is DP-SGD's: distributed DP clips with dp_mean_clip")
        settings = self.mean_privacy()
        assert settings is not None
        if not self.secure_aggregation:
            raise ValueError(
                "dp_mean_noise needs secure_aggregation = true: without it each owner sees an "
                "update with only part of the noise (docs/privacy.md#distributed-dp)"
            )
        # f < m, noise within the bound: what a node checks when it starts
        DistributedDP.for_swarm(settings, self.swarm_params(self.nodes, b"\x01" * 32))
        return self

    def mean_privacy(self) -> MeanPrivacySettings | None:
        """Every node's distributed DP settings, or None without dp_mean_noise."""
        if self.dp_mean_noise is None:
            return None
        return MeanPrivacySettings(
            noise_multiplier=self.dp_mean_noise,
            clip_norm=1.0 if self.dp_mean_clip is None else self.dp_mean_clip,
            assumed_colluders=DEFAULT_COLLUDERS if self.dp_colluders is None else self.dp_colluders,
            delta=DEFAULT_DELTA if self.dp_delta is None else self.dp_delta,
            epsilon_budget=self.dp_budget,
        )

    def privacy(self) -> PrivacySettings | None:
        """Every node's DP-SGD settings, or None without dp_noise."""
        if self.dp_noise is None:
            return None
        return PrivacySettings(
            noise_multiplier=self.dp_noise,
            max_grad_norm=1.0 if self.dp_clip is None else self.dp_clip,
            delta=DEFAULT_DELTA if self.dp_delta is None else self.dp_delta,
            epsilon_budget=self.dp_budget,
        )

    @field_validator("merge_rule")
    @classmethod
    def _known_rule(cls, value: str) -> str:
        if value not in MERGE_RULES:
            raise ValueError(f"unknown merge rule {value!r} (known: {', '.join(MERGE_RULES)})")
        return value

    @model_validator(mode="after")
    def _faults(self) -> Scenario:
        # the fast engine has no chain, so no clock that joins move: its window is moot
        check_faults(
            self if self.engine == "full" else self.model_copy(update={"join_window": self.nodes})
        )
        if self.processes and has_faults(self):
            raise ValueError("processes: fault settings run in process only (drop --processes)")
        return self

    @model_validator(mode="after")
    def _own_task(self) -> Scenario:
        for name in ("task", "test_set"):
            spec = getattr(self, name)
            if spec is not None:
                module, _, attribute = spec.partition(":")
                if not module or not attribute:
                    raise ValueError(f"{name} {spec!r}: write module:attribute")
        if (self.task is None) != (self.test_set is None):
            raise ValueError(
                "task and test_set go together: the baselines and the swarm are scored "
                "on the held-out test_set that no node trains on"
            )
        if self.processes and self.byzantine:
            raise ValueError(
                "processes: the daemons run no Byzantine nodes (contribution or protocol "
                "attacks); run it in process"
            )
        if self.processes and self.fresh_optimizer:
            raise ValueError("processes: fresh_optimizer runs in process only (drop --processes)")
        return self

    @model_validator(mode="after")
    def _rule_parameters(self) -> Scenario:
        if self.byzantine >= self.nodes:
            raise ValueError("byzantine must leave at least one honest node")
        if self.byzantine and self.attack == "none":
            raise ValueError(
                "byzantine nodes need an attack (sign_flip, noise, label_flip, alie, ipm, "
                "forge_partials, lying_owner, false_blame, withhold_one)"
            )
        rule = self.rule()
        needs = merge_rule_needs(rule)
        if needs > self.nodes:
            raise ValueError(f"merge rule {self.merge_rule} needs at least {needs} nodes")
        return self

    @model_validator(mode="after")
    def _byzantine_tolerated(self) -> Scenario:
        """A robust rule holds only against as many Byzantine nodes as it was built for; past
        that its result is the attackers' choice, and a run would only show that. The mean
        tolerates none and is still allowed: it is the undefended baseline attack runs
        compare with."""
        b, n, p = self.byzantine, self.nodes, self.merge_params
        if b and self.attack == "label_flip" and self.task is not None:
            raise ValueError("label_flip flips a bundled data set's labels, not a task's own")
        if not b or self.merge_rule == "mean":
            return self
        cut = p[0] * n // PPM  # what swarmnode.merge's trimmed mean cuts from each side
        if self.merge_rule == "trimmed_mean" and cut < b:
            raise ValueError(
                f"trimmed_mean with beta_ppm {p[0]} cuts {cut} of {n} values per side, "
                f"fewer than the {b} byzantine nodes: raise merge_params[0]"
            )
        if self.merge_rule == "krum" and p[0] < b:
            raise ValueError(
                f"krum with f={p[0]} (merge_params[0]) tolerates {p[0]} byzantine, not {b}"
            )
        if 2 * b >= n:
            raise ValueError(
                f"{self.merge_rule} holds only while byzantine nodes are fewer than half: "
                f"{b} of {n} are not"
            )
        return self

    def rule(self) -> Rule:
        return Rule(MergeRuleId[self.merge_rule.upper()], self.merge_params)

    def swarm_params(self, nodes: int, initial_digest: bytes) -> SwarmParams:
        """The contract's parameters for this scenario, in process and with --processes alike."""
        return SwarmParams(
            # a masked sum needs three (docs/secure-aggregation.md#what-each-party-learns)
            min_peers=self.min_peers or (SECAGG_MIN_PEERS if self.secure_aggregation else 2),
            max_peers=nodes,
            # every node joins each round, and the last join closes it: the window only
            # matters if a node falls behind, which it may on two busy cores, or is away
            join_window=self.join_window,
            transfer_deadline=self.transfer_deadline,
            round_deadline=max(300, 2 * self.transfer_deadline + 1, self.join_window + 1),
            merge_rule=self.rule(),
            sync_policy=Rule(SyncPolicyId.EVERY_N_BATCHES, (self.local_batches, 0, 0, 0)),
            initial_model_digest=initial_digest,
            checked_merge=self.checked_merge,
            secure_aggregation=self.secure_numbers(),
        )

    @classmethod
    def load(cls, path: Path | None, overrides: dict[str, Any] | None = None) -> Scenario:
        """The scenario in `path` (or the defaults), with `overrides` (flags) on top."""
        data: dict[str, Any] = {}
        where = "flags"
        if path is not None:
            where = str(path)
            data = read_toml_table(path, "scenario", "scenario")
        data.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return validated(cls, data, where, "scenario")
