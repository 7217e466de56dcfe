from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.backends import BACKENDS, AnvilBackend, AnvilChain, Backend


@pytest.fixture(scope="session")
def anvil_chain() -> Iterator[AnvilChain]:
    """One anvil process for the session, on a port the OS picked; stopped by its pid."""
    chain = AnvilChain()
    try:
        yield chain
    finally:
        chain.stop()


@pytest.fixture(params=sorted(BACKENDS), ids=lambda name: name)
def backend(request: pytest.FixtureRequest) -> Backend:
    """Every behaviour test runs once per ledger backend; chain-backed runs carry the chain mark."""
    name: str = request.param
    if name == "memory":
        return BACKENDS[name]()  # type: ignore[call-arg]
    request.applymarker(pytest.mark.chain)
    if name == "anvil":
        return AnvilBackend(request.getfixturevalue("anvil_chain"))
    return BACKENDS[name]()  # type: ignore[call-arg]
