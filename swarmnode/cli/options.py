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
    "SWARMNODE_KEY_PASSPHRASE. Without it: SWARMNODE_PRIVATE_KEY, or anvil's dev key "
    "on chain id 31337.",
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
