"""`swarmnode status`: what the chain shows of a swarm, or of one node in it."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

from swarmnode.cli.options import DeploymentOption, RpcOption, account_address, resolve_rpc
from swarmnode.exceptions import ConfigError
from swarmnode.identity import NodeIdentity
from swarmnode.ledger.history import EventWindow, cache_path, node_rounds
from swarmnode.records import NodeRoundRecord, round_records
from swarmnode.rules import MergeRuleId

if TYPE_CHECKING:
    from swarmnode.ledger.deployment import Deployment


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
    no_cache: bool = typer.Option(
        False,
        "--no-cache",
        help="With --node: read every event since the deployment, not the newest blocks and "
        "the events cached by earlier runs (in SWARMNODE_CACHE_DIR, else ~/.cache/swarmnode).",
    ),
) -> None:
    """Show a swarm's parameters, nodes and recent rounds, or one node's rounds."""
    # here, not at the top: web3 takes over a second to load, which other commands skip
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
        logged = logged_rounds(identity) if identity is not None else {}
        window = (
            None if no_cache else EventWindow(reader, cache_path(known.chain_id, known.address))
        )
        _node_status(reader, known.chain_id, account, rounds, as_json, logged, window)
        return
    report = _swarm_report(reader, known, rounds)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    _print_status(report)


def _swarm_report(reader: Any, known: Deployment, rounds: int) -> dict[str, Any]:
    """The swarm as `status --json` prints it: parameters, active nodes, recent rounds."""
    current = reader.current_round()
    latest_round, latest_digest = reader.latest_model()
    return {
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
        "rounds": [
            _round_entry(number, reader.round(number))
            for number in range(current, max(0, current - rounds), -1)
        ],
    }


def _round_entry(number: int, state: Any) -> dict[str, Any]:
    return {
        "round": number,
        "status": state.status.name.lower(),
        "fail_reason": state.fail_reason.name.lower(),
        "attempt": state.attempt,
        "joined": state.joined,
        "live": state.live,
        "reports": state.reports,
        "participants": list(state.participants),
        "final_digest": None if state.final_digest is None else "0x" + state.final_digest.hex(),
    }


def _console() -> Console:
    """A terminal's width on a terminal; piped, as wide as a line needs: a script or a
    file gets whole addresses and digests, never a table cut at 80 columns."""
    console = Console()
    if console.is_terminal:
        return console
    return Console(width=10_000)


def _cut(text: str, console: Console, length: int = 18) -> str:
    """A digest cut for a terminal's eyes; whole when piped."""
    if not console.is_terminal or len(text) <= length:
        return text
    return text[:length] + "…"


def _secure_aggregation(numbers: Mapping[str, int] | None) -> str:
    """Whether updates are summed under masks (docs/secure-aggregation.md), with the numbers
    fixed at deploy; a deployment file older than the setting has none: off."""
    if not numbers:
        return "no secure aggregation"
    return (
        f"secure aggregation (bound {numbers['bound']}, {numbers['fraction_bits']} fraction "
        f"bits, max weight {numbers['max_weight']})"
    )


def _print_status(report: dict[str, Any]) -> None:
    console = _console()
    p = report["params"]
    console.print(
        f"[bold]swarm[/] {report['address']} on chain id {report['chain_id']}, owner "
        f"{report['owner']}\n  peers {p['min_peers']}-{p['max_peers']}, join window "
        f"{p['join_window']}s, transfer deadline {p['transfer_deadline']}s, round deadline "
        f"{p['round_deadline']}s, merge rule {MergeRuleId(p['merge_rule']['id']).name.lower()}, "
        f"{'restricted' if p['restricted'] else 'open'} admission, "
        f"{_secure_aggregation(p.get('secure_aggregation'))}\n  latest model: round "
        f"{report['latest_model']['round']} {_cut(report['latest_model']['digest'], console)}"
    )
    nodes = Table(title=f"{len(report['nodes'])} active nodes")
    for column in ("account", "endpoint", "certificate sha256"):
        nodes.add_column(column)
    for n in report["nodes"]:
        nodes.add_row(n["account"], n["endpoint"], _cut(n["fingerprint"], console))
    console.print(nodes)
    rounds = Table(title="recent rounds")
    for column in ("round", "status", "attempt", "joined", "live", "reports", "final digest"):
        rounds.add_column(column)
    for r in report["rounds"]:
        status = r["status"] + (f" ({r['fail_reason']})" if r["status"] == "failed" else "")
        digest = _cut(r["final_digest"] or "", console)
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
        return account_address(node)
    if identity is not None:
        return str(NodeIdentity.inspect(identity).address)
    return None


def _node_status(
    reader: Any,
    chain_id: int,
    account: str,
    rounds: int,
    as_json: bool,
    logged: Mapping[int, NodeRoundRecord],
    window: EventWindow | None,
) -> None:
    """`status --node`: the rounds one node joined, what it reported and if it agreed."""
    report = node_report(reader, chain_id, account, rounds, logged, window)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    _print_node_status(report)


def node_report(
    reader: Any,
    chain_id: int,
    account: str,
    rounds: int,
    logged: Mapping[int, NodeRoundRecord] | None = None,
    window: EventWindow | None = None,
) -> dict[str, Any]:
    """What `status --node --json` prints: the node's rounds from the chain, with a report
    that landed late read from the node's own log (`logged`, by round; see `_late_report`).
    With `window`, only the newest blocks are read, and those cached by earlier runs are
    not read again (EventWindow)."""
    record = reader.node(account)
    joined = node_rounds(reader, account, limit=rounds, window=window)
    if record is None and not joined:
        raise ConfigError(f"{account} never registered on the swarm at {reader.address}")
    return {
        "chain_id": chain_id,
        "address": reader.address,
        "node": {
            "account": account,
            "active": bool(record is not None and record.active),
            "endpoint": None if record is None else record.endpoint,
        },
        "rounds": [_with_epsilon(e.to_dict(), (logged or {}).get(e.round)) for e in joined],
    }


def _with_epsilon(entry: dict[str, Any], logged: NodeRoundRecord | None) -> dict[str, Any]:
    """The round as `_late_report` gives it, with the privacy the node had spent by its end
    (`epsilon`) where its log says (a node training with DP; docs/privacy.md#the-accountant).
    The chain does not know it: only --identity, which reads the node's log, shows it."""
    entry = _late_report(entry, logged)
    if logged is not None and logged.epsilon is not None:
        entry = {**entry, "epsilon": logged.epsilon}
    return entry


def _late_report(entry: dict[str, Any], logged: NodeRoundRecord | None) -> dict[str, Any]:
    """A report the quorum beat to the chain is refused (the round is already final) and
    leaves no event, so the chain alone shows the node as not having reported. Its log says
    which model it ended the round with: its own merge (status final) whose digest is the
    final one is a report that agreed, shown as `reported late`."""
    if entry["agreed"] is not None or entry["status"] != "final" or logged is None:
        return entry
    if logged.status != "final" or "0x" + logged.digest != entry["final_digest"]:
        return entry
    return {
        **entry,
        "part": "reported late",
        "report": entry["final_digest"],
        "report_attempt": entry["attempt"],
        "agreed": True,
        "late": True,
    }


def logged_rounds(identity: Path) -> dict[int, NodeRoundRecord]:
    """The round records in the JSON log of the node whose folder is `identity` (the log its
    node.toml names, else node.jsonl there), newest per round; none when there is no log."""
    # here, not at the top: pydantic adds a few tenths of a second to every command
    from swarmnode.config import NodeConfig

    path = identity / "node.jsonl"
    config = identity / "node.toml"
    if config.exists():
        # status reads the chain: a node.toml that `run` would refuse changes nothing here
        with contextlib.suppress(ConfigError):
            path = NodeConfig.load(config).log_path
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
    return {r.round: r for r in round_records(e for e in events if isinstance(e, dict))}


def _print_node_status(report: dict[str, Any]) -> None:
    console = _console()
    node = report["node"]
    where = f"serving on {node['endpoint']}" if node["active"] else "inactive"
    console.print(
        f"[bold]node[/] {node['account']} ({where}) in swarm {report['address']} on chain id "
        f"{report['chain_id']}"
    )
    joined = report["rounds"]
    table = Table(title=f"its {len(joined)} most recent rounds" if joined else "no rounds yet")
    for column in ("round", "status", "attempt", "this node", "its report", "final digest"):
        table.add_column(column)
    table.add_column("agreed")
    private = any("epsilon" in r for r in joined)
    if private:  # DP: the privacy spent by each round's end, from the node's log
        table.add_column("epsilon")
    for r in report["rounds"]:
        status = r["status"] + (f" ({r['fail_reason']})" if r["status"] == "failed" else "")
        part = r["part"] + (
            f" (attempt {r['report_attempt']})"
            if r["report"] is not None and r["report_attempt"] != r["attempt"]
            else ""
        )
        agreed = {True: "yes", False: "no", None: "-"}[r["agreed"]]
        cells = [
            str(r["round"]),
            status,
            str(r["attempt"]),
            part,
            _cut(r["report"] or "", console),
            _cut(r["final_digest"] or "", console),
            agreed,
        ]
        if private:
            cells.append("-" if r.get("epsilon") is None else f"{r['epsilon']:.3f}")
        table.add_row(*cells)
    console.print(table)
    spent = [r["epsilon"] for r in joined if r.get("epsilon") is not None]
    if spent:  # rounds are newest first
        console.print(f"privacy: epsilon {spent[0]:.3f} spent by its last round logged")
