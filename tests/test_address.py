"""One spelling per account: what normalize() accepts and what it refuses."""

from __future__ import annotations

import pytest

from swarmnode.address import is_address, normalize

ACCOUNT = "0x" + "ab" * 20


def test_every_letter_case_of_an_account_normalizes_to_one_checksummed_spelling() -> None:
    spellings = {ACCOUNT, ACCOUNT.upper().replace("0X", "0x"), "0X" + "AB" * 20}
    normalized = {normalize(s) for s in spellings}
    assert len(normalized) == 1
    (only,) = normalized
    assert only.lower() == ACCOUNT and only != ACCOUNT  # EIP-55 mixes the case


@pytest.mark.parametrize(
    "text",
    ["ab" * 20, "0x" + "ab" * 19, "0x" + "ab" * 21, "0x" + "zz" * 20, "", "0x", " " + ACCOUNT],
)
def test_anything_but_0x_and_40_hex_digits_is_refused_by_name(text: str) -> None:
    assert not is_address(text)
    with pytest.raises(ValueError, match="not an account address"):
        normalize(text)
