"""From a sum of masked rows and the survivors' reveals to the weighted mean, or a refusal
(docs/secure-aggregation.md#unmasking).

Every rebuilt secret is checked against what its dealer published (a seed against its
commitment, a key against its public key), so a lying revealer is caught by name of the
dealer whose secret did not come out. What is left after the masks are removed must decode
inside the honest bound; a sum that still carries a mask (one forgotten, a row missing or
one too many) is uniform modulo 2^k and is refused with overwhelming probability.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from swarmnode.secagg import shamir
from swarmnode.secagg.errors import ShareError, SumRefused
from swarmnode.secagg.fixedpoint import FixedPoint, Words
from swarmnode.secagg.masking import (
    SECRET_BYTES,
    Announcement,
    RoundContext,
    announced,
    seed_commitment,
)
from swarmnode.secagg.prg import add_stream, pair_key, self_key, sign
from swarmnode.secagg.reveal import Reveal, RevealRequest


@dataclass(frozen=True)
class Unmasked:
    """An unmasked sum: the signed integer sum of the encoded inputs and its mean."""

    request: RevealRequest
    total: np.ndarray  # int64, round(w * x * 2^f) summed over the inputs
    weight: int  # the inputs' total weight
    mean: np.ndarray  # float32


def sum_rows(fixed: FixedPoint, rows: Iterable[Words]) -> Words:
    """The sum modulo 2^k of masked rows of one chunk range."""
    total: Words | None = None
    for row in rows:
        if total is None:
            total = np.array(row, dtype=fixed.dtype)
        elif row.shape != total.shape:
            raise SumRefused(f"masked rows of {total.size} and {row.size} values")
        else:
            total += row.astype(fixed.dtype, copy=False)
    if total is None:
        raise SumRefused("a sum of no masked rows")
    return fixed.reduce(total)


def unmask(
    context: RoundContext,
    announcements: Mapping[str, Announcement],
    weights: Mapping[str, int],
    masked_sum: Words,
    request: RevealRequest,
    reveals: Sequence[Reveal],
) -> Unmasked:
    """Remove every mask left in `masked_sum` (the sum of the `stayed` inputs' rows over
    `request.elements`) with the secrets the reveals rebuild, and decode it."""
    elements = request.elements
    if masked_sum.size != len(elements):
        raise SumRefused(f"a masked sum of {masked_sum.size} values for {len(elements)} elements")
    revealers = [r.revealer for r in reveals]
    if len(set(revealers)) != len(revealers) or not set(revealers) <= request.stayed:
        raise ShareError(f"reveals must come from distinct inputs of the sum, got {revealers}")
    if any(r.request != request for r in reveals):
        raise ShareError("a reveal answers a different request than the one unmasked")
    for answer in reveals:  # a revealer speaks for its own seat only
        seat = context.seat(answer.revealer)
        if any(s.x != seat for s in [*answer.seeds.values(), *answer.keys.values()]):
            raise ShareError(f"{answer.revealer} revealed shares of another seat than its own")
    fixed = context.fixed
    total = np.array(masked_sum, dtype=fixed.dtype)
    swarm, round_ = context.swarm, context.round
    for peer in sorted(request.stayed):
        seed = _rebuild(context, peer, [r.seeds[peer] for r in reveals if peer in r.seeds])
        if seed_commitment(context, peer, seed) != announced(announcements, peer).seed_commitment:
            raise ShareError(f"the shares of {peer}'s seed give one it did not commit to")
        add_stream(total, self_key(seed, swarm, round_, peer), elements, -1)
    for gone in sorted(request.dropped):
        raw = _rebuild(context, gone, [r.keys[gone] for r in reveals if gone in r.keys])
        key = X25519PrivateKey.from_private_bytes(raw)
        if key.public_key().public_bytes_raw() != announced(announcements, gone).public_key:
            raise ShareError(f"the shares of {gone}'s key give one it did not announce")
        for peer in sorted(request.stayed):
            public = announced(announcements, peer).public_key
            # peer added sign(peer, gone) * stream; take it out
            add_stream(
                total,
                pair_key(key, public, swarm, round_, gone, peer),
                elements,
                -sign(peer, gone),
            )
    weight = sum(_weight(weights, peer) for peer in request.stayed)
    mean = fixed.decode_mean(total, weight, len(request.stayed))
    return Unmasked(request, fixed.signed(total), weight, mean)


def _rebuild(context: RoundContext, dealer: str, shares: list[shamir.Share]) -> bytes:
    if len(shares) < context.threshold:
        raise ShareError(
            f"{len(shares)} shares of {dealer}'s secret revealed, {context.threshold} needed"
        )
    try:
        return shamir.combine(shares, context.threshold, SECRET_BYTES)
    except ShareError as error:
        raise ShareError(f"the shares of {dealer}'s secret: {error}") from None


def _weight(weights: Mapping[str, int], peer: str) -> int:
    if peer not in weights:
        raise SumRefused(f"no weight for input {peer}")
    return int(weights[peer])
