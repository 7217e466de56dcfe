"""`swarmnode chain / deploy / fund / admin / status` as a user runs them, in subprocesses."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.chain, pytest.mark.slow]

NODE = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


def swarmnode(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "swarmnode", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": os.environ["PATH"], "COLUMNS": "200", **(env or {})},
    )


@pytest.fixture(scope="module")
def dev_chain() -> Iterator[tuple[str, subprocess.Popen[str]]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "swarmnode", "chain", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    match = re.search(r"at (http://127\.0\.0\.1:\d+), pid (\d+)", first)
    try:
        assert match is not None, first
        yield match.group(1), process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)


def one_line_error(result: subprocess.CompletedProcess[str], needle: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("swarmnode: ") and needle in lines[0], lines[0]
    assert "Traceback" not in result.stderr


def test_deploy_fund_admin_and_status_on_a_dev_chain(
    dev_chain: tuple[str, subprocess.Popen[str]], tmp_path: Path
) -> None:
    url, _ = dev_chain
    out = tmp_path / "deployment.json"
    deployed = swarmnode(
        "deploy",
        "--rpc",
        url,
        "--out",
        str(out),
        "--allow",  # restricted by default: no --restricted needed
        NODE,
        "--max-peers",
        "4",
        "--merge-rule",
        "trimmed_mean:100000",
        "--fund",
        NODE,
    )
    assert deployed.returncode == 0, deployed.stderr
    saved = json.loads(out.read_text())
    assert saved["chain_id"] == 31337 and saved["rpc"] == url
    assert saved["params"]["max_peers"] == 4
    assert saved["params"]["merge_rule"] == {"id": 2, "params": [100000, 0, 0, 0]}
    assert f"funded {NODE}" in deployed.stdout
    assert f"allowed {NODE}" in deployed.stdout and "admin allow" in deployed.stdout
    assert "warning" not in deployed.stderr

    allowed = swarmnode("admin", "allow", NODE, "--deployment", str(out))
    assert allowed.returncode == 0, allowed.stderr
    funded = swarmnode("fund", NODE, "--deployment", str(out), "--amount", "2.5")
    assert funded.returncode == 0, funded.stderr
    assert "balance 10012.5 ETH" in funded.stdout  # 10,000 dev ETH + 10 at deploy + 2.5

    status = swarmnode("status", "--deployment", str(out), "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["address"] == saved["address"]
    assert report["current_round"] == 1
    assert report["rounds"][0]["status"] == "open"
    assert report["nodes"] == []
    assert report["params"]["restricted"] is True
    table = swarmnode("status", "--deployment", str(out))
    assert table.returncode == 0 and "trimmed_mean" in table.stdout
    assert "restricted admission" in table.stdout

    assert saved["params"]["checked_merge"] is True  # the owner checks are on by default
    opened = swarmnode(
        "deploy", "--rpc", url, "--out", str(tmp_path / "open.json"), "--open", "--unchecked-merge"
    )
    assert opened.returncode == 0, opened.stderr
    warning = " ".join(opened.stderr.split())
    for exposed in ("any account with gas", "every node's roster", "downloads the model"):
        assert exposed in warning, warning
    assert "update segments" in warning and "fill a round" in warning
    unchecked = json.loads((tmp_path / "open.json").read_text())["params"]
    assert unchecked["restricted"] is False and unchecked["checked_merge"] is False
    one_line_error(
        swarmnode(
            "deploy", "--rpc", url, "--out", str(tmp_path / "x.json"), "--open", "--allow", NODE
        ),
        "--allow",
    )


def test_each_mistake_is_one_line_without_a_traceback(
    dev_chain: tuple[str, subprocess.Popen[str]], tmp_path: Path
) -> None:
    url, _ = dev_chain
    one_line_error(swarmnode("deploy", "--rpc", "http://127.0.0.1:1"), "no chain answered")
    one_line_error(swarmnode("deploy", "--rpc", url, "--min-peers", "1"), "minPeers")
    one_line_error(swarmnode("deploy", "--rpc", url, "--merge-rule", "bogus"), "unknown merge-rule")
    one_line_error(swarmnode("status", "--deployment", str(tmp_path / "none.json")), "no such")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    one_line_error(swarmnode("status", "--deployment", str(broken)), "not JSON")
    partial = tmp_path / "partial.json"
    partial.write_text('{"chain_id": 31337}')
    one_line_error(swarmnode("status", "--deployment", str(partial)), "field address")
    out = tmp_path / "d.json"
    assert swarmnode("deploy", "--rpc", url, "--out", str(out)).returncode == 0
    wrong_chain = json.loads(out.read_text())
    wrong_chain["chain_id"] = 5
    moved = tmp_path / "wrong-chain.json"
    moved.write_text(json.dumps(wrong_chain))
    one_line_error(swarmnode("status", "--deployment", str(moved)), "chain id 5")
    one_line_error(
        swarmnode("fund", NODE, "--rpc", url, env={"SWARMNODE_PRIVATE_KEY": "zz"}),
        "not a valid private key",
    )
    one_line_error(swarmnode("fund", "not-an-address", "--rpc", url), "not an account address")
    one_line_error(
        swarmnode("fund", NODE, "--rpc", url, "--keystore", str(tmp_path / "none.key")),
        "no such keystore",
    )
    not_owner = swarmnode(
        "admin",
        "allow",
        NODE,
        "--deployment",
        str(out),
        env={"SWARMNODE_PRIVATE_KEY": "0x" + "11" * 32},
    )
    one_line_error(not_owner, "NotOwner")


def test_chain_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "swarmnode", "chain", "--port", "0", "--state", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    match = re.search(r"pid (\d+)", first)
    assert match is not None, first
    anvil_pid = int(match.group(1))
    process.send_signal(signal.SIGTERM)
    rest, _ = process.communicate(timeout=30)
    assert process.returncode == 0, rest
    assert "dev chain stopped" in rest
    with pytest.raises(ProcessLookupError):
        os.kill(anvil_pid, 0)  # the anvil child is gone too
    assert state.exists(), rest  # anvil wrote its state on the way out


def test_deploy_signs_with_a_keystore(
    dev_chain: tuple[str, subprocess.Popen[str]], tmp_path: Path
) -> None:
    from eth_account import Account

    url, _ = dev_chain
    owner = Account.create()
    keystore = tmp_path / "owner.json"
    keystore.write_text(json.dumps(Account.encrypt(owner.key, "pw", iterations=2)))
    funded = swarmnode("fund", owner.address, "--rpc", url, "--amount", "1")
    assert funded.returncode == 0, funded.stderr
    out = tmp_path / "deployment.json"
    deployed = swarmnode(
        "deploy",
        "--rpc",
        url,
        "--out",
        str(out),
        "--keystore",
        str(keystore),
        env={"SWARMNODE_KEY_PASSPHRASE": "pw"},
    )
    assert deployed.returncode == 0, deployed.stderr
    assert f"owner {owner.address}" in deployed.stdout
    status = json.loads(swarmnode("status", "--deployment", str(out), "--json").stdout)
    assert status["owner"] == owner.address
