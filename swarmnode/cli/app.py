"""The typer application every command module registers on."""

from __future__ import annotations

import typer

from swarmnode import __version__

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Swarm learning node: train one model together, no server, no pooled data.",
    pretty_exceptions_enable=False,
)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)
