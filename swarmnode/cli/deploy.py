"""`swarmnode deploy / fund / admin / status`: the owner's tools for a swarm on a chain."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from swarmnode.cli.app import app
from swarmnode.cli.options import DeploymentOption, KeystoreOption, RpcOption, resolve_rpc
from swarmnode.exceptions import ConfigError
from swarmnode.rules import MergeRuleId, Rule, SwarmParams, SyncPolicyId

ETHER = 10**18


def _rule(spec: str, ids: type[MergeRuleId] | type[SyncPolicyId], what: str) -> Rule:
    """'trimmed_mean:100000' -> Rule(TRIMMED_MEAN, (100000, 0, 0, 0))."""
    name, _, raw = spec.partition(":")
    try:
        rule_id = ids[name.strip().upper()]
    except KeyError:
        known = ", ".join(m.name.lower() for m in ids)
        raise ConfigError(f"--{what}: unknown {what} {name!r} (known: {known})") from None
    values = [v for v in raw.split(",") if v.strip()] if raw else []
    if len(values) > 4:
        raise ConfigError(f"--{what}: at most four parameters, got {len(values)}")
    try:
        numbers = [int(v) for v in values] + [0] * (4 - len(values))
    except ValueError:
        raise ConfigError(f"--{what}: parameters are integers, got {raw!r}") from None
    return Rule(rule_id, (numbers[0], numbers[1], numbers[2], numbers[3]))


def _task_digest(spec: str) -> bytes:
    """The digest of the initial model a task's nodes build (init seed 0, as node.toml)."""
    from swarmnode import canonical
    from swarmnode.training import LocalTrainer, load_task

    return canonical.digest(LocalTrainer(load_task(spec), "cpu", 0, init_seed=0).snapshot())


def _digest(text: str) -> bytes:
    try:
        value = bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        raise ConfigError("--initial-digest: not hex") from None
    if len(value) != 32:
        raise ConfigError("--initial-digest: must be 32 bytes (64 hex digits)")
    return value


@app.command()
def deploy(
    rpc: str = typer.Option(..., "--rpc", help="JSON-RPC URL of the chain."),
    out: Path = typer.Option(
        Path("deployment.json"), "--out", help="Where to write the deployment."
    ),
    min_peers: int = typer.Option(2, help="Fewest joins a round closes with."),
    max_peers: int = typer.Option(8, help="The join that reaches this closes the round."),
    join_window: int = typer.Option(30, help="Seconds from a round's first join to close."),
    transfer_deadline: int = typer.Option(60, help="Seconds into an attempt before drop votes."),
    round_deadline: int = typer.Option(300, help="Seconds from close before a round expires."),
    merge_rule: str = typer.Option(
        "mean", help="Merge rule as name[:p1,p2,...], e.g. trimmed_mean:100000 or krum:1,0."
    ),
    sync_policy: str = typer.Option(
        "every_n_batches:50", help="Sync policy as name[:p1,...], e.g. adaptive:50,10,400,1500000."
    ),
    initial_digest: str = typer.Option(
        "0x" + "01" * 32, help="Digest of the model every node starts from (32 bytes hex)."
    ),
    initial_task: str | None = typer.Option(
        None,
        help="Take the initial digest from this task's model (module:attribute, init seed 0).",
    ),
    restricted: bool = typer.Option(False, help="Only accounts the owner allows may register."),
    fund: list[str] = typer.Option([], "--fund", help="Also send --fund-amount ETH to ADDR."),
    fund_amount: float = typer.Option(10.0, help="ETH per --fund address."),
    keystore: Path | None = KeystoreOption,
) -> None:
    """Deploy a swarm contract and write its deployment file."""
    from swarmnode.ledger.keys import load_signer
    from swarmnode.ledger.rpc import RpcChain

    params = SwarmParams(
        min_peers=min_peers,
        max_peers=max_peers,
        join_window=join_window,
        transfer_deadline=transfer_deadline,
        round_deadline=round_deadline,
        merge_rule=_rule(merge_rule, MergeRuleId, "merge-rule"),
        sync_policy=_rule(sync_policy, SyncPolicyId, "sync-policy"),
        initial_model_digest=(
            _task_digest(initial_task) if initial_task else _digest(initial_digest)
        ),
        restricted=restricted,
    )
    params.validate()
    if out.exists() and not out.is_file():
        raise ConfigError(f"--out {out}: not a file")
    chain = RpcChain(rpc)
    signer = load_signer(chain.chain_id, keystore=keystore)
    deployment = chain.deploy(params, signer)
    deployment.save(out)
    typer.echo(
        f"deployed SwarmLedger at {deployment.address} on chain id {deployment.chain_id} "
        f"(block {deployment.block}), owner {signer.address}; wrote {out}"
    )
    for address in fund:
        chain.fund(signer, _address(address), int(fund_amount * ETHER))
        typer.echo(f"funded {address} with {fund_amount:g} ETH")


def _address(text: str) -> str:
    from web3 import Web3

    if not Web3.is_address(text):
        raise ConfigError(f"{text!r} is not an account address")
    return str(Web3.to_checksum_address(text))


@app.command("fund")
def fund_command(
    address: str = typer.Argument(..., help="Account to fund."),
    amount: float = typer.Option(10.0, help="ETH to send."),
    rpc: str | None = RpcOption,
    deployment: Path | None = DeploymentOption,
    keystore: Path | None = KeystoreOption,
) -> None:
    """Send ETH to an account so that it can pay gas (dev chains: from anvil's dev account)."""
    from swarmnode.ledger.deployment import Deployment
    from swarmnode.ledger.keys import load_signer
    from swarmnode.ledger.rpc import RpcChain

    known = Deployment.load(deployment) if deployment else None
    chain = RpcChain(resolve_rpc(rpc, known.rpc if known else None))
    if known is not None:
        chain.check(known)
    signer = load_signer(chain.chain_id, keystore=keystore)
    target = _address(address)
    chain.fund(signer, target, int(amount * ETHER))
    typer.echo(
        f"funded {target} with {amount:g} ETH; balance {chain.balance(target) / ETHER:g} ETH"
    )


admin_app = typer.Typer(
    help="Owner's admission tools for a restricted swarm.", no_args_is_help=True
)
app.add_typer(admin_app, name="admin")


def _owner_ledger(rpc: str | None, deployment: Path | None, keystore: Path | None) -> Any:
    from swarmnode.ledger.deployment import Deployment
    from swarmnode.ledger.keys import load_signer
    from swarmnode.ledger.rpc import RpcChain

    if deployment is None:
        raise ConfigError("no deployment given: pass --deployment FILE")
    known = Deployment.load(deployment)
    chain = RpcChain(resolve_rpc(rpc, known.rpc))
    chain.check(known)
    return chain.ledger(known, load_signer(chain.chain_id, keystore=keystore))


@admin_app.command("allow")
def admin_allow(
    address: str = typer.Argument(..., help="Account to admit."),
    deployment: Path | None = DeploymentOption,
    rpc: str | None = RpcOption,
    keystore: Path | None = KeystoreOption,
) -> None:
    """Let an account register."""
    ledger = _owner_ledger(rpc, deployment, keystore)
    ledger.allow(_address(address))
    typer.echo(f"allowed {_address(address)}")


@admin_app.command("revoke")
def admin_revoke(
    address: str = typer.Argument(..., help="Account to revoke; a registered node is removed."),
    deployment: Path | None = DeploymentOption,
    rpc: str | None = RpcOption,
    keystore: Path | None = KeystoreOption,
) -> None:
    """Take an account's admission back."""
    ledger = _owner_ledger(rpc, deployment, keystore)
    ledger.revoke(_address(address))
    typer.echo(f"revoked {_address(address)}")


@app.command()
def status(
    deployment: Path | None = DeploymentOption,
    rpc: str | None = RpcOption,
    rounds: int = typer.Option(5, min=1, help="How many recent rounds to show."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    node: str | None = typer.Option(
        None, "--node", help="Show this account's rounds instead: its reports, and if it agreed."
    ),
    identity: Path | None = typer.Option(
        None, "--identity", help="Like --node, for the account of this identity folder."
    ),
) -> None:
    """Show a swarm's parameters, nodes and recent rounds, or one node's rounds."""
    from eth_account import Account

    from swarmnode.ledger.deployment import Deployment
    from swarmnode.ledger.rpc import RpcChain

    if deployment is None:
        raise ConfigError("no deployment given: pass --deployment FILE")
    if node is not None and identity is not None:
        raise ConfigError("--node and --identity both name a node: pass one of them")
    account = _node_account(node, identity)
    known = Deployment.load(deployment)
    chain = RpcChain(resolve_rpc(rpc, known.rpc))
    chain.check(known)
    reader = chain.ledger(known, Account.create())  # reads only: any account will do
    if account is not None:
        _node_status(reader, known.chain_id, account, rounds, as_json)
        return
    current = reader.current_round()
    latest_round, latest_digest = reader.latest_model()
    report: dict[str, Any] = {
        "chain_id": known.chain_id,
        "address": known.address,
        "owner": reader.owner(),
        "params": known.to_dict()["params"],
        "current_round": current,
        "latest_model": {"round": latest_round, "digest": "0x" + latest_digest.hex()},
        "nodes": [
            {
                "account": n.account,
                "endpoint": n.endpoint,
                "fingerprint": "0x" + n.fingerprint.hex(),
            }
            for n in reader.active_nodes()
        ],
        "rounds": [],
    }
    for number in range(current, max(0, current - rounds), -1):
        state = reader.round(number)
        report["rounds"].append(
            {
                "round": number,
                "status": state.status.name.lower(),
                "fail_reason": state.fail_reason.name.lower(),
                "attempt": state.attempt,
                "joined": state.joined,
                "live": state.live,
                "reports": state.reports,
                "participants": list(state.participants),
                "final_digest": None
                if state.final_digest is None
                else "0x" + state.final_digest.hex(),
            }
        )
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    _print_status(report)


def _print_status(report: dict[str, Any]) -> None:
    console = Console()
    p = report["params"]
    console.print(
        f"[bold]swarm[/] {report['address']} on chain id {report['chain_id']}, owner "
        f"{report['owner']}\n  peers {p['min_peers']}-{p['max_peers']}, join window "
        f"{p['join_window']}s, transfer deadline {p['transfer_deadline']}s, round deadline "
        f"{p['round_deadline']}s, merge rule {MergeRuleId(p['merge_rule']['id']).name.lower()}, "
        f"{'restricted' if p['restricted'] else 'open'} admission\n  latest model: round "
        f"{report['latest_model']['round']} {report['latest_model']['digest'][:18]}…"
    )
    nodes = Table(title=f"{len(report['nodes'])} active nodes")
    for column in ("account", "endpoint", "certificate sha256"):
        nodes.add_column(column)
    for n in report["nodes"]:
        nodes.add_row(n["account"], n["endpoint"], n["fingerprint"][:18] + "…")
    console.print(nodes)
    rounds = Table(title="recent rounds")
    for column in ("round", "status", "attempt", "joined", "live", "reports", "final digest"):
        rounds.add_column(column)
    for r in report["rounds"]:
        status = r["status"] + (f" ({r['fail_reason']})" if r["status"] == "failed" else "")
        digest = (r["final_digest"] or "")[:18]
        rounds.add_row(
            str(r["round"]),
            status,
            str(r["attempt"]),
            str(r["joined"]),
            str(r["live"]),
            str(r["reports"]),
            digest,
        )
    console.print(rounds)


def _node_account(node: str | None, identity: Path | None) -> str | None:
    if node is not None:
        return _address(node)
    if identity is not None:
        from swarmnode.identity import NodeIdentity

        return str(NodeIdentity.inspect(identity).address)
    return None


def _node_status(reader: Any, chain_id: int, account: str, rounds: int, as_json: bool) -> None:
    """`status --node`: the rounds one node joined, what it reported and if it agreed."""
    from swarmnode.ledger.history import node_rounds

    record = reader.node(account)
    joined = node_rounds(reader, account, limit=rounds)
    if record is None and not joined:
        raise ConfigError(f"{account} never registered on the swarm at {reader.address}")
    report: dict[str, Any] = {
        "chain_id": chain_id,
        "address": reader.address,
        "node": {
            "account": account,
            "active": bool(record is not None and record.active),
            "endpoint": None if record is None else record.endpoint,
        },
        "rounds": [entry.to_dict() for entry in joined],
    }
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    console = Console()
    where = f"serving on {record.endpoint}" if record is not None and record.active else "inactive"
    console.print(
        f"[bold]node[/] {account} ({where}) in swarm {report['address']} on chain id {chain_id}"
    )
    table = Table(title=f"its {len(joined)} most recent rounds" if joined else "no rounds yet")
    for column in ("round", "status", "attempt", "this node", "its report", "final digest"):
        table.add_column(column)
    table.add_column("agreed")
    for r in report["rounds"]:
        status = r["status"] + (f" ({r['fail_reason']})" if r["status"] == "failed" else "")
        part = r["part"] + (
            f" (attempt {r['report_attempt']})"
            if r["report"] is not None and r["report_attempt"] != r["attempt"]
            else ""
        )
        agreed = {True: "yes", False: "no", None: "-"}[r["agreed"]]
        table.add_row(
            str(r["round"]),
            status,
            str(r["attempt"]),
            part,
            (r["report"] or "")[:18],
            (r["final_digest"] or "")[:18],
            agreed,
        )
    console.print(table)
