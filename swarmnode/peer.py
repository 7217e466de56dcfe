"""A node folder (identity + node.toml + deployment) as a live swarm peer, in one call.

Every way into a swarm that runs as its own process needs the same wiring: decrypt the
identity, check the chain is the one the deployment names, a ledger handle, the roster feed,
the inbox, the mutual-TLS server and the transport, registration (or moving the endpoint),
checkpoints, and on a restart the last good checkpoint and giving up a seat the previous
process held. The daemon (`swarmnode run`), `SwarmCallback.from_node_dir` and
`FlowerNode.from_node_dir` all open a `LivePeer`; only what trains differs between them.

The layer of node.py and membership.py: it builds on the round and the transports, and
knows nothing of how a model is trained (docs/architecture.md#layers).
"""

from __future__ import annotations

import getpass
import hashlib
import logging
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from swarmnode import canonical
from swarmnode.checkpoint import Checkpoint, CheckpointStore
from swarmnode.config import NodeConfig
from swarmnode.distributed_dp import DistributedDP
from swarmnode.error_names import ErrorName
from swarmnode.exceptions import ConfigError, ContractError
from swarmnode.identity import NodeIdentity, take_passphrase
from swarmnode.ledger.background import quiet_retries
from swarmnode.ledger.base import Ledger
from swarmnode.ledger.contract import ContractLedger
from swarmnode.ledger.deployment import Deployment
from swarmnode.ledger.rpc import RpcChain
from swarmnode.ledger.transactions import Backoff
from swarmnode.membership import RosterFeed
from swarmnode.p2p.faults import FaultyTransport
from swarmnode.p2p.grpc_transport import GrpcTransport, PeerServer
from swarmnode.p2p.inbox import Inbox
from swarmnode.round import RoundResult, RoundSettings, leave_unfinished
from swarmnode.sync import SyncPolicy, SyncState

log = logging.getLogger(__name__)

CONFIG_FILE = "node.toml"

# Seconds between reads of the roster events in the background: a peer that registers is
# trusted by this node's server within this, before it can join a round and send to us
# (the round's own read at close alone came too late for a peer whose join closed it).
ROSTER_REFRESH = 1.0
# After registering, a peer waits this long before it is handed to what trains: the others
# read the registration within ROSTER_REFRESH, so their servers trust its certificate before
# its first join can close a round and its first frames reach them. Without the wait, a node
# whose join closed the round right after it registered was refused at the TLS handshake and
# its peers waited out the transfer deadline (seen with three processes). A restart that
# only moves the endpoint keeps its certificate and does not wait. (A wait that asked each
# peer over this node's own channels whether it trusts it yet ended sooner, but left those
# channels in gRPC's reconnect backoff after the refused handshakes, and a round right after
# start-up then lost pushes: it failed tests/test_process_faults.py once.)
SETTLE = 2 * ROSTER_REFRESH
# The longest a node with `start_with` waits for the others to register; then it starts
# with those there are, and says so.
START_WITH_WAIT = 300.0

# How long one chain call retries before it counts as an outage (about 6 s): a restarting
# dev chain is back by then; longer, and the daemon trains on (swarmnode.outage).
CALL_RETRIES = Backoff(first_delay=0.25, max_delay=2.0, attempts=6)


class LivePeer:
    """A node folder (identity + node.toml + deployment) as a live swarm peer.

    `open()` starts serving and registers; `close()` (or leaving the `with` block) stops
    the server and the transport. The registration stays on chain: a node that stops is
    still a member, and started again it moves its endpoint (docs/trust.md#the-roster).
    The roster follows the chain in a background thread (every ROSTER_REFRESH seconds),
    at every round's close, and whenever `refresh()` is called.
    """

    def __init__(
        self,
        *,
        config: NodeConfig,
        identity: NodeIdentity,
        deployment: Deployment,
        chain: RpcChain,
        ledger: ContractLedger,
        feed: RosterFeed,
        inbox: Inbox,
        server: PeerServer,
        transport: FaultyTransport,
        store: CheckpointStore,
        stop: threading.Event,
    ) -> None:
        self.config = config
        self.identity = identity
        self.deployment = deployment
        self.chain = chain
        self.ledger = ledger
        self.feed = feed
        self.inbox = inbox
        self.server = server
        self.transport = transport
        self.store = store
        self.stop = stop
        self.settings = RoundSettings(
            poll=0.05,
            stop=stop,  # set: leave an open round, finish or withdraw a closed one
            stop_grace=config.stop_grace,
            on_closed=self.refresh,  # peers that registered after us are in the round
        )
        self._feed_lock = threading.Lock()  # the feed's event cursor is not thread-safe
        self._closing = threading.Event()
        self._follower = threading.Thread(target=self._follow_roster, name="roster", daemon=True)
        self._follower.start()

    def refresh(self) -> int:
        """Reads the roster events since the last read; returns how many changed it."""
        with self._feed_lock:
            return self.feed.refresh()

    def _follow_roster(self) -> None:
        while not self._closing.wait(ROSTER_REFRESH):
            try:
                with quiet_retries():  # an outage is the round's and the daemon's to report
                    self.refresh()
            except Exception as exc:  # the chain away: the round and the outage say so
                log.debug("roster not refreshed: %s", exc)

    @property
    def url(self) -> str:
        """The chain's JSON-RPC endpoint this peer talks to."""
        return self.config.rpc or self.deployment.rpc or ""

    @classmethod
    def open(
        cls,
        node_dir: str | Path,
        *,
        stop: threading.Event | None = None,
        passphrase: str | None = None,
    ) -> LivePeer:
        """Reads `node_dir`/node.toml (or `node_dir` itself when it names a file) and opens
        that node as a live peer. The passphrase: `passphrase`, else the environment
        (SWARMNODE_KEY_PASSPHRASE or the file SWARMNODE_KEY_PASSPHRASE_FILE names), else a
        prompt when stdin is a terminal, else none (an unencrypted dev key)."""
        path = Path(node_dir)
        if path.is_dir():
            path = path / CONFIG_FILE
        return cls.from_config(NodeConfig.load(path), stop=stop, passphrase=passphrase)

    @classmethod
    def from_config(
        cls,
        config: NodeConfig,
        *,
        stop: threading.Event | None = None,
        passphrase: str | None = None,
    ) -> LivePeer:
        """`open()` for a config already read (the daemon's way in)."""
        identity = load_identity(config, passphrase)
        deployment = Deployment.load(config.deployment)
        check_fits_swarm(config, deployment)  # before anything is written on chain
        url = config.rpc or deployment.rpc
        if not url:
            raise ConfigError(f"{config.deployment}: names no RPC URL; set rpc in the node config")
        chain = RpcChain(url)
        chain.check(deployment)
        ledger = chain.ledger(deployment, identity.account, unavailable=CALL_RETRIES)
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
        transport = FaultyTransport(  # armed by the daemon when die_at says so (fault tests)
            GrpcTransport(
                ledger.account,
                identity.tls.key_pem,
                identity.tls.cert_pem,
                feed.roster,
                wire=server.wire,
            )
        )
        stop = stop or threading.Event()
        try:
            registered = enrol(ledger, server.endpoint, identity.tls.cert_der, config.deployment)
            feed.refresh()
            store = CheckpointStore(config.checkpoints)
            if registered:
                stop.wait(SETTLE)  # the others' rosters catch up with this registration
            _wait_for_registrations(feed, config.start_with, stop)
        except BaseException:
            transport.close()
            server.stop(1.0)
            raise
        return cls(
            config=config,
            identity=identity,
            deployment=deployment,
            chain=chain,
            ledger=ledger,
            feed=feed,
            inbox=inbox,
            server=server,
            transport=transport,
            store=store,
            stop=stop,
        )

    def resume(self) -> Checkpoint | None:
        """The newest checkpoint whose digest the chain agrees with, or None. Its model is
        served to peers that catch up from here; loading it into the model, and its state
        into the sync policy, is the caller's part (it knows what trains)."""
        checkpoint = self.store.latest()
        if checkpoint is None:
            return None
        on_chain = self.ledger.round(checkpoint.round).final_digest
        if on_chain != checkpoint.digest:
            log.warning(
                "checkpoint of round %d does not match the chain's digest: not used",
                checkpoint.round,
            )
            return None
        vector = checkpoint.vector
        self.inbox.publish_model(checkpoint.round, vector, canonical.chunk_hashes(vector))
        log.info(
            "resumed from the checkpoint of round %d",
            checkpoint.round,
            extra={"fields": {"event": "resumed", "round": checkpoint.round}},
        )
        return checkpoint

    def save(self, result: RoundResult, state: dict[str, Any], extra: bytes = b"") -> bool:
        """Checkpoints a final round's model with `state` (JSON) and `extra` (opaque bytes,
        e.g. an optimizer's state). True when the round ended with a model."""
        return save_checkpoint(self.store, result, state, extra)

    def give_up_unfinished(self) -> None:
        """A seat the previous process took in the current round: the snapshot it committed
        to and every segment it received died with it, so leave or withdraw
        (docs/round-protocol.md#withdrawing) before training, rather than let the others
        wait out a deadline to vote it out."""
        given_up = leave_unfinished(self.ledger)
        if given_up is not None:
            number, how = given_up
            log.warning(
                "round %d was joined before the restart and its state is gone: %s",
                number,
                how,
                extra={"fields": {"event": how, "round": number}},
            )

    def close(self) -> None:
        """Stops the roster thread, the transport and the server; the registration stays
        on chain."""
        self._closing.set()
        self._follower.join(timeout=30.0)  # one refresh at most, bounded by its retries
        self.transport.close()
        self.server.stop(1.0)

    def __enter__(self) -> LivePeer:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def check_fits_swarm(config: NodeConfig, deployment: Deployment) -> None:
    """Refuses, in one line naming the setting and the swarm, a node config that cannot run
    in the swarm of `deployment` (its file carries the swarm's params), before the node
    registers: nothing goes on chain for a node that would stop right after. The checks are
    the ones SwarmNode and SwarmCallback make when they are built (`DistributedDP.for_swarm`:
    distributed DP without secure aggregation, assumed_colluders >= min_peers, noise wider
    than secure aggregation's bound). Local DP-SGD and distributed DP both set is refused
    when node.toml is read, earlier still (swarmnode.config)."""
    mean = None if config.privacy is None else config.privacy.mean_settings()
    if mean is None:
        return
    try:
        DistributedDP.for_swarm(mean, deployment.params)
    except ConfigError as exc:
        raise ConfigError(
            f"[privacy] does not fit the swarm {deployment.address} of {config.deployment}: {exc}"
        ) from None


def load_identity(config: NodeConfig, passphrase: str | None = None) -> NodeIdentity:
    """The node's keys. The passphrase: the argument; else the environment, which it is
    taken out of (a daemon runs for months, and neither what it starts nor a look at its
    os.environ should find the secret there: docs/trust.md#keys); else a prompt on a
    terminal; else none."""
    if passphrase is None:
        passphrase = take_passphrase()
    if passphrase is None and sys.stdin is not None and sys.stdin.isatty():
        passphrase = getpass.getpass(f"passphrase for {config.identity_dir}: ")
    return NodeIdentity.load(config.identity_dir, passphrase)  # None: "no passphrase given"


def restore_sync(policy: SyncPolicy, checkpoint: Checkpoint) -> None:
    """Puts the sync policy where it was when `checkpoint` was taken (its interval and the
    median it compares the next round with), so the node keeps the swarm's rhythm."""
    sync = checkpoint.state.get("sync")
    if isinstance(sync, dict):
        policy.restore(SyncState.from_dict(sync))


def save_checkpoint(
    store: CheckpointStore, result: RoundResult, state: dict[str, Any], extra: bytes = b""
) -> bool:
    """Checkpoints a final round's model. Every fetched model was checked against the chain
    before it got here (docs/trust.md#checks-on-received-data); should one still not match
    its digest, the store refuses it and this logs that and goes on, rather than die on a
    model a peer served. True when the round ended with a model (a round done)."""
    if result.merged is None or result.digest is None:
        return False
    try:
        store.save(Checkpoint(result.round, result.digest, result.merged, state, extra))
    except ValueError as exc:
        log.error(
            "checkpoint of round %d not saved: %s",
            result.round,
            exc,
            extra={"fields": {"event": "error", "round": result.round}},
        )
    return True


def enrol(ledger: Ledger, endpoint: str, certificate: bytes, deployment: Path) -> bool:
    """Registers, or moves the endpoint, so that the chain shows this process; an account the
    swarm does not admit is told in one line who can fix that, and how
    (docs/trust.md#the-roster). True when it registered: the others must read the
    certificate before their servers trust this node."""
    try:
        return _register_or_move(ledger, endpoint, certificate)
    except ContractError as exc:
        if exc.name != ErrorName.NOT_ALLOWED:
            raise
        raise ConfigError(
            f"account {ledger.account} is not admitted to the swarm in {deployment}: its "
            f"owner admits it with `swarmnode admin allow {ledger.account} "
            f"--deployment {deployment}`"
        ) from None


def _register_or_move(ledger: Ledger, endpoint: str, certificate: bytes) -> bool:
    record = ledger.node(ledger.account)
    fingerprint = hashlib.sha256(certificate).digest()
    if record is None or not record.active:
        ledger.register(endpoint, certificate)
    elif record.fingerprint != fingerprint or ledger.account not in ledger.training_nodes():
        # a new certificate; or the node said its training was over (a run that ended) and
        # is started to train again: registering anew counts it back in, so that the
        # others' rounds wait for it and it finds them (docs/round-protocol.md#finishing)
        ledger.deregister()
        ledger.register(endpoint, certificate)
    else:
        if record.endpoint != endpoint:
            # the certificate the others trust is the same: the round's read of the roster
            # at close gives them the new endpoint before they dial it
            ledger.update_endpoint(endpoint)
        return False
    return True


def _wait_for_registrations(feed: RosterFeed, count: int, stop: threading.Event) -> None:
    """Until `count` nodes are registered (node.toml's start_with), reading the roster events
    every ROSTER_REFRESH; bounded by START_WITH_WAIT, after which the node starts with the
    nodes there are. A stop request ends the wait at once."""
    if count <= 1:
        return
    deadline = time.monotonic() + START_WITH_WAIT
    said = False
    while True:
        have = len(feed.roster.records())
        if have >= count:
            if said:
                log.info("%d nodes registered: starting", have)
            return
        if time.monotonic() >= deadline:
            log.warning(
                "start_with = %d: only %d registered after %g s; starting with them",
                count,
                have,
                START_WITH_WAIT,
            )
            return
        if not said:
            log.info("waiting for %d registered nodes (start_with), %d so far", count, have)
            said = True
        if stop.wait(ROSTER_REFRESH):
            return
        feed.refresh()
