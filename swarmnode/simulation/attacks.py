"""Byzantine contributions, for the simulator's attack scenarios.

A Byzantine node attacks only through what it contributes (DESIGN.md "Trust"): it commits
to and sends a poisoned vector, built from its honest update and the last merged model.
The robust merge rules are what stand against it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from swarmnode.exceptions import ConfigError

Vector = npt.NDArray[np.float32]
Attack = Callable[[Vector, Vector], Vector]  # (honest snapshot, last merged model) -> sent

ATTACKS = ("none", "sign_flip", "noise")


def make_attack(name: str, *, seed: int, scale: float = 4.0) -> Attack | None:
    """`sign_flip`: sends the reference minus `scale` x its honest update; `noise`: sends
    Gaussian noise of `scale` standard deviations around the reference."""
    if name == "none":
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
    raise ConfigError(f"unknown attack {name!r} (known: {', '.join(ATTACKS)})")
