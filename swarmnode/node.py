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

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from swarmnode import canonical
from swarmnode.exceptions import ConfigError
from swarmnode.ledger.base import Ledger
from swarmnode.merge import make_rule
from swarmnode.p2p.inbox import Inbox
from swarmnode.p2p.transport import Transport
from swarmnode.round import DEFAULT_SETTINGS, Round, RoundResult, RoundSettings, catch_up
from swarmnode.sync import make_policy
from swarmnode.training import LocalTrainer, Task

log = logging.getLogger(__name__)


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
    ) -> None:
        self.ledger = ledger
        self.settings = settings  # how every round runs: polling, frames, stop and its grace
        self.transport = transport
        self.inbox = inbox
        params = ledger.params()
        self.rule = make_rule(params.merge_rule)
        self.policy = make_policy(params.sync_policy)
        self.reference = initial
        if check_initial_digest and canonical.digest(initial) != params.initial_model_digest:
            raise ConfigError(
                "the initial model's digest differs from the one on chain "
                f"({canonical.digest(initial).hex()[:16]}… vs "
                f"{params.initial_model_digest.hex()[:16]}…): every node must start from the "
                "same model (same model_factory and init_seed)"
            )

    def sync(self, vector: npt.NDArray[np.float32], weight: int, val_loss: float) -> RoundResult:
        """Contributes `vector` to the current round; returns the round (merged may be None)."""
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
        else:
            log.warning(
                "round %d ended %s for %s: keeping the local model",
                result.round,
                result.status,
                self.ledger.account,
            )
        return result


@dataclass
class NodeRound:
    """One sync: what training did before it and what the round did."""

    result: RoundResult
    batches: int
    val_loss: float
    val_metrics: dict[str, float]


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
    ) -> None:
        self.task = task
        self.trainer = LocalTrainer(task, device, seed, init_seed=init_seed)
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
        )

    @property
    def ledger(self) -> Ledger:
        return self.syncer.ledger

    def step(self) -> NodeRound:
        """Trains until a sync is due, then syncs."""
        batches = self.trainer.train_batches(self.syncer.policy.interval)
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

    def sync_now(self, batches: int = 0) -> NodeRound:
        """Contributes the current model to the current round and loads the outcome."""
        metrics = self.trainer.evaluate() if self.task.val_data is not None else {}
        val_loss = float(metrics.get("loss", self.trainer.last_train_loss or 0.0))
        snapshot = self.trainer.snapshot()
        if self.contribution is not None:  # a simulated Byzantine node poisons what it sends
            snapshot = self.contribution(snapshot, self.syncer.reference)
        result = self.syncer.sync(snapshot, self.trainer.num_samples, val_loss)
        if result.merged is not None:
            self.trainer.load(result.merged)
        return NodeRound(result, batches, val_loss, metrics)


class SwarmCallback:
    """A hook for a training loop you already have, for any torch.nn.Module.

    Call `on_batch_end()` after each optimizer step: when the swarm's sync policy says a
    sync is due, it contributes the model to a round and writes the merged parameters into
    the module in place (integer buffers keep their local values; the optimizer keeps
    holding the same parameter tensors). Call `on_train_end()` once at the end for a last
    merge. `val_loss` gives the validation loss the node joins with (the adaptive policy
    reads the median of the joins'); without it the node joins with 0.
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
    ) -> None:
        if num_samples < 1:
            raise ConfigError(f"num_samples must be at least 1, got {num_samples}")
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
        )
        self.batches_since_sync = 0
        self.rounds: list[RoundResult] = []

    def on_batch_end(self) -> RoundResult | None:
        self.batches_since_sync += 1
        if not self.syncer.policy.due(self.batches_since_sync):
            return None
        return self._sync()

    def on_train_end(self) -> RoundResult:
        return self._sync()

    def _sync(self) -> RoundResult:
        loss = float(self._val_loss()) if self._val_loss is not None else 0.0
        vector = canonical.flatten(self.model, self.layout).numpy()
        result = self.syncer.sync(vector, self.num_samples, loss)
        if result.merged is not None:
            canonical.unflatten_into(torch.from_numpy(result.merged), self.model, self.layout)
        self.batches_since_sync = 0
        self.rounds.append(result)
        return result
