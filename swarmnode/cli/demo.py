"""`swarmnode demo`: one swarm round on an embedded chain."""

from __future__ import annotations

import typer

from swarmnode.cli import output


def demo(
    nodes: int = typer.Option(3, min=2, max=16, help="How many nodes take part."),
    seed: int = typer.Option(0, help="Seed of the nodes' random updates."),
    as_json: bool = typer.Option(
        False, "--json", help="Print what happened on stdout as JSON; the story goes to stderr."
    ),
) -> None:
    """Run one swarm round on an embedded EVM chain and print what happened."""
    from swarmnode.demo import run_demo  # here: web3 and py-evm take seconds to load

    summary = run_demo(nodes=nodes, seed=seed, console=output.console(stderr=as_json))
    if as_json:
        output.print_json(summary)
