"""`swarmnode run --config node.toml`: one node as a long-running process."""

from __future__ import annotations

import faulthandler
import signal
import sys
import threading
from pathlib import Path

import typer

from swarmnode.cli.app import app


@app.command()
def run(
    config: Path = typer.Option(..., "--config", "-c", help="The node's TOML config file."),
) -> None:
    """Serve peers, train, and take part in rounds until Ctrl-C or SIGTERM."""
    from swarmnode.config import NodeConfig
    from swarmnode.daemon import install_signal_handlers, run_daemon

    settings = NodeConfig.load(config)
    faulthandler.enable()  # a fatal error (SIGABRT, SIGSEGV) prints every thread's stack
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` prints every thread's stack
    stop = threading.Event()
    install_signal_handlers(stop)
    sys.exit(run_daemon(settings, stop))
