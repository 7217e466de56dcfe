"""Nodes that sync a different number of times never hang a swarm (issue 15 point 2).

A node whose training is over says so on chain (`finish()`, which `on_train_end` calls after
the last sync); rounds close once every node still training has joined, and a node left
alone ends its sync with `no_peers` instead of waiting for a round to expire
(docs/round-protocol.md#finishing). Real threads, the in-memory ledger on the wall clock and
the in-memory transport: the nodes judge deadlines by their own clocks, nobody moves time.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from swarmnode import canonical
from swarmnode.ledger.devchain import AnvilChain
from swarmnode.ledger.events import EventCursor
from swarmnode.ledger.types import RoundStatus
from swarmnode.node import SwarmCallback, Syncer
from swarmnode.records import round_records
from swarmnode.round import RoundOutcome, RoundResult, RoundSettings
from swarmnode.rules import Rule, SwarmParams, SyncPolicyId
from swarmnode.simulation.local import LocalSwarm, memory_swarm, run_in_threads

JOIN_WINDOW = 20  # seconds: what a node may wait for a peer still training, at most
EVERY = 10  # batches between syncs
BATCH = 32


def params(initial: bytes, max_peers: int = 8) -> SwarmParams:
    # max_peers above the swarm's size: only the count of nodes still training closes early
    return SwarmParams(
        min_peers=2,
        max_peers=max_peers,
        join_window=JOIN_WINDOW,
        transfer_deadline=10,
        round_deadline=60,
        sync_policy=Rule(SyncPolicyId.EVERY_N_BATCHES, (EVERY, 0, 0, 0)),
        initial_model_digest=initial,
    )


def model() -> nn.Module:
    torch.manual_seed(0)  # every node builds the same initial model
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))


@dataclass
class Sync:
    """One sync as the user's loop saw it."""

    result: RoundResult
    started: float
    ended: float


@dataclass
class Trained:
    hook: SwarmCallback
    syncs: list[Sync] = field(default_factory=list)
    ended: float = 0.0


def train(hook: SwarmCallback, net: nn.Module, batches: int, epochs: int, seed: int) -> Trained:
    """A user's own loop: `batches` batches an epoch, the hook after each, then the end."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batches * BATCH, 4, generator=generator)
    y = x.sum(dim=1, keepdim=True)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    done = Trained(hook)

    def timed(step: Callable[[], RoundResult | None]) -> None:
        started = time.monotonic()
        result = step()
        if result is not None:
            done.syncs.append(Sync(result, started, time.monotonic()))

    for _ in range(epochs):
        for b in range(batches):
            optimizer.zero_grad()
            rows = slice(b * BATCH, (b + 1) * BATCH)
            nn.functional.mse_loss(net(x[rows]), y[rows]).backward()
            optimizer.step()
            timed(hook.on_batch_end)
    timed(hook.on_train_end)
    done.ended = time.monotonic()
    return done


def hooks(swarm: LocalSwarm, nets: list[nn.Module], poll: float = 0.01) -> list[SwarmCallback]:
    return [
        SwarmCallback(
            net,
            ledger=peer.ledger,
            transport=peer.transport,
            inbox=peer.inbox,
            num_samples=100,
            settings=RoundSettings(poll=poll),
        )
        for net, peer in zip(nets, swarm.peers, strict=True)
    ]


def test_18_19_and_18_batches_an_epoch_never_hang(caplog: pytest.LogCaptureFixture) -> None:
    """Six epochs of 18, 19 and 18 batches, a sync every 10 and one at the end: 11 syncs for
    the two short nodes, 12 for the long one, whose last finds no peers left. Before, it
    waited forever in memory and 300 s on a real chain, for a round that expired."""
    caplog.set_level(logging.INFO, logger="swarmnode")
    nets = [model() for _ in range(3)]
    swarm = memory_swarm(params(canonical.digest(canonical.flatten(nets[0]))), 3, clock=time.time)
    callbacks = hooks(swarm, nets)
    sizes = (18, 19, 18)

    trained: list[Trained] = run_in_threads(
        [partial(train, callbacks[i], nets[i], sizes[i], 6, seed=i) for i in range(3)],
        timeout=120,
    )

    statuses = [[s.result.status for s in t.syncs] for t in trained]
    assert statuses == [["final"] * 11, ["final"] * 11 + ["no_peers"], ["final"] * 11]
    ledger = swarm.peers[0].ledger
    for number in range(1, 12):  # every round with all three, on one digest
        state = ledger.round(number)
        assert state.status == RoundStatus.FINAL
        assert len(state.participants) == 3
        digests = {t.syncs[number - 1].result.digest for t in trained}
        assert digests == {state.final_digest}
    assert [t.syncs[10].result.round for t in trained] == [11, 11, 11]
    last = trained[1].syncs[11].result
    assert (last.round, last.merged) == (12, None)
    # it did not join (the others had finished), or joined and left when they did
    assert last.transactions in (0, 2)
    assert ledger.round(12).status == RoundStatus.OPEN and ledger.round(12).joined == 0
    assert ledger.round(12).training == 0  # all three finished
    for t in trained:  # every node ends within the join window of its last sync
        assert t.ended - t.syncs[-1].started < JOIN_WINDOW
    assert trained[1].syncs[11].ended - trained[1].syncs[11].started < 1.0  # at once
    lonely = [r.getMessage() for r in caplog.records if "no peers left" in r.getMessage()]
    assert lonely and all(swarm.peers[1].ledger.account in m for m in lonely)
    weights = {canonical.flatten(net).numpy().tobytes() for net in nets}
    assert len(weights) == 2  # the long node trained 4 batches past the last merge, alone


def test_a_node_left_alone_in_an_open_round_leaves_it_with_no_peers_left(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The other node finishes while this one waits in a round: the wait says what it waits
    for, and ends as soon as the finish lands, with `no_peers`, the round left."""
    caplog.set_level(logging.INFO, logger="swarmnode")
    initial = canonical.flatten(model()).numpy()
    swarm = memory_swarm(params(canonical.digest(initial)), 2, clock=time.time)
    waiting_said = threading.Event()
    said: list[str] = []

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "waiting for" in record.getMessage():
                said.append(record.getMessage())
                waiting_said.set()

    watch = Watch()
    logging.getLogger("swarmnode").addHandler(watch)
    try:
        syncers = [
            Syncer(
                ledger=p.ledger,
                transport=p.transport,
                inbox=p.inbox,
                initial=initial,
                settings=RoundSettings(poll=0.01, wait_log_every=0.2),
            )
            for p in swarm.peers
        ]
        first = run_in_threads([partial(s.sync, initial, 10, 0.5) for s in syncers], 60)
        assert [r.status for r in first] == ["final", "final"]
        stayer, leaver = syncers
        cursor = EventCursor(stayer.ledger)
        cursor.poll()
        outcome: list[RoundResult] = []
        waiting = threading.Thread(target=lambda: outcome.append(stayer.sync(initial, 10, 0.5)))
        waiting.start()
        try:
            joined = cursor.wait_for(lambda e: e.name == "Joined", timeout=30)
            assert joined.args["node"] == stayer.ledger.account
            assert waiting_said.wait(30)  # a wait of more than wait_log_every says what for
            assert leaver.finish()
        finally:
            waiting.join(30)
        assert not waiting.is_alive()
    finally:
        logging.getLogger("swarmnode").removeHandler(watch)

    (result,) = outcome
    assert (result.status, result.round, result.merged) == (RoundOutcome.NO_PEERS, 2, None)
    names = [e.name for e in cursor.poll()]
    assert names == ["Finished", "Left"]
    state = stayer.ledger.round(2)
    assert (state.status, state.joined, state.training) == (RoundStatus.OPEN, 0, 1)
    # the wait named the round, the peer it waited for and the deadlines
    assert any(
        "round 2" in m and leaver.ledger.account[:10] in m and "round deadline" in m for m in said
    )
    assert any("no peers left" in r.getMessage() for r in caplog.records)
    assert not leaver.finish()  # finishing twice: the chain already counted it out

    # alone, every later sync ends the same way at once, without a transaction
    again = stayer.sync(initial, 10, 0.5)
    assert (again.status, again.transactions) == (RoundOutcome.NO_PEERS, 0)


def test_a_lone_node_at_the_swarms_start_waits_for_its_peers() -> None:
    """Before the swarm's first final round a node alone is not 'left alone': its peers may
    still be registering, so it waits (bounded by the round deadline) and merges with the
    first one that comes."""
    initial = canonical.flatten(model()).numpy()
    swarm = memory_swarm(params(canonical.digest(initial)), 2, clock=time.time)
    early, late = swarm.peers
    certificate = f"memory-certificate-1:{late.ledger.account.lower()}".encode()
    late.ledger.deregister()  # not there yet
    syncers = [
        Syncer(
            ledger=p.ledger,
            transport=p.transport,
            inbox=p.inbox,
            initial=initial,
            settings=RoundSettings(poll=0.01),
        )
        for p in swarm.peers
    ]
    cursor = EventCursor(early.ledger)
    cursor.poll()

    def arrive_late() -> RoundResult:
        cursor.wait_for(lambda e: e.name == "Joined", timeout=30)  # the early one waits
        assert early.ledger.round(1).training == 1
        late.ledger.register("memory:1", certificate)
        return syncers[1].sync(initial, 10, 0.5)

    results = run_in_threads([lambda: syncers[0].sync(initial, 10, 0.5), arrive_late], 60)
    assert [r.status for r in results] == ["final", "final"]
    assert early.ledger.round(1).participants == (early.ledger.account, late.ledger.account)


@pytest.mark.chain
@pytest.mark.slow
def test_a_daemon_with_a_round_more_ends_cleanly_when_its_peer_has_finished(
    own_anvil: AnvilChain, tmp_path: Path
) -> None:
    """`swarmnode run` processes on anvil: a with rounds = 1, b with rounds = 2. a finishes
    after round 1; b's second sync finds no peers left and b exits 0 at once, not after the
    300 s round deadline."""
    from tests.test_daemon import finish, start, two_nodes

    deployment, (a, b) = two_nodes(own_anvil, tmp_path, rounds=1)
    b.write_text(b.read_text().replace("rounds = 1", "rounds = 2"))
    started = time.monotonic()

    finish([start(a), start(b)])

    took = time.monotonic() - started
    reader = own_anvil.ledger(deployment, own_anvil.new_account())
    assert reader.round(1).status == RoundStatus.FINAL
    state = reader.round(2)
    assert (state.status, state.joined, state.training) == (RoundStatus.OPEN, 0, 0)

    def logged(name: str) -> list[dict[str, Any]]:
        lines = (tmp_path / name / "node.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]

    assert [r.status for r in round_records(logged("a"))] == ["final"]
    assert [r.status for r in round_records(logged("b"))] == ["final", "no_peers"]
    assert any("no peers left" in e.get("message", "") for e in logged("b"))
    assert took < 250  # the round deadline is 300 s: nobody waited for it (two start-ups)
