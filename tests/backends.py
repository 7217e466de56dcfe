"""The ledger backends the behaviour suite runs against, behind one small test-only shape.

Each backend deploys a swarm, hands out ledgers for fresh funded accounts, and moves chain
time without sleeping. The anvil backend (real chains issue) plugs in here as a third.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from swarmnode.ledger.base import Ledger
from swarmnode.rules import SwarmParams

if TYPE_CHECKING:
    from swarmnode.ledger.deployment import Deployment


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


class AnvilChain:
    """One anvil process shared by a test session, with a clock that follows its time moves."""

    def __init__(self) -> None:
        from eth_account import Account

        from swarmnode.ledger.anvil import DEV_KEY, AnvilProcess
        from swarmnode.ledger.rpc import RpcChain

        self.process = AnvilProcess()
        self.process.start()
        self.rpc = RpcChain(self.process.url)
        self.funder = Account.from_key(DEV_KEY)
        self._offset = 0.0

    def now(self) -> int:
        """Never behind the newest block: blocks mined within one second step by one second."""
        latest = int(self.rpc.w3.eth.get_block("latest")["timestamp"])
        return max(int(time.time() + self._offset), latest)

    def advance(self, seconds: float) -> None:
        target = self.now() + seconds
        delta = max(0, int(target - (time.time() + self._offset)) + 1)
        self.rpc.w3.provider.make_request("evm_increaseTime", [delta])  # type: ignore[arg-type]
        self._offset += delta

    def stop(self) -> None:
        self.process.stop()


class AnvilBackend(Backend):
    name = "anvil"

    def __init__(self, chain: AnvilChain) -> None:
        self.chain = chain
        self._deployment: Deployment | None = None

    def deploy(self, params: SwarmParams, *, validate: bool = True) -> Ledger:
        from eth_account import Account

        owner = Account.create()
        self.chain.rpc.fund(self.chain.funder, owner.address, 10**18)
        self._deployment = self.chain.rpc.deploy(params, owner, validate=validate)
        return self._ledger(owner)

    def new_ledger(self) -> Ledger:
        from eth_account import Account

        account = Account.create()
        self.chain.rpc.fund(self.chain.funder, account.address, 10**18)
        return self._ledger(account)

    def _ledger(self, account: Any) -> Ledger:
        assert self._deployment is not None, "deploy first"
        return self.chain.rpc.ledger(self._deployment, account, clock=self.chain.now)

    def advance(self, seconds: float) -> None:
        self.chain.advance(seconds)

    def advance_to(self, timestamp: int) -> None:
        self.chain.advance(max(0, timestamp - self.chain.now()))
