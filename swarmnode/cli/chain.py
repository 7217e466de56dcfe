"""`swarmnode chain`: a local dev chain (anvil) for swarms of several processes."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType

import typer

from swarmnode.ledger.anvil import DEV_ACCOUNT, DEV_CHAIN_ID, AnvilProcess


def chain(
    port: int = typer.Option(8545, min=0, max=65535, help="Port on 127.0.0.1 (0: any free one)."),
    state: Path | None = typer.Option(
        None, help="Keep the chain in this file across restarts (written on exit)."
    ),
) -> None:
    """Start a local dev chain (anvil, prague) until Ctrl-C or SIGTERM."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    anvil = AnvilProcess(port=port, state=state)
    try:
        url = anvil.start()
        typer.echo(f"dev chain (anvil, chain id {DEV_CHAIN_ID}) at {url}, pid {anvil.pid}")
        typer.echo(
            f"  deploy:  swarmnode deploy --rpc {url} --out deployment.json "
            f"(signed by anvil's dev account {DEV_ACCOUNT})"
        )
        typer.echo(f"  fund:    swarmnode fund ADDRESS --rpc {url}")
        typer.echo(
            "  anvil's ten dev accounts hold 10,000 ETH each; their keys work on this chain only"
        )
        typer.echo("Ctrl-C stops it" + (f" and writes {state}" if state else ""))
        stop.wait()
    finally:
        code = anvil.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    typer.echo(f"dev chain stopped (exit code {code})")
