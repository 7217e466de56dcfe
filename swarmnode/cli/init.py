"""`swarmnode init` and `swarmnode identity show`: make a node's keys, and look at them.

The passphrase that encrypts the account keystore comes from SWARMNODE_KEY_PASSPHRASE, or
from the file SWARMNODE_KEY_PASSPHRASE_FILE names (what `--keystore` and the node read too),
else from a hidden prompt when a person is at a terminal. Without any of them `init`
refuses rather than hang waiting for an answer nobody can give, or write a key anyone who
reads the file can spend with: the empty passphrase only when `--empty-passphrase` says so
(docs/trust.md#keys).
"""

from __future__ import annotations

import json
import sys
import tomllib
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from swarmnode.exceptions import ConfigError
from swarmnode.identity import (
    ACCOUNT_FILE,
    PASSPHRASE_ENV,
    PASSPHRASE_FILE_ENV,
    SUMMARY_FILE,
    TLS_CERT_FILE,
    TLS_KEY_FILE,
    IdentitySummary,
    IdentityWarning,
    NodeIdentity,
    take_passphrase,
)

GIVE_ONE = (
    f"set {PASSPHRASE_ENV}, or {PASSPHRASE_FILE_ENV} to a file holding it, run at a "
    "terminal to be asked, or pass --empty-passphrase to encrypt the key with none"
)

EXAMPLE_TASK = "swarmnode.training:example_task"

DirOption = typer.Option(
    ...,
    "--dir",
    help="The node's identity directory (created 0700 if missing).",
    show_default=False,
)


def _stdin_is_a_terminal() -> bool:
    """Separate so that tests can stand in for a person at a terminal."""
    return sys.stdin.isatty()


def _passphrase(empty: bool) -> tuple[str, str | None]:
    """The passphrase and, when it is empty, the warning to print about that; a ConfigError
    when there is none and nobody said that none is meant."""
    given = take_passphrase()
    if empty:
        if given:
            raise ConfigError(
                f"--empty-passphrase, yet a passphrase is given ({PASSPHRASE_ENV} or "
                f"{PASSPHRASE_FILE_ENV}): give one or the other"
            )
        return "", "--empty-passphrase"
    if given:
        return given, None
    if given is not None:  # set, but to nothing: an unset shell variable, a blank file
        raise ConfigError(f"the passphrase given is empty: {GIVE_ONE}")
    if _stdin_is_a_terminal():
        answer: str = typer.prompt(
            "Passphrase for the account keystore (empty for none)",
            default="",
            show_default=False,
            hide_input=True,
            confirmation_prompt=True,
        )
        return answer, None if answer else "no passphrase entered"
    raise ConfigError(f"no passphrase for the account key and no terminal to ask: {GIVE_ONE}")


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
    empty_passphrase: bool = typer.Option(
        False,
        "--empty-passphrase",
        help="Encrypt the account key with the empty passphrase, on purpose: anyone who can "
        "read account.json can then spend from the account.",
    ),
    task: str = typer.Option(
        EXAMPLE_TASK,
        "--task",
        help="The task node.toml names: module:attribute of a Task, or of a function "
        "returning one.",
    ),
    task_args: str | None = typer.Option(
        None,
        "--task-args",
        help="Keyword arguments for the task's function, as a TOML inline table written into "
        "node.toml: this node's slice of the data, e.g. '{node = 1, nodes = 3}' for the "
        "example task.",
        show_default=False,
    ),
) -> None:
    """Create a node's chain account and TLS certificate in --dir, and its node.toml."""
    config_text = node_toml(task, task_args)  # a mistake in it: refused before any key exists
    existing = NodeIdentity.existing_files(directory)
    if not force:  # before the prompt: never ask for a passphrase, then refuse
        NodeIdentity.refuse_overwrite(directory)
    passphrase, empty_because = _passphrase(empty_passphrase)
    with _identity_warnings_printed():
        identity = NodeIdentity.create(directory, passphrase, force=force)
    if existing:
        _warn(f"replaced the identity in {directory}; the old account key is gone")
    if empty_because:
        _warn(
            f"{empty_because}: {directory / ACCOUNT_FILE} is encrypted with the empty "
            f"passphrase, so anyone who can read it can spend from the account; to protect "
            f"it, run `swarmnode init --force` with a passphrase ({PASSPHRASE_ENV} or "
            f"{PASSPHRASE_FILE_ENV})"
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
        config.write_text(config_text)
        typer.echo(f"  {config}  (node config: runs as is against ../deployment.json)")
    typer.echo(
        "next steps:\n"
        f"  1. fund {summary.address} so it can pay gas (on a dev chain: "
        f"`swarmnode fund {summary.address} --deployment FILE`, or `deploy --fund`)\n"
        f"  2. `swarmnode run --config {config}`: it registers its endpoint and this "
        "certificate on the swarm contract when it starts"
        + (
            f" (it asks for the passphrase at a terminal; as a service, give it in "
            f"{PASSPHRASE_ENV} or {PASSPHRASE_FILE_ENV})"
            if not empty_because
            else ""
        )
    )


def node_toml(task: str, task_args: str | None) -> str:
    """node.toml for `task`, with `task_args` (a TOML inline table) as its keyword arguments;
    a ConfigError, in one line, for a task that is not module:attribute or arguments that are
    not an inline table."""
    module, _, attribute = task.partition(":")
    if not module or not attribute or any(c in task for c in '"\\\n'):
        raise ConfigError(f"--task {task!r}: write module:attribute, e.g. hospitals:node_task")
    text = NODE_TOML.replace(f'task = "{EXAMPLE_TASK}"', f'task = "{task}"')
    if task_args is not None:
        try:
            parsed = tomllib.loads(f"task_args = {task_args}")
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(
                f"--task-args {task_args!r}: not a TOML inline table such as "
                f"'{{node = 1, nodes = 3}}' ({exc})"
            ) from None
        if not isinstance(parsed.get("task_args"), dict) or "\n" in task_args:
            raise ConfigError(
                f"--task-args {task_args!r}: not a TOML inline table such as "
                "'{node = 1, nodes = 3}'"
            )
        text = text.replace(
            f'task = "{task}"\n',
            f'task = "{task}"\ntask_args = {task_args.strip()}   # keyword arguments for it\n',
        )
    return text


NODE_TOML = """\
# swarmnode node config: `swarmnode run --config node.toml`. Paths are relative to this file.
[node]
identity_dir = "."                  # this folder: account.json, tls.key, tls.crt
deployment = "../deployment.json"   # written by `swarmnode deploy --out deployment.json`
# rpc = "http://127.0.0.1:8545"     # default: the URL recorded in the deployment file
# The task: module:attribute of a swarmnode Task, or of a function returning one. The
# example learns a synthetic classification problem; deploy with
# --initial-task swarmnode.training:example_task so that the swarm starts from its model.
# Give each node its own slice of it: task_args = {node = 0, nodes = 3} (`init --task-args`).
task = "swarmnode.training:example_task"
listen = "127.0.0.1:0"              # gRPC with mutual TLS; port 0: any free one
rounds = 0                          # rounds to take part in; 0: until Ctrl-C or SIGTERM
device = "auto"                     # cuda when present, else cpu
seed = 0                            # this node's data order
init_seed = 0                       # the swarm's initial model: the same on every node
# Prometheus metrics at http://127.0.0.1:9100/metrics (off unless set; "0.0.0.0:9100" for a
# scraper on another machine): README, "Metrics".
# metrics_listen = 9100
# On SIGTERM in a round that has closed: seconds to finish it before withdrawing (default
# 2 x the swarm's transfer deadline). Keep it below your service manager's kill timeout.
# stop_grace = 60
# Keyword arguments for the task's function, e.g. for the bundled digits task
# (task = "swarmnode.simulation.tasks:dataset_task"), the classes this node holds:
# task_args = {classes = [0, 1, 2, 3]}
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
