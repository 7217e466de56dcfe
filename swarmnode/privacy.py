"""Local differential privacy: DP-SGD with Opacus, its accountant, and a budget that ends it.

A node that trains with DP clips every sample's gradient to `max_grad_norm`, adds Gaussian
noise of `noise_multiplier` x that norm to each batch's sum, and draws its batches by
Poisson sampling (each row in with probability q), which is what the accountant's bound
assumes. Opacus does all three (its PrivacyEngine); this module wires it to a node and keeps
the node's model what the swarm expects (docs/privacy.md#how-a-node-trains):

- the model is fixed with Opacus's ModuleValidator (BatchNorm becomes GroupNorm) before the
  node takes its layout and initial digest, so every DP node of a swarm builds the same
  model from the same code;
- Opacus's GradSampleModule is kept beside the plain model, never in its place: snapshots,
  merged models and checkpoints use the plain parameter names, not `_module.`-prefixed ones;
- a Poisson batch may be empty; its step still happens (noise and all) and is counted.

The accountant (Opacus's RDP accountant) turns the steps taken into epsilon at `delta`
(docs/privacy.md#the-accountant); a node with `epsilon_budget` stops joining rounds before
a round's training would spend past it (docs/privacy.md#the-budget).

Opacus (and torch) are imported only when a node trains with DP: the settings here load
without them, so a node.toml or a scenario is checked without loading torch.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from swarmnode.exceptions import ConfigError, SwarmError

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, Dataset

__all__ = [
    "PRIVACY_JOURNAL",
    "BudgetSpent",
    "PrivacySettings",
    "PrivateTraining",
    "fix_model",
    "make_private",
    "plain_module",
    "plain_state_dict",
    "read_journal",
    "write_journal",
]

DEFAULT_DELTA = 1e-5
PRIVACY_JOURNAL = "privacy.json"
"""The file in a node folder's checkpoint directory that keeps the accountant's history."""
_PREFIX = "_module."  # what Opacus's GradSampleModule puts before every state_dict key


class BudgetSpent(SwarmError):
    """The node's next training would spend more privacy than its budget allows: it stops
    joining rounds (its model and the swarm's go on without it)."""


@dataclass(frozen=True)
class PrivacySettings:
    """DP-SGD's knobs and the budget: node.toml's `[privacy]`, the scenario's dp_* keys.

    `noise_multiplier`: the noise's standard deviation over the clipping norm (more noise,
    less epsilon per step). `max_grad_norm`: each sample's gradient is clipped to this L2
    norm. `delta`: the chance the epsilon bound may fail; keep it well under 1 / the rows a
    node holds. `epsilon_budget`: the most epsilon the node may spend; None: no limit (it
    is still measured and reported)."""

    noise_multiplier: float
    max_grad_norm: float
    delta: float = DEFAULT_DELTA
    epsilon_budget: float | None = None

    def __post_init__(self) -> None:
        checks = (
            ("noise_multiplier", self.noise_multiplier, "> 0 (0 adds no noise: no privacy)"),
            ("max_grad_norm", self.max_grad_norm, "> 0"),
            ("epsilon_budget", self.epsilon_budget, "> 0, or left out for no limit"),
        )
        for name, value, want in checks:
            if value is None and name == "epsilon_budget":
                continue
            if not (isinstance(value, int | float) and _number(value)) or not (
                math.isfinite(value) and value > 0
            ):
                raise ConfigError(f"privacy {name} must be a finite number {want}, got {value!r}")
        if not _number(self.delta) or not 0 < float(self.delta) < 1:
            raise ConfigError(
                f"privacy delta must be a number between 0 and 1 (e.g. 1e-5), got {self.delta!r}"
            )

    def to_dict(self) -> dict[str, float | None]:
        return {
            "noise_multiplier": self.noise_multiplier,
            "max_grad_norm": self.max_grad_norm,
            "delta": self.delta,
            "epsilon_budget": self.epsilon_budget,
        }


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------------
# The model


def fix_model(model: nn.Module) -> nn.Module:
    """`model` made trainable with per-sample gradients (Opacus's ModuleValidator.fix:
    BatchNorm becomes GroupNorm, and the like); a model that needs no fix comes back as
    it is. A model Opacus still refuses after the fix is a ConfigError naming why."""
    from opacus.validators import ModuleValidator

    if ModuleValidator.is_valid(model):
        return model
    fixed: nn.Module = ModuleValidator.fix(model)
    errors = ModuleValidator.validate(fixed, strict=False)
    if errors:
        raise ConfigError(f"the model cannot train with DP-SGD: {_first_sentence(errors[0])}")
    return fixed


def _first_sentence(error: object) -> str:
    """The first sentence of an Opacus refusal (they run to a paragraph)."""
    return str(error).strip().splitlines()[0].split(". ")[0].rstrip(".")


def plain_module(model: nn.Module) -> nn.Module:
    """The model inside Opacus's GradSampleModule, or `model` itself: the one whose
    state_dict has the plain names every node's layout is made of."""
    opacus = sys.modules.get("opacus")  # not loaded: nothing can be wrapped by it
    if opacus is not None and isinstance(model, opacus.GradSampleModule):
        inner: nn.Module = model._module
        return inner
    return model


def plain_state_dict(state: dict[str, Any]) -> dict[str, Any]:
    """A state_dict with GradSampleModule's `_module.` prefix taken off every key that has
    it (one saved from a wrapped model loads into the plain one, and digests the same)."""
    return {key.removeprefix(_PREFIX): value for key, value in state.items()}


# --------------------------------------------------------------------------------------------
# Training


class PrivateTraining:
    """One model's DP-SGD: its GradSampleModule, DP optimizer, Poisson loader and accountant.

    Made by `make_private`. `module` is what training runs forward through (it shares its
    parameters with the plain model); `optimizer` clips, noises and steps; `loader` draws
    Poisson batches. `epsilon()` is what the steps so far have spent at `settings.delta`.
    `journal`, when set, is a file the accountant's history is written to (`record`) and
    read back from (`restore`), so a restarted node goes on counting from where it was.
    """

    def __init__(
        self,
        settings: PrivacySettings,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        loader: DataLoader[Any],
        engine: Any,
        sample_rate: float,
        expected_batch_size: int,
        noise: torch.Generator | None = None,
    ) -> None:
        self.settings = settings
        self.module = module
        self.optimizer = optimizer
        self.loader = loader
        self.sample_rate = sample_rate
        self.expected_batch_size = expected_batch_size
        self._engine = engine
        self._noise = noise
        self.journal: Path | None = None

    @property
    def steps(self) -> int:
        """Optimizer steps the accountant has counted (empty batches included)."""
        return sum(int(steps) for _, _, steps in self._engine.accountant.history)

    def epsilon(self) -> float:
        """Epsilon spent so far at the settings' delta; 0 before the first step."""
        return epsilon_of(self.history(), self.settings.delta)

    def epsilon_after(self, steps: int) -> float:
        """What epsilon would be after `steps` more steps, nothing changed."""
        ahead = self.history()
        if steps > 0:
            ahead.append((self.settings.noise_multiplier, self.sample_rate, steps))
        return epsilon_of(ahead, self.settings.delta)

    def check_budget(self, steps: int) -> None:
        """Raises BudgetSpent when `steps` more steps would spend past the budget."""
        budget = self.settings.epsilon_budget
        if budget is None:
            return
        after = self.epsilon_after(steps)
        if after > budget:
            raise BudgetSpent(
                f"privacy budget spent: epsilon {self.epsilon():.3f} so far, "
                f"{after:.3f} after the next {steps} steps, budget {budget:g} "
                f"(delta {self.settings.delta:g}); no more rounds for this node"
            )

    def continue_from(self, earlier: PrivateTraining | None) -> None:
        """Counts on from `earlier`'s steps: the same node started again (a restart in the
        simulator), whose spending so far still counts toward its budget."""
        if earlier is not None and earlier is not self:
            self._engine.accountant.history = earlier.history() + self.history()

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """A fresh optimizer (e.g. a new SGD each round) made private as the first one was,
        its steps counted by the same accountant."""
        from opacus.optimizers import DPOptimizer

        private = DPOptimizer(
            optimizer,
            noise_multiplier=self.settings.noise_multiplier,
            max_grad_norm=self.settings.max_grad_norm,
            expected_batch_size=self.expected_batch_size,
            generator=self._noise,  # the same stream goes on
        )
        private.attach_step_hook(
            self._engine.accountant.get_optimizer_hook_fn(sample_rate=self.sample_rate)
        )
        self.optimizer = private
        return private  # type: ignore[no-any-return]

    def history(self) -> list[tuple[float, float, int]]:
        """The accountant's (noise multiplier, sample rate, steps) entries."""
        return [(float(n), float(q), int(s)) for n, q, s in self._engine.accountant.history]

    def record(self) -> None:
        """Writes the accountant's history to `journal` (atomically), if one is set."""
        if self.journal is not None:
            write_journal(self.journal, "history", self.history())

    def restore(self, journal: Path) -> None:
        """Sets `journal` and takes the history written there, if any: the steps a
        previous run of this node took count toward its budget too."""
        self.journal = journal
        try:
            saved = read_journal(journal).get("history", [])
            entries = [(float(n), float(q), int(s)) for n, q, s in saved]
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{journal}: not a privacy journal ({exc})") from None
        self._engine.accountant.history = entries + self._engine.accountant.history


def read_journal(journal: Path) -> dict[str, Any]:
    """The privacy journal's entries ({} when there is none yet): local DP's accountant
    history under "history", distributed DP's rounds under "mean_rounds"."""
    try:
        saved = json.loads(journal.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{journal}: not a privacy journal ({exc})") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"{journal}: not a privacy journal (not a JSON object)")
    return saved


def write_journal(journal: Path, key: str, value: object) -> None:
    """Sets one entry of the privacy journal, keeping the others, atomically (a crash
    leaves the old file or the new one, never half of one)."""
    entries = read_journal(journal)
    entries[key] = value
    journal.parent.mkdir(parents=True, exist_ok=True)
    partial = journal.with_name(journal.name + ".partial")
    partial.write_text(json.dumps(entries) + "\n")
    os.replace(partial, journal)


def epsilon_of(history: list[tuple[float, float, int]], delta: float) -> float:
    """Epsilon at `delta` after the steps in `history`, (noise multiplier, sample rate,
    steps) entries: what Opacus's RDP accountant says (its orders, its conversion), with
    each (sample rate, noise) pair's RDP per step computed once (`_rdp_per_step`) instead
    of at every call (a second or so of fractional orders each time on a busy machine)."""
    if not any(steps for _, _, steps in history):
        return 0.0
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import get_privacy_spent

    rdp = sum(np.asarray(_rdp_per_step(q, sigma)) * steps for sigma, q, steps in history if steps)
    eps, _ = get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
    return float(eps)


@functools.lru_cache(maxsize=256)
def _rdp_per_step(q: float, sigma: float) -> tuple[float, ...]:
    """The RDP of one step of the subsampled Gaussian at every order the accountant uses
    (the RDP of n steps is n times it: Opacus's compute_rdp multiplies it so too)."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import compute_rdp

    orders = RDPAccountant.DEFAULT_ALPHAS
    return tuple(float(v) for v in compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=orders))


def _quiet_opacus() -> None:
    """Silences two warnings that say nothing to act on, process-wide (a per-call
    catch_warnings is not thread-safe, and simulated nodes train in threads): Opacus's
    "secure RNG turned off" (its noise comes from torch's RNG, seeded per node so runs
    repeat; docs/privacy.md#what-it-does-not-protect), and torch's note that a full
    backward hook fires on a first layer whose input needs no gradient (Opacus's hooks)."""
    import warnings

    warnings.filterwarnings("ignore", "Secure RNG turned off", UserWarning)
    warnings.filterwarnings("ignore", "Full backward hook is firing", UserWarning)


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: Dataset[Any] | DataLoader[Any],
    settings: PrivacySettings,
    *,
    batch_size: int | None = None,
    seed: int = 0,
) -> PrivateTraining:
    """`model`, `optimizer` and the training data made private with Opacus's PrivacyEngine
    (Poisson sampling, the RDP accountant). `data` is a DataLoader (its batch size sets
    the expected Poisson batch) or a Dataset batched by `batch_size`. Fix the model first
    (`fix_model`), before its initial digest is taken.

    Also the way in for a training loop of your own (README, "Differential privacy"): train
    with `.module`, `.optimizer` and `.loader`, and pass the result to SwarmCallback as
    `privacy=`, which reports epsilon and stops syncing when the budget is spent.

    The Poisson draws and the noise come from generators of their own, seeded from `seed`
    (a loader's own generator, if it has one, draws its batches): never from torch's global
    generator, which every thread of a process shares, so that nodes training side by side
    in one process (the simulator) still repeat bit for bit.
    """
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader

    if isinstance(data, DataLoader):
        loader = data
    else:
        if batch_size is None or batch_size < 1:
            raise ConfigError("make_private: a Dataset needs a batch_size of at least 1")
        loader = DataLoader(data, batch_size=batch_size)
    model = plain_module(model)
    from opacus.validators import ModuleValidator

    refused = ModuleValidator.validate(model, strict=False)
    if refused:  # Opacus would raise a multi-line error of its own
        raise ConfigError(
            f"the model cannot train with DP-SGD: {_first_sentence(refused[0])}; build it, "
            "then fix_model(model), before making its optimizer"
        )
    if not len(loader):
        raise ConfigError("the training data yields no batches")
    _quiet_opacus()
    import torch

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    noise = torch.Generator(device=device).manual_seed(_stream(seed, 1))
    engine = PrivacyEngine(accountant="rdp")
    module, private, poisson = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=settings.noise_multiplier,
        max_grad_norm=settings.max_grad_norm,
        poisson_sampling=True,
        noise_generator=noise,
    )
    sampler = poisson.batch_sampler
    if getattr(sampler, "generator", None) is None:  # Opacus took the loader's, if any
        sampler.generator = torch.Generator().manual_seed(_stream(seed, 2))
    sample_rate = 1 / len(poisson)
    expected = max(1, int(len(poisson.dataset) * sample_rate))
    return PrivateTraining(settings, module, private, poisson, engine, sample_rate, expected, noise)


def _stream(seed: int, stream: int) -> int:
    """A 63-bit generator seed for one of a node's random streams (1: noise, 2: sampling)."""
    return ((seed * 0x9E3779B97F4A7C15) ^ (stream * 0xBF58476D1CE4E5B9)) % (2**63)
