"""The simulator's fault settings, and the plan of who is where in each round.

Crashes, per-round dropout and stragglers are scenario settings (validated with the rest of
the scenario); `FaultPlan` turns them into what happens to each node in each round, decided
up front from the seed, so that a run repeats exactly and the report can say who was meant to
be away. Carrying the plan out on live nodes is swarmnode/simulation/injector.py.

This is the bottom of the simulator (docs/simulator.md#layers): it reads a scenario through
`FaultSettings`, the fields it needs, and never imports scenario.py, which imports it.

Nodes are numbered from 0 as in metrics.jsonl; rounds from 1, the run's n-th round.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from swarmnode.exceptions import ConfigError
from swarmnode.p2p.faults import Fault

MIN_ACTIVE = 2  # the contract's smallest round: faults never leave fewer nodes to hold one


class Crash(BaseModel):
    """Node `node` dies at point `at` of round `round` (a die_at point, as
    swarmnode.p2p.faults.Fault parses it) and, with `rejoin`, comes back as a fresh process
    at that round, catching up from its peers before it joins."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node: int = Field(ge=0)
    round: int = Field(ge=1)
    at: str = "before_reduce_scatter"
    rejoin: int | None = Field(None, ge=2)

    @field_validator("at")
    @classmethod
    def _known_point(cls, value: str) -> str:
        try:
            Fault.parse(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return value


class Straggler(BaseModel):
    """Node `node` is slow: each of its sends to a peer (model data) starts
    `delay` seconds late. Within the transfer deadline the round waits for it; beyond, its
    sends fail, its peers vote it out, and it catches up once the round is final."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node: int = Field(ge=0)
    delay: float = Field(gt=0, le=600)


class FaultSettings(Protocol):
    """The scenario's fields that faults are made of (simulation.scenario.Scenario)."""

    @property
    def nodes(self) -> int: ...
    @property
    def rounds(self) -> int: ...
    @property
    def seed(self) -> int: ...
    @property
    def join_window(self) -> int: ...
    @property
    def crash(self) -> tuple[Crash, ...]: ...
    @property
    def dropout(self) -> float: ...
    @property
    def stragglers(self) -> tuple[Straggler, ...]: ...
    @property
    def latency(self) -> float: ...
    @property
    def bandwidth(self) -> float: ...


def check_faults(scenario: FaultSettings) -> None:
    """Raises ValueError naming the first fault setting the scenario cannot run."""
    n = scenario.nodes
    if scenario.join_window < n:
        raise ValueError(
            f"join_window must be at least nodes ({n} s): each join moves the embedded "
            "chain's clock by at least 1 s, so a shorter window closes rounds before all joined"
        )
    for crash in scenario.crash:
        if crash.node >= n:
            raise ValueError(f"crash: node {crash.node} does not exist (nodes are 0-{n - 1})")
        if crash.round > scenario.rounds:
            raise ValueError(f"crash: round {crash.round} is after the last ({scenario.rounds})")
        if crash.rejoin is not None and not crash.round < crash.rejoin <= scenario.rounds:
            raise ValueError(
                f"crash: node {crash.node} must rejoin after round {crash.round} and by round "
                f"{scenario.rounds}"
            )
    for node in range(n):
        mine = sorted((c for c in scenario.crash if c.node == node), key=lambda c: c.round)
        for before, after in itertools.pairwise(mine):
            if before.rejoin is None or after.round < before.rejoin:
                raise ValueError(f"crash: node {node} crashes in round {after.round} while down")
    for k in range(1, scenario.rounds + 1):
        away = sum(1 for c in scenario.crash if _down(c, k) or c.round == k)
        if n - away < MIN_ACTIVE:
            raise ValueError(
                f"crash: round {k} would keep fewer than {MIN_ACTIVE} nodes that finish it"
            )
    slow = [s.node for s in scenario.stragglers]
    if any(i >= n for i in slow):
        raise ValueError(f"stragglers: node {max(slow)} does not exist (nodes are 0-{n - 1})")
    if len(set(slow)) != len(slow):
        raise ValueError("stragglers: a node is listed twice")


def _down(crash: Crash, k: int) -> bool:
    """Whether `crash` keeps its node away in round k (crashed earlier, not back yet)."""
    return crash.round < k and (crash.rejoin is None or k < crash.rejoin)


class Link(NamedTuple):
    """How `node`'s calls to its peers are slowed (swarmnode.p2p.shaping.ShapedTransport)."""

    latency: float  # seconds per call
    bandwidth: float  # bytes/s per link; 0: no cap
    send_delay: float  # seconds more before each send: a straggler

    @property
    def shaped(self) -> bool:
        return bool(self.latency or self.bandwidth or self.send_delay)


def link(scenario: FaultSettings, node: int) -> Link:
    delay = sum(s.delay for s in scenario.stragglers if s.node == node)
    return Link(scenario.latency, scenario.bandwidth, delay)


def has_faults(scenario: FaultSettings) -> bool:
    return bool(
        scenario.crash
        or scenario.dropout
        or scenario.stragglers
        or scenario.latency
        or scenario.bandwidth
    )


@dataclass(frozen=True)
class RoundPlan:
    """One round: who dies in it (and where), who is away, who comes back first."""

    round: int
    crashing: Mapping[int, str]  # node -> die_at point
    down: frozenset[int]  # crashed in an earlier round, not back yet
    sitting_out: frozenset[int]  # the dropout draw
    restarting: frozenset[int]  # back from a crash: a fresh process that catches up first
    returning: frozenset[int]  # back from sitting out: catches up first

    def away(self, node: int) -> str | None:
        """Why `node` takes no part in this round, or None when it does."""
        if node in self.down:
            return "down"
        if node in self.sitting_out:
            return "sat_out"
        return None


class FaultPlan:
    """Every round's RoundPlan, drawn once from the scenario's seed."""

    def __init__(self, scenario: FaultSettings) -> None:
        self.rounds: list[RoundPlan] = []
        previous: frozenset[int] = frozenset()
        for k in range(1, scenario.rounds + 1):
            plan = _plan_round(scenario, k, previous)
            self.rounds.append(plan)
            previous = plan.sitting_out

    def round(self, k: int) -> RoundPlan:
        return self.rounds[k - 1]


def _plan_round(scenario: FaultSettings, k: int, sat_out_before: frozenset[int]) -> RoundPlan:
    crashing = {c.node: c.at for c in scenario.crash if c.round == k}
    down = frozenset(c.node for c in scenario.crash if _down(c, k))
    restarting = frozenset(c.node for c in scenario.crash if c.rejoin == k)
    # one draw per node per round, whatever the others do: changing one node's faults does
    # not reshuffle everybody else's dropouts
    draws = np.random.default_rng([scenario.seed & 0xFFFFFFFF, k, 0xD809]).random(scenario.nodes)
    away = down | set(crashing) | restarting  # restarting nodes come back as configured
    eligible = [i for i in range(scenario.nodes) if i not in away]
    sitting = sorted((i for i in eligible if draws[i] < scenario.dropout), key=lambda i: draws[i])
    finishing = scenario.nodes - len(down) - len(crashing)
    while sitting and finishing - len(sitting) < MIN_ACTIVE:
        sitting.pop()  # the nodes that came closest to staying stay
    sitting_out = frozenset(sitting)
    active = set(range(scenario.nodes)) - down - sitting_out
    return RoundPlan(
        round=k,
        crashing=crashing,
        down=down,
        sitting_out=sitting_out,
        restarting=restarting,
        returning=frozenset(i for i in sat_out_before if i in active),
    )


def nodes_of(accounts: Sequence[str], chosen: Sequence[str]) -> list[int]:
    """Node numbers of `chosen` accounts, in node order (both as the ledger gives them,
    normalized where they entered: docs/architecture.md#addresses)."""
    wanted = set(chosen)
    return [i for i, a in enumerate(accounts) if a in wanted]
