"""Gas of every SwarmLedger call, and the chain's speed, on the embedded chain and on anvil.

Run: .venv/bin/python simulations/gas_report.py [--peers N] [--rounds R] [--json]

Each gas number is the gasUsed of a real transaction in a scripted swarm, measured on both
chains in one run (they must agree: same bytecode, same EVM rules). The target from the
foundation issue is printed as a ratio: a participant that does not finalize pays at most
150,000 gas per round (join + report). Speed, side by side in the same run: transactions
per second and the wall time of one round's chain work (every join, the close that the
max_peers-th join makes, the reports up to the finalizing one), sequentially from one
process.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from typing import Protocol

from eth_account.signers.local import LocalAccount
from rich.console import Console
from rich.table import Table

from swarmnode.ledger.contract import ContractLedger
from swarmnode.ledger.deployment import Deployment
from swarmnode.ledger.devchain import AnvilChain
from swarmnode.ledger.embedded import EmbeddedChain
from swarmnode.rules import SwarmParams


class Chain(Protocol):
    def deploy(self, params: SwarmParams) -> tuple[Deployment, LocalAccount]: ...
    def new_account(self) -> LocalAccount: ...
    def ledger(self, deployment: Deployment, account: LocalAccount) -> ContractLedger: ...
    def advance(self, seconds: float) -> None: ...


PARTICIPANT_BUDGET = 150_000


def h(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def cert(account: str, i: int) -> bytes:
    """440 bytes, as a real certificate, naming its account where the contract checks."""
    name = account.lower().encode()
    return b"x" * 397 + bytes([i]) + name


def last_gas(ledger: ContractLedger) -> int:
    return ledger.gas_log[-1][1]


def measure_gas(chain: Chain, peers: int) -> dict[str, int]:
    params = SwarmParams(
        min_peers=2, max_peers=peers, join_window=10, transfer_deadline=20, round_deadline=100
    )
    deployment, owner = chain.deploy(params)
    gas: dict[str, int] = {}
    w3 = chain.ledger(deployment, owner)._w3
    block = w3.eth.get_block(deployment.block, full_transactions=True)
    deploy_tx = next(tx for tx in block["transactions"] if not tx["to"])
    gas["deploy"] = int(w3.eth.get_transaction_receipt(deploy_tx["hash"])["gasUsed"])

    nodes = [chain.ledger(deployment, chain.new_account()) for _ in range(peers)]
    for i, n in enumerate(nodes):
        n.register(f"127.0.0.1:{9000 + i}", cert(n.account, i))
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

    # Round 3: finishing (docs/round-protocol.md#finishing); the last node not joined closes.
    nodes[-1].finish()
    gas["finish (not joined, closes nothing)"] = last_gas(nodes[-1])
    for n in nodes[: peers - 2]:
        n.join(3, h(n.account + "3"), 100, 5)
    nodes[-2].finish()
    gas[f"finish that closes ({peers - 2} joined)"] = last_gas(nodes[-2])

    # Round 4: the join that makes every node still training a participant closes.
    nodes[0].report(3, 1, h("merged-3"))
    for n in nodes[1 : params.quorum(peers - 2)]:
        n.report(3, 1, h("merged-3"))
    for n in nodes[: peers - 2]:
        n.join(4, h(n.account + "4"), 100, 5)
    gas[f"join that closes (all {peers - 2} training joined)"] = last_gas(nodes[peers - 3])
    return gas


def measure_speed(chain: Chain, peers: int, rounds: int) -> dict[str, float]:
    """Transactions per second and seconds per round of chain work, median over rounds."""
    params = SwarmParams(min_peers=2, max_peers=peers, join_window=10, transfer_deadline=20)
    deployment, _ = chain.deploy(params)
    nodes = [chain.ledger(deployment, chain.new_account()) for _ in range(peers)]
    for i, n in enumerate(nodes):
        n.register(f"127.0.0.1:{9000 + i}", cert(n.account, i))
    quorum = params.quorum(peers)
    per_round: list[float] = []
    transactions = 0
    started = time.perf_counter()
    for number in range(1, rounds + 1):
        t0 = time.perf_counter()
        for n in nodes:
            n.join(number, h(f"{number}-{n.account}"), 100, 5)
        for n in nodes[:quorum]:
            n.report(number, 1, h(f"merged-{number}"))
        per_round.append(time.perf_counter() - t0)
        transactions += peers + quorum
    elapsed = time.perf_counter() - started
    return {
        "tx_per_s": transactions / elapsed,
        "round_s": statistics.median(per_round),
        "tx_per_round": peers + quorum,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    embedded = EmbeddedChain()
    gas = measure_gas(embedded, args.peers)
    speed = {"embedded": measure_speed(EmbeddedChain(), args.peers, args.rounds)}
    with AnvilChain() as anvil:
        anvil_gas = measure_gas(anvil, args.peers)
        speed["anvil"] = measure_speed(anvil, args.peers, args.rounds)
    differing = {k: (v, anvil_gas[k]) for k, v in gas.items() if anvil_gas[k] != v}
    participant = gas["join"] + gas["report"]
    first = gas["join (first of the round)"] + gas["report (first of the attempt)"]
    if args.json:
        report = {
            "gas": gas,
            "gas_differs_on_anvil": differing,
            "participant_per_round": participant,
            "speed": speed,
        }
        print(json.dumps(report, indent=1))
        return
    table = Table(title=f"SwarmLedger gas, {args.peers} peers (embedded py-evm and anvil)")
    table.add_column("call")
    table.add_column("gas", justify="right")
    for name, used in gas.items():
        table.add_row(
            name, f"{used:,}" + ("" if name not in differing else f" (anvil {anvil_gas[name]:,})")
        )
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
    timing = Table(title=f"chain speed, {args.peers} peers, {args.rounds} rounds, one process")
    for column in ("chain", "tx/s", "one round's chain work (s)", "tx per round"):
        timing.add_column(column, justify="right")
    for name, figures in speed.items():
        timing.add_row(
            name,
            f"{figures['tx_per_s']:.1f}",
            f"{figures['round_s']:.3f}",
            f"{figures['tx_per_round']:.0f}",
        )
    console.print(timing)
    ratio = speed["anvil"]["tx_per_s"] / speed["embedded"]["tx_per_s"]
    console.print(f"anvil / embedded throughput: {ratio:.2f} x")


if __name__ == "__main__":
    main()
