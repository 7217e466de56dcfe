"""Which key signs: a keystore, an environment variable, or (dev chains only) anvil's dev key."""

from __future__ import annotations

import json
import os
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

from swarmnode.exceptions import ConfigError
from swarmnode.identity import PASSPHRASE_ENV, PASSPHRASE_FILE_ENV, take_passphrase
from swarmnode.ledger.anvil import DEV_CHAIN_ID, DEV_KEY

PRIVATE_KEY_ENV = "SWARMNODE_PRIVATE_KEY"


def load_signer(
    chain_id: int, *, keystore: Path | None = None, passphrase: str | None = None
) -> LocalAccount:
    """The account that signs on `chain_id`; a ConfigError names what is missing."""
    if keystore is not None:
        return _from_keystore(keystore, passphrase)
    raw = os.environ.get(PRIVATE_KEY_ENV)
    if raw:
        try:
            account: LocalAccount = Account.from_key(raw.strip())
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{PRIVATE_KEY_ENV} is not a valid private key") from exc
        return account
    if chain_id == DEV_CHAIN_ID:
        dev: LocalAccount = Account.from_key(DEV_KEY)
        return dev
    raise ConfigError(
        f"no key for chain id {chain_id}: pass --keystore FILE or set {PRIVATE_KEY_ENV} "
        f"(anvil's dev key signs only on chain id {DEV_CHAIN_ID})"
    )


def _from_keystore(path: Path, passphrase: str | None) -> LocalAccount:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such keystore file") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a keystore file ({exc})") from exc
    if passphrase is None:  # none given: the environment's, else the empty one
        passphrase = take_passphrase() or ""
    try:
        key = Account.decrypt(data, passphrase)
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"{path}: cannot decrypt (wrong passphrase in {PASSPHRASE_ENV} "
            f"or the file {PASSPHRASE_FILE_ENV} names?)"
        ) from exc
    account: LocalAccount = Account.from_key(key)
    return account


__all__ = ["PASSPHRASE_ENV", "PASSPHRASE_FILE_ENV", "PRIVATE_KEY_ENV", "load_signer"]
