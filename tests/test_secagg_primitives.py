"""The pieces of secure aggregation alone (docs/secure-aggregation.md): the fixed-point
encoding decodes sums to the weighted mean within its stated bound and refuses what no
honest sum gives; mask streams are the same words whatever range they are asked in; Shamir
sharing rebuilds from any t shares and catches a share off the polynomial."""

from __future__ import annotations

import math
import secrets

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from swarmnode.exceptions import ConfigError
from swarmnode.secagg import shamir
from swarmnode.secagg.errors import ShareError, SumRefused, UpdateOutOfBound
from swarmnode.secagg.fixedpoint import FixedPoint
from swarmnode.secagg.prg import pair_key, self_key, sign, stream

A, B, C = (f"0x{i:040x}" for i in (1, 2, 3))


@st.composite
def encodings(draw: st.DrawFn) -> tuple[FixedPoint, list[tuple[int, np.ndarray]]]:
    """A FixedPoint that fits 64 bits and 1..peers updates inside its bounds."""
    peers = draw(st.integers(1, 64))
    max_weight = draw(st.integers(1, 2**16))
    bound = draw(st.sampled_from([0.5, 1.0, 3.0, 64.0, 1000.0]))
    fraction_bits = draw(st.integers(0, 30))
    try:
        fixed = FixedPoint(peers, max_weight, bound, fraction_bits, headroom_bits=4)
    except ConfigError:  # k over 64: refused at configuration, tested below
        assume(False)
    size = draw(st.integers(1, 20))
    values = hnp.arrays(
        np.float32,
        size,
        elements=st.floats(-bound, bound, width=32, allow_nan=False, allow_subnormal=False),
    )
    count = draw(st.integers(1, min(peers, 5)))
    updates = [(draw(st.integers(1, max_weight)), draw(values)) for _ in range(count)]
    return fixed, updates


@settings(max_examples=60, deadline=None, derandomize=True)
@given(encodings())
def test_a_sum_of_encodings_decodes_to_the_weighted_mean_within_the_bound(
    case: tuple[FixedPoint, list[tuple[int, np.ndarray]]],
) -> None:
    fixed, updates = case
    words = [fixed.encode(w, x) for w, x in updates]
    assert all(int(v.max()) < 1 << fixed.bits for v in words)
    total = words[0].copy()
    for v in words[1:]:
        total += v
    weight = sum(w for w, _ in updates)
    mean = fixed.decode_mean(fixed.reduce(total), weight, len(updates))
    exact = sum(w * x.astype(np.float64) for w, x in updates) / weight
    # the fixed-point bound, then the rounding of a float64 to float32
    slack = fixed.error_bound(len(updates), weight) + np.spacing(np.abs(exact).astype(np.float32))
    assert mean.dtype == np.float32
    assert np.all(np.abs(mean - exact) <= slack)
    # the integer sum is exact: what each node would decode is the same bits
    assert np.array_equal(fixed.signed(total), sum(fixed.signed(v) for v in words))


def test_k_follows_the_stated_bound_and_picks_the_word() -> None:
    fixed = FixedPoint(peers=8, max_weight=1, bound=4.0, fraction_bits=16, headroom_bits=8)
    # n * w_max * B * 2^f = 2^3 * 2^2 * 2^16 = 2^21: 22 bits, one sign bit, 8 of headroom
    assert fixed.largest_sum == 2**21 and fixed.bits == 31 and fixed.dtype == np.uint32
    wide = FixedPoint(peers=32, max_weight=2**16, bound=16.0, fraction_bits=20)
    assert wide.bits == 5 + 16 + 4 + 20 + 1 + 1 + 8 and wide.dtype == np.uint64
    with pytest.raises(ConfigError, match=r"k = 7[0-9] bits"):
        FixedPoint(peers=64, max_weight=2**20, bound=64.0, fraction_bits=32)
    # the widest words: negative sums read back as negative at k = 63 and 64
    for headroom, bits in ((21, 63), (22, 64)):
        edge = FixedPoint(
            peers=1, max_weight=1, bound=1.0, fraction_bits=40, headroom_bits=headroom
        )
        assert edge.bits == bits
        assert list(edge.decode_mean(edge.encode(1, [-1.0, 0.5]), 1, 1)) == [-1.0, 0.5]


@pytest.mark.parametrize(
    ("weight", "values", "match"),
    [
        (1, [0.0, 4.5], r"value 1 is 4\.5, outside \[-4\.0, 4\.0\]"),
        (1, [math.nan], "value 0 is nan"),
        (0, [0.0], r"weight must lie in \[1, 10\], got 0"),
        (11, [0.0], r"weight must lie in \[1, 10\], got 11"),
        (True, [0.0], "must be an integer"),
    ],
)
def test_an_update_outside_the_deploy_bounds_is_not_encoded(
    weight: int, values: list[float], match: str
) -> None:
    fixed = FixedPoint(peers=4, max_weight=10, bound=4.0, fraction_bits=8)
    with pytest.raises(UpdateOutOfBound, match=match):
        fixed.encode(weight, values)


def test_a_sum_outside_the_honest_range_is_refused_never_decoded() -> None:
    fixed = FixedPoint(peers=4, max_weight=10, bound=4.0, fraction_bits=8)
    honest = fixed.encode(10, [4.0, -4.0])
    assert list(fixed.decode_mean(honest, 10, 1)) == [4.0, -4.0]
    # one unit past w * B * 2^f
    past = fixed.reduce(honest + np.array([1, 0], dtype=fixed.dtype))
    with pytest.raises(SumRefused, match=r"value 0 is 10241 / 2\^8, outside \+-10240"):
        fixed.decode_mean(past, 10, 1)
    # what a forgotten mask leaves: uniform words, refused with all but certainty
    rng = np.random.default_rng(7)
    noise = fixed.reduce(rng.integers(0, 2**32, 16, dtype=np.uint64).astype(fixed.dtype))
    with pytest.raises(SumRefused, match="a mask left out"):
        fixed.decode_mean(noise, 40, 4)
    with pytest.raises(SumRefused, match="cannot come from 2 updates"):
        fixed.decode_mean(honest, 21, 2)


@pytest.mark.parametrize("dtype", [np.dtype("<u4"), np.dtype("<u8")])
def test_a_stream_is_the_same_words_whatever_range_it_is_asked_in(dtype: np.dtype) -> None:
    key = secrets.token_bytes(32)
    whole = stream(key, range(0, 1000), dtype)
    for part in (range(0, 1), range(3, 517), range(15, 16), range(16, 1000), range(999, 1000)):
        assert np.array_equal(stream(key, part, dtype), whole[part.start : part.stop])
    assert len(np.unique(whole)) > 990  # not a constant or a short cycle


def test_keys_are_bound_to_the_pair_the_swarm_and_the_round() -> None:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    a_pub, b_pub = (k.public_key().public_bytes_raw() for k in (a, b))
    ab = pair_key(a, b_pub, b"swarm", 1, A, B)
    assert ab == pair_key(b, a_pub, b"swarm", 1, B, A)  # either side computes it
    assert ab != pair_key(a, b_pub, b"swarm", 2, A, B)
    assert ab != pair_key(a, b_pub, b"other", 1, A, B)
    assert ab != pair_key(a, b_pub, b"swarm", 1, A, C)
    seed = bytes(32)
    assert self_key(seed, b"swarm", 1, A) != self_key(seed, b"swarm", 1, B)
    for bad in (bytes(32), b"short"):  # a low-order point (all-zero secret), a wrong length
        with pytest.raises(ShareError, match=f"X25519 key of {B} is unusable"):
            pair_key(a, bad, b"swarm", 1, A, B)
    assert sign(A, B) == 1 and sign(B, A) == -1


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    secret=st.binary(min_size=32, max_size=32),
    holders=st.integers(1, 12),
    data=st.data(),
)
def test_any_t_shares_rebuild_the_secret(secret: bytes, holders: int, data: st.DataObject) -> None:
    threshold = data.draw(st.integers(1, holders))
    shares = shamir.split(secret, holders, threshold)
    chosen = data.draw(st.lists(st.sampled_from(shares), min_size=threshold, unique=True))
    assume(len(chosen) >= threshold)
    assert shamir.combine(chosen, threshold, 32) == secret
    if threshold > 1:
        with pytest.raises(ShareError, match="needed"):
            shamir.combine(chosen[: threshold - 1], threshold, 32)
    if len(chosen) > threshold:  # a share off the polynomial is caught
        bad = shamir.Share(chosen[-1].x, (chosen[-1].y + 1) % shamir.PRIME)
        with pytest.raises(ShareError, match="not on the polynomial"):
            shamir.combine([*chosen[:-1], bad], threshold, 32)


def test_fewer_than_t_shares_fit_every_secret() -> None:
    """t - 1 shares and any candidate secret lie on some polynomial of degree t - 1: they
    rule nothing out (the secrecy half of Shamir, shown for one case)."""
    shares = shamir.split(b"\x01" * 32, holders=5, threshold=3)
    for candidate in (b"\x00" * 32, b"\xff" * 32):
        value = int.from_bytes(candidate, "big")
        points = [(0, value), (shares[0].x, shares[0].y), (shares[1].x, shares[1].y)]
        at_third = shamir._interpolate(points, shares[2].x)
        rebuilt = shamir.combine([shares[0], shares[1], shamir.Share(shares[2].x, at_third)], 3, 32)
        assert rebuilt == candidate
