"""`swarmnode run`: one node as a long-running process.

Process concerns only: load the task; open the node folder as a live peer (identity,
chain, registration, server, transport, checkpoints: swarmnode.peer, what a hook or Flower
user opens too); train and take part in rounds; checkpoint after every final round; resume
from the last good checkpoint after a crash, giving up the seat of a round the crashed
process had joined (its state died with it); ride out a chain outage; log JSON lines and
show progress; on SIGTERM or Ctrl-C finish the round in progress within `stop_grace`, else
withdraw from it, and exit 0. Everything else is the library.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from swarmnode import progress
from swarmnode.checkpoint import CheckpointStore
from swarmnode.config import NodeConfig
from swarmnode.exceptions import (
    ChainUnavailable,
    ConfigError,
    LedgerError,
    MergeError,
    PeerError,
)
from swarmnode.metrics import MetricsServer, NodeMetrics
from swarmnode.node import SwarmNode
from swarmnode.outage import ChainOutage
from swarmnode.p2p.faults import Fault, InjectedCrash
from swarmnode.peer import LivePeer, load_identity, restore_sync, save_checkpoint
from swarmnode.privacy import PRIVACY_JOURNAL, BudgetSpent
from swarmnode.records import ROUND_EVENT, NodeRoundRecord
from swarmnode.round import RoundOutcome, RoundResult
from swarmnode.training import Task, load_task

__all__ = ["install_signal_handlers", "load_identity", "run_daemon"]

log = logging.getLogger("swarmnode.daemon")


class JsonLines(logging.Handler):
    """One JSON object per line: what a log shipper or `jq` reads."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", buffering=1)  # noqa: SIM115 - closed in close()

    def emit(self, record: logging.LogRecord) -> None:
        entry: dict[str, Any] = {
            "time": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        self._file.write(json.dumps(entry, default=str) + "\n")

    def close(self) -> None:
        self._file.close()
        super().close()


def run_daemon(config: NodeConfig, stop: threading.Event | None = None) -> int:
    """Runs until `stop` is set (SIGTERM / Ctrl-C) or `config.rounds` rounds are done."""
    if config.task is None:
        raise ConfigError(
            f"{config.identity_dir}: node.toml names no task, and `swarmnode run` trains one: "
            'add task = "module:attribute" (your own loop opens the folder with '
            "SwarmCallback.from_node_dir instead)"
        )
    task = load_task(config.task, config.task_args)
    fault = Fault.parse(config.die_at) if config.die_at else None
    device = None if config.device == "auto" else config.device
    stop = stop or threading.Event()

    handler = JsonLines(config.log_path)
    display = progress.for_stream(sys.stderr, rounds=config.rounds)  # bars on a terminal only
    console = display.log_handler()
    console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    package_log = logging.getLogger("swarmnode")
    package_log.setLevel(logging.INFO)
    package_log.addHandler(handler)
    package_log.addHandler(console)
    metrics = NodeMetrics()  # a registry of this node's own (docs/architecture.md#operators)
    served: MetricsServer | None = None
    peer: LivePeer | None = None
    try:
        if config.metrics_address is not None:  # before registering: a taken port stops it
            served = MetricsServer(metrics.registry, *config.metrics_address)
            log.info(
                "metrics on %s",
                served.url,
                extra={"fields": {"event": "metrics", "url": served.url, "port": served.port}},
            )
        peer = LivePeer.from_config(config, stop=stop)
        metrics.follow(peer.ledger.account, peer.feed.roster)
        return _serve(peer, task, device, fault, display, metrics)
    finally:
        display.stop()
        if peer is not None:
            peer.close()
        if served is not None:
            served.stop()
        package_log.removeHandler(handler)
        package_log.removeHandler(console)
        handler.close()


def _serve(
    peer: LivePeer,
    task: Task,
    device: str | None,
    fault: Fault | None,
    display: progress.NoProgress | progress.BarProgress,
    metrics: NodeMetrics,
) -> int:
    """Trains the Task and takes part in rounds on `peer` until stopped or done."""
    config, ledger, stop = peer.config, peer.ledger, peer.stop
    chain, deployment = peer.chain, peer.deployment

    def chain_answers(down: bool) -> None:
        display.outage(down)
        metrics.chain_answers(down)

    outage = ChainOutage(lambda: chain.check(deployment), where=peer.url, on_change=chain_answers)
    node = SwarmNode(
        ledger=ledger,
        transport=peer.transport,
        inbox=peer.inbox,
        task=task,
        device=device,
        seed=config.seed,
        init_seed=config.init_seed,
        settings=peer.settings,
        initial_model=config.initial_model,
        privacy=None if config.privacy is None else config.privacy.settings(),
        mean_privacy=None if config.privacy is None else config.privacy.mean_settings(),
    )
    # local DP-SGD or distributed DP (docs/privacy.md): what earlier runs of this node spent
    # counts toward the budget
    private = node.trainer.privacy or node.mean_privacy
    if private is not None:
        private.restore(config.checkpoints / PRIVACY_JOURNAL)
        metrics.track_privacy_budget(private.epsilon)
    checkpoint = peer.resume()
    if checkpoint is not None:
        node.adopt(checkpoint.round, checkpoint.vector)
        restore_sync(node.syncer.policy, checkpoint)
    peer.give_up_unfinished()
    log.info(
        "node %s serving on %s",
        ledger.account,
        peer.server.endpoint,
        extra={"fields": {"event": "started", "endpoint": peer.server.endpoint}},
    )
    done = 0
    while not stop.is_set() and (config.rounds == 0 or done < config.rounds):
        if fault is not None and done == config.die_after_rounds:
            peer.transport.arm(fault)
        mined = len(ledger.gas_log)  # receipts so far: the round's count is the difference
        try:
            peer.refresh()
            outcome = display.step(node)
        except BudgetSpent as spent:  # keeps its model; finishes on chain below
            spent_so_far = None if private is None else private.epsilon()
            event = {"event": "privacy_budget_spent", "epsilon": spent_so_far}
            log.warning("%s", spent, extra={"fields": event})
            break
        except InjectedCrash as crash:
            fields = {"event": "die", "round": crash.round}
            log.error("fault injection: %s", crash, extra={"fields": fields})
            os.kill(os.getpid(), signal.SIGKILL)
        except ChainUnavailable as exc:  # train on until the chain answers again
            outage.ride_out(node, stop, exc)
            continue
        except (LedgerError, PeerError, MergeError) as exc:
            # the chain or a peer failed us this round: keep the model, go on
            log.error("round failed here: %s", exc, extra={"fields": {"event": "error"}})
            metrics.round_failed()
            stop.wait(1.0)
            continue
        result = outcome.result
        metrics.round_done(outcome)  # before the log line: a scrape after it sees the round
        record = NodeRoundRecord.from_round(
            outcome, receipts=len(ledger.gas_log) - mined, epsilon=outcome.epsilon
        )
        fields = {"event": ROUND_EVENT, **record.to_json(), "metrics": outcome.val_metrics}
        log.info("%s", progress.round_line(outcome), extra={"fields": fields})  # loss, metrics
        if _save_checkpoint(peer.store, node, result):
            done += 1
        if result.status == RoundOutcome.NO_PEERS:  # the others finished: nobody to merge with
            break
    if not stop.is_set():  # training ended (its rounds done, or no peers left), not paused
        try:
            node.finish()  # rounds stop waiting for it (docs/round-protocol.md#finishing)
        except LedgerError as exc:  # the peers' rounds still close by the join window
            log.error("could not say on chain that training ended: %s", exc)
    log.info("node %s stopping", ledger.account, extra={"fields": {"event": "stopped"}})
    return 0


def _save_checkpoint(store: CheckpointStore, node: SwarmNode, result: RoundResult) -> bool:
    """Checkpoints a final round's model with the sync policy's state and the trainer's
    counters; True when the round ended with a model (a round done)."""
    state = {"sync": node.syncer.policy.state.to_dict(), "batches_done": node.trainer.batches_done}
    return save_checkpoint(store, result, state)


def install_signal_handlers(stop: threading.Event) -> None:
    """SIGTERM and SIGINT: no new round; the one in progress is left if still open, else
    finished within the grace or withdrawn from (swarmnode.round.Round); then exit 0."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
