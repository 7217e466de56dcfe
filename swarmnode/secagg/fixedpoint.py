"""Weighted updates as integers modulo 2^k, so that masked sums are exact
(docs/secure-aggregation.md#fixed-point).

Masks only cancel in a group, and floats are not one: a node encodes w * x with f
fractional bits as an integer modulo 2^k. k comes from deploy-time numbers alone (the most
participants n, the largest weight w_max, the largest magnitude B of any value, f) plus
headroom, so that no honest sum can wrap: the integer sum is then the true sum of the
encoded values, and every node that decodes it gets the same bits. The headroom is also
what catches a sum with a mask left out: such a sum is uniform modulo 2^k and lands inside
the honest range with probability under 2^-h per element.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import numpy.typing as npt

from swarmnode.exceptions import ConfigError
from swarmnode.secagg.errors import SumRefused, UpdateOutOfBound

Words = npt.NDArray[np.unsignedinteger]

MAX_BITS = 64  # the widest word numpy adds in without help


@dataclass(frozen=True)
class FixedPoint:
    """The deploy-time parameters of the encoding, and what follows from them."""

    peers: int  # n: the most participants a round may have
    max_weight: int  # w_max: weights are capped at deploy
    bound: float  # B: every value of an update lies in [-B, B]
    fraction_bits: int  # f
    headroom_bits: int = 8  # h: bits above the largest honest sum

    def __post_init__(self) -> None:
        if self.peers < 1 or self.max_weight < 1:
            raise ConfigError(
                f"secure aggregation needs peers >= 1 and max_weight >= 1, "
                f"got {self.peers} and {self.max_weight}"
            )
        if not (math.isfinite(self.bound) and self.bound > 0):
            raise ConfigError(f"secure aggregation needs a finite bound > 0, got {self.bound}")
        if self.fraction_bits < 0 or self.headroom_bits < 1:
            raise ConfigError(
                f"secure aggregation needs fraction_bits >= 0 and headroom_bits >= 1, "
                f"got {self.fraction_bits} and {self.headroom_bits}"
            )
        if self.bits > MAX_BITS:
            raise ConfigError(
                f"secure aggregation needs k = {self.bits} bits for n={self.peers}, "
                f"w_max={self.max_weight}, B={self.bound}, f={self.fraction_bits}, "
                f"h={self.headroom_bits}: more than {MAX_BITS}; lower one of them"
            )

    @property
    def scaled_bound(self) -> int:
        """ceil(B * 2^f): no encoded value of weight w exceeds w times this."""
        return math.ceil(Fraction(self.bound) * (1 << self.fraction_bits))

    @property
    def largest_sum(self) -> int:
        """The largest magnitude an honest sum of encoded values can have: n * w_max * B * 2^f."""
        return self.peers * self.max_weight * self.scaled_bound

    @property
    def bits(self) -> int:
        """k: the magnitude's bits, one sign bit, and the headroom."""
        return self.largest_sum.bit_length() + 1 + self.headroom_bits

    @property
    def modulus_mask(self) -> int:
        return (1 << self.bits) - 1

    @property
    def dtype(self) -> np.dtype[np.unsignedinteger]:
        """The word masked values travel in: 4 bytes when k fits, else 8."""
        return np.dtype("<u4") if self.bits <= 32 else np.dtype("<u8")

    def reduce(self, words: Words) -> Words:
        """`words` modulo 2^k, in place. Sums and masks are added in the word's own
        arithmetic (modulo 2^32 or 2^64, multiples of 2^k) and reduced once at the end."""
        words &= words.dtype.type(self.modulus_mask)
        return words

    def encode(self, weight: int, values: npt.ArrayLike) -> Words:
        """round(w * x * 2^f) modulo 2^k, for one node's update."""
        if isinstance(weight, bool) or not isinstance(weight, int | np.integer):
            raise UpdateOutOfBound(f"an update's weight must be an integer, got {weight!r}")
        if not 1 <= weight <= self.max_weight:
            raise UpdateOutOfBound(
                f"an update's weight must lie in [1, {self.max_weight}], got {weight}"
            )
        x = np.asarray(values, dtype=np.float64).reshape(-1)
        outside = np.flatnonzero(~(np.abs(x) <= self.bound))  # NaN counts as outside
        if outside.size:
            i = int(outside[0])
            raise UpdateOutOfBound(
                f"update value {i} is {float(x[i])!r}, outside [-{self.bound}, {self.bound}] "
                f"({outside.size} values outside)"
            )
        scaled = np.rint(x * (float(weight) * 2.0**self.fraction_bits)).astype(np.int64)
        words = scaled.view(np.uint64) if self.dtype.itemsize == 8 else scaled.astype(np.uint32)
        return self.reduce(words.astype(self.dtype, copy=False))

    def decode_mean(self, total: Words, total_weight: int, contributors: int) -> np.ndarray:
        """The weighted mean from the exact sum of `contributors` encoded updates whose
        weights add to `total_weight`, as float32; SumRefused when a value lies outside what
        honest inputs can sum to (|sum| <= total_weight * B * 2^f, the mean within +-B)."""
        if not 1 <= contributors <= self.peers:
            raise SumRefused(f"a sum of {contributors} updates, outside [1, {self.peers}]")
        if not contributors <= total_weight <= contributors * self.max_weight:
            raise SumRefused(
                f"a total weight of {total_weight} cannot come from {contributors} updates "
                f"of weight 1 to {self.max_weight}"
            )
        signed = self.signed(total)
        limit = total_weight * self.scaled_bound
        outside = np.flatnonzero((signed > limit) | (signed < -limit))
        if outside.size:
            i = int(outside[0])
            raise SumRefused(
                f"decoded sum refused: value {i} is {int(signed[i])} / 2^{self.fraction_bits}, "
                f"outside +-{limit} / 2^{self.fraction_bits} (total weight {total_weight} x "
                f"bound {self.bound}); {outside.size} of {signed.size} values outside: "
                f"a mask left out, a row missing or extra, or a share that lied"
            )
        mean = signed.astype(np.float64) * 2.0**-self.fraction_bits / float(total_weight)
        return mean.astype(np.float32)

    def signed(self, total: Words) -> npt.NDArray[np.int64]:
        """Words modulo 2^k read as two's complement integers in [-2^(k-1), 2^(k-1))."""
        reduced = self.reduce(np.array(total, dtype=self.dtype))
        if self.bits == 64:
            return reduced.view(np.int64)
        sign_bit = np.int64(1 << (self.bits - 1))  # 2^62 at most: no int64 overflow
        return (reduced.astype(np.int64) ^ sign_bit) - sign_bit

    def error_bound(self, contributors: int, total_weight: int) -> float:
        """The most the decoded mean differs from the exact weighted mean, before its final
        rounding to float32: each encoded value is off by at most 1/2 unit of 2^-f."""
        return contributors * 2.0 ** -(self.fraction_bits + 1) / total_weight
