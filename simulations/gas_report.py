"""Prints the gas of every SwarmLedger call on the embedded chain, so changes can be compared.

Run: .venv/bin/python simulations/gas_report.py [--peers N] [--json]

Each number is the gasUsed of a real transaction in a scripted swarm. The target from the
foundation issue is checked and printed as a ratio: a participant that does not finalize
pays at most 150,000 gas per round (join + report).
"""

from __future__ import annotations

import argparse
import hashlib
import json

from rich.console import Console
from rich.table import Table

from swarmnode.ledger.contract import ContractLedger
from swarmnode.ledger.embedded import EmbeddedChain
from swarmnode.rules import SwarmParams

PARTICIPANT_BUDGET = 150_000


def h(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def last_gas(ledger: ContractLedger) -> int:
    return ledger.gas_log[-1][1]


def measure(peers: int) -> dict[str, int]:
    chain = EmbeddedChain()
    params = SwarmParams(
        min_peers=2, max_peers=peers, join_window=10, transfer_deadline=20, round_deadline=100
    )
    deployment, _ = chain.deploy(params)
    gas: dict[str, int] = {}
    receipt_block = chain.w3.eth.get_block(deployment.block, full_transactions=True)
    deploy_tx = receipt_block["transactions"][0]["hash"]
    gas["deploy"] = int(chain.w3.eth.get_transaction_receipt(deploy_tx)["gasUsed"])

    nodes = [chain.ledger(deployment, chain.new_account()) for _ in range(peers)]
    for i, n in enumerate(nodes):
        n.register(f"127.0.0.1:{9000 + i}", b"x" * 400 + bytes([i]))  # a real cert is ~440 bytes
    gas["register (440-byte certificate)"] = last_gas(nodes[-1])

    # Round 1: leave, close, report, finalize.
    nodes[0].join(1, h("a"), 100, 5)
    gas["join (first of the round)"] = last_gas(nodes[0])
    nodes[1].join(1, h("b"), 100, 5)
    gas["join"] = last_gas(nodes[1])
    nodes[1].leave(1)
    gas["leave"] = last_gas(nodes[1])
    for n in nodes[1 : peers - 1]:
        n.join(1, h(n.account), 100, 5)
    chain.advance(params.join_window)
    nodes[0].close(1)
    gas[f"close ({peers - 1} joined)"] = last_gas(nodes[0])
    quorum = params.quorum(peers - 1)
    for n in nodes[: quorum - 1]:
        n.report(1, 1, h("merged-1"))
    gas["report (first of the attempt)"] = last_gas(nodes[0])
    gas["report"] = last_gas(nodes[1])
    nodes[quorum - 1].report(1, 1, h("merged-1"))
    gas["report that finalizes (opens next round)"] = last_gas(nodes[quorum - 1])

    # Round 2: the max_peers-th join closes; drop votes; withdraw; expire.
    for n in nodes[:-1]:
        n.join(2, h(n.account + "2"), 100, 5)
    gas["join (warm, not closing)"] = last_gas(nodes[-2])
    nodes[-1].join(2, h("last"), 100, 5)
    gas[f"join that closes ({peers} joined)"] = last_gas(nodes[-1])
    chain.advance(params.transfer_deadline)
    target = nodes[-1].account
    others = peers - 1
    needed = others // 2 + 1
    for voter in nodes[: needed - 1]:
        voter.drop(2, 1, target)
    gas["drop vote (not yet decisive)"] = last_gas(nodes[0])
    nodes[needed - 1].drop(2, 1, target)
    gas["drop vote that drops (new attempt)"] = last_gas(nodes[needed - 1])
    nodes[-2].withdraw(2)
    gas["withdraw (new attempt)"] = last_gas(nodes[-2])
    chain.advance(params.round_deadline)
    nodes[0].expire(2)
    gas["expire (opens next round)"] = last_gas(nodes[0])
    return gas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    gas = measure(args.peers)
    participant = gas["join"] + gas["report"]
    first = gas["join (first of the round)"] + gas["report (first of the attempt)"]
    if args.json:
        print(json.dumps({"gas": gas, "participant_per_round": participant}, indent=1))
        return
    table = Table(title=f"SwarmLedger gas, {args.peers} peers, embedded py-evm chain")
    table.add_column("call")
    table.add_column("gas", justify="right")
    for name, used in gas.items():
        table.add_row(name, f"{used:,}")
    console = Console()
    console.print(table)
    console.print(
        f"participant per round (join + report): {participant:,} gas = "
        f"{participant / PARTICIPANT_BUDGET:.2f} x the 150,000 budget; the first joiner and first "
        f"reporter: {first:,} = {first / PARTICIPANT_BUDGET:.2f} x"
    )
    console.print(
        "transactions per round per node: 2 (join, report); close, the finalizing report and "
        "expire are paid once per round by whoever sends them"
    )


if __name__ == "__main__":
    main()
