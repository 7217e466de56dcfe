"""The chain side of swarmnode: the only package that imports web3.

Import the backends from their modules (`swarmnode.ledger.embedded`, `.memory`,
`.contract`); this package itself stays light so that training-only code paths (the GPU
machine has no web3) can import the shared types.
"""

from swarmnode.ledger.base import Ledger
from swarmnode.ledger.types import (
    FailReason,
    LedgerEvent,
    NodeRecord,
    RoundState,
    RoundStatus,
    Seat,
)

__all__ = ["FailReason", "Ledger", "LedgerEvent", "NodeRecord", "RoundState", "RoundStatus", "Seat"]
