"""anvil with the embedded chain's interface: deploy, funded accounts, and movable time.

For everything that wants a real multi-process chain on this machine (the gas and latency
report, the test suite's anvil backend, the simulator's process mode) without caring how
it was started.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import TracebackType

from eth_account import Account
from eth_account.signers.local import LocalAccount

from swarmnode.ledger.anvil import DEV_KEY, AnvilProcess
from swarmnode.ledger.contract import ContractLedger
from swarmnode.ledger.deployment import Deployment
from swarmnode.ledger.rpc import RpcChain
from swarmnode.ledger.transactions import Backoff
from swarmnode.rules import SwarmParams

DEFAULT_FUNDING_WEI = 10**18  # 1 ether: thousands of calls at anvil's gas price


class AnvilChain:
    """A dev chain owned by this process; stop() ends it."""

    def __init__(self, *, port: int = 0, state: Path | None = None) -> None:
        self.process = AnvilProcess(port=port, state=state)
        self.process.start()
        try:
            self.rpc = RpcChain(self.process.url)
        except BaseException:  # nobody holds this object yet to stop the process
            self.process.stop()
            raise
        self.funder: LocalAccount = Account.from_key(DEV_KEY)
        self._offset = 0.0

    @property
    def url(self) -> str:
        return self.process.url

    def now(self) -> int:
        """Never behind the newest block: blocks mined within one second step by one second.
        Read over the plain JSON-RPC client: a node's deadline waits ask this often."""
        head = self.rpc.rpc.request("eth_getBlockByNumber", ["latest", False])
        latest = int(head["timestamp"], 16)
        return max(int(time.time() + self._offset), latest)

    def advance(self, seconds: float) -> None:
        """Moves chain time with evm_increaseTime; the nodes' clock (now) follows."""
        target = self.now() + seconds
        delta = max(0, int(target - (time.time() + self._offset)) + 1)
        self.rpc.w3.provider.make_request("evm_increaseTime", [delta])  # type: ignore[arg-type]
        self._offset += delta

    def new_account(self, fund_wei: int = DEFAULT_FUNDING_WEI) -> LocalAccount:
        account: LocalAccount = Account.create()
        if fund_wei:
            self.rpc.fund(self.funder, account.address, fund_wei)
        return account

    def deploy(
        self, params: SwarmParams, owner: LocalAccount | None = None, *, validate: bool = True
    ) -> tuple[Deployment, LocalAccount]:
        owner = owner or self.new_account()
        return self.rpc.deploy(params, owner, validate=validate), owner

    def ledger(
        self, deployment: Deployment, account: LocalAccount, too_early: Backoff | None = None
    ) -> ContractLedger:
        return self.rpc.ledger(deployment, account, clock=self.now, too_early=too_early)

    def stop(self) -> None:
        self.process.stop()

    def __enter__(self) -> AnvilChain:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
