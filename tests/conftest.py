"""Shared fixtures. Nothing chain-related is imported at module level: the GPU machine runs
the gpu-marked tests with torch and numpy only (no web3, eth-tester or pydantic there)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from swarmnode.ledger.devchain import AnvilChain
    from tests.backends import Backend

BACKEND_NAMES = ("anvil", "embedded", "memory")


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread per pytest-xdist worker (`pytest -n 2 --dist loadfile`).

    loadfile, not load: a module's tests share module fixtures (one transport-fuzz server,
    one dev chain for the chain CLI tests) and some run in order. Not loadgroup either:
    with pytest 9.2 and xdist 3.8 it ignores xdist_group (pytest-xdist issue 1386).

    A worker shares the cores with the others: torch's default of one thread per core made
    the in-process simulation tests spend a third of their CPU time spinning (two workers on
    two cores: 66 s of CPU against 42 s with one thread each)."""
    if "PYTEST_XDIST_WORKER" in os.environ:
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # read when torch is first imported
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(1)


@pytest.fixture(scope="session")
def anvil_chain() -> Iterator[AnvilChain]:
    """One anvil process for the session, on a port the OS picked; stopped by its pid."""
    from swarmnode.ledger.devchain import AnvilChain

    chain = AnvilChain()
    try:
        yield chain
    finally:
        chain.stop()


@pytest.fixture
def own_anvil() -> Iterator[AnvilChain]:
    """An anvil for one test alone: daemons judge deadlines by their own clocks against the
    block times, and the session's anvil has had its time moved by other tests."""
    from swarmnode.ledger.devchain import AnvilChain

    chain = AnvilChain()
    try:
        yield chain
    finally:
        chain.stop()


@pytest.fixture(params=BACKEND_NAMES, ids=lambda name: name)
def backend(request: pytest.FixtureRequest) -> Backend:
    """Every behaviour test runs once per ledger backend; chain-backed runs carry the chain mark."""
    from tests.backends import AnvilBackend, EmbeddedBackend, MemoryBackend

    name: str = request.param
    if name == "memory":
        return MemoryBackend()
    request.applymarker(pytest.mark.chain)
    if name == "anvil":
        return AnvilBackend(request.getfixturevalue("anvil_chain"))
    return EmbeddedBackend()
