"""SwarmNode: where training, the sync policy, the ledger and the transport meet.

The node trains its Task locally until the swarm's sync policy says a sync is due, then
contributes a snapshot of its model to the current round, loads the merged model every
participant agreed on, and trains on. The policy's next interval is computed from the
validation losses the round's joins carried on chain, so every node keeps the same rhythm.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from swarmnode import canonical
from swarmnode.exceptions import ConfigError
from swarmnode.ledger.base import Ledger
from swarmnode.merge import make_rule
from swarmnode.p2p.inbox import Inbox
from swarmnode.p2p.transport import Transport
from swarmnode.round import RoundResult, run_round
from swarmnode.sync import make_policy
from swarmnode.training import LocalTrainer, Task

log = logging.getLogger(__name__)


@dataclass
class NodeRound:
    """One sync: what training did before it and what the round did."""

    result: RoundResult
    batches: int
    val_loss: float
    val_metrics: dict[str, float]


class SwarmNode:
    """One participant, driven by its own loop (`step`) or by a caller's (`sync_now`)."""

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
        poll: float = 0.05,
        frame_chunks: int = 128,
    ) -> None:
        self.ledger = ledger
        self.transport = transport
        self.inbox = inbox
        self.task = task
        params = ledger.params()
        self.rule = make_rule(params.merge_rule)
        self.policy = make_policy(params.sync_policy)
        self.trainer = LocalTrainer(task, device, seed, init_seed=init_seed)
        self.reference: npt.NDArray[np.float32] = self.trainer.snapshot()
        if check_initial_digest and canonical.digest(self.reference) != params.initial_model_digest:
            raise ConfigError(
                "the initial model's digest differs from the one on chain "
                f"({canonical.digest(self.reference).hex()[:16]}… vs "
                f"{params.initial_model_digest.hex()[:16]}…): every node must start from the "
                "same model (same model_factory and init_seed)"
            )
        self._poll = poll
        self._frame_chunks = frame_chunks

    def step(self) -> NodeRound:
        """Trains until a sync is due, then syncs."""
        batches = self.trainer.train_batches(self.policy.interval)
        return self.sync_now(batches)

    def sync_now(self, batches: int = 0) -> NodeRound:
        """Contributes the current model to the current round and loads the outcome."""
        metrics = self.trainer.evaluate() if self.task.val_data is not None else {}
        val_loss = float(metrics.get("loss", self.trainer.last_train_loss or 0.0))
        result = run_round(
            ledger=self.ledger,
            transport=self.transport,
            inbox=self.inbox,
            vector=self.trainer.snapshot(),
            weight=self.trainer.num_samples,
            val_loss=val_loss,
            rule=self.rule,
            reference=self.reference,
            poll=self._poll,
            frame_chunks=self._frame_chunks,
        )
        if result.merged is not None:
            self.trainer.load(result.merged)
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
        return NodeRound(result, batches, val_loss, metrics)
