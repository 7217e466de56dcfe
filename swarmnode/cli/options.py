"""Options several commands share, and the small helpers that turn them into ledger objects."""

from __future__ import annotations

from pathlib import Path

import typer

from swarmnode.exceptions import ConfigError

RpcOption = typer.Option(None, "--rpc", help="JSON-RPC URL of the chain.", show_default=False)
DeploymentOption = typer.Option(
    None, "--deployment", "-d", help="Deployment file written by `swarmnode deploy`."
)
KeystoreOption = typer.Option(
    None,
    "--keystore",
    help="Ethereum keystore file that signs; its passphrase comes from "
    "SWARMNODE_KEY_PASSPHRASE, or from the owner-only file SWARMNODE_KEY_PASSPHRASE_FILE "
    "names (empty if neither is set). Without --keystore: SWARMNODE_PRIVATE_KEY, or anvil's "
    "dev key on chain id 31337.",
)


def resolve_rpc(rpc: str | None, deployment_rpc: str | None) -> str:
    url = rpc or deployment_rpc
    if not url:
        raise ConfigError("no chain given: pass --rpc URL (or a deployment file that names one)")
    return url


def require_file(path: Path | None, what: str) -> Path:
    if path is None:
        raise ConfigError(f"no {what} given")
    return path


def account_address(text: str) -> str:
    """An account address as typed, normalized where it enters (docs/architecture.md#addresses);
    ConfigError if it is none."""
    # here, not at the top: eth_utils adds 0.2 s to the start of commands that take no address
    from swarmnode.address import is_address, normalize

    if not is_address(text):
        raise ConfigError(f"{text!r} is not an account address")
    return normalize(text)
