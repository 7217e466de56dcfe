"""The `swarmnode` command: parses, then calls the library. A user's mistake is one line.

The command tree is built in swarmnode/cli/app.py; this module only runs it and turns
errors into one line on stderr.
"""

from __future__ import annotations

import os
import sys

import click
import typer

from swarmnode.cli import output
from swarmnode.cli.app import app
from swarmnode.exceptions import SwarmError


def main() -> None:
    """Entry point: a usage error or a SwarmError is one line on stderr, never a traceback."""
    output.before_commands()  # gRPC's core quiet, help uncut in a pipe: before grpc loads
    _importable_from_here()
    try:
        code = app(standalone_mode=False)
        if code == 130:  # typer turns Ctrl-C into this return value when not standalone
            raise KeyboardInterrupt
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        message = exc.format_message()
        if message:  # empty when the help was shown for a bare `swarmnode`
            typer.echo(f"swarmnode: {message}", err=True)
        sys.exit(exc.exit_code)
    except click.Abort:
        typer.echo("swarmnode: interrupted", err=True)
        sys.exit(130)
    except SwarmError as exc:
        typer.echo(f"swarmnode: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("swarmnode: interrupted", err=True)
        sys.exit(130)


def _importable_from_here() -> None:
    """Modules in the folder the command runs in can be named (`--task hospitals:node_task`,
    node.toml's task), as with `python -m swarmnode`: an installed console script's path
    starts at its own folder (.venv/bin), not the user's. Appended, not put first, so that
    a stray file there cannot shadow an installed package."""
    here = os.getcwd()
    if "" not in sys.path and here not in sys.path:
        sys.path.append(here)


__all__ = ["app", "main"]
