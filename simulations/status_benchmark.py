"""How long `swarmnode status` takes on a busy chain, reading every event against reading a
block window and a cache.

Run: .venv/bin/python simulations/status_benchmark.py [--blocks 10000] [--repeats 3]

Two nodes run rounds on anvil (join, join, report, report: eight events a round, in two to
four blocks), sent as JSON-RPC batches from impersonated accounts (no signature per
transaction), with `--gap` empty blocks mined at once after each round: by default about a
thousand rounds and 8,000 events in 10,000 blocks, a swarm that ran for a while. Then,
side by side on the same chain, status's own work (web3 loaded, the chain connected: what
the command does after its imports) is timed:

- `status` (the swarm: parameters, roster, recent rounds): contract views only;
- `status --node` as it was, reading every event since the deployment (`--no-cache`);
- `status --node` through a block window, the first time (nothing cached) and the next
  (the cache holds what was read; only blocks mined since are asked for).

The target is under 1 s for status on 10,000 blocks. Filling the chain takes minutes (about
ten on a busy 2-core machine): two JSON-RPC round trips and a receipt poll per round. The
command's wall time adds Python's start and imports (1 s or more), printed as well.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eth_account import Account
from rich.console import Console
from rich.table import Table

from swarmnode.cli.status import _swarm_report, node_report
from swarmnode.ledger.artifacts import load
from swarmnode.ledger.deployment import Deployment
from swarmnode.ledger.devchain import AnvilChain
from swarmnode.ledger.history import EventWindow
from swarmnode.rules import SwarmParams


def digest(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def fill(
    chain: AnvilChain, deployment: Deployment, accounts: list[str], blocks: int, gap: int
) -> int:
    """Rounds of two nodes, `gap` empty blocks after each, until the chain has `blocks`
    blocks; returns the rounds run. Each round is two JSON-RPC batches (the joins, then
    the reports): anvil may run a batch's calls in any order, and within each only the
    order of the two nodes is free."""
    import requests  # web3's own HTTP client

    w3 = chain.rpc.w3
    contract = w3.eth.contract(address=deployment.address, abi=load().abi)  # type: ignore[call-overload]
    for account in accounts:
        w3.provider.make_request("anvil_impersonateAccount", [account])  # type: ignore[arg-type]
    session = requests.Session()
    number = 0
    while int(w3.eth.block_number) + 4 + gap <= blocks:
        number += 1
        merged = digest(f"merged {number}")
        joins = [
            contract.encode_abi("join", [number, digest(f"{number} {a}"), 10, 1_000_000 + number])
            for a in accounts
        ]
        _send(session, chain.url, deployment.address, list(zip(accounts, joins, strict=True)))
        report = contract.encode_abi("report", [number, 1, merged])
        _send(session, chain.url, deployment.address, [(a, report) for a in accounts])
        if gap:
            w3.provider.make_request("anvil_mine", [hex(gap)])  # type: ignore[arg-type]
    rest = blocks - int(w3.eth.block_number)
    if rest > 0:
        w3.provider.make_request("anvil_mine", [hex(rest)])  # type: ignore[arg-type]
    return number


def _send(session: Any, url: str, to: str, calls: list[tuple[str, str]]) -> None:
    """One JSON-RPC batch of transactions; anvil mines each in a block of its own."""
    batch = [
        {
            "jsonrpc": "2.0",
            "id": i,
            "method": "eth_sendTransaction",
            "params": [{"from": sender, "to": to, "data": data, "gas": hex(600_000)}],
        }
        for i, (sender, data) in enumerate(calls)
    ]
    answers = session.post(url, json=batch, timeout=60).json()
    failed = [a for a in answers if "error" in a]
    if failed:
        raise SystemExit(f"a transaction was refused: {failed[0]['error']}")
    # anvil answers with the hash before it mines: the next batch depends on this one
    asks = [
        {"jsonrpc": "2.0", "id": i, "method": "eth_getTransactionReceipt", "params": [a["result"]]}
        for i, a in enumerate(answers)
    ]
    deadline = time.monotonic() + 30
    while True:
        receipts = [r.get("result") for r in session.post(url, json=asks, timeout=60).json()]
        if all(receipts):
            break
        if time.monotonic() > deadline:
            raise SystemExit("anvil mined no block for a transaction within 30 s")
        time.sleep(0.002)
    if any(r["status"] != "0x1" for r in receipts):
        raise SystemExit("a round's transaction reverted: the benchmark chain is not as planned")


def timed(fn: Callable[[], Any], repeats: int) -> float:
    """The median of `repeats` runs, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def command(folder: Path, *args: str) -> float:
    """The wall time of `swarmnode status ...`, Python's start and imports included."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "swarmnode", "status", "-d", "deployment.json", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "SWARMNODE_CACHE_DIR": str(folder / "cache")},
    )
    if done.returncode != 0:
        raise SystemExit(f"status {' '.join(args)} failed: {done.stderr.strip()}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=10_000)
    parser.add_argument(
        "--gap", type=int, default=7, help="empty blocks after each round (0: a round in every 2-4)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with AnvilChain() as chain, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        params = SwarmParams(min_peers=2, max_peers=2)
        deployment, _ = chain.deploy(params)
        deployment = Deployment(
            deployment.chain_id, deployment.address, deployment.block, params, chain.url
        )
        deployment.save(folder / "deployment.json")
        ledgers = [chain.ledger(deployment, chain.new_account()) for _ in range(2)]
        for i, ledger in enumerate(ledgers):
            ledger.register(f"127.0.0.1:{9000 + i}", f"cert-{i}:{ledger.account.lower()}".encode())
        accounts = [ledger.account for ledger in ledgers]
        start = time.perf_counter()
        rounds = fill(chain, deployment, accounts, args.blocks, args.gap)
        head = int(chain.rpc.w3.eth.block_number)
        reader = chain.rpc.ledger(deployment, Account.create())
        events = len(reader.events(reader.start_cursor())[0])
        print(
            f"chain: {head:,} blocks, {rounds:,} rounds of 2 nodes, {events:,} swarm events "
            f"(filled in {time.perf_counter() - start:.1f} s)"
        )

        cache = folder / "bench-cache.json"
        node = accounts[0]
        chain_id = deployment.chain_id

        def windowed() -> Any:
            return node_report(reader, chain_id, node, 5, window=EventWindow(reader, cache))

        def cold() -> Any:
            cache.unlink(missing_ok=True)
            return windowed()

        full = node_report(reader, chain_id, node, 5)
        assert windowed() == full, "the window and the full scan disagree"

        def swarm() -> Any:
            return _swarm_report(reader, deployment, 5)

        def scan() -> Any:
            return node_report(reader, chain_id, node, 5)

        rows = [
            ("status (swarm: views only)", timed(swarm, args.repeats)),
            ("status --node, every event (before)", timed(scan, args.repeats)),
            ("status --node, window, nothing cached", timed(cold, args.repeats)),
            ("status --node, window, cached", timed(windowed, args.repeats)),
        ]
        before = rows[1][1]
        table = Table(title=f"status on {head:,} blocks: its own work, median of {args.repeats}")
        for column in ("what", "seconds", "before / this"):
            table.add_column(column)
        for what, seconds in rows:
            table.add_row(what, f"{seconds:.3f}", f"{before / seconds:.1f} x")
        Console(width=120).print(table)

        command(folder, "--node", node)  # fills the command's own cache
        walls = {
            "status": command(folder),
            "status --node --no-cache": command(folder, "--node", node, "--no-cache"),
            "status --node (cached)": command(folder, "--node", node),
        }
        print("the command's wall time, start and imports included:")
        for what, seconds in walls.items():
            print(f"  {what}: {seconds:.2f} s")


if __name__ == "__main__":
    main()
