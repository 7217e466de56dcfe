"""`swarmnode run`: one node as a long-running process.

Process concerns only: load the identity, the deployment and the task; register (or move
the endpoint) on the contract; serve peers; train and take part in rounds; checkpoint after
every final round; resume from the last good checkpoint after a crash, giving up the seat
of a round the crashed process had joined (its state died with it); on SIGTERM or Ctrl-C
finish the round in progress within `stop_grace`, else withdraw from it, and exit 0.
Everything else is the library.
"""

from __future__ import annotations

import hashlib
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
from swarmnode.checkpoint import Checkpoint, CheckpointStore
from swarmnode.config import NodeConfig
from swarmnode.error_names import ErrorName
from swarmnode.exceptions import (
    ChainUnavailable,
    ConfigError,
    ContractError,
    LedgerError,
    MergeError,
    PeerError,
)
from swarmnode.identity import NodeIdentity, take_passphrase
from swarmnode.ledger.deployment import Deployment
from swarmnode.ledger.rpc import RpcChain
from swarmnode.ledger.transactions import Backoff
from swarmnode.membership import RosterFeed
from swarmnode.node import SwarmNode
from swarmnode.outage import ChainOutage
from swarmnode.p2p.faults import Fault, FaultyTransport, InjectedCrash
from swarmnode.p2p.grpc_transport import GrpcTransport, PeerServer
from swarmnode.p2p.inbox import Inbox
from swarmnode.records import ROUND_EVENT, NodeRoundRecord
from swarmnode.round import RoundResult, RoundSettings, leave_unfinished
from swarmnode.sync import SyncState
from swarmnode.training import load_task

log = logging.getLogger("swarmnode.daemon")

# How long one chain call retries before the daemon calls it an outage (about 6 s): a
# restarting dev chain is back by then; longer, and the node trains on (swarmnode.outage).
CALL_RETRIES = Backoff(first_delay=0.25, max_delay=2.0, attempts=6)


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
    stop = stop or threading.Event()
    identity = load_identity(config)
    deployment = Deployment.load(config.deployment)
    url = config.rpc or deployment.rpc
    if not url:
        raise ConfigError(f"{config.deployment}: names no RPC URL; set rpc in the node config")
    chain = RpcChain(url)
    chain.check(deployment)
    ledger = chain.ledger(deployment, identity.account, unavailable=CALL_RETRIES)
    task = load_task(config.task, config.task_args)
    fault = Fault.parse(config.die_at) if config.die_at else None
    device = None if config.device == "auto" else config.device

    handler = JsonLines(config.log_path)
    display = progress.for_stream(sys.stderr, rounds=config.rounds)  # bars on a terminal only
    outage = ChainOutage(lambda: chain.check(deployment), where=url, on_change=display.outage)
    console = display.log_handler()
    console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    package_log = logging.getLogger("swarmnode")
    package_log.setLevel(logging.INFO)
    package_log.addHandler(handler)
    package_log.addHandler(console)
    feed = RosterFeed(ledger)
    inbox = Inbox(ledger.account)
    host, _, port = config.listen.rpartition(":")
    server = PeerServer(
        ledger.account,
        identity.tls.key_pem,
        identity.tls.cert_pem,
        feed.roster,
        inbox,
        host=host,
        port=int(port),
        current_round=ledger.current_round,
    ).start()
    transport = FaultyTransport(  # armed below when die_at says so, for fault tests
        GrpcTransport(ledger.account, identity.tls.key_pem, identity.tls.cert_pem, feed.roster)
    )
    try:
        _enrol(ledger, server.endpoint, identity.tls.cert_der, config.deployment)
        feed.refresh()
        node = SwarmNode(
            ledger=ledger,
            transport=transport,
            inbox=inbox,
            task=task,
            device=device,
            seed=config.seed,
            init_seed=config.init_seed,
            settings=RoundSettings(
                poll=0.05,
                stop=stop,  # SIGTERM: leave an open round, finish or withdraw a closed one
                stop_grace=config.stop_grace,
                on_closed=feed.refresh,  # peers that registered after us are in the round
            ),
        )
        store = CheckpointStore(config.checkpoints)
        _resume(node, store)
        _give_up_unfinished(node)
        log.info(
            "node %s serving on %s",
            ledger.account,
            server.endpoint,
            extra={"fields": {"event": "started", "endpoint": server.endpoint}},
        )
        done = 0
        while not stop.is_set() and (config.rounds == 0 or done < config.rounds):
            if fault is not None and done == config.die_after_rounds:
                transport.arm(fault)
            mined = len(ledger.gas_log)  # receipts so far: the round's count is the difference
            try:
                feed.refresh()
                outcome = display.step(node)
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
                stop.wait(1.0)
                continue
            result = outcome.result
            record = NodeRoundRecord.from_round(outcome, receipts=len(ledger.gas_log) - mined)
            fields = {"event": ROUND_EVENT, **record.to_json(), "metrics": outcome.val_metrics}
            log.info("%s", progress.round_line(outcome), extra={"fields": fields})  # loss, metrics
            if _save_checkpoint(store, node, result):
                done += 1
        log.info("node %s stopping", ledger.account, extra={"fields": {"event": "stopped"}})
        return 0
    finally:
        display.stop()
        transport.close()
        server.stop(1.0)
        package_log.removeHandler(handler)
        package_log.removeHandler(console)
        handler.close()


def load_identity(config: NodeConfig) -> NodeIdentity:
    """The node's keys, decrypted with the passphrase from the environment (empty if none),
    which is taken out of it: a daemon runs for months, and neither what it starts nor a
    look at its os.environ should find the secret there (docs/trust.md#keys)."""
    return NodeIdentity.load(config.identity_dir, take_passphrase() or "")


def _save_checkpoint(store: CheckpointStore, node: SwarmNode, result: RoundResult) -> bool:
    """Checkpoints a final round's model. Every fetched model was checked against the chain
    before it got here (docs/trust.md#checks-on-received-data); should one still not match
    its digest, the store refuses it and the node logs that and trains on, rather than die
    on a model a peer served. True when the round ended with a model (a round done)."""
    if result.merged is None or result.digest is None:
        return False
    state = {"sync": node.syncer.policy.state.to_dict(), "batches_done": node.trainer.batches_done}
    try:
        store.save(Checkpoint(result.round, result.digest, result.merged, state))
    except ValueError as exc:
        log.error(
            "checkpoint of round %d not saved: %s",
            result.round,
            exc,
            extra={"fields": {"event": "error", "round": result.round}},
        )
    return True


def _enrol(ledger: Any, endpoint: str, certificate: bytes, deployment: Path) -> None:
    """Registers, or moves the endpoint, so that the chain shows this process; an account the
    swarm does not admit is told in one line who can fix that, and how
    (docs/trust.md#the-roster)."""
    try:
        _register_or_move(ledger, endpoint, certificate)
    except ContractError as exc:
        if exc.name != ErrorName.NOT_ALLOWED:
            raise
        raise ConfigError(
            f"account {ledger.account} is not admitted to the swarm in {deployment}: its "
            f"owner admits it with `swarmnode admin allow {ledger.account} "
            f"--deployment {deployment}`"
        ) from None


def _register_or_move(ledger: Any, endpoint: str, certificate: bytes) -> None:
    record = ledger.node(ledger.account)
    fingerprint = hashlib.sha256(certificate).digest()
    if record is None or not record.active:
        ledger.register(endpoint, certificate)
    elif record.fingerprint != fingerprint:
        ledger.deregister()
        ledger.register(endpoint, certificate)
    elif record.endpoint != endpoint:
        ledger.update_endpoint(endpoint)


def _resume(node: SwarmNode, store: CheckpointStore) -> None:
    """Loads the newest good checkpoint whose digest the chain agrees with."""
    checkpoint = store.latest()
    if checkpoint is None:
        return
    on_chain = node.ledger.round(checkpoint.round).final_digest
    if on_chain != checkpoint.digest:
        log.warning(
            "checkpoint of round %d does not match the chain's digest: not used",
            checkpoint.round,
        )
        return
    node.adopt(checkpoint.round, checkpoint.vector)  # peers catching up may fetch it here
    sync = checkpoint.state.get("sync")
    if isinstance(sync, dict):
        node.syncer.policy.restore(SyncState.from_dict(sync))
    log.info(
        "resumed from the checkpoint of round %d",
        checkpoint.round,
        extra={"fields": {"event": "resumed", "round": checkpoint.round}},
    )


def _give_up_unfinished(node: SwarmNode) -> None:
    """A seat the previous process took in the current round: the snapshot it committed to
    and every segment it received died with it, so leave or withdraw
    (docs/round-protocol.md#withdrawing) before training, rather than let the others wait
    out a deadline to vote it out."""
    given_up = leave_unfinished(node.ledger)
    if given_up is not None:
        number, how = given_up
        log.warning(
            "round %d was joined before the restart and its state is gone: %s",
            number,
            how,
            extra={"fields": {"event": how, "round": number}},
        )


def install_signal_handlers(stop: threading.Event) -> None:
    """SIGTERM and SIGINT: no new round; the one in progress is left if still open, else
    finished within the grace or withdrawn from (swarmnode.round.Round); then exit 0."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
