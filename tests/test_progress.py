"""Progress bars of `swarmnode run`: drawn on an interactive terminal, never anywhere else.

Real nodes (in-memory ledger and transport) train and sync under the display; the bars are
read back from a rich console that writes to a string."""

from __future__ import annotations

import io
import logging
import os
import re

from rich.console import Console

from swarmnode import canonical
from swarmnode.node import SwarmNode
from swarmnode.progress import BarProgress, NoProgress, for_stream
from swarmnode.rules import Rule, SwarmParams, SyncPolicyId
from swarmnode.simulation.local import memory_swarm, run_in_threads
from swarmnode.training import LocalTrainer, example_task

ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
BAR_GLYPHS = ("━", "╸", "╺")


def two_nodes(every: int = 8) -> list[SwarmNode]:
    tasks = [example_task(seed=i, samples=128) for i in range(2)]
    params = SwarmParams(
        min_peers=2,
        max_peers=2,
        sync_policy=Rule(SyncPolicyId.EVERY_N_BATCHES, (every, 0, 0, 0)),
        initial_model_digest=canonical.digest(LocalTrainer(tasks[0], "cpu", 0).snapshot()),
    )
    swarm = memory_swarm(params, 2)
    return [
        SwarmNode(
            ledger=p.ledger, transport=p.transport, inbox=p.inbox, task=t, device="cpu", seed=i
        )
        for i, (p, t) in enumerate(zip(swarm.peers, tasks, strict=True))
    ]


def log_through(display: NoProgress | BarProgress, message: str) -> None:
    logger = logging.getLogger("tests.progress")
    handler = display.log_handler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    try:
        logger.warning(message)
    finally:
        logger.removeHandler(handler)


def test_off_a_terminal_only_log_lines_are_written() -> None:
    stream = io.StringIO()
    display = for_stream(stream, rounds=2)
    assert isinstance(display, NoProgress)
    nodes = two_nodes()
    try:
        rounds = run_in_threads([lambda: display.step(nodes[0]), nodes[1].step], timeout=60)
        display.outage(True)
        nodes[0].trainer.train_batches(3)
        display.outage(False)
        log_through(display, "a plain line")
    finally:
        display.stop()
    assert {r.result.status for r in rounds} == {"final"}
    assert stream.getvalue() == "WARNING a plain line\n"  # no bar, no escape code


def test_a_terminal_gets_bars() -> None:
    leader, follower = os.openpty()  # a real terminal device, as an interactive shell has
    try:
        with os.fdopen(follower, "w", closefd=False) as terminal:
            assert isinstance(for_stream(terminal), BarProgress)
    finally:
        os.close(leader)
        os.close(follower)


def test_the_bars_follow_training_rounds_and_an_outage() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, force_interactive=True, width=100)
    display = BarProgress(console, rounds=3, auto_refresh=False)
    nodes = two_nodes(every=8)

    def shown() -> str:
        display.refresh()
        return ESCAPE.sub("", out.getvalue())

    try:
        display.begin_interval(nodes[0])
        nodes[0].trainer.train_batches(5)
        text = shown()
        assert re.search(r"training .*5/8 batches", text), text
        assert "0/3 rounds" in text

        rounds = run_in_threads([lambda: display.step(nodes[0]), nodes[1].step], timeout=60)
        assert {r.result.status for r in rounds} == {"final"}
        text = shown()
        assert re.search(r"round 1 final .*1/3 rounds", text), text
        assert re.search(r"syncing .*8/8 batches", text), text  # trained, then synced

        display.outage(True)
        nodes[0].trainer.train_batches(12)
        text = shown()
        assert re.search(r"chain down, training on .*12 batches", text), text
        display.outage(False)

        log_through(display, "a line above the bars")
        assert "WARNING a line above the bars" in shown()
    finally:
        display.stop()
    assert any(glyph in out.getvalue() for glyph in BAR_GLYPHS)
