"""Deploys a SwarmLedger with parameters that are checked twice: here, then by the contract."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import Web3

from swarmnode.exceptions import LedgerError
from swarmnode.ledger.artifacts import load
from swarmnode.ledger.contract import params_to_abi
from swarmnode.ledger.deployment import Deployment
from swarmnode.ledger.errors import contract_error_from
from swarmnode.rules import SwarmParams


def deploy_swarm(
    w3: Web3,
    deployer: LocalAccount,
    params: SwarmParams,
    *,
    validate: bool = True,
    lock: contextlib.AbstractContextManager[Any] | None = None,
    prepare: Callable[[], None] | None = None,
) -> Deployment:
    """Deploys and waits for the receipt.

    `validate=False` skips the Python-side check so that tests reach the contract's own.
    """
    if validate:
        params.validate()
    artifact = load()
    factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    constructor = factory.constructor(params_to_abi(params))
    with lock if lock is not None else contextlib.nullcontext():
        if prepare is not None:
            prepare()
        try:
            # A call first: eth-tester's estimator renders string-carrying custom errors
            # as bare text, its call path keeps the revert data that names them.
            data = constructor.build_transaction({"from": deployer.address, "gas": 10_000_000})[
                "data"
            ]
            w3.eth.call({"from": deployer.address, "data": data})
            gas = constructor.estimate_gas({"from": deployer.address})
        except Exception as exc:
            named = contract_error_from(exc, "deploy")
            if named is not None:
                raise named from exc
            raise LedgerError(f"deploy: gas estimation failed: {exc}") from exc
        tx = constructor.build_transaction(
            {
                "from": deployer.address,
                "nonce": w3.eth.get_transaction_count(deployer.address, "pending"),
                "gas": gas + 100_000,
            }
        )
        tx_hash = w3.eth.send_raw_transaction(deployer.sign_transaction(tx).raw_transaction)
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=120)
        if receipt["status"] != 1 or receipt["contractAddress"] is None:
            raise LedgerError(f"deploy: transaction {tx_hash.hex()} failed")
        return Deployment(
            chain_id=int(w3.eth.chain_id),
            address=str(receipt["contractAddress"]),
            block=int(receipt["blockNumber"]),
            params=params,
        )
