"""Where training, the sync policy, the ledger and the transport meet.

Three ways in, one engine (`Syncer`): the node trains a Task with its own loop (SwarmNode),
a user's own training loop calls a hook at every batch end (SwarmCallback, like HPE's
SwarmCallback but in-process), or an unmodified Flower NumPyClient is driven as a swarm
node (swarmnode.flower). Whatever the way in, a sync contributes a snapshot of the model to
the current round and loads the merged model every participant agreed on; the sync
policy's next interval comes from the validation losses the round's joins carried on chain,
so every node keeps the same rhythm.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from swarmnode import canonical
from swarmnode.distributed_dp import DistributedDP, MeanPrivacySettings
from swarmnode.error_names import ErrorName
from swarmnode.exceptions import ConfigError, ContractError, PeerError
from swarmnode.ledger.base import Ledger
from swarmnode.merge import make_rule
from swarmnode.p2p.errors import InvalidMessage
from swarmnode.p2p.inbox import Inbox
from swarmnode.p2p.transport import Transport
from swarmnode.privacy import (
    PRIVACY_JOURNAL,
    BudgetSpent,
    PrivacySettings,
    PrivateTraining,
    plain_module,
)
from swarmnode.round import (
    DEFAULT_SETTINGS,
    Round,
    RoundOutcome,
    RoundResult,
    RoundSettings,
    catch_up,
)
from swarmnode.sync import make_policy
from swarmnode.training import LocalTrainer, Task

if TYPE_CHECKING:
    from swarmnode.checkpoint import Checkpoint
    from swarmnode.peer import LivePeer

log = logging.getLogger(__name__)


OWN_MODEL = "own model"
"""Start.source of a node whose own starting model is the swarm's."""


@dataclass(frozen=True)
class Start:
    """The model a node starts training from and where it came from."""

    vector: npt.NDArray[np.float32]
    round: int  # 0: the swarm's initial model; else the final round it was taken from
    source: str  # OWN_MODEL, "file PATH" or "peer ACCOUNT"

    @property
    def replaced(self) -> bool:
        """The node's own starting model was not the swarm's: write `vector` into it."""
        return self.source != OWN_MODEL


def start_from_chain(
    *,
    ledger: Ledger,
    transport: Transport,
    inbox: Inbox,
    own: npt.NDArray[np.float32],
    layout: canonical.Layout | None = None,
    model_file: str | Path | None = None,
    settings: RoundSettings = DEFAULT_SETTINGS,
) -> Start:
    """The model on chain a node starts from (docs/canonical-vector.md#initial-model-files).

    Its own, when that digests to the swarm's initial model; else the model in
    `model_file`, which must; else fetched from a peer and checked chunk by chunk against the
    digest on chain, as catch-up does: round 0's model (the initial one) while the swarm has
    no final round, the newest final round's after that. A node starting from the initial
    model serves it to such peers as round 0's until it holds a final round's. Peers are
    asked for up to the join window; a model that fails the checks is refused and the next
    peer asked. Where nothing works, the ConfigError says how to start from the right model.
    """
    want = ledger.params().initial_model_digest
    latest, latest_digest = ledger.latest_model()
    own_digest = canonical.digest(own)
    if own_digest == want:
        _serve_initial(inbox, latest, own)
        return Start(own, 0, OWN_MODEL)
    if model_file is not None:
        vector = _from_file(Path(model_file), layout, len(own), want)
        _serve_initial(inbox, latest, vector)
        log.info("starting from the swarm's initial model in %s", model_file)
        return Start(vector, 0, f"file {model_file}")
    number, digest = (0, want) if latest == 0 else (latest, latest_digest)
    fetched = _fetch_start(ledger, transport, number, digest, len(own), settings)
    if isinstance(fetched, Start):
        inbox.publish_model(number, fetched.vector, canonical.chunk_hashes(fetched.vector))
        return fetched
    what = "the initial model" if number == 0 else f"round {number}'s final model"
    raise ConfigError(
        f"this node's starting model digests to {own_digest.hex()[:16]}…, the swarm's initial "
        f"model on chain to {want.hex()[:16]}…, and no peer served {what} within the "
        f"{ledger.params().join_window} s join window ({fetched}). Start from the swarm's "
        "initial model: name the file the swarm was deployed with (`swarmnode deploy "
        '--initial-model FILE`) as `initial_model = "FILE"` in node.toml or initial_model=FILE '
        "to SwarmCallback / FlowerNode, or build the model exactly as the deployer did (same "
        "code and torch.manual_seed before building it; for a Task the same model_factory and "
        "init_seed), or start while a peer that holds it is up"
    )


def _serve_initial(inbox: Inbox, latest: int, vector: npt.NDArray[np.float32]) -> None:
    """Serves the initial model as round 0's to peers that start elsewhere, unless the inbox
    already serves the newest final round's (which a new final round replaces anyway)."""
    if inbox.model(latest) is None:
        inbox.publish_model(0, vector, canonical.chunk_hashes(vector))


def _from_file(
    path: Path, layout: canonical.Layout | None, numel: int, want: bytes
) -> npt.NDArray[np.float32]:
    """The initial model in `path` as this node's vector, checked against the chain."""
    state = canonical.load_model_file(path)
    what = f"initial model file {path}"
    vector = canonical.vector_for(state, layout or canonical.layout_of(state), what=what)
    if vector.numel() != numel:
        raise ConfigError(f"{what} has {vector.numel()} values, this node's model {numel}")
    got = canonical.digest(vector)
    if got != want:
        raise ConfigError(
            f"{what} digests to {got.hex()[:16]}…, the swarm's initial model on chain to "
            f"{want.hex()[:16]}…: it is not the model the swarm was deployed with"
        )
    return vector.numpy()


def _fetch_start(
    ledger: Ledger,
    transport: Transport,
    number: int,
    digest: bytes,
    numel: int,
    settings: RoundSettings,
) -> Start | str:
    """Round `number`'s model from the first active peer whose copy passes the checks,
    asking again for up to the join window; else why not, for the error message."""
    window = ledger.params().join_window
    started = time.monotonic()
    deadline = started + window
    refused: dict[str, str] = {}  # failed the checks: not asked again
    pending: dict[str, str] = {}  # did not have it (yet), or could not be reached
    announced = False
    while True:
        peers = [
            node.account
            for node in ledger.active_nodes()
            if node.account != ledger.account and node.account not in refused
        ]
        for peer in peers:
            remaining = deadline - time.monotonic()
            try:
                vector = transport.fetch_model(
                    peer, number, digest, numel, max(1.0, min(60.0, remaining))
                )
            except InvalidMessage as exc:
                log.warning("starting model from %s refused: %s", peer, exc)
                refused[peer] = str(exc)
                pending.pop(peer, None)
            except PeerError as exc:
                pending[peer] = str(exc)
            else:
                log.info(
                    "starting from round %d's model on chain (digest %s…), fetched from %s",
                    number,
                    digest.hex()[:16],
                    peer,
                )
                return Start(vector, number, f"peer {peer}")
        stop = settings.stop
        if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
            break
        if not announced and time.monotonic() - started > _ANNOUNCE_AFTER:
            log.info(
                "waiting for a peer to serve round %d's model (digest %s…) to start from: "
                "asked %s; until %.0f s from now",
                number,
                digest.hex()[:16],
                ", ".join(peers) or "no one (no other node registered)",
                deadline - time.monotonic(),
            )
            announced = True
        settings.sleep(max(settings.poll, 0.1))
    reasons = [f"{peer}: {why}" for peer, why in {**pending, **refused}.items()]
    return "; ".join(reasons) or "no other node registered"


_ANNOUNCE_AFTER = 3.0  # seconds of waiting for a peer before the wait is logged


class Syncer:
    """One node's side of the swarm: its ledger handle, transport, inbox, rule and policy."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        transport: Transport,
        inbox: Inbox,
        initial: npt.NDArray[np.float32],
        check_initial_digest: bool = True,
        settings: RoundSettings = DEFAULT_SETTINGS,
        layout: canonical.Layout | None = None,
        initial_model: str | Path | None = None,
    ) -> None:
        self.ledger = ledger
        self.settings = settings  # how every round runs: polling, frames, stop and its grace
        self.transport = transport
        self.inbox = inbox
        params = ledger.params()
        self.rule = make_rule(params.merge_rule)
        self.policy = make_policy(params.sync_policy)
        # with secure aggregation a join's weight is capped at deploy (the contract refuses
        # more: docs/secure-aggregation.md#fixed-point); a larger sample count joins capped
        secure = params.secure_aggregation
        self.max_weight = None if secure is None else secure.max_weight
        self._said_capped = False
        # the model on chain this node starts from: its own, or the swarm's, taken from the
        # file named by `initial_model` or a peer (docs/canonical-vector.md#initial-model-files)
        self.start = Start(initial, 0, OWN_MODEL)
        if check_initial_digest:
            self.start = start_from_chain(
                ledger=ledger,
                transport=transport,
                inbox=inbox,
                own=initial,
                layout=layout,
                model_file=initial_model,
                settings=settings,
            )
        self.reference = self.start.vector
        # called with every round that ended with a merged model, once it is the reference
        # and the policy has seen it: a node folder's checkpoint (swarmnode.peer)
        self.after_final: list[Callable[[RoundResult], object]] = []

    def sync(self, vector: npt.NDArray[np.float32], weight: int, val_loss: float) -> RoundResult:
        """Contributes `vector` to the current round; returns the round (merged may be None)."""
        weight = self.join_weight(weight)
        result = Round(
            ledger=self.ledger,
            transport=self.transport,
            inbox=self.inbox,
            rule=self.rule,
            vector=vector,
            weight=weight,
            val_loss=val_loss,
            reference=self.reference,
            settings=self.settings,
        ).run()
        if result.merged is not None:
            self.reference = result.merged
            joins = self.ledger.round(result.round).seats
            self.policy.after_round([seat.val_loss for seat in joins])
            for listener in self.after_final:
                listener(result)
        elif result.status != RoundOutcome.NO_PEERS:  # that one the round said, at INFO
            stopping = result.status in (
                RoundOutcome.STOPPED,  # asked to stop: a clean stop, not a fault
                RoundOutcome.LEFT,
                RoundOutcome.WITHDRAWN,
            )
            log.log(
                logging.INFO if stopping else logging.WARNING,
                "round %d ended %s for %s: keeping the local model",
                result.round,
                result.status,
                self.ledger.account,
            )
        return result

    def join_weight(self, weight: int) -> int:
        """`weight`, or the swarm's max weight when above it; said once per node."""
        if self.max_weight is None or weight <= self.max_weight:
            return weight
        if not self._said_capped:
            log.warning(
                "%s: weight %d (samples) is above the swarm's max weight %d for secure "
                "aggregation: joining with %d",
                self.ledger.account,
                weight,
                self.max_weight,
                self.max_weight,
            )
            self._said_capped = True
        return self.max_weight

    def finish(self) -> bool:
        """Says on chain that this node's training is over, after its last sync: no round
        waits for it any more, and a peer left alone ends its syncs with `no_peers` instead
        of an expired round (docs/round-protocol.md#finishing). The node stays registered
        and keeps serving the models it holds; a later sync makes it train again. False if
        the chain had already counted it out (finished before, or not registered)."""
        try:
            self.ledger.finish()
        except ContractError as err:
            if err.name not in (ErrorName.ALREADY_FINISHED, ErrorName.NOT_REGISTERED):
                raise
            log.info("%s: finish: %s", self.ledger.account, err)
            return False
        log.info("%s finished training: rounds no longer wait for it", self.ledger.account)
        return True


@dataclass
class NodeRound:
    """One sync: what training did before it and what the round did."""

    result: RoundResult
    batches: int
    val_loss: float
    val_metrics: dict[str, float]
    epsilon: float | None = None  # privacy spent by then, for a node training with DP


class SwarmNode:
    """A node that trains a Task with its own loop: `step()` trains until a sync is due."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        transport: Transport,
        inbox: Inbox,
        task: Task,
        device: str | None = None,
        seed: int = 0,
        init_seed: int = 0,
        check_initial_digest: bool = True,
        settings: RoundSettings = DEFAULT_SETTINGS,
        initial_model: str | Path | None = None,
        privacy: PrivacySettings | None = None,
        mean_privacy: MeanPrivacySettings | None = None,
        mean_seed: int | None = None,
    ) -> None:
        self.task = task
        if privacy is not None and mean_privacy is not None:
            raise ConfigError(
                "privacy: local DP-SGD and distributed DP cannot both be on: pick one "
                "(docs/privacy.md#both-kinds)"
            )
        # with `privacy`, DP-SGD and a budget (docs/privacy.md): step() raises BudgetSpent
        # instead of training past it
        self.trainer = LocalTrainer(task, device, seed, init_seed=init_seed, privacy=privacy)
        # (honest snapshot, last merged model) -> what is contributed; None: the snapshot
        self.contribution: (
            Callable[[npt.NDArray[np.float32], npt.NDArray[np.float32]], npt.NDArray[np.float32]]
            | None
        ) = None
        self.syncer = Syncer(
            ledger=ledger,
            transport=transport,
            inbox=inbox,
            initial=self.trainer.snapshot(),
            check_initial_digest=check_initial_digest,
            settings=settings,
            layout=self.trainer.layout,
            initial_model=initial_model,
        )
        if self.syncer.start.replaced:  # the swarm's start, from a file or a peer
            self.trainer.load(self.syncer.start.vector)
        # distributed DP for the mean (docs/privacy.md#distributed-dp): refused in one line
        # in a swarm without secure aggregation; `mean_seed` only for the simulator
        self.mean_privacy: DistributedDP | None = None
        if mean_privacy is not None:
            self.mean_privacy = DistributedDP.for_swarm(mean_privacy, ledger.params(), mean_seed)

    def epsilon(self) -> float | None:
        """Privacy spent so far, with either kind of DP, at its delta; else None."""
        if self.mean_privacy is not None:
            return self.mean_privacy.epsilon()
        return None if self.trainer.privacy is None else self.trainer.privacy.epsilon()

    @property
    def ledger(self) -> Ledger:
        return self.syncer.ledger

    def step(self) -> NodeRound:
        """Trains until a sync is due, then syncs; with DP, raises BudgetSpent first where
        that training would spend past the budget (docs/privacy.md#the-budget)."""
        interval = self.syncer.policy.interval
        if self.trainer.privacy is not None:
            self.trainer.privacy.check_budget(interval)
        if self.mean_privacy is not None:
            self.mean_privacy.check_budget()
        batches = self.trainer.train_batches(interval)
        return self.sync_now(batches)

    def adopt(self, round: int, vector: npt.NDArray[np.float32]) -> None:
        """Takes a final round's model as this node's own (a checkpoint it resumes from, or a
        model it caught up on) and serves it to peers catching up in turn."""
        self.trainer.load(vector)
        self.syncer.reference = vector
        self.syncer.inbox.publish_model(round, vector, canonical.chunk_hashes(vector))

    def catch_up(self) -> int | None:
        """Takes the swarm's last final model, fetched from that round's participants and
        checked against the digest on chain; returns its round, or None if already held."""
        ledger = self.ledger
        number, digest = ledger.latest_model()
        reference = self.syncer.reference
        if canonical.digest(reference) == digest:
            return None
        peers = [p for p in ledger.round(number).live_participants if p != ledger.account]
        self.adopt(number, catch_up(self.syncer.transport, number, digest, len(reference), peers))
        return number

    def finish(self) -> bool:
        """Training is over: see `Syncer.finish`."""
        return self.syncer.finish()

    def sync_now(self, batches: int = 0) -> NodeRound:
        """Contributes the current model to the current round and loads the outcome."""
        metrics = self.trainer.evaluate() if self.task.val_data is not None else {}
        # the training loss is no private figure: a DP node without validation data joins
        # with 0 (docs/privacy.md#what-it-does-not-protect)
        private = self.trainer.privacy is not None or self.mean_privacy is not None
        train_loss = None if private else self.trainer.last_train_loss
        val_loss = float(metrics.get("loss", train_loss or 0.0))
        snapshot = self.trainer.snapshot()
        weight = self.trainer.num_samples
        if self.mean_privacy is not None:  # clipped and noised; equal weights
            snapshot = self.mean_privacy.contribute(snapshot, self.syncer.reference)
            weight = 1  # docs/privacy.md#distributed-dp
            self.mean_privacy.record()
        if self.contribution is not None:  # a simulated Byzantine node poisons what it sends
            snapshot = self.contribution(snapshot, self.syncer.reference)
        privacy = self.trainer.privacy
        if privacy is not None:  # on disk before the model leaves the node
            privacy.record()
        result = self.syncer.sync(snapshot, weight, val_loss)
        if result.merged is not None:
            self.trainer.load(result.merged)
        return NodeRound(result, batches, val_loss, metrics, self.epsilon())


class SwarmCallback:
    """A hook for a training loop you already have, for any torch.nn.Module.

    Call `on_batch_end()` after each optimizer step: when the swarm's sync policy says a
    sync is due, it contributes the model to a round and writes the merged parameters into
    the module in place (integer buffers keep their local values; the optimizer keeps
    holding the same parameter tensors). Call `on_train_end()` once at the end for a last
    merge. `val_loss` gives the validation loss the node joins with (the adaptive policy
    reads the median of the joins'); without it the node joins with 0.

    `from_node_dir()` makes it a real node of its own process: it opens a node folder as a
    live peer (swarmnode.peer), checkpoints after every final round and, started again,
    resumes from the newest checkpoint the chain agrees with. `batches_done` says how far
    the loop got (the batches it had trained at that checkpoint), so that it goes on from
    there.

    `privacy` (swarmnode.privacy.make_private: your model, optimizer and loader made private
    with Opacus) makes the hook report `epsilon` and stop syncing once the budget would not
    cover another sync interval: it says so on chain (finish) and sets `budget_spent`, which
    your loop reads to stop training (docs/privacy.md#your-own-loop). `model` may be the
    wrapped one: the hook uses the plain module inside it. `mean_privacy` instead makes each
    sync contribute a clipped and noised update with weight 1 (distributed DP, in a swarm
    with secure aggregation: docs/privacy.md#distributed-dp), and stops the same way.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        ledger: Ledger,
        transport: Transport,
        inbox: Inbox,
        num_samples: int,
        val_loss: Callable[[], float] | None = None,
        check_initial_digest: bool = True,
        settings: RoundSettings = DEFAULT_SETTINGS,
        initial_model: str | Path | None = None,
        privacy: PrivateTraining | None = None,
        mean_privacy: MeanPrivacySettings | None = None,
    ) -> None:
        if num_samples < 1:
            raise ConfigError(f"num_samples must be at least 1, got {num_samples}")
        model = plain_module(model)  # Opacus's wrapper: the plain names, not `_module.`
        self.model = model
        self.num_samples = num_samples
        self._val_loss = val_loss
        self.layout = canonical.layout_of(model)
        self.syncer = Syncer(
            ledger=ledger,
            transport=transport,
            inbox=inbox,
            initial=canonical.flatten(model, self.layout).numpy(),
            check_initial_digest=check_initial_digest,
            settings=settings,
            layout=self.layout,
            initial_model=initial_model,
        )
        if self.syncer.start.replaced:  # the swarm's start, from a file or a peer
            start = torch.tensor(self.syncer.start.vector)
            canonical.unflatten_into(start, self.model, self.layout)
        self.batches_since_sync = 0
        self.batches_done = 0  # over the whole run, restarts included (from_node_dir)
        self.rounds: list[RoundResult] = []
        self.peer: LivePeer | None = None  # set by from_node_dir
        self.resumed: Checkpoint | None = None  # the checkpoint a restarted process went on from
        self._optimizer: OptimizerState | None = None
        self.privacy = privacy
        self.budget_spent = False  # set once the privacy budget ends this node's rounds
        if privacy is not None:  # a budget too small for one interval: one line, now
            privacy.check_budget(self.syncer.policy.interval)
        # distributed DP for the mean (docs/privacy.md#distributed-dp), as SwarmNode has it
        self.mean_privacy: DistributedDP | None = None
        if mean_privacy is not None:
            if privacy is not None:
                raise ConfigError(
                    "privacy: local DP-SGD and distributed DP cannot both be on: pick one "
                    "(docs/privacy.md#both-kinds)"
                )
            self.mean_privacy = DistributedDP.for_swarm(mean_privacy, ledger.params())
            self.mean_privacy.check_budget()

    @property
    def epsilon(self) -> float | None:
        """Privacy spent so far (with `privacy` or `mean_privacy`), at its delta; else None."""
        if self.mean_privacy is not None:
            return self.mean_privacy.epsilon()
        return None if self.privacy is None else self.privacy.epsilon()

    @classmethod
    def from_node_dir(
        cls,
        node_dir: str | Path,
        model: nn.Module,
        *,
        num_samples: int,
        val_loss: Callable[[], float] | None = None,
        optimizer_state: OptimizerState | None = None,
        stop: threading.Event | None = None,
        passphrase: str | None = None,
        initial_model: str | Path | None = None,
        privacy: PrivateTraining | None = None,
        mean_privacy: MeanPrivacySettings | None = None,
    ) -> SwarmCallback:
        """The hook as a real node: `node_dir` (made by `swarmnode init`, naming the swarm's
        deployment) opened as a live peer, registered, serving its peers over mutual TLS.

        After every final round it checkpoints the merged model, the sync policy's state,
        `batches_done` and, when `optimizer_state` is given (an optimizer, a scheduler, or
        any object with state_dict / load_state_dict, or a (get, set) pair of functions), the
        optimizer's state. Started again, it loads the newest checkpoint whose digest the
        chain agrees with into `model` and the optimizer, restores the policy and
        `batches_done`, and gives up a seat the killed process held. `stop` (set it from a
        signal handler) makes a round in progress leave or withdraw as the daemon does.
        With `privacy` or `mean_privacy`, the epsilon spent is kept in the folder's checkpoints
        (privacy.json) and counted on from there when the process starts again.
        Call `close()` at the end (or use the hook as a context manager)."""
        # here, not at the top: the live peer loads web3, grpc and pydantic, which the hook's
        # in-process uses (and the GPU machine's tests) never need
        from swarmnode.peer import LivePeer, restore_sync

        peer = LivePeer.open(node_dir, stop=stop, passphrase=passphrase)
        try:
            if privacy is not None:  # what earlier runs of this node spent counts too
                privacy.restore(peer.config.checkpoints / PRIVACY_JOURNAL)
            hook = cls(
                model,
                ledger=peer.ledger,
                transport=peer.transport,
                inbox=peer.inbox,
                num_samples=num_samples,
                val_loss=val_loss,
                settings=peer.settings,
                initial_model=initial_model or peer.config.initial_model,
                privacy=privacy,
                mean_privacy=mean_privacy,
            )
            if hook.mean_privacy is not None:  # earlier runs' rounds count too
                hook.mean_privacy.restore(peer.config.checkpoints / PRIVACY_JOURNAL)
                hook.mean_privacy.check_budget()
            hook.peer = peer
            hook._optimizer = optimizer_state
            checkpoint = peer.resume()
            if checkpoint is not None:
                vector = checkpoint.vector
                canonical.unflatten_into(torch.from_numpy(vector), model, hook.layout)
                hook.syncer.reference = vector
                restore_sync(hook.syncer.policy, checkpoint)
                hook.batches_done = int(checkpoint.state.get("batches_done", 0))
                if optimizer_state is not None and checkpoint.extra:
                    _set_state(optimizer_state, checkpoint.extra)
                hook.resumed = checkpoint
            peer.give_up_unfinished()
            hook.syncer.after_final.append(hook._checkpoint)
        except BaseException:
            peer.close()
            raise
        return hook

    def _checkpoint(self, result: RoundResult) -> None:
        assert self.peer is not None
        state = {"sync": self.syncer.policy.state.to_dict(), "batches_done": self.batches_done}
        extra = _get_state(self._optimizer) if self._optimizer is not None else b""
        self.peer.save(result, state, extra)

    def close(self) -> None:
        """Stops the live peer of `from_node_dir` (its server and transport)."""
        if self.peer is not None:
            self.peer.close()

    def __enter__(self) -> SwarmCallback:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def on_batch_end(self) -> RoundResult | None:
        self.batches_since_sync += 1
        self.batches_done += 1
        if self.budget_spent or not self.syncer.policy.due(self.batches_since_sync):
            return None
        return self._sync()

    def on_train_end(self) -> RoundResult:
        """The last sync, then `Syncer.finish()`: the swarm stops waiting for this node, even
        when that sync fails. Once the privacy budget is spent, no sync: the last round."""
        if self.budget_spent:  # finished on chain already; set only after a sync
            return self.rounds[-1]
        try:
            return self._sync()
        finally:
            self.syncer.finish()

    def _sync(self) -> RoundResult:
        if self.peer is not None:  # peers that registered since: on the roster for this round
            self.peer.refresh()
        loss = float(self._val_loss()) if self._val_loss is not None else 0.0
        vector = canonical.flatten(self.model, self.layout).numpy()
        weight = self.num_samples
        if self.mean_privacy is not None:  # clipped and noised; equal weights
            vector = self.mean_privacy.contribute(vector, self.syncer.reference)
            weight = 1
            self.mean_privacy.record()
        if self.privacy is not None:
            self.privacy.record()
        result = self.syncer.sync(vector, weight, loss)
        if result.merged is not None:
            canonical.unflatten_into(torch.from_numpy(result.merged), self.model, self.layout)
        self.batches_since_sync = 0
        self.rounds.append(result)
        if self.privacy is not None or self.mean_privacy is not None:
            try:
                if self.privacy is not None:
                    self.privacy.check_budget(self.syncer.policy.interval)
                if self.mean_privacy is not None:
                    self.mean_privacy.check_budget()
            except BudgetSpent as spent:
                log.warning("%s: %s", self.syncer.ledger.account, spent)
                self.budget_spent = True
                self.syncer.finish()
        return result


class StateDict(Protocol):
    """What torch optimizers and schedulers are: state out, state back in."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any], /) -> None: ...


OptimizerState = StateDict | tuple[Callable[[], Any], Callable[[Any], object]]
"""The optimizer's state a node folder's checkpoints carry (SwarmCallback.from_node_dir)."""


def _get_state(source: OptimizerState) -> bytes:
    state = source[0]() if isinstance(source, tuple) else source.state_dict()
    out = io.BytesIO()
    torch.save(state, out)
    return out.getvalue()


def _set_state(target: OptimizerState, data: bytes) -> None:
    # weights_only: tensors, numbers and containers; a checkpoint cannot run code
    state = torch.load(io.BytesIO(data), weights_only=True)
    if isinstance(target, tuple):
        target[1](state)
    else:
        target.load_state_dict(state)
