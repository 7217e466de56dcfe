"""`status` reads a block window and a cache, not every event since the deployment.

A node's history read through an EventWindow must be the one a full scan gives, while
reading only the newest blocks, then only those mined since; a chain that is not the one
the cache was read from any more (anvil reverted, as a restarted dev chain would be) is
read again. Checked on anvil, and through the command, whose piped output is not cut.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from eth_account import Account

from swarmnode.ledger.contract import ContractLedger
from swarmnode.ledger.deployment import Deployment
from swarmnode.ledger.devchain import AnvilChain
from swarmnode.ledger.history import EventWindow, cache_path, node_rounds
from swarmnode.ledger.rpc import connect
from swarmnode.rules import SwarmParams

pytestmark = pytest.mark.chain


def digest(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def mine(chain: AnvilChain, blocks: int) -> None:
    # its own connection with a wide read bound: a loaded CI machine took over the
    # default 10 s to answer one anvil_mine of 300 blocks
    w3 = connect(chain.url, timeout=120.0)
    w3.provider.make_request("anvil_mine", [hex(blocks)])  # type: ignore[arg-type]


def run_round(ledgers: list[ContractLedger], number: int) -> None:
    """Both nodes join (the second join closes it) and report the same model: final."""
    for ledger in ledgers:
        ledger.join(number, digest(f"{number}{ledger.account}"), 10, 1_000_000)
    for ledger in ledgers:
        ledger.report(number, 1, digest(f"merged {number}"))


def swarm(chain: AnvilChain) -> tuple[Deployment, list[ContractLedger], ContractLedger]:
    params = SwarmParams(min_peers=2, max_peers=2)
    deployment, _ = chain.deploy(params)
    deployment = Deployment(
        deployment.chain_id, deployment.address, deployment.block, params, chain.url
    )
    ledgers = [chain.ledger(deployment, chain.new_account()) for _ in range(2)]
    for i, ledger in enumerate(ledgers):
        ledger.register(f"127.0.0.1:{9000 + i}", f"cert-{i}:{ledger.account.lower()}".encode())
    return deployment, ledgers, chain.rpc.ledger(deployment, Account.create())


def test_window_reads_the_newest_blocks_then_only_new_ones(
    anvil_chain: AnvilChain, tmp_path: Path
) -> None:
    deployment, ledgers, reader = swarm(anvil_chain)
    account = ledgers[0].account
    run_round(ledgers, 1)
    mine(anvil_chain, 300)  # blocks without the swarm's events between its rounds
    run_round(ledgers, 2)
    path = cache_path(deployment.chain_id, deployment.address)
    assert path.name == f"events-{deployment.chain_id}-{deployment.address.lower()}.json"
    cached = tmp_path / path.name

    window = EventWindow(reader, cached, size=20)
    newest = node_rounds(reader, account, limit=1, window=window)
    assert newest == node_rounds(reader, account, limit=1)  # what a full scan says
    assert [p.round for p in newest] == [2] and newest[0].agreed is True
    assert not window.complete and window.blocks_read == 20  # round 1 was never read

    again = EventWindow(reader, cached, size=20)  # the next run: from the cache
    both = node_rounds(reader, account, limit=5, window=again)  # asks for more than there is
    assert both == node_rounds(reader, account, limit=5)
    assert [p.round for p in both] == [2, 1]
    assert again.complete and not again.restarted

    run_round(ledgers, 3)
    mine(anvil_chain, 5)
    head = int(anvil_chain.rpc.w3.eth.block_number)
    later = EventWindow(reader, cached, size=20)
    assert [p.round for p in node_rounds(reader, account, limit=5, window=later)] == [3, 2, 1]
    tip = json.loads(cached.read_text())["tip"][0]
    assert tip == head and later.blocks_read <= 4 + 5 + 1  # round 3's blocks, not the chain
    assert node_rounds(reader, account, limit=5, window=later) == node_rounds(
        reader, account, limit=5
    )


def test_a_chain_that_changed_under_the_cache_is_read_again(
    own_anvil: AnvilChain, tmp_path: Path
) -> None:
    _, ledgers, reader = swarm(own_anvil)
    account = ledgers[0].account
    run_round(ledgers, 1)
    w3 = own_anvil.rpc.w3
    snapshot = w3.provider.make_request("evm_snapshot", [])["result"]  # type: ignore[arg-type]
    run_round(ledgers, 2)
    cached = tmp_path / "events.json"
    first = EventWindow(reader, cached)
    assert [p.round for p in node_rounds(reader, account, limit=5, window=first)] == [2, 1]

    # the chain comes back from an older state (round 2 lost) and goes on past the tip read
    assert w3.provider.make_request("evm_revert", [snapshot])["result"]  # type: ignore[arg-type]
    mine(own_anvil, 10)
    again = EventWindow(reader, cached)
    rounds = node_rounds(reader, account, limit=5, window=again)
    assert again.restarted
    assert [(p.round, p.status, p.part) for p in rounds] == [(1, "final", "reported")]
    assert rounds == node_rounds(reader, account, limit=5)

    cached.write_text("{not json")  # a damaged cache is read again, not an error
    assert node_rounds(reader, account, limit=5, window=EventWindow(reader, cached)) == rounds


@pytest.mark.slow
def test_status_command_caches_and_prints_whole_values_when_piped(
    anvil_chain: AnvilChain, tmp_path: Path
) -> None:
    deployment, ledgers, _ = swarm(anvil_chain)
    run_round(ledgers, 1)
    deployment.save(tmp_path / "deployment.json")
    env = {"PATH": os.environ["PATH"], "SWARMNODE_CACHE_DIR": str(tmp_path / "cache")}

    def status(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "swarmnode", "status", "-d", "deployment.json", *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            env=env,
        )

    account = ledgers[0].account
    shown = [status("--node", account, "--json") for _ in range(2)]
    assert all(s.returncode == 0 for s in shown), [s.stderr for s in shown]
    assert json.loads(shown[0].stdout) == json.loads(shown[1].stdout)
    assert (tmp_path / "cache" / cache_path(deployment.chain_id, deployment.address).name).exists()
    uncached = status("--node", account, "--json", "--no-cache")
    assert json.loads(uncached.stdout) == json.loads(shown[0].stdout)

    table = status()  # piped: as wide as the lines need, nothing cut
    assert table.returncode == 0, table.stderr
    report = json.loads(status("--json").stdout)
    final = report["rounds"][1]["final_digest"]
    assert report["rounds"][1]["round"] == 1 and final in table.stdout
    for node in report["nodes"]:
        assert node["account"] in table.stdout and node["fingerprint"] in table.stdout
    assert "…" not in table.stdout
    assert max(len(line) for line in table.stdout.splitlines()) > 80
