"""The `swarmnode` command: every command and group, registered here and nowhere else.

Each command is a plain function in a module of its own (init, chain, deploy, status, run,
simulate, demo); this module decides what the command line calls it and where it sits, so
that one file shows the whole command tree.
"""

from __future__ import annotations

import typer

from swarmnode.cli import chain, dashboard, demo, deploy, init, output, run, simulate, status
from swarmnode.version import __version__


def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def options(
    verbose: bool = typer.Option(
        False,
        "--verbose",
        help="Also show gRPC's own log lines (its C core's), which are hidden otherwise.",
    ),
) -> None:
    """Swarm learning node: train one model together, no server, no pooled data."""
    if verbose:  # before the command runs: the commands import grpc, which reads it once
        output.verbose()


app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Swarm learning node: train one model together, no server, no pooled data.",
    pretty_exceptions_enable=False,
)
app.callback()(options)  # options of `swarmnode` itself, before the command's name

identity_app = typer.Typer(help="Look at a node's identity.", no_args_is_help=True)
identity_app.command("show")(init.identity_show)

admin_app = typer.Typer(
    help="Owner's admission tools for a restricted swarm.", no_args_is_help=True
)
admin_app.command("allow")(deploy.admin_allow)
admin_app.command("revoke")(deploy.admin_revoke)

simulate_app = typer.Typer(
    cls=simulate.SimulateGroup,
    help="Many virtual nodes on real data, against baselines: one scenario (`run`, the "
    "default) or a sweep over merge rules, attacks, seeds and data sets (`sweep`).",
)
simulate_app.command(simulate.DEFAULT_COMMAND)(simulate.run)
simulate_app.command("sweep")(simulate.sweep)

# a node's operator: identity, chain, contract, the node itself, what the chain shows
app.command()(init.init)
app.add_typer(identity_app, name="identity")
app.command()(chain.chain)
app.command()(deploy.deploy)
app.command("fund")(deploy.fund_command)
app.add_typer(admin_app, name="admin")
app.command()(run.run)
app.command()(status.status)
app.command()(dashboard.dashboard)
# trying it out
app.add_typer(simulate_app, name="simulate")
app.command()(demo.demo)
app.command()(version)
