"""Masked roots signed by the node's chain account, and recovering who signed one
(docs/secure-aggregation.md#checks).

A signed root is evidence a third node can check: mutual TLS tells a receiver who sent a
root, but only a signature lets it show another node that the sender said it. Two valid
signatures by one account over two different roots of the same round prove that account
equivocated, whoever relays them.

The signature is the account's ECDSA (secp256k1) signature over keccak256 of the message,
65 bytes r || s || v with v in {0, 1}: what `Ledger.sign` returns. The message binds a
domain, the swarm id (its 20 bytes), the round and the root, so a signature serves nowhere
else.
"""

from __future__ import annotations

from swarmnode.address import normalize

ROOT_DOMAIN = b"swarmnode/secagg/v1/masked-root"
SIGNATURE_BYTES = 65


def root_message(swarm: bytes, round_: int, root: bytes) -> bytes:
    """What a node signs for its masked root of `round_` in the swarm `swarm`."""
    return ROOT_DOMAIN + len(swarm).to_bytes(1, "big") + swarm + round_.to_bytes(8, "big") + root


def signer_of(message: bytes, signature: bytes) -> str | None:
    """The account whose key made `signature` over `message`; None when it is not a valid
    signature at all."""
    # imported here: a node without secure aggregation never needs them
    from eth_keys.datatypes import Signature
    from eth_keys.exceptions import BadSignature
    from eth_utils.crypto import keccak
    from eth_utils.exceptions import ValidationError

    if len(signature) != SIGNATURE_BYTES or signature[-1] > 1:
        return None
    try:
        public = Signature(bytes(signature)).recover_public_key_from_msg_hash(keccak(message))
    except (BadSignature, ValidationError, ValueError):
        return None
    return normalize(public.to_checksum_address())


def sign_with_key(key: bytes, message: bytes) -> bytes:
    """`message` signed by the private key `key` as `Ledger.sign` does (for ledgers that
    hold the key itself)."""
    from eth_keys.datatypes import PrivateKey
    from eth_utils.crypto import keccak

    return bytes(PrivateKey(bytes(key)).sign_msg_hash(keccak(message)).to_bytes())
