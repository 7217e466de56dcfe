"""Byzantine nodes, for the simulator's attack scenarios.

A Byzantine node attacks only through what it contributes (docs/simulator.md#attacks; what
the protocol does and does not defend: docs/trust.md#threat-model): it takes part
in every round by the protocol's rules and commits to and sends a poisoned vector. The robust
merge rules are what stand against it. Four attacks:

- ``sign_flip``: sends the last merged model minus ``scale`` x its honest update.
- ``noise``: sends Gaussian noise of ``scale`` standard deviations around the last merged model.
- ``label_flip``: trains on its own rows with every label y replaced by classes - 1 - y, and
  sends the update that training produced. Its vector looks like any other node's update; only
  the data behind it is wrong, so it tests what the rules do with a plausible but harmful peer.
- ``alie``: "a little is enough" (Baruch, Baruch and Goldberg, NeurIPS 2019). The colluders
  send mean - z x std of the updates, coordinate by coordinate: a shift small enough to stay
  inside the spread of honest updates in every coordinate, where coordinate-wise rules cannot
  tell it from an honest vector, but the same way in every coordinate and from every colluder,
  so it adds up. See `Colluders` for where their mean and std come from and `alie_z` for z.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from statistics import NormalDist

import numpy as np
import numpy.typing as npt
import torch

from swarmnode.exceptions import ConfigError

Vector = npt.NDArray[np.float32]
Attack = Callable[[Vector, Vector], Vector]  # (honest snapshot, last merged model) -> sent

ATTACKS = ("none", "sign_flip", "noise", "label_flip", "alie")


def flip_labels(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """y -> classes - 1 - y: every row gets a wrong class (for an odd class count, all but
    the middle class), and the mapping is its own inverse, so nothing about it is random."""
    return (classes - 1) - labels


def trains_on_flipped_labels(attack: str) -> bool:
    return attack == "label_flip"


def alie_z(nodes: int, attackers: int) -> float:
    """The paper's z_max for n nodes of which m collude: s = floor(n/2 + 1) - m honest nodes
    must be won over, and z is the largest shift at which a value is still closer to the mean
    than that many honest values are expected to be: z = Phi^-1((n - s) / n).

    For 2 of 8 this is Phi^-1(5/8) = 0.32. The shift is deliberately small: the attack works by
    passing for honest, not by size. With s <= 0 (colluders are a majority, which a robust
    rule cannot stand anyway) s is taken as 1, so z stays finite."""
    if not 0 < attackers < nodes:
        raise ConfigError(f"alie needs 0 < attackers < nodes, got {attackers} of {nodes}")
    s = max(1, nodes // 2 + 1 - attackers)
    return NormalDist().inv_cdf((nodes - s) / nodes)


class Colluders:
    """The ALIE colluders' private channel: each puts in its honest update and gets back all
    the colluders' updates of the same round.

    The colluders estimate the honest mean and std from their own honest updates of the
    round, and from nothing else: they do not see the honest nodes' vectors before sending
    theirs (the protocol gives them no way to), but each trains on real data exactly as an
    honest node does, so their updates are honest samples of the same distribution. A round
    is recognised by the last merged model every colluder holds (its SHA-256), so a colluder
    that missed a round never mixes rounds up. The wait for the others is bounded by `wait`
    seconds: a colluder that is late or gone is left out and the others go on with what
    they have (a single colluder alone has std 0 and sends its honest update).

    It is shared memory, so the colluders must run in one process (the in-process engine's
    threads); vectors are combined in member order, never arrival order, so the result does
    not depend on thread timing.
    """

    def __init__(self, members: int, z: float, *, wait: float = 30.0) -> None:
        if members < 1:
            raise ConfigError(f"colluders need at least one member, got {members}")
        self.members = members
        self.z = z
        self.wait = wait
        self._cond = threading.Condition()
        self._rounds: OrderedDict[bytes, dict[int, Vector]] = OrderedDict()

    def share(self, member: int, reference: Vector, honest: Vector) -> list[Vector]:
        """Adds `honest` for the round after `reference`; returns every member's update that
        arrived before all were in or the wait ran out, in member order."""
        key = hashlib.sha256(reference.tobytes()).digest()
        deadline = time.monotonic() + self.wait
        with self._cond:
            pool = self._rounds.setdefault(key, {})
            pool[member] = honest
            while len(self._rounds) > 4:  # old rounds: every member has long taken its copy
                self._rounds.popitem(last=False)
            self._cond.notify_all()
            while len(pool) < self.members:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return [pool[m] for m in sorted(pool)]

    def attack(self, member: int) -> Attack:
        """Colluder `member`'s contribution: reference + mean(updates) - z x std(updates)."""

        def alie(honest: Vector, reference: Vector) -> Vector:
            updates = np.stack(
                [v.astype(np.float64) - reference for v in self.share(member, reference, honest)]
            )
            shifted = updates.mean(axis=0) - self.z * updates.std(axis=0)
            sent: Vector = (reference + shifted).astype(np.float32)
            return sent

        return alie


def make_attack(
    name: str,
    *,
    seed: int,
    scale: float = 4.0,
    colluders: Colluders | None = None,
    member: int = 0,
) -> Attack | None:
    """One Byzantine node's contribution hook; None where it sends its honest update (no
    attack, or `label_flip`, whose harm is in its training data). `alie` needs the
    `colluders` it belongs to and its `member` number there."""
    if name in ("none", "label_flip"):
        return None
    rng = np.random.default_rng(seed)
    if name == "sign_flip":

        def flip(honest: Vector, reference: Vector) -> Vector:
            return (reference - scale * (honest - reference)).astype(np.float32)

        return flip
    if name == "noise":

        def noise(honest: Vector, reference: Vector) -> Vector:
            return (reference + scale * rng.standard_normal(len(reference))).astype(np.float32)

        return noise
    if name == "alie":
        if colluders is None:
            raise ConfigError("the alie attack needs its colluders")
        return colluders.attack(member)
    raise ConfigError(f"unknown attack {name!r} (known: {', '.join(ATTACKS)})")


def byzantine_hooks(
    attack: str, nodes: int, byzantine: int, *, seed: int, scale: float
) -> list[Attack | None]:
    """The contribution hooks of the last `byzantine` of `nodes` nodes, in node order; ALIE
    colluders are wired to one shared `Colluders`."""
    colluders = None
    if attack == "alie" and byzantine:
        colluders = Colluders(byzantine, alie_z(nodes, byzantine))
    return [
        make_attack(attack, seed=seed * 1000 + i, scale=scale, colluders=colluders, member=i)
        for i in range(byzantine)
    ]
