"""Which key signs: a keystore, the environment, or anvil's dev key on chain id 31337 only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eth_account import Account

from swarmnode.exceptions import ConfigError
from swarmnode.ledger.anvil import DEV_ACCOUNT, DEV_CHAIN_ID
from swarmnode.ledger.keys import PASSPHRASE_ENV, PRIVATE_KEY_ENV, load_signer


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PRIVATE_KEY_ENV, raising=False)
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)


def test_dev_key_only_on_the_dev_chain() -> None:
    assert load_signer(DEV_CHAIN_ID).address == DEV_ACCOUNT
    with pytest.raises(ConfigError, match="no key for chain id 1"):
        load_signer(1)


def test_environment_key_wins_over_the_dev_key(monkeypatch: pytest.MonkeyPatch) -> None:
    account = Account.create()
    monkeypatch.setenv(PRIVATE_KEY_ENV, account.key.hex())
    assert load_signer(DEV_CHAIN_ID).address == account.address
    assert load_signer(5).address == account.address
    monkeypatch.setenv(PRIVATE_KEY_ENV, "not a key")
    with pytest.raises(ConfigError, match=PRIVATE_KEY_ENV):
        load_signer(5)


def test_keystore_with_passphrase_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    account = Account.create()
    path = tmp_path / "key.json"
    path.write_text(json.dumps(Account.encrypt(account.key, "s3cret", iterations=2)))
    monkeypatch.setenv(PASSPHRASE_ENV, "s3cret")
    assert load_signer(5, keystore=path).address == account.address
    monkeypatch.setenv(PASSPHRASE_ENV, "wrong")
    with pytest.raises(ConfigError, match="cannot decrypt"):
        load_signer(5, keystore=path)
    (tmp_path / "junk.json").write_text("{")
    with pytest.raises(ConfigError, match="not a keystore"):
        load_signer(5, keystore=tmp_path / "junk.json")
