"""Distributed differential privacy for the mean: each node noises its own update a little,
the secure sum adds the noise up (docs/privacy.md#distributed-dp).

Secure aggregation shows the swarm only the sum of the updates, never one of them. So the
noise that makes the merged model differentially private need not come from one place: each
node clips its update (its vector minus the round's reference, the last merged model it
holds) to L2 norm C and adds Gaussian noise of variance sigma^2 C^2 / (m - f) per
coordinate, where m is the fewest participants a round may finish with and f the colluders
a node assumes (they know, and may subtract, their own noise). The noise of any m - f honest
survivors then adds up to variance sigma^2 C^2: the Gaussian mechanism with noise
multiplier sigma on a sum in which one node moves at most C. Every node joins with weight 1
(equal weights), so that no weight scales one node's update, and so its sensitivity, up.

The noise comes from a generator seeded by `secrets`, never from the run's seed: whoever
knows a seed can draw the same noise and take it off. Only the simulator passes a seed (it
measures accuracy, and its runs must repeat).

The accountant is Opacus's RDP accountant, through swarmnode.privacy.epsilon_of: one step
per round contributed, sample rate 1, noise multiplier sigma. Its history is kept in the
node's privacy journal beside local DP's, and a budget ends the node's rounds the same way.
"""

from __future__ import annotations

import functools
import math
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from swarmnode.exceptions import ConfigError
from swarmnode.privacy import DEFAULT_DELTA, BudgetSpent, epsilon_of, read_journal, write_journal
from swarmnode.rules import SwarmParams

__all__ = [
    "DEFAULT_COLLUDERS",
    "JOURNAL_KEY",
    "NOISE_SIGMAS",
    "DistributedDP",
    "MeanPrivacySettings",
    "clip_update",
]

DEFAULT_COLLUDERS = 1
"""f by default: every participant knows its own noise, so one curious peer is the least a
node must assume (docs/privacy.md#distributed-dp)."""
NOISE_SIGMAS = 8
"""A node's noise times this must stay under secure aggregation's bound B: a coordinate
past 8 standard deviations has a chance under 1.3e-15, so no honest update leaves [-B, B]."""
JOURNAL_KEY = "mean_rounds"  # the privacy journal's entry for distributed DP's rounds


@dataclass(frozen=True)
class MeanPrivacySettings:
    """Distributed DP's knobs and the budget: node.toml's `[privacy]` mean_* keys, the
    scenario's dp_mean_* keys.

    `noise_multiplier`: sigma, the standard deviation of the summed noise over the clipping
    norm. `clip_norm`: C, the largest L2 norm of a node's update. `assumed_colluders`: f,
    participants that may subtract their own noise from the sum. `delta` and
    `epsilon_budget` as for local DP (swarmnode.privacy.PrivacySettings)."""

    noise_multiplier: float
    clip_norm: float
    assumed_colluders: int = DEFAULT_COLLUDERS
    delta: float = DEFAULT_DELTA
    epsilon_budget: float | None = None

    def __post_init__(self) -> None:
        for name, value in (
            ("mean_noise_multiplier", self.noise_multiplier),
            ("mean_clip_norm", self.clip_norm),
        ):
            if not (_number(value) and math.isfinite(value) and value > 0):
                raise ConfigError(f"privacy {name} must be a finite number > 0, got {value!r}")
        f = self.assumed_colluders
        if not (isinstance(f, int) and not isinstance(f, bool) and f >= 0):
            raise ConfigError(f"privacy assumed_colluders must be an integer >= 0, got {f!r}")
        if not _number(self.delta) or not 0 < float(self.delta) < 1:
            raise ConfigError(
                f"privacy delta must be a number between 0 and 1 (e.g. 1e-5), got {self.delta!r}"
            )
        budget = self.epsilon_budget
        if budget is not None and not (_number(budget) and math.isfinite(budget) and budget > 0):
            raise ConfigError(
                f"privacy epsilon_budget must be a finite number > 0, or left out for no "
                f"limit, got {budget!r}"
            )

    def noise_std(self, survivors: int) -> float:
        """Each node's noise per coordinate when a round may finish with `survivors`
        participants: sigma C / sqrt(m - f). ConfigError when f >= m."""
        f = self.assumed_colluders
        if f >= survivors:
            raise ConfigError(
                f"privacy assumed_colluders {f} must be below the {survivors} participants "
                "a round may finish with (min_peers): the colluders' noise would be all of it"
            )
        return self.noise_multiplier * self.clip_norm / math.sqrt(survivors - f)

    def to_dict(self) -> dict[str, float | int | None]:
        return {
            "mean_noise_multiplier": self.noise_multiplier,
            "mean_clip_norm": self.clip_norm,
            "assumed_colluders": self.assumed_colluders,
            "delta": self.delta,
            "epsilon_budget": self.epsilon_budget,
        }


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def clip_update(update: npt.NDArray[np.float64], norm: float) -> npt.NDArray[np.float64]:
    """`update` scaled down to L2 norm `norm` if it is longer; as it is otherwise."""
    length = float(np.linalg.norm(update))
    if length <= norm:
        return update
    return update * (norm / length)


@functools.lru_cache(maxsize=1024)
def _epsilon(sigma: float, rounds: int, delta: float) -> float:
    """epsilon_of for `rounds` unsampled Gaussian steps, kept: a simulated swarm asks it of
    every node every round, and they mostly share their count."""
    return epsilon_of([(sigma, 1.0, rounds)] if rounds else [], delta)


class DistributedDP:
    """One node's distributed DP in one swarm: clips and noises what it contributes, counts
    the rounds, and says epsilon. Made by `for_swarm`, which refuses a swarm it cannot
    protect. `journal`, when set (`restore`), is the privacy journal its rounds are kept in."""

    def __init__(
        self, settings: MeanPrivacySettings, survivors: int, seed: int | None = None
    ) -> None:
        self.settings = settings
        self.survivors = survivors  # m
        self.std = settings.noise_std(survivors)
        # secret unless the simulator asks for a repeatable run (module docstring)
        entropy = secrets.randbits(128) if seed is None else seed
        self._noise = np.random.Generator(np.random.PCG64(entropy))
        self.rounds = 0
        self.journal: Path | None = None

    @classmethod
    def for_swarm(
        cls, settings: MeanPrivacySettings, params: SwarmParams, seed: int | None = None
    ) -> DistributedDP:
        """Distributed DP in the swarm of `params`; ConfigError, one line, where it would not
        protect: without secure aggregation (each owner would see an update carrying only
        1/sqrt(m - f) of the noise), with f >= m, or noise too wide for the bound B."""
        secure = params.secure_aggregation
        if secure is None:
            raise ConfigError(
                "distributed DP (mean_noise_multiplier) needs secure aggregation in the swarm "
                "(deploy --secure-aggregation): without it each owner sees an update with "
                "only part of the noise; use local DP-SGD (noise_multiplier) instead"
            )
        dp = cls(settings, params.min_live, seed)
        if dp.std * NOISE_SIGMAS >= secure.bound:
            raise ConfigError(
                f"distributed DP noise of std {dp.std:.3g} per value does not fit secure "
                f"aggregation's bound {secure.bound} ({NOISE_SIGMAS} std must): lower "
                "mean_noise_multiplier or mean_clip_norm"
            )
        return dp

    def contribute(
        self, vector: npt.NDArray[np.float32], reference: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float32]:
        """What the node sends instead of `vector`: reference + clipped update + noise, and
        one more round counted. Call once per contribution, after `check_budget`."""
        update = clip_update(
            vector.astype(np.float64) - reference.astype(np.float64), self.settings.clip_norm
        )
        noise = self._noise.normal(0.0, self.std, size=update.shape)
        self.rounds += 1
        sent: npt.NDArray[np.float32] = (reference.astype(np.float64) + update + noise).astype(
            np.float32
        )
        return sent

    def history(self) -> list[tuple[float, float, int]]:
        """The accountant's (noise multiplier, sample rate, steps) entries: one step a round."""
        return [(self.settings.noise_multiplier, 1.0, self.rounds)] if self.rounds else []

    def epsilon(self) -> float:
        """Epsilon spent so far at the settings' delta, for one node's whole update."""
        return self.epsilon_after(0)

    def epsilon_after(self, rounds: int) -> float:
        """What epsilon would be after `rounds` more contributions."""
        ahead = self.rounds + max(rounds, 0)
        return _epsilon(self.settings.noise_multiplier, ahead, self.settings.delta)

    def check_budget(self, rounds: int = 1) -> None:
        """Raises BudgetSpent when `rounds` more contributions would spend past the budget."""
        budget = self.settings.epsilon_budget
        if budget is None:
            return
        after = self.epsilon_after(rounds)
        if after > budget:
            raise BudgetSpent(
                f"privacy budget spent: epsilon {self.epsilon():.3f} so far, {after:.3f} after "
                f"the next round's contribution, budget {budget:g} "
                f"(delta {self.settings.delta:g}, distributed DP); no more rounds for this node"
            )

    def record(self) -> None:
        """Writes the rounds counted to `journal`, if one is set (before the model leaves)."""
        if self.journal is not None:
            write_journal(self.journal, JOURNAL_KEY, self.rounds)

    def restore(self, journal: Path) -> None:
        """Sets `journal` and counts on from the rounds written there, if any."""
        self.journal = journal
        saved = read_journal(journal).get(JOURNAL_KEY, 0)
        if not isinstance(saved, int) or isinstance(saved, bool) or saved < 0:
            raise ConfigError(f"{journal}: not a privacy journal ({JOURNAL_KEY} {saved!r})")
        self.rounds += saved

    def continue_from(self, earlier: DistributedDP | None) -> None:
        """Counts on from `earlier`'s rounds (the same node started again in the simulator)."""
        if earlier is not None and earlier is not self:
            self.rounds += earlier.rounds
