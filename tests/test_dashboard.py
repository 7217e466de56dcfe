"""`swarmnode dashboard`: the data model against a real ledger, and the page in a browser.

The model is checked on the in-memory ledger, where withdrawals, leaves and admission are
cheap to stage, and with a real HTTP server standing in for a node's metrics page. The page
is checked end to end: anvil, two SwarmNodes running rounds, the `swarmnode dashboard`
command on 127.0.0.1 port 0, and Debian's headless chromium reading what it rendered.
"""

from __future__ import annotations

import hashlib
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swarmnode import canonical
from swarmnode.dashboard.model import SwarmModel
from swarmnode.dashboard.scrape import parse
from swarmnode.ledger.deployment import Deployment
from swarmnode.ledger.devchain import AnvilChain
from swarmnode.ledger.memory import InMemoryChain
from swarmnode.metrics import MetricsServer, NodeMetrics
from swarmnode.node import SwarmNode
from swarmnode.p2p.inbox import Inbox
from swarmnode.p2p.memory import MemoryNetwork, MemoryTransport
from swarmnode.p2p.roster import PeerRecord, Roster
from swarmnode.rules import Rule, SwarmParams, SyncPolicyId
from swarmnode.simulation.local import run_in_threads
from swarmnode.training import LocalTrainer, example_task

CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOT = Path("/tmp/s5/dashboard.png")
# How long the page may take to show a change: the dashboard polls the chain and scrapes the
# nodes, and chromium renders, on two cores shared with the other tests' daemons
WAIT = 60

METRICS_PAGE = """# HELP swarmnode_last_final_round The last round this node ended final.
# TYPE swarmnode_last_final_round gauge
swarmnode_last_final_round 1.0
# TYPE swarmnode_validation_metric gauge
swarmnode_validation_metric{name="accuracy"} 0.75
swarmnode_validation_metric{name="loss"} 0.5
# TYPE swarmnode_round_seconds histogram
swarmnode_round_seconds_bucket{le="1.0",phase="merge"} 3.0
other_process_metric 7
"""


def digest(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


@pytest.fixture
def metrics_page() -> Iterator[str]:
    """A node's own metrics (swarmnode.metrics) served on 127.0.0.1 port 0, as a daemon
    with metrics_listen serves them, after its first final round."""
    metrics = NodeMetrics()
    metrics.last_final_round.set(1)
    metrics.validation_metric.labels("accuracy").set(0.75)
    metrics.validation_metric.labels("loss").set(0.5)
    server = MetricsServer(metrics.registry, "127.0.0.1", 0)
    try:
        yield server.url
    finally:
        server.stop()


def test_model_folds_roster_rounds_and_curves_from_the_ledger(metrics_page: str) -> None:
    chain = InMemoryChain()
    owner = chain.new_account()
    address = chain.deploy(SwarmParams(min_peers=2, max_peers=3, restricted=True), owner)
    admin = chain.ledger(address, owner)
    a, b, c, d = ledgers = [chain.ledger(address, chain.new_account()) for _ in range(4)]
    for i, ledger in enumerate(ledgers):
        admin.allow(ledger.account)
        ledger.register(f"memory:{i}", f"certificate-{i}:{ledger.account.lower()}".encode())
    admin.revoke(d.account)  # registered, then no longer admitted
    unreachable = "http://127.0.0.1:9/metrics"  # the discard port: nothing listens there
    model = SwarmModel(a, chain_id=7, metrics=[metrics_page, unreachable])

    first = model.refresh()
    assert [(n["account"], n["endpoint"], n["admitted"], n["active"]) for n in first["nodes"]] == [
        (a.account, "memory:0", True, True),
        (b.account, "memory:1", True, True),
        (c.account, "memory:2", True, True),
        (d.account, "memory:3", False, False),
    ]
    opened = [(r["round"], r["status"], r["participants"]) for r in first["rounds"]]
    assert opened == [(1, "open", [])] and first["curves"]["loss"] == []

    for ledger, loss in ((a, 2.0), (b, 1.0), (c, 3.0)):  # the third join closes round 1
        ledger.join(1, digest(ledger.account), 10, int(loss * 1e6))
    c.withdraw(1)  # attempt 2 between a and b
    a.report(1, 2, digest("merged"))
    b.report(1, 2, digest("merged"))
    a.join(2, digest("a2"), 10, 500_000)
    b.join(2, digest("b2"), 10, 1_500_000)
    b.leave(2)

    snapshot = model.refresh()
    two, one = snapshot["rounds"]
    assert one["round"] == 1 and one["status"] == "final" and one["attempts"] == 2
    assert one["participants"] == [a.account, b.account, c.account]
    assert one["withdrawn"] == [c.account] and one["dropped"] == []
    assert one["reports"] == 2 and one["digest"] == "0x" + digest("merged").hex()
    assert one["mean_loss"] == pytest.approx(2.0)
    assert one["seconds"] is None and one["gas"] is None  # the in-memory ledger has neither
    assert two["status"] == "open" and two["participants"] == [a.account]
    assert two["left"] == [b.account] and two["mean_loss"] == pytest.approx(0.5)
    assert snapshot["curves"]["loss"] == [[1, pytest.approx(2.0)], [2, pytest.approx(0.5)]]
    assert snapshot["swarm"]["current_round"] == 2 and snapshot["swarm"]["latest_model"] == {
        "round": 1,
        "digest": "0x" + digest("merged").hex(),
    }
    assert snapshot["curves"]["accuracy"] == {metrics_page: [[1, 0.75]]}
    reachable, down = snapshot["metrics"]
    assert reachable["reachable"] and not down["reachable"]
    values = reachable["values"]
    assert values["swarmnode_last_final_round"] == 1.0
    assert values["swarmnode_validation_metric{name=accuracy}"] == 0.75
    assert values["swarmnode_rounds_total{outcome=final}"] == 0.0
    assert not any(k.endswith("_bucket") or k.startswith("process_") for k in values)
    assert json.loads(json.dumps(snapshot)) == snapshot  # what /api/swarm answers


def test_metrics_parser_reads_samples_and_skips_the_rest() -> None:
    samples = parse(METRICS_PAGE + 'bad line\nswarmnode_x{a="q\\"uote"} NaN\nswarmnode_y nope\n')
    names = [(s.name, s.labels, s.value) for s in samples[:4]]
    assert names == [
        ("swarmnode_last_final_round", {}, 1.0),
        ("swarmnode_validation_metric", {"name": "accuracy"}, 0.75),
        ("swarmnode_validation_metric", {"name": "loss"}, 0.5),
        ("swarmnode_round_seconds_bucket", {"le": "1.0", "phase": "merge"}, 3.0),
    ]
    assert [s.name for s in samples[4:]] == ["other_process_metric", "swarmnode_x"]


# ---------------------------------------------------------------------- the page, in chromium


def browser_or_fail() -> Any:
    """A headless chromium, or a skip; a failure when CI=true (CI installs it)."""
    missing = [p for p in (CHROMEDRIVER,) if not Path(p).exists()]
    if shutil.which("chromium") is None:
        missing.append("chromium")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium")
    if missing:
        message = (
            f"the browser test needs {', '.join(missing)} (apt-get install chromium "
            "chromium-driver; pip install 'selenium<=4.51')"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return webdriver, Service


def start_dashboard(cwd: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    """`swarmnode dashboard` on 127.0.0.1 port 0, and the URL it printed."""
    command = ["dashboard", "-d", "deployment.json", "--port", "0", *args]
    process = subprocess.Popen(
        [sys.executable, "-m", "swarmnode", *command],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout=120):  # web3's import and the first read of the chain
            process.kill()
            raise AssertionError("the dashboard printed no URL within 120 s")
    line = process.stdout.readline()
    assert " at http://127.0.0.1:" in line, (line, process.poll())
    return process, line.split(" at ", 1)[1].split()[0]


@pytest.mark.chain
@pytest.mark.slow
def test_page_lists_both_nodes_and_rounds_as_they_finish(
    own_anvil: AnvilChain, tmp_path: Path
) -> None:
    webdriver, Service = browser_or_fail()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    task = example_task(samples=128)
    params = SwarmParams(
        min_peers=2,
        max_peers=2,
        sync_policy=Rule(SyncPolicyId.EVERY_N_BATCHES, (2, 0, 0, 0)),
        initial_model_digest=canonical.digest(LocalTrainer(task, "cpu", 0).snapshot()),
    )
    deployment, _ = own_anvil.deploy(params)
    Deployment(
        deployment.chain_id, deployment.address, deployment.block, params, own_anvil.url
    ).save(tmp_path / "deployment.json")
    roster = Roster()
    network = MemoryNetwork(roster)
    nodes = []
    for i in range(2):
        ledger = own_anvil.ledger(deployment, own_anvil.new_account())
        certificate = f"certificate-{i}:{ledger.account.lower()}".encode()
        ledger.register(f"memory:{i}", certificate)
        roster.upsert(PeerRecord(ledger.account, f"memory:{i}", certificate))
        inbox = Inbox(ledger.account)
        network.attach(inbox)
        nodes.append(
            SwarmNode(
                ledger=ledger,
                transport=MemoryTransport(network, ledger.account),
                inbox=inbox,
                task=task,
                device="cpu",
            )
        )
    accounts = [n.ledger.account for n in nodes]
    metrics = [NodeMetrics() for _ in nodes]
    servers = [MetricsServer(m.registry, "127.0.0.1", 0) for m in metrics]

    process, url = start_dashboard(tmp_path, *(f"--metrics={s.url}" for s in servers))
    options = webdriver.ChromeOptions()
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium'}",
        "--window-size=1300,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(url)

        # The page redraws its tables every refresh, so an element found in one call can
        # be gone by the next (a stale reference): each read is one script, run between
        # two redraws, that returns plain values.
        def listed(d: Any) -> list[str]:
            return list(
                d.execute_script(
                    "return [...document.querySelectorAll('#roster tbody tr')]"
                    ".map(r => r.getAttribute('data-account'))"
                )
            )

        def accuracy_points(d: Any) -> int:
            return int(
                d.execute_script(
                    "return document.querySelectorAll('#accuracy-curve circle').length"
                )
            )

        def final_rounds(d: Any) -> list[str]:
            return sorted(
                d.execute_script(
                    "return [...document.querySelectorAll('#rounds tbody tr.final')]"
                    ".map(r => r.getAttribute('data-round'))"
                )
            )

        def round_cells(d: Any, number: int) -> list[str]:
            return list(
                d.execute_script(
                    "const sel = `#rounds tr[data-round=\"${arguments[0]}\"] td`;"
                    " return [...document.querySelectorAll(sel)].map(c => c.innerText.trim())",
                    number,
                )
            )

        WebDriverWait(driver, WAIT, poll_frequency=0.2).until(
            lambda d: sorted(listed(d)) == sorted(accounts),
            message=f"the page never listed both nodes within {WAIT} s",
        )
        assert final_rounds(driver) == []
        for number in (1, 2):
            outcomes = run_in_threads([n.step for n in nodes], timeout=120)
            assert {o.result.status for o in outcomes} == {"final"}
            for node_metrics, outcome in zip(metrics, outcomes, strict=True):
                node_metrics.round_done(outcome)  # as the daemon does after each round
            expected = [str(k) for k in range(1, number + 1)]

            def shown(d: Any, expected: list[str] = expected) -> bool:
                return final_rounds(d) == expected

            WebDriverWait(driver, WAIT, poll_frequency=0.2).until(
                shown, message=f"round {number} never showed as final within {WAIT} s"
            )
            # The accuracy curve is built from scrapes of the nodes' gauges: a point exists
            # only if a scrape saw it, so wait for this round's before the next round moves
            # the gauges on (the chain can show the round final before the nodes' metrics).
            WebDriverWait(driver, WAIT, poll_frequency=0.2).until(
                lambda d, points=2 * number: accuracy_points(d) == points,
                message=f"the accuracy curves never showed round {number} within {WAIT} s",
            )
            cells = round_cells(driver, number)
            merged = outcomes[0].result.digest
            assert merged is not None
            digest_hex = merged.hex()
            assert cells[6].startswith("0x" + digest_hex[:8]), cells  # the agreed digest
            assert int(cells[3]) == 1 and int(cells[8].replace(",", "")) > 0, cells  # gas
            assert cells[7].isdigit(), cells  # seconds from the blocks' timestamps
        assert driver.find_elements(By.CSS_SELECTOR, "#loss-curve polyline")
        assert accuracy_points(driver) == 4  # two nodes, two final rounds
        reachable = driver.execute_script(
            "return [...document.querySelectorAll('#metrics tbody tr td:nth-child(2)')]"
            ".map(c => c.innerText.trim())"
        )
        assert reachable == ["yes", "yes"]
        assert driver.find_element(By.ID, "error").get_attribute("hidden") is not None
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SCREENSHOT))
        with urllib.request.urlopen(url + "api/swarm", timeout=10) as response:
            api = json.load(response)
        assert api["swarm"]["current_round"] == 3 and len(api["curves"]["loss"]) == 2
        assert sorted(api["curves"]["accuracy"]) == sorted(s.url for s in servers)
    finally:
        driver.quit()
        for server in servers:
            server.stop()
        process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        try:
            out, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise
    assert process.returncode == 0, err
    assert "dashboard stopped" in out and "Traceback" not in err, (out, err)
