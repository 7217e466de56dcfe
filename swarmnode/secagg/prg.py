"""Mask streams: keys from X25519 and HKDF, words from ChaCha20
(docs/secure-aggregation.md#masks).

A pair of nodes agrees on a secret with X25519; HKDF-SHA256 turns it into a ChaCha20 key
bound to the swarm, the round and the two accounts, so no key serves two swarms, two
rounds or two pairs. A self-mask key comes from the node's per-round seed the same way.
ChaCha20 (OpenSSL's, through `cryptography`) runs at about 2 GB/s here, some four times
BLAKE3's extendable output from the `blake3` package, and its block counter makes any
element range of the stream computable alone: element i of a vector is always the same
word of the stream, so the mask of a chunk range does not depend on how the vector is cut
into segments, and masked rows keyed by chunk range stay valid in every attempt.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from swarmnode.address import normalize
from swarmnode.exceptions import ConfigError

DOMAIN = b"swarmnode/secagg/v1/"
BLOCK = 64  # bytes of one ChaCha20 block
MAX_BLOCKS = 1 << 32  # the 32-bit block counter of RFC 7539's nonce layout


def account_bytes(account: str) -> bytes:
    """The account's 20 bytes: what orders a pair and goes into its key."""
    return bytes.fromhex(normalize(account)[2:])


def sign(account: str, peer: str) -> int:
    """+1 when `account` is the lower of the pair, -1 when the higher: the two add the
    same stream with opposite signs, so it cancels in any sum holding both."""
    mine, theirs = account_bytes(account), account_bytes(peer)
    if mine == theirs:
        raise ValueError(f"a node has no pair mask with itself: {account}")
    return 1 if mine < theirs else -1


def _info(purpose: bytes, swarm: bytes, round_: int, accounts: list[str]) -> bytes:
    return b"".join(
        [
            DOMAIN + purpose,
            len(swarm).to_bytes(2, "big"),
            swarm,
            round_.to_bytes(8, "big"),
            *(account_bytes(a) for a in accounts),
        ]
    )


def _derive(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=SHA256(), length=32, salt=None, info=info).derive(secret)


def pair_key(
    own: X25519PrivateKey,
    peer_public: bytes,
    swarm: bytes,
    round_: int,
    account: str,
    peer: str,
) -> bytes:
    """The ChaCha20 key `account` and `peer` share for this swarm and round. Either side
    computes it, from its own private key and the other's public key."""
    shared = own.exchange(X25519PublicKey.from_public_bytes(peer_public))
    pair = sorted([account, peer], key=account_bytes)
    return _derive(shared, _info(b"pair", swarm, round_, pair))


def self_key(seed: bytes, swarm: bytes, round_: int, account: str) -> bytes:
    """The ChaCha20 key of `account`'s self-mask for this swarm and round."""
    return _derive(seed, _info(b"self", swarm, round_, [account]))


def stream(key: bytes, elements: range, dtype: np.dtype[np.unsignedinteger]) -> np.ndarray:
    """Words `elements` of the key's stream, uniform over the word (any modulus 2^k that
    divides it stays uniform). Element i is bytes [i*w, (i+1)*w) of the keystream, w the
    word size, whatever range it is asked in."""
    if elements.step != 1 or elements.start < 0:
        raise ValueError(f"a mask covers a contiguous range of elements, got {elements}")
    size = dtype.itemsize
    first, skip = divmod(elements.start * size, BLOCK)
    length = skip + len(elements) * size
    if first + -(-length // BLOCK) > MAX_BLOCKS:
        raise ConfigError(f"a mask stream ends past ChaCha20's 2^32 blocks: {elements}")
    nonce = first.to_bytes(4, "little") + bytes(12)  # block counter, then a fixed nonce
    encryptor = Cipher(algorithms.ChaCha20(key, nonce), mode=None).encryptor()
    out = np.empty(length + BLOCK, dtype=np.uint8)
    encryptor.update_into(np.zeros(length, dtype=np.uint8).data, out.data)
    return out[skip:length].view(dtype)


def add_stream(total: np.ndarray, key: bytes, elements: range, factor: int) -> None:
    """total += factor * stream, in the word's own (wrapping) arithmetic; factor is +1/-1."""
    words = stream(key, elements, total.dtype)
    if factor > 0:
        total += words
    else:
        total -= words
