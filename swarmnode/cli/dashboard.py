"""`swarmnode dashboard`: a live web page of a swarm, served until Ctrl-C or SIGTERM."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType

import typer

from swarmnode.cli.options import DeploymentOption, RpcOption, resolve_rpc
from swarmnode.exceptions import ConfigError


def dashboard(
    deployment: Path | None = DeploymentOption,
    rpc: str | None = RpcOption,
    host: str = typer.Option("127.0.0.1", help="Address to serve on."),
    port: int = typer.Option(0, min=0, max=65535, help="Port to serve on (0: any free one)."),
    metrics: list[str] = typer.Option(
        [],
        "--metrics",
        help="A node's Prometheus metrics URL (its metrics_listen, e.g. "
        "http://127.0.0.1:9101/metrics); repeat for each node.",
    ),
    interval: float = typer.Option(1.0, min=0.1, help="Seconds between reads of the chain."),
) -> None:
    """Serve a live page of a swarm: roster, rounds, loss and accuracy curves."""
    # here, not at the top: web3 takes over a second to load, which other commands skip
    from eth_account import Account

    from swarmnode.dashboard.model import SwarmModel, Web3Facts
    from swarmnode.dashboard.server import Dashboard
    from swarmnode.ledger.deployment import Deployment
    from swarmnode.ledger.rpc import RpcChain

    if deployment is None:
        raise ConfigError("no deployment given: pass --deployment FILE")
    for url in metrics:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"--metrics {url}: a metrics URL starts with http:// or https://")
    known = Deployment.load(deployment)
    chain = RpcChain(resolve_rpc(rpc, known.rpc))
    chain.check(known)
    reader = chain.ledger(known, Account.create())  # reads only: any account will do
    model = SwarmModel(
        reader,
        chain_id=known.chain_id,
        facts=Web3Facts(chain.w3, known.address),
        metrics=metrics,
    )
    try:
        server = Dashboard(model, host=host, port=port, interval=interval)
    except OSError as exc:
        raise ConfigError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from exc
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        url = server.start()
        typer.echo(f"dashboard of swarm {known.address} at {url} (Ctrl-C stops it)")
        stop.wait()
    finally:
        server.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    typer.echo("dashboard stopped")
