"""Background chain work: reads a node does on its own schedule (the roster follower in
swarmnode/peer.py), whose failures the foreground reports once when it meets them itself
(swarmnode/outage.py), so they log at DEBUG. A context variable, so it holds for the thread
(or task) that set it and nowhere else; it imports nothing, so the ledger's lightest
modules can read it."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

_BACKGROUND: contextvars.ContextVar[bool] = contextvars.ContextVar("background", default=False)


def in_background() -> bool:
    """Whether this thread's chain calls are background work (inside quiet_retries)."""
    return _BACKGROUND.get()


@contextlib.contextmanager
def quiet_retries() -> Iterator[None]:
    """Chain calls in this block retry an unavailable chain, and fall back from a lost
    event filter, at DEBUG, never WARNING."""
    token = _BACKGROUND.set(True)
    try:
        yield
    finally:
        _BACKGROUND.reset(token)
