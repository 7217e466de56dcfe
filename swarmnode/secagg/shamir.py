"""Shamir's t-of-n secret sharing over the prime field of 2^521 - 1
(docs/secure-aggregation.md#secret-sharing).

A node shares two 32-byte secrets per round, its self-mask seed and its X25519 private key,
so that any t survivors can rebuild the one of them the round needs and fewer learn
nothing. The field is the Mersenne prime 2^521 - 1: larger than any 32-byte secret, well
known to be prime, and small enough that a share is 66 bytes and interpolation among a few
dozen holders is microseconds of Python integers.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from swarmnode.secagg.errors import ShareError

PRIME = (1 << 521) - 1
SHARE_BYTES = 66  # 521 bits


@dataclass(frozen=True)
class Share:
    """The polynomial's value y at x; holder i (1-based seat) gets x = i."""

    x: int
    y: int


def split(secret: bytes, holders: int, threshold: int) -> list[Share]:
    """Shares of `secret` for holders 1..holders, any `threshold` of which rebuild it."""
    if not 1 <= threshold <= holders:
        raise ValueError(f"a threshold of {threshold} among {holders} holders")
    value = int.from_bytes(secret, "big")
    if value >= PRIME:  # pragma: no cover - only for secrets of 66 bytes and more
        raise ValueError(f"a secret of {len(secret)} bytes does not fit the field")
    coefficients = [value, *(secrets.randbelow(PRIME) for _ in range(threshold - 1))]
    return [Share(x, _evaluate(coefficients, x)) for x in range(1, holders + 1)]


def combine(shares: Sequence[Share], threshold: int, length: int) -> bytes:
    """The `length`-byte secret from at least `threshold` shares. Shares beyond the
    threshold must lie on the same polynomial, else ShareError: with more than t shares a
    lying holder is caught here, not only by the commitment check after."""
    points: dict[int, int] = {}
    for share in shares:
        if not (0 < share.x < PRIME and 0 <= share.y < PRIME):
            raise ShareError(f"a share at x={share.x} is outside the field")
        if points.setdefault(share.x, share.y) != share.y:
            raise ShareError(f"two different shares at x={share.x}")
    if len(points) < threshold:
        raise ShareError(f"{len(points)} distinct shares, {threshold} needed")
    xs = sorted(points)
    base = [(x, points[x]) for x in xs[:threshold]]
    for x in xs[threshold:]:
        if _interpolate(base, x) != points[x]:
            raise ShareError(f"the share at x={x} is not on the polynomial of the others")
    value = _interpolate(base, 0)
    if value >= 1 << (8 * length):
        raise ShareError(f"the shares do not give a {length}-byte secret")
    return value.to_bytes(length, "big")


def _evaluate(coefficients: list[int], x: int) -> int:
    value = 0
    for coefficient in reversed(coefficients):
        value = (value * x + coefficient) % PRIME
    return value


def _interpolate(points: list[tuple[int, int]], at: int) -> int:
    """The value at `at` of the polynomial of degree < len(points) through them."""
    weights = _lagrange(tuple(x for x, _ in points), at)
    return sum(w * y for w, (_, y) in zip(weights, points, strict=True)) % PRIME


@lru_cache(maxsize=256)
def _lagrange(xs: tuple[int, ...], at: int) -> tuple[int, ...]:
    """The Lagrange weights of the points `xs` at `at`. They depend on the holders' seats
    alone, so an unmasking that rebuilds every dealer's secret from the same revealers
    computes them once: one inversion for all the denominators, then products."""
    numerators, denominators = [], []
    for i, xi in enumerate(xs):
        numerator, denominator = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                numerator = numerator * (at - xj) % PRIME
                denominator = denominator * (xi - xj) % PRIME
        numerators.append(numerator)
        denominators.append(denominator)
    inverse = pow(math.prod(denominators) % PRIME, -1, PRIME)
    weights = []
    for i, numerator in enumerate(numerators):
        others = math.prod(denominators[:i] + denominators[i + 1 :]) % PRIME
        weights.append(numerator * others * inverse % PRIME)
    return tuple(weights)
