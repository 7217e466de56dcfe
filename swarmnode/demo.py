"""The ledger demo: one swarm round on a real EVM chain, in one process, in a few seconds.

It shows what the contract does before peers and training exist: nodes enrol with real
TLS certificates, join with commitments to their updates, the round closes after its join
window, every node computes the same merged vector and reports its digest, and the report
that makes the quorum finalizes the round and opens the next. The simulator replaces this
as the main job once it exists.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from swarmnode import canonical
from swarmnode.identity import TlsIdentity
from swarmnode.ledger.contract import ContractLedger
from swarmnode.ledger.embedded import EmbeddedChain
from swarmnode.ledger.types import RoundStatus
from swarmnode.rules import MergeRuleId, Rule, SwarmParams

VECTOR_SIZE = 10_000


@dataclass
class DemoNode:
    name: str
    ledger: ContractLedger
    update: np.ndarray
    samples: int
    val_loss: float
    reported: bool = field(default=False)

    @property
    def commitment(self) -> bytes:
        """The canonical digest of the update, as a training node commits it
        (docs/canonical-vector.md)."""
        return canonical.digest(self.update)


def weighted_mean(updates: list[np.ndarray], weights: list[int]) -> np.ndarray:
    """Merged in participant order, so every node gets the same bits."""
    total = float(sum(weights))
    merged = np.zeros_like(updates[0], dtype=np.float32)
    for update, weight in zip(updates, weights, strict=True):
        merged += update * np.float32(weight / total)
    return merged


def run_demo(nodes: int = 3, seed: int = 0, console: Console | None = None) -> dict[str, Any]:
    """Runs one round; returns what it printed as data (`swarmnode demo --json`)."""
    out = console or Console()
    rng = np.random.default_rng(seed)
    chain = EmbeddedChain()
    params = SwarmParams(
        min_peers=2,
        max_peers=nodes + 1,
        join_window=10,
        transfer_deadline=30,
        round_deadline=120,
        merge_rule=Rule(MergeRuleId.MEAN),
        initial_model_digest=hashlib.sha256(b"initial model").digest(),
        restricted=True,  # as `swarmnode deploy` makes it (docs/trust.md#the-roster)
    )
    deployment, owner = chain.deploy(params)
    admin = chain.ledger(deployment, owner)
    out.print(
        f"[bold]1. deployed[/] SwarmLedger at {deployment.address} on the embedded py-evm chain "
        f"(chain id {deployment.chain_id}, block {deployment.block}): "
        f"min_peers {params.min_peers}, "
        f"max_peers {params.max_peers}, join window {params.join_window}s, rule weighted mean"
    )

    members: list[DemoNode] = []
    for i in range(nodes):
        ledger = chain.ledger(deployment, chain.new_account())
        identity = TlsIdentity.generate(ledger.account)
        admin.allow(ledger.account)
        ledger.register(f"127.0.0.1:{50051 + i}", identity.cert_der)
        samples = int(rng.integers(50, 500))
        update = rng.standard_normal(VECTOR_SIZE).astype(np.float32)
        members.append(DemoNode(f"node-{i}", ledger, update, samples, float(rng.uniform(0.2, 1.0))))

    roster = Table(title="2. registered nodes (the on-chain roster)")
    for column in ("node", "account", "endpoint", "certificate sha256"):
        roster.add_column(column)
    by_account = {m.ledger.account: m for m in members}
    for record in members[0].ledger.active_nodes():
        roster.add_row(
            by_account[record.account].name,
            record.account,
            record.endpoint,
            record.fingerprint.hex()[:16] + "…",
        )
    out.print(roster)

    number = members[0].ledger.current_round()
    for m in members:
        m.ledger.join(number, m.commitment, m.samples, int(m.val_loss * 1e6))
        out.print(
            f"[bold]3. {m.name} joined[/] round {number}: commitment {m.commitment.hex()[:16]}…, "
            f"weight {m.samples}, val loss {m.val_loss:.3f}"
        )

    state = members[0].ledger.round(number)
    if state.status == RoundStatus.OPEN:  # else the join of the last node training closed it
        chain.advance(params.join_window)  # the window runs on chain time: no sleeping
        members[0].ledger.close(number)
        state = members[0].ledger.round(number)
        how = f"after the {params.join_window}s join window"
    else:
        how = "in the join of the last node still training"
    out.print(
        f"[bold]4. closed[/] round {number} {how}: "
        f"{state.joined} participants in the order fixed on chain, attempt {state.attempt}"
    )

    order = [by_account[a] for a in state.live_participants]
    merged = weighted_mean([m.update for m in order], [m.samples for m in order])
    digest = canonical.digest(merged)
    for m in order:
        current = m.ledger.round(number)
        if current.status != RoundStatus.CLOSED:
            out.print(
                f"   {m.name} sees round {number} already {current.status.name.lower()}: "
                "no report needed"
            )
            continue
        m.ledger.report(number, current.attempt, digest)
        m.reported = True
        out.print(f"[bold]5. {m.name} reported[/] merged digest {digest.hex()[:16]}…")

    final = members[0].ledger.round(number)
    latest_round, latest_digest = members[0].ledger.latest_model()
    out.print(
        f"[bold green]6. round {number} is {final.status.name.lower()}[/]: digest "
        f"{(final.final_digest or b'').hex()[:16]}… on chain (latest model: round {latest_round}, "
        f"{latest_digest.hex()[:16]}…); round {members[0].ledger.current_round()} is open"
    )

    gas = Table(title="gas per node this round")
    for column in ("node", "transactions", "gas"):
        gas.add_column(column)
    for m in members:
        calls = [(fn, used) for fn, used in m.ledger.gas_log if fn != "register"]
        gas.add_row(
            m.name,
            ", ".join(f"{fn} {used:,}" for fn, used in calls),
            f"{sum(u for _, u in calls):,}",
        )
    out.print(gas)
    return {
        "contract": deployment.address,
        "chain_id": deployment.chain_id,
        "round": number,
        "status": final.status.name.lower(),
        "final_digest": (final.final_digest or b"").hex(),
        "next_round": members[0].ledger.current_round(),
        "nodes": [
            {
                "name": m.name,
                "account": m.ledger.account,
                "weight": m.samples,
                "val_loss": m.val_loss,
                "commitment": m.commitment.hex(),
                "reported": m.reported,
                "gas": [
                    {"call": fn, "gas": used} for fn, used in m.ledger.gas_log if fn != "register"
                ],
            }
            for m in members
        ],
    }
