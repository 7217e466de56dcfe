"""The contract's error names in Python are generated from the ABI and must not drift from it;
the module that holds them stays importable where web3 is not installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from swarmnode.error_names import ErrorName
from swarmnode.exceptions import STALE_VIEW_ERRORS, ContractError
from swarmnode.ledger.artifacts import load
from swarmnode.ledger.gen_error_names import TARGET, member_name, render

ROOT = Path(__file__).resolve().parent.parent


def test_the_committed_error_names_are_what_the_abi_gives() -> None:
    assert TARGET.read_text() == render(load().abi), (
        "swarmnode/error_names.py differs from the contract's ABI: "
        "run `python -m swarmnode.ledger.gen_error_names`"
    )


def test_every_error_in_the_abi_is_a_member_and_nothing_else() -> None:
    in_abi = {e["name"] for e in load().abi if e["type"] == "error"}
    assert {m.value for m in ErrorName} == in_abi
    assert member_name("NotAParticipant") == "NOT_A_PARTICIPANT"
    assert ErrorName.NOT_A_PARTICIPANT == "NotAParticipant"
    assert all(isinstance(name, ErrorName) for name in STALE_VIEW_ERRORS)


def test_a_contract_error_reads_as_its_name() -> None:
    error = ContractError(ErrorName.TOO_EARLY, {"notBefore": 5, "now": 4}, "close")
    assert error.name == "TooEarly" and error.too_early and not error.stale_view
    assert str(error) == "close: contract refused with TooEarly(notBefore=5, now=4)"


def test_the_check_mode_passes_on_the_committed_module() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "swarmnode.ledger.gen_error_names", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_the_errors_import_without_web3() -> None:
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('web3', 'eth_utils', 'eth_abi', 'eth_account'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import swarmnode.exceptions\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", blocker], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
