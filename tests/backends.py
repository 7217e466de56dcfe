"""The ledger backends the behaviour suite runs against, behind one small test-only shape.

Each backend deploys a swarm, hands out ledgers for fresh funded accounts, and moves chain
time without sleeping: in memory, on the embedded py-evm chain, and on anvil.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from swarmnode.ledger.base import Ledger
from swarmnode.rules import SwarmParams

if TYPE_CHECKING:
    from swarmnode.ledger.deployment import Deployment
    from swarmnode.ledger.devchain import AnvilChain


class Backend(ABC):
    name: str

    @abstractmethod
    def deploy(self, params: SwarmParams, *, validate: bool = True) -> Ledger:
        """Deploys a swarm and returns the owner's ledger."""

    @abstractmethod
    def new_ledger(self) -> Ledger:
        """A fresh funded account on the last deployed swarm."""

    @abstractmethod
    def advance(self, seconds: float) -> None:
        """Moves the chain's clock (and the nodes') forward."""

    @abstractmethod
    def advance_to(self, timestamp: int) -> None:
        """Moves the clock so that the next transaction runs at `timestamp` or later."""


class MemoryBackend(Backend):
    name = "memory"

    def __init__(self) -> None:
        from swarmnode.ledger.memory import InMemoryChain

        self.chain = InMemoryChain()
        self._address = ""

    def deploy(self, params: SwarmParams, *, validate: bool = True) -> Ledger:
        owner = self.chain.new_account()
        self._address = self.chain.deploy(params, owner, validate=validate)
        return self.chain.ledger(self._address, owner)

    def new_ledger(self) -> Ledger:
        return self.chain.ledger(self._address, self.chain.new_account())

    def advance(self, seconds: float) -> None:
        self.chain.advance(seconds)

    def advance_to(self, timestamp: int) -> None:
        self.chain.advance(max(0, timestamp - self.chain.now()))


class EmbeddedBackend(Backend):
    name = "embedded"

    def __init__(self) -> None:
        from swarmnode.ledger.embedded import EmbeddedChain

        self.chain = EmbeddedChain()
        self._deployment: Deployment | None = None

    def deploy(self, params: SwarmParams, *, validate: bool = True) -> Ledger:
        deployment, owner = self.chain.deploy(params, validate=validate)
        self._deployment = deployment
        return self.chain.ledger(deployment, owner)

    def new_ledger(self) -> Ledger:
        assert self._deployment is not None, "deploy first"
        return self.chain.ledger(self._deployment, self.chain.new_account())

    def advance(self, seconds: float) -> None:
        self.chain.advance(seconds)

    def advance_to(self, timestamp: int) -> None:
        self.chain.advance(max(0, timestamp - self.chain.now()))


class AnvilBackend(Backend):
    name = "anvil"

    def __init__(self, chain: AnvilChain) -> None:
        self.chain = chain
        self._deployment: Deployment | None = None

    def deploy(self, params: SwarmParams, *, validate: bool = True) -> Ledger:
        self._deployment, owner = self.chain.deploy(params, validate=validate)
        return self.chain.ledger(self._deployment, owner)

    def new_ledger(self) -> Ledger:
        assert self._deployment is not None, "deploy first"
        return self.chain.ledger(self._deployment, self.chain.new_account())

    def advance(self, seconds: float) -> None:
        self.chain.advance(seconds)

    def advance_to(self, timestamp: int) -> None:
        self.chain.advance(max(0, timestamp - self.chain.now()))
