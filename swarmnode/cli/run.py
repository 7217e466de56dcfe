"""`swarmnode run --config node.toml`: one node as a long-running process."""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import threading
from pathlib import Path

import typer


def run(
    config: Path = typer.Option(..., "--config", "-c", help="The node's TOML config file."),
) -> None:
    """Serve peers, train, and take part in rounds until Ctrl-C or SIGTERM."""
    # here, not at the top: the daemon loads torch, web3 and grpc, seconds other commands skip
    from swarmnode.config import NodeConfig
    from swarmnode.daemon import install_signal_handlers, run_daemon

    settings = NodeConfig.load(config)
    faulthandler.enable()  # a fatal error (SIGABRT, SIGSEGV) prints every thread's stack
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` prints every thread's stack
    stop = threading.Event()
    install_signal_handlers(stop)
    code = run_daemon(settings, stop)
    # Everything is stopped, saved and logged by now. Skip the interpreter's teardown: with
    # gRPC's and torch's native threads about, it can abort (SIGABRT, seen once in ~20 runs
    # of tests/test_chain_down.py) after a clean stop, and a supervisor would read a crash.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
