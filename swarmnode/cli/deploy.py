"""`swarmnode deploy / fund / admin`: the owner's tools for a swarm on a chain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from swarmnode.cli.options import (
    DeploymentOption,
    KeystoreOption,
    RpcOption,
    account_address,
    resolve_rpc,
)
from swarmnode.exceptions import ConfigError
from swarmnode.rules import (
    SECAGG_MIN_PEERS,
    MergeRuleId,
    Rule,
    SecureAggregation,
    SwarmParams,
    SyncPolicyId,
    rule_name,
)

ETHER = 10**18

# What an open swarm gives away, said where the choice is made (docs/trust.md#threat-model).
OPEN_WARNING = (
    "warning: open admission: any account with gas can register, is then on every node's "
    "roster, downloads the model, joins rounds, receives the other nodes' update segments, "
    "and can fill a round with accounts of its own. Deploy without --open and admit "
    "members with --allow ADDR or `swarmnode admin allow ADDR`."
)


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
    # here, not at the top: torch takes seconds to load, and only --initial-task needs it
    from swarmnode import canonical
    from swarmnode.training import LocalTrainer, load_task

    return canonical.digest(LocalTrainer(load_task(spec), "cpu", 0, init_seed=0).snapshot())


def _model_digest(path: Path) -> bytes:
    """The digest of the model in a state_dict or safetensors file, as a node holding that
    model computes it (docs/canonical-vector.md#initial-model-files)."""
    # here, not at the top: torch takes seconds to load, and only --initial-model needs it
    from swarmnode import canonical

    return canonical.model_file_digest(path)


def _initial(digest: str | None, task: str | None, model: Path | None) -> bytes:
    """The initial model's digest from the one option of the three that was given."""
    options = {"--initial-digest": digest, "--initial-task": task, "--initial-model": model}
    given = [name for name, value in options.items() if value is not None]
    if len(given) > 1:
        raise ConfigError(f"{' and '.join(given)}: give one, each names the initial model")
    if model is not None:
        return _model_digest(model)
    if task is not None:
        return _task_digest(task)
    return _digest(digest if digest is not None else DEFAULT_INITIAL_DIGEST)


DEFAULT_INITIAL_DIGEST = "0x" + "01" * 32
"""A placeholder digest for swarms whose nodes never check it against a model of their own."""


def _digest(text: str) -> bytes:
    try:
        value = bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        raise ConfigError("--initial-digest: not hex") from None
    if len(value) != 32:
        raise ConfigError("--initial-digest: must be 32 bytes (64 hex digits)")
    return value


def deploy(
    rpc: str = typer.Option(..., "--rpc", help="JSON-RPC URL of the chain."),
    out: Path = typer.Option(
        Path("deployment.json"), "--out", help="Where to write the deployment."
    ),
    min_peers: int | None = typer.Option(
        None,
        help="Fewest joins a round closes with (default 2; 3 with --secure-aggregation).",
        show_default=False,
    ),
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
    initial_digest: str | None = typer.Option(
        None,
        help="Digest of the model every node starts from (32 bytes hex; default 0x0101...01).",
    ),
    initial_task: str | None = typer.Option(
        None,
        help="Take the initial digest from this task's model (module:attribute, init seed 0).",
    ),
    initial_model: Path | None = typer.Option(
        None,
        help="Take the initial digest from the model in FILE: a state_dict saved with "
        "torch.save(model.state_dict(), FILE) or a safetensors file (its order recorded by "
        "swarmnode.canonical.save_model_file); nodes that start elsewhere load it from here "
        "(initial_model in node.toml) or fetch it from a peer.",
        metavar="FILE",
    ),
    restricted: bool = typer.Option(
        True,
        "--restricted/--open",
        help="Only accounts the owner allows may register (the default); --open admits anyone.",
    ),
    unchecked_merge: bool = typer.Option(
        False,
        "--unchecked-merge",
        help="One owner per segment and no second owner checking its merge: about (2n-2)/n "
        "of the model per node per round instead of (3n-4)/n, but a lying merger goes "
        "unseen (docs/trust.md#unchecked-merge).",
    ),
    secure_aggregation: bool = typer.Option(
        False,
        "--secure-aggregation",
        help="Sum the updates under masks, so that no node sees another's update "
        "(docs/secure-aggregation.md): mean merge rule only, --min-peers 3 or more.",
    ),
    secagg_bound: int = typer.Option(
        SecureAggregation.bound,
        help="With --secure-aggregation: every value of an update lies in [-B, B].",
        metavar="B",
    ),
    secagg_fraction_bits: int = typer.Option(
        SecureAggregation.fraction_bits,
        help="With --secure-aggregation: fixed-point fractional bits (0-48).",
        metavar="F",
    ),
    secagg_max_weight: int = typer.Option(
        SecureAggregation.max_weight,
        help="With --secure-aggregation: the largest weight (sample count) a join carries; "
        "a node with more samples joins with this.",
        metavar="W",
    ),
    allow: list[str] = typer.Option(
        [], "--allow", help="Admit ADDR right after deploying (repeatable)."
    ),
    fund: list[str] = typer.Option([], "--fund", help="Also send --fund-amount ETH to ADDR."),
    fund_amount: float = typer.Option(10.0, help="ETH per --fund address."),
    keystore: Path | None = KeystoreOption,
) -> None:
    """Deploy a swarm contract and write its deployment file."""
    # here, not at the top: web3 takes over a second to load, which other commands skip
    from swarmnode.ledger.keys import load_signer
    from swarmnode.ledger.rpc import RpcChain

    rule = _rule(merge_rule, MergeRuleId, "merge-rule")
    if secure_aggregation and rule.id != MergeRuleId.MEAN:
        name = rule_name(rule.id)
        raise ConfigError(
            f"secure aggregation merges a masked sum: --merge-rule {name} needs each node's "
            "update; use --merge-rule mean"
        )
    if min_peers is None:  # a masked sum of two would show each its peer's update
        min_peers = SECAGG_MIN_PEERS if secure_aggregation else 2
    params = SwarmParams(
        min_peers=min_peers,
        max_peers=max_peers,
        join_window=join_window,
        transfer_deadline=transfer_deadline,
        round_deadline=round_deadline,
        merge_rule=rule,
        sync_policy=_rule(sync_policy, SyncPolicyId, "sync-policy"),
        initial_model_digest=_initial(initial_digest, initial_task, initial_model),
        restricted=restricted,
        checked_merge=not unchecked_merge,
        secure_aggregation=SecureAggregation(secagg_bound, secagg_fraction_bits, secagg_max_weight)
        if secure_aggregation
        else None,
    )
    params.validate()
    if out.exists() and not out.is_file():
        raise ConfigError(f"--out {out}: not a file")
    members = [account_address(a) for a in allow]
    if members and not restricted:
        raise ConfigError("--allow: an open swarm admits everyone; drop --open or --allow")
    if not restricted:
        typer.echo(OPEN_WARNING, err=True)
    chain = RpcChain(rpc)
    signer = load_signer(chain.chain_id, keystore=keystore)
    deployment = chain.deploy(params, signer)
    deployment.save(out)
    typer.echo(
        f"deployed SwarmLedger at {deployment.address} on chain id {deployment.chain_id} "
        f"(block {deployment.block}), owner {signer.address}; wrote {out}"
    )
    for address in fund:
        chain.fund(signer, account_address(address), int(fund_amount * ETHER))
        typer.echo(f"funded {address} with {fund_amount:g} ETH")
    _admit(chain.ledger(deployment, signer) if members else None, members, out, restricted)


def _admit(ledger: Any, members: list[str], out: Path, restricted: bool) -> None:
    """Allows the --allow accounts, and tells a restricted swarm's owner how to add more."""
    for account in members:
        ledger.allow(account)
        typer.echo(f"allowed {account}")
    if restricted:
        typer.echo(
            "admission is restricted: admit each node with "
            f"`swarmnode admin allow ACCOUNT --deployment {out}`"
        )


def fund_command(
    address: str = typer.Argument(..., help="Account to fund."),
    amount: float = typer.Option(10.0, help="ETH to send."),
    rpc: str | None = RpcOption,
    deployment: Path | None = DeploymentOption,
    keystore: Path | None = KeystoreOption,
) -> None:
    """Send ETH to an account so that it can pay gas (dev chains: from anvil's dev account)."""
    # here, not at the top: web3 takes over a second to load, which other commands skip
    from swarmnode.ledger.deployment import Deployment
    from swarmnode.ledger.keys import load_signer
    from swarmnode.ledger.rpc import RpcChain

    known = Deployment.load(deployment) if deployment else None
    chain = RpcChain(resolve_rpc(rpc, known.rpc if known else None))
    if known is not None:
        chain.check(known)
    signer = load_signer(chain.chain_id, keystore=keystore)
    target = account_address(address)
    chain.fund(signer, target, int(amount * ETHER))
    typer.echo(
        f"funded {target} with {amount:g} ETH; balance {chain.balance(target) / ETHER:g} ETH"
    )


def _owner_ledger(rpc: str | None, deployment: Path | None, keystore: Path | None) -> Any:
    # here, not at the top: web3 takes over a second to load, which other commands skip
    from swarmnode.ledger.deployment import Deployment
    from swarmnode.ledger.keys import load_signer
    from swarmnode.ledger.rpc import RpcChain

    if deployment is None:
        raise ConfigError("no deployment given: pass --deployment FILE")
    known = Deployment.load(deployment)
    chain = RpcChain(resolve_rpc(rpc, known.rpc))
    chain.check(known)
    return chain.ledger(known, load_signer(chain.chain_id, keystore=keystore))


def admin_allow(
    address: str = typer.Argument(..., help="Account to admit."),
    deployment: Path | None = DeploymentOption,
    rpc: str | None = RpcOption,
    keystore: Path | None = KeystoreOption,
) -> None:
    """Let an account register."""
    ledger = _owner_ledger(rpc, deployment, keystore)
    ledger.allow(account_address(address))
    typer.echo(f"allowed {account_address(address)}")


def admin_revoke(
    address: str = typer.Argument(..., help="Account to revoke; a registered node is removed."),
    deployment: Path | None = DeploymentOption,
    rpc: str | None = RpcOption,
    keystore: Path | None = KeystoreOption,
) -> None:
    """Take an account's admission back."""
    ledger = _owner_ledger(rpc, deployment, keystore)
    ledger.revoke(account_address(address))
    typer.echo(f"revoked {account_address(address)}")
