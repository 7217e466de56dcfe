"""`swarmnode init` and `swarmnode identity show`: make a node's keys, and look at them.

The passphrase that encrypts the account keystore comes from SWARMNODE_KEY_PASSPHRASE (the
variable `--keystore` and the node read too), else from a hidden prompt when a person is at
a terminal, else it is empty, with a warning: a script without a terminal must never hang
waiting for an answer nobody can give.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from swarmnode.identity import (
    ACCOUNT_FILE,
    SUMMARY_FILE,
    TLS_CERT_FILE,
    TLS_KEY_FILE,
    IdentitySummary,
    IdentityWarning,
    NodeIdentity,
)

# The same name as swarmnode.ledger.keys.PASSPHRASE_ENV; not imported from there so that
# `init` does not load the ledger (web3) to make two keys.
PASSPHRASE_ENV = "SWARMNODE_KEY_PASSPHRASE"

DirOption = typer.Option(
    ...,
    "--dir",
    help="The node's identity directory (created 0700 if missing).",
    show_default=False,
)


def _stdin_is_a_terminal() -> bool:
    """Separate so that tests can stand in for a person at a terminal."""
    return sys.stdin.isatty()


def _passphrase() -> tuple[str, str | None]:
    """The passphrase and, when it is empty, the warning to print about that."""
    from_env = os.environ.get(PASSPHRASE_ENV)
    if from_env is not None:
        if from_env:
            return from_env, None
        return "", f"{PASSPHRASE_ENV} is set but empty"
    if _stdin_is_a_terminal():
        answer: str = typer.prompt(
            "Passphrase for the account keystore (empty for none)",
            default="",
            show_default=False,
            hide_input=True,
            confirmation_prompt=True,
        )
        return answer, None if answer else "no passphrase entered"
    return "", f"{PASSPHRASE_ENV} is not set and there is no terminal to ask"


def _warn(message: str) -> None:
    typer.echo(f"swarmnode: warning: {message}", err=True)


@contextmanager
def _identity_warnings_printed() -> Iterator[None]:
    """Turn the library's IdentityWarnings into one stderr line each, as the CLI's own."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", IdentityWarning)
        yield
    for warning in caught:
        if issubclass(warning.category, IdentityWarning):
            _warn(str(warning.message))
        else:
            warnings.showwarning(
                warning.message, warning.category, warning.filename, warning.lineno
            )


def init(
    directory: Path = DirOption,
    force: bool = typer.Option(
        False, "--force", help="Replace an existing identity (its account key is lost)."
    ),
) -> None:
    """Create a node's chain account and TLS certificate in --dir."""
    existing = NodeIdentity.existing_files(directory)
    if not force:  # before the prompt: never ask for a passphrase, then refuse
        NodeIdentity.refuse_overwrite(directory)
    passphrase, empty_because = _passphrase()
    with _identity_warnings_printed():
        identity = NodeIdentity.create(directory, passphrase, force=force)
    if existing:
        _warn(f"replaced the identity in {directory}; the old account key is gone")
    if empty_because:
        _warn(
            f"{empty_because}: {directory / ACCOUNT_FILE} is encrypted with the empty "
            f"passphrase, so anyone who can read it can spend from the account; to protect "
            f"it, run `swarmnode init --force` with {PASSPHRASE_ENV} set"
        )
    protection = "the EMPTY passphrase" if empty_because else "your passphrase"
    summary = identity.summary()
    typer.echo(f"created a node identity in {directory}")
    _echo_summary(summary)
    typer.echo("wrote:")
    for name, what in (
        (ACCOUNT_FILE, f"account key, Ethereum keystore encrypted with {protection}"),
        (TLS_KEY_FILE, "TLS key, unencrypted for the gRPC server, owner-only"),
        (TLS_CERT_FILE, "TLS certificate, self-signed, naming the account"),
        (SUMMARY_FILE, "address and fingerprint, for humans"),
    ):
        typer.echo(f"  {directory / name}  ({what})")
    config = directory / "node.toml"
    if force or not config.exists():
        config.write_text(NODE_TOML)
        typer.echo(f"  {config}  (node config: runs as is against ../deployment.json)")
    typer.echo(
        "next steps:\n"
        f"  1. fund {summary.address} so it can pay gas (on a dev chain: "
        f"`swarmnode fund {summary.address} --deployment FILE`, or `deploy --fund`)\n"
        f"  2. `swarmnode run --config {config}`: it registers its endpoint and this "
        "certificate on the swarm contract when it starts"
        + (f" (keep {PASSPHRASE_ENV} set for it)" if not empty_because else "")
    )


NODE_TOML = """\
# swarmnode node config: `swarmnode run --config node.toml`. Paths are relative to this file.
[node]
identity_dir = "."                  # this folder: account.json, tls.key, tls.crt
deployment = "../deployment.json"   # written by `swarmnode deploy --out deployment.json`
# rpc = "http://127.0.0.1:8545"     # default: the URL recorded in the deployment file
# The task: module:attribute of a swarmnode Task, or of a function returning one. The
# example learns a synthetic classification problem; deploy with
# --initial-task swarmnode.training:example_task so that the swarm starts from its model.
task = "swarmnode.training:example_task"
listen = "127.0.0.1:0"              # gRPC with mutual TLS; port 0: any free one
rounds = 0                          # rounds to take part in; 0: until Ctrl-C or SIGTERM
device = "auto"                     # cuda when present, else cpu
seed = 0                            # this node's data order
init_seed = 0                       # the swarm's initial model: the same on every node
# On SIGTERM in a round that has closed: seconds to finish it before withdrawing (default
# 2 x the swarm's transfer deadline). Keep it below your service manager's kill timeout.
# stop_grace = 60
# Keyword arguments for the task's function, e.g. for the bundled digits task
# (task = "swarmnode.simulation.tasks:dataset_task"), the classes this node holds:
# [node.task_args]
# classes = [0, 1, 2, 3]
"""


def _echo_summary(summary: IdentitySummary) -> None:
    typer.echo(f"  account      {summary.address}")
    typer.echo(f"  certificate  sha256 0x{summary.fingerprint.hex()}")
    typer.echo(
        f"               names {summary.address.lower()}, "
        f"valid until {summary.not_valid_after:%Y-%m-%d}"
    )


def identity_show(
    directory: Path = DirOption,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Print a node's account address and certificate fingerprint (no passphrase needed).

    Every file is checked as the node would check it, except that the account key is not
    decrypted, so this is also the quick way to see whether an identity directory is sound.
    """
    summary = NodeIdentity.inspect(directory)
    if as_json:
        report = summary.to_dict()
        report.pop("note")
        report["dir"] = str(directory)
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(f"node identity in {directory}")
    _echo_summary(summary)
