"""The embedded chain's short way to the EVM gives what web3's way gives (issue 17).

EmbeddedLedger runs views and transaction preflights on eth-tester directly, skipping
web3's middleware and formatters (docs/chain.md#three-chains). Every view the ledger reads,
on a swarm with a closed round and a reverting preflight, must come back equal, type for
type, and a revert must be named the same way.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from swarmnode.error_names import ErrorName
from swarmnode.exceptions import ContractError
from swarmnode.ledger.contract import ContractLedger
from swarmnode.ledger.embedded import EmbeddedChain, EmbeddedLedger
from swarmnode.rules import SwarmParams

pytestmark = pytest.mark.chain


def _shape(value: Any) -> Any:
    """The value with every container's type spelled out, so that a tuple where web3 gives
    a list (or a lowercase address where it gives a checksummed one) is a difference."""
    if isinstance(value, list | tuple):
        return (type(value).__name__, [_shape(v) for v in value])
    return (type(value).__name__, value)


def test_every_view_and_a_revert_come_back_as_web3_gives_them() -> None:
    chain = EmbeddedChain()
    deployment, owner = chain.deploy(SwarmParams(min_peers=2, max_peers=3, restricted=True))
    admin = chain.ledger(deployment, owner)
    ledgers = [chain.ledger(deployment, chain.new_account()) for _ in range(3)]
    for i, ledger in enumerate(ledgers):
        admin.allow(ledger.account)
        ledger.register(f"127.0.0.1:{7000 + i}", f"cert-{i}:{ledger.account.lower()}".encode())
    for i, ledger in enumerate(ledgers):
        ledger.join(1, hashlib.sha256(bytes([i])).digest(), 10 + i, 500 + i)
    assert isinstance(admin, EmbeddedLedger)
    f = admin._contract.functions
    me = ledgers[0].account
    views = [
        f.activeNodes(),
        f.allowed(me),
        f.checkedMerge(),
        f.currentRound(),
        f.dropVotes(1, 1, me),
        f.finalDigest(1),
        f.getRound(1),
        f.getRound(99),
        f.initialModelDigest(),
        f.latestModel(),
        f.mergeRule(),
        f.syncPolicy(),
        f.node(me),
        f.owner(),
        f.participants(1),
        f.secureAggregation(),
        f.trainingNodes(),
        f.quorum(3),
    ]
    for fn in views:
        web3_way = ContractLedger._view(admin, fn)
        assert _shape(admin._view(fn)) == _shape(web3_way), fn.fn_name
    assert admin.round(1).participants == tuple(led.account for led in ledgers)

    # the round closed with the third join: a join's preflight reverts, named the same
    # either way, and nothing is mined for it
    def refusal() -> ErrorName:
        with pytest.raises(ContractError) as refused:
            admin.join(1, b"\x01" * 32, 1, 1)
        return refused.value.name

    sent = len(admin.gas_log)
    direct = refusal()
    admin.sender.preflight = None  # web3's own call
    assert refusal() == direct
    assert direct == ErrorName.ROUND_NOT_OPEN
    assert len(admin.gas_log) == sent
