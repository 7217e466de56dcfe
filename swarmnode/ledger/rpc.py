"""Any JSON-RPC chain: connect, deploy, fund, and hand out ledgers for a deployment."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import HTTPProvider, Web3

from swarmnode.exceptions import ChainUnavailable, ConfigError, LedgerError
from swarmnode.ledger.contract import ContractLedger
from swarmnode.ledger.deploy import deploy_swarm
from swarmnode.ledger.deployment import Deployment
from swarmnode.ledger.transactions import Backoff
from swarmnode.rules import SwarmParams

ETHER = 10**18


def connect(url: str, timeout: float = 10.0) -> Web3:
    """A Web3 for `url` that fails fast and leaves retrying to swarmnode's own backoff."""
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{url}: an RPC URL starts with http:// or https://")
    provider = HTTPProvider(
        url, request_kwargs={"timeout": timeout}, exception_retry_configuration=None
    )
    return Web3(provider)


class RpcChain:
    """A chain behind a JSON-RPC URL."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url = url
        self.w3 = connect(url, timeout)
        try:
            self.chain_id = int(self.w3.eth.chain_id)
        except (ConnectionError, OSError, TimeoutError) as exc:
            raise ChainUnavailable(f"no chain answered at {url}") from exc
        except Exception as exc:  # an HTTP server that is not a chain
            raise ChainUnavailable(
                f"{url} did not answer as an Ethereum JSON-RPC node: {exc}"
            ) from exc

    def now(self) -> int:
        return int(time.time())

    def deploy(
        self, params: SwarmParams, deployer: LocalAccount, *, validate: bool = True
    ) -> Deployment:
        deployment = deploy_swarm(self.w3, deployer, params, validate=validate)
        return Deployment(
            deployment.chain_id, deployment.address, deployment.block, deployment.params, self.url
        )

    def check(self, deployment: Deployment) -> None:
        """Refuses a deployment that lives on another chain, or whose contract is not here."""
        if deployment.chain_id != self.chain_id:
            raise ConfigError(
                f"the deployment is on chain id {deployment.chain_id}, "
                f"but {self.url} serves chain id {self.chain_id}"
            )
        code = self.w3.eth.get_code(Web3.to_checksum_address(deployment.address))
        if not code:
            raise ConfigError(f"no contract at {deployment.address} on {self.url}")

    def ledger(
        self,
        deployment: Deployment,
        account: LocalAccount,
        *,
        clock: Callable[[], float] = time.time,
        too_early: Backoff | None = None,
        unavailable: Backoff | None = None,
    ) -> ContractLedger:
        return ContractLedger(
            self.w3,
            deployment.address,
            account,
            deploy_block=deployment.block,
            clock=clock,
            too_early=too_early,
            unavailable=unavailable,
        )

    def balance(self, address: str) -> int:
        return int(self.w3.eth.get_balance(Web3.to_checksum_address(address)))

    def fund(self, funder: LocalAccount, address: str, wei: int) -> None:
        """Sends `wei` from `funder`; waits for the receipt."""
        to = Web3.to_checksum_address(address)
        tx: dict[str, Any] = {
            "to": to,
            "value": wei,
            "gas": 21_000,
            "nonce": self.w3.eth.get_transaction_count(funder.address, "pending"),
            "chainId": self.chain_id,
            "maxFeePerGas": 2 * int(self.w3.eth.gas_price) + 1,
            "maxPriorityFeePerGas": 1,
        }
        signed = funder.sign_transaction(tx)
        try:
            tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
            receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60)
        except (ConnectionError, OSError, TimeoutError) as exc:
            raise ChainUnavailable(f"fund: no chain answered at {self.url}") from exc
        except ValueError as exc:
            raise LedgerError(f"fund {to}: {exc}") from exc
        if receipt["status"] != 1:
            raise LedgerError(f"fund {to}: transaction failed")
