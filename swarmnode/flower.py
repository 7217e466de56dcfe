"""An unmodified Flower NumPyClient as a swarm node, with no Flower server anywhere.

Flower users already have a client with get_parameters, fit and evaluate. The node plays the
server's part locally: it calls `fit` with the swarm's current model, contributes what fit
returns (weighted by the number of examples fit reports) to a swarm round, and hands the
merged parameters to the next `fit`. The parameters' floating-point arrays form the canonical
vector in list order; integer arrays keep the client's own values. flwr itself is not
imported here: any object with Flower's NumPyClient methods works.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

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

Arrays = list[npt.NDArray[Any]]


class NumPyClientLike(Protocol):
    def get_parameters(self, config: dict[str, Any]) -> Arrays: ...

    def fit(
        self, parameters: Arrays, config: dict[str, Any]
    ) -> tuple[Arrays, int, dict[str, Any]]: ...

    def evaluate(
        self, parameters: Arrays, config: dict[str, Any]
    ) -> tuple[float, int, dict[str, Any]]: ...


@dataclass
class FlowerRound:
    result: RoundResult
    num_examples: int
    fit_metrics: dict[str, Any]
    loss: float | None


class FlowerNode:
    """Drives a Flower NumPyClient through swarm rounds: `step()` is one fit and one sync."""

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
        )

    @staticmethod
    def _state(arrays: Arrays) -> OrderedDict[str, torch.Tensor]:
        return OrderedDict(
            (f"{i}", torch.from_numpy(np.ascontiguousarray(a))) for i, a in enumerate(arrays)
        )

    def _vector(self, arrays: Arrays) -> npt.NDArray[np.float32]:
        return canonical.flatten(self._state(arrays)).numpy()

    def step(self) -> FlowerRound:
        """One local fit from the swarm's current model, then one swarm round."""
        fitted, num_examples, metrics = self.client.fit(
            [np.array(a, copy=True) for a in self.parameters], self.config
        )
        if [(np.asarray(a).shape, np.asarray(a).dtype) for a in fitted] != self._shapes:
            raise ConfigError(
                "fit returned parameters of other shapes or dtypes than get_parameters"
            )
        fitted = [np.array(a, copy=True) for a in fitted]
        loss = None
        if self._evaluate:
            loss, _, _ = self.client.evaluate([np.array(a, copy=True) for a in fitted], self.config)
        result = self.syncer.sync(self._vector(fitted), max(int(num_examples), 1), loss or 0.0)
        if result.merged is not None:
            state = self._state(fitted)
            canonical.unflatten_into(torch.from_numpy(result.merged), state)
            fitted = [t.numpy() for t in state.values()]
        self.parameters = fitted
        return FlowerRound(result, int(num_examples), dict(metrics), loss)
