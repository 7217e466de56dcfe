"""An unmodified Flower NumPyClient as a swarm node, with no Flower server anywhere.

Flower users already have a client with get_parameters, fit and evaluate. The node plays the
server's part locally: it calls `fit` with the swarm's current model, contributes what fit
returns (weighted by the number of examples fit reports) to a swarm round, and hands the
merged parameters to the next `fit`. The parameters' floating-point arrays form the canonical
vector in list order; integer arrays keep the client's own values. flwr itself is not
imported here: any object with Flower's NumPyClient methods works.

One `fit` call is the sync policy's unit, what one batch is to SwarmNode and SwarmCallback:
with "every N" the node fits N times between syncs, and the adaptive policy moves on from
the losses the nodes joined with, each the client's own `evaluate` of what it contributes.
After the merge the client evaluates the merged parameters, the model the node now holds,
and the node keeps what evaluate and fit report (accuracy and the like) in its results.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt
import torch

from swarmnode import canonical
from swarmnode.exceptions import ConfigError
from swarmnode.ledger.base import Ledger
from swarmnode.node import Syncer
from swarmnode.p2p.inbox import Inbox
from swarmnode.p2p.transport import Transport
from swarmnode.round import DEFAULT_SETTINGS, RoundResult, RoundSettings
from swarmnode.sync import Adaptive

if TYPE_CHECKING:
    from swarmnode.checkpoint import Checkpoint
    from swarmnode.peer import LivePeer

Arrays = list[npt.NDArray[Any]]


class NumPyClientLike(Protocol):
    def get_parameters(self, config: dict[str, Any]) -> Arrays: ...

    def fit(
        self, parameters: Arrays, config: dict[str, Any]
    ) -> tuple[Arrays, int, dict[str, Any]]: ...

    def evaluate(
        self, parameters: Arrays, config: dict[str, Any]
    ) -> tuple[float, int, dict[str, Any]]: ...


@dataclass(frozen=True)
class Evaluation:
    """What the client's `evaluate` returned for one set of parameters."""

    loss: float
    num_examples: int
    metrics: dict[str, Any]


@dataclass
class FlowerRound:
    """One step: the fits before the sync, the round, and the client's evaluation after it.

    `loss` and `metrics` are the client's evaluate of the parameters the node holds after the
    round: the merged ones when the round merged, else its own fitted ones (None without
    evaluate). `join_loss` is the loss the node joined the round with: evaluate of what it
    contributed, before the merge (0.0 without evaluate).
    """

    result: RoundResult
    num_examples: int  # what the last fit reported: the node's weight in the merge
    fit_metrics: list[dict[str, Any]]  # one per fit, in order
    loss: float | None
    metrics: dict[str, Any] = field(default_factory=dict)
    join_loss: float = 0.0

    @property
    def fits(self) -> int:
        """How many times the client's fit ran before this round's sync."""
        return len(self.fit_metrics)


class FlowerNode:
    """Drives a Flower NumPyClient through swarm rounds: `step()` fits until the swarm's sync
    policy says a sync is due (one fit per unit of its interval), then syncs once.

    `evaluate=False` skips the client's evaluate: the node joins with loss 0 and reports no
    loss, which the adaptive policy cannot work with (ConfigError). `rounds` holds every
    step's FlowerRound, as SwarmCallback.rounds holds its results.
    """

    def __init__(
        self,
        client: NumPyClientLike,
        *,
        ledger: Ledger,
        transport: Transport,
        inbox: Inbox,
        config: dict[str, Any] | None = None,
        evaluate: bool = True,
        check_initial_digest: bool = True,
        settings: RoundSettings = DEFAULT_SETTINGS,
        initial_model: str | Path | None = None,
    ) -> None:
        self.client = client
        self.config = dict(config or {})
        self._evaluate = evaluate
        self.parameters: Arrays = [np.array(a, copy=True) for a in client.get_parameters({})]
        self._shapes = [(a.shape, a.dtype) for a in self.parameters]
        self.syncer = Syncer(
            ledger=ledger,
            transport=transport,
            inbox=inbox,
            initial=self._vector(self.parameters),
            check_initial_digest=check_initial_digest,
            settings=settings,
            layout=canonical.layout_of(self._state(self.parameters)),
            initial_model=initial_model,
        )
        if self.syncer.start.replaced:  # the swarm's start, from a file or a peer
            state = self._state(self.parameters)
            canonical.unflatten_into(torch.tensor(self.syncer.start.vector), state)
            self.parameters = [t.numpy() for t in state.values()]
        if not evaluate and isinstance(self.syncer.policy, Adaptive):
            raise ConfigError(
                "the swarm's sync policy is adaptive: it reads the loss each node joins with, "
                "the client's evaluate on its own data; a FlowerNode needs evaluate=True"
            )
        self.rounds: list[FlowerRound] = []

    peer: LivePeer | None = None  # the node folder's live peer, when from_node_dir made it
    resumed: Checkpoint | None = None  # the checkpoint a restarted process went on from

    @classmethod
    def from_node_dir(
        cls,
        node_dir: str | Path,
        client: NumPyClientLike,
        *,
        config: dict[str, Any] | None = None,
        evaluate: bool = True,
        stop: threading.Event | None = None,
        passphrase: str | None = None,
        initial_model: str | Path | None = None,
    ) -> FlowerNode:
        """The client as a real node: `node_dir` (made by `swarmnode init`, naming the
        swarm's deployment) opened as a live peer (swarmnode.peer), registered and serving
        its peers over mutual TLS. After every final round it checkpoints the merged
        parameters and the sync policy's state; started again, it goes on from the newest
        checkpoint the chain agrees with (the parameters the next fit starts from) and gives
        up a seat the killed process held. Stop it with `node.peer.close()`."""
        # here, not at the top: the live peer loads web3, grpc and pydantic
        from swarmnode.peer import LivePeer, restore_sync

        peer = LivePeer.open(node_dir, stop=stop, passphrase=passphrase)
        try:
            node = cls(
                client,
                ledger=peer.ledger,
                transport=peer.transport,
                inbox=peer.inbox,
                config=config,
                evaluate=evaluate,
                settings=peer.settings,
                initial_model=initial_model or peer.config.initial_model,
            )
            node.peer = peer
            checkpoint = peer.resume()
            if checkpoint is not None:
                state = cls._state([np.array(a, copy=True) for a in node.parameters])
                canonical.unflatten_into(torch.from_numpy(checkpoint.vector), state)
                node.parameters = [t.numpy() for t in state.values()]
                node.syncer.reference = checkpoint.vector
                restore_sync(node.syncer.policy, checkpoint)
                node.resumed = checkpoint
            peer.give_up_unfinished()
            policy = node.syncer.policy
            node.syncer.after_final.append(
                lambda result: peer.save(result, {"sync": policy.state.to_dict()})
            )
        except BaseException:
            peer.close()
            raise
        return node

    @staticmethod
    def _state(arrays: Arrays) -> OrderedDict[str, torch.Tensor]:
        # shares the arrays' memory; keeps 0-D arrays 0-D (np.ascontiguousarray would not)
        return OrderedDict(canonical.arrays_state(arrays))

    def _vector(self, arrays: Arrays) -> npt.NDArray[np.float32]:
        return canonical.flatten(self._state(arrays)).numpy()

    def finish(self) -> bool:
        """Training is over (after the last step): rounds stop waiting for this node, and a
        peer left alone ends with `no_peers` (swarmnode.node.Syncer.finish)."""
        return self.syncer.finish()

    def step(self) -> FlowerRound:
        """Fits from the swarm's current model until a sync is due, then syncs once.

        Each fit starts from the parameters the one before returned; the sync contributes
        the last fit's parameters, weighted by the examples that fit reported, and joins with
        the client's evaluate of them. Once merged, the client evaluates the merged
        parameters: that is the loss and the metrics the step reports.
        """
        policy = self.syncer.policy
        parameters = self.parameters
        num_examples = 1
        fit_metrics: list[dict[str, Any]] = []
        while not policy.due(len(fit_metrics)):  # an interval is at least 1: one fit or more
            parameters, num_examples, metrics = self._fit(parameters)
            fit_metrics.append(metrics)
        joined = self._evaluation(parameters) if self._evaluate else None
        result = self.syncer.sync(
            self._vector(parameters), max(num_examples, 1), joined.loss if joined else 0.0
        )
        held = joined  # without a merge the node keeps its own fitted parameters
        if result.merged is not None:
            state = self._state(parameters)
            canonical.unflatten_into(torch.from_numpy(result.merged), state)
            parameters = [t.numpy() for t in state.values()]
            held = self._evaluation(parameters) if self._evaluate else None
        self.parameters = parameters
        step = FlowerRound(
            result=result,
            num_examples=num_examples,
            fit_metrics=fit_metrics,
            loss=held.loss if held else None,
            metrics=dict(held.metrics) if held else {},
            join_loss=joined.loss if joined else 0.0,
        )
        self.rounds.append(step)
        return step

    def _fit(self, parameters: Arrays) -> tuple[Arrays, int, dict[str, Any]]:
        """One call of the client's fit on a copy of `parameters`; checks what it returns."""
        fitted, num_examples, metrics = self.client.fit(
            [np.array(a, copy=True) for a in parameters], self.config
        )
        if [(np.asarray(a).shape, np.asarray(a).dtype) for a in fitted] != self._shapes:
            raise ConfigError(
                "fit returned parameters of other shapes or dtypes than get_parameters"
            )
        return [np.array(a, copy=True) for a in fitted], int(num_examples), dict(metrics)

    def _evaluation(self, parameters: Arrays) -> Evaluation:
        """The client's evaluate of a copy of `parameters` (on its own data)."""
        loss, num_examples, metrics = self.client.evaluate(
            [np.array(a, copy=True) for a in parameters], self.config
        )
        return Evaluation(float(loss), int(num_examples), dict(metrics))
