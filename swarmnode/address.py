"""Account addresses in one spelling, fixed where they enter the node.

The chain, the roster, frames from peers and config files each spell an account their own
way (EIP-55 checksummed, lowercase, as the certificate's DNS name). Every address that
enters from outside (a ledger read, a roster record, a wire message, a user's flag) goes
through `normalize` once; everything above compares with `==` and never lowercases
(docs/architecture.md#addresses).
"""

from __future__ import annotations

from functools import lru_cache

from eth_utils.address import is_hex_address, to_checksum_address

__all__ = ["is_address", "normalize"]


def is_address(value: object) -> bool:
    """A 20-byte account address: "0x" and 40 hex digits, in any letter case.

    The prefix is required (eth_utils alone also takes bare hex), so that an account has
    exactly one accepted spelling up to letter case: a peer cannot name someone else with
    a second spelling that only normalizes to them."""
    return isinstance(value, str) and value[:2] in ("0x", "0X") and bool(is_hex_address(value))


@lru_cache(maxsize=4096)
def normalize(value: str) -> str:
    """`value` checksummed (EIP-55); ValueError naming it if it is not an address."""
    if not is_address(value):
        raise ValueError(f"not an account address: {value!r}")
    return str(to_checksum_address(value))
