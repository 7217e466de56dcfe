"""The `swarmnode` command: parses, then calls the library. A user's mistake is one line."""

from __future__ import annotations

import sys

import click
import typer

from swarmnode import __version__
from swarmnode.exceptions import SwarmError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Swarm learning node: train one model together, no server, no pooled data.",
    pretty_exceptions_enable=False,
)


@app.command()
def demo(
    nodes: int = typer.Option(3, min=2, max=16, help="How many nodes take part."),
    seed: int = typer.Option(0, help="Seed of the nodes' random updates."),
) -> None:
    """Run one swarm round on an embedded EVM chain and print what happened."""
    from swarmnode.demo import run_demo

    run_demo(nodes=nodes, seed=seed)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def main() -> None:
    """Entry point: a usage error or a SwarmError is one line on stderr, never a traceback."""
    try:
        app(standalone_mode=False)
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
