"""One node's side of a round's masking: its secrets, what it publishes, the shares it deals
and its masked vector (docs/secure-aggregation.md#masks).

Double masking after Bonawitz et al. (CCS 2017): the masked vector is
y_u = e_u + PRG(b_u) + sum over peers v of sign(u, v) * PRG(s_uv)  (mod 2^k),
e_u the node's encoded update, b_u a fresh per-round seed (its self-mask), s_uv the key it
shares with v. The pair masks cancel in a sum over every participant; the self-masks are
removed with seeds rebuilt from shares. When the chain drops a node, its pair masks stay in
the survivors' vectors and are removed with its private key, rebuilt from shares; its own
vector, if anyone holds it, stays hidden by its self-mask, which is never revealed then.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from swarmnode.address import normalize
from swarmnode.exceptions import ConfigError
from swarmnode.secagg import shamir
from swarmnode.secagg.errors import SecAggError
from swarmnode.secagg.fixedpoint import FixedPoint, Words
from swarmnode.secagg.prg import DOMAIN, account_bytes, add_stream, pair_key, self_key, sign

MIN_PEERS = 3  # with two, the sum and one's own update give the other's
SECRET_BYTES = 32  # a seed, and an X25519 private key


def default_threshold(participants: int) -> int:
    """t = floor(n/2) + 1: the smallest majority (docs/secure-aggregation.md#the-threshold)."""
    return participants // 2 + 1


@dataclass(frozen=True)
class RoundContext:
    """What every participant agrees on before masking: the swarm, the round, the
    participants in seat order (a seat is a share's x, 1-based), the encoding and t."""

    swarm: bytes
    round: int
    participants: tuple[str, ...]
    fixed: FixedPoint
    threshold: int

    @classmethod
    def of(
        cls,
        swarm: bytes,
        round_: int,
        participants: Iterable[str],
        fixed: FixedPoint,
        threshold: int | None = None,
    ) -> RoundContext:
        accounts = tuple(normalize(p) for p in participants)
        t = default_threshold(len(accounts)) if threshold is None else threshold
        return cls(bytes(swarm), round_, accounts, fixed, t)

    def __post_init__(self) -> None:
        n = len(self.participants)
        if len(set(self.participants)) != n:
            raise ConfigError(f"a participant appears twice in round {self.round}")
        if not MIN_PEERS <= n <= self.fixed.peers:
            raise ConfigError(
                f"secure aggregation needs {MIN_PEERS} to {self.fixed.peers} participants, "
                f"round {self.round} has {n}"
            )
        if not n // 2 < self.threshold <= n:
            raise ConfigError(
                f"secure aggregation needs a threshold t with n/2 < t <= n, got t="
                f"{self.threshold} for n={n}"
            )

    def seat(self, account: str) -> int:
        """The account's share x: its 1-based place among the participants."""
        try:
            return self.participants.index(normalize(account)) + 1
        except ValueError:
            raise ConfigError(f"{account} is not a participant of round {self.round}") from None


@dataclass(frozen=True)
class Announcement:
    """What a node publishes before anyone masks: its X25519 public key for this round and
    a commitment to its self-mask seed, against which a rebuilt seed is checked."""

    account: str
    public_key: bytes
    seed_commitment: bytes


@dataclass(frozen=True)
class DealtShares:
    """A dealer's shares of its two secrets for one holder (sent over mutual TLS, so the
    channel itself keeps them from everyone else)."""

    dealer: str
    holder: str
    seed: shamir.Share
    key: shamir.Share


def seed_commitment(context: RoundContext, account: str, seed: bytes) -> bytes:
    """SHA-256 over the domain, swarm, round, account and seed: the seed is 32 random
    bytes, so the commitment hides it; it binds the dealer to one seed."""
    return commit_seed(context.swarm, context.round, account, seed)


def commit_seed(swarm: bytes, round_: int, account: str, seed: bytes) -> bytes:
    """seed_commitment from the swarm and round alone: a node commits to its seed at join,
    before the participants (and so the RoundContext) are known."""
    return hashlib.sha256(
        DOMAIN
        + b"seed"
        + len(swarm).to_bytes(2, "big")
        + swarm
        + round_.to_bytes(8, "big")
        + account_bytes(account)
        + seed
    ).digest()


class Masker:
    """One node's secrets for one round, and what it derives from them. Both secrets are
    fresh per round: revealing a dropped node's key exposes that round's pair masks only."""

    def __init__(
        self,
        context: RoundContext,
        account: str,
        key: X25519PrivateKey | None = None,
        seed: bytes | None = None,
    ) -> None:
        """`key` and `seed` are the round's secrets when drawn before the participants were
        known (at join, swarmnode/secagg/session.py); fresh ones otherwise."""
        self.context = context
        self.account = normalize(account)
        context.seat(self.account)  # a participant, or ConfigError
        self._key = X25519PrivateKey.generate() if key is None else key
        self._seed = secrets.token_bytes(SECRET_BYTES) if seed is None else seed
        if len(self._seed) != SECRET_BYTES:
            raise ConfigError(f"a self-mask seed is {SECRET_BYTES} bytes, got {len(self._seed)}")

    @property
    def announcement(self) -> Announcement:
        return Announcement(
            self.account,
            self._key.public_key().public_bytes_raw(),
            seed_commitment(self.context, self.account, self._seed),
        )

    def deal(self) -> list[DealtShares]:
        """One DealtShares per participant, itself included (it reveals for others too)."""
        n, t = len(self.context.participants), self.context.threshold
        seeds = shamir.split(self._seed, n, t)
        keys = shamir.split(self._key.private_bytes_raw(), n, t)
        return [
            DealtShares(self.account, holder, seeds[i], keys[i])
            for i, holder in enumerate(self.context.participants)
        ]

    def mask(
        self, weight: int, values: npt.ArrayLike, announcements: Mapping[str, Announcement]
    ) -> Words:
        """The masked encoding of this node's whole update, element i masked by word i of
        every stream: any chunk range of it is a valid row in any attempt of the round."""
        words = self.context.fixed.encode(weight, values)
        everything = range(words.size)
        add_stream(words, self._self_key(), everything, 1)
        for peer in self.context.participants:
            if peer != self.account:
                public = announced(announcements, peer).public_key
                key = pair_key(
                    self._key, public, self.context.swarm, self.context.round, self.account, peer
                )
                add_stream(words, key, everything, sign(self.account, peer))
        return self.context.fixed.reduce(words)

    def _self_key(self) -> bytes:
        return self_key(self._seed, self.context.swarm, self.context.round, self.account)


def announced(announcements: Mapping[str, Announcement], account: str) -> Announcement:
    """The account's announcement, which must name it; SecAggError when it is missing."""
    found = announcements.get(account)
    if found is None or found.account != account:
        raise SecAggError(f"no announcement from participant {account}")
    return found
