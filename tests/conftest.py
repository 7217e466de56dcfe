from __future__ import annotations

import pytest

from tests.backends import BACKENDS, Backend


@pytest.fixture(params=sorted(BACKENDS), ids=lambda name: name)
def backend(request: pytest.FixtureRequest) -> Backend:
    """Every behaviour test runs once per ledger backend; chain-backed runs carry the chain mark."""
    name: str = request.param
    if name != "memory":
        request.applymarker(pytest.mark.chain)
    return BACKENDS[name]()
