"""Turns the three ways a chain reports a revert into one ContractError with the error's name.

eth-tester raises TransactionFailed with the revert data only inside its message; JSON-RPC
nodes raise ContractCustomError / ContractLogicError carrying hex data; a transaction mined
with status 0 raised nothing at all, and is replayed by the caller to get the data.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_utils.abi import function_signature_to_4byte_selector
from eth_utils.address import to_checksum_address

from swarmnode.error_names import ErrorName
from swarmnode.exceptions import ContractError
from swarmnode.ledger.artifacts import load

_ErrorSpec = tuple[ErrorName, list[str], list[str]]


@cache
def _error_table() -> dict[bytes, _ErrorSpec]:
    table: dict[bytes, _ErrorSpec] = {}
    for entry in load().abi:
        if entry["type"] != "error":
            continue
        types = [i["type"] for i in entry["inputs"]]
        names = [i["name"] for i in entry["inputs"]]
        selector = function_signature_to_4byte_selector(f"{entry['name']}({','.join(types)})")
        table[bytes(selector)] = (ErrorName(entry["name"]), names, types)
    return table


def decode_revert_data(data: bytes, call: str = "") -> ContractError | None:
    """The named contract error in `data`, or None if it is not one of ours."""
    spec = _error_table().get(bytes(data[:4]))
    if spec is None:
        return None
    name, names, types = spec
    try:
        values = abi_decode(types, bytes(data[4:]))
    except Exception:  # malformed data from a misbehaving node: still name the error
        return ContractError(name, {}, call)
    args: dict[str, Any] = {}
    for arg_name, arg_type, value in zip(names, types, values, strict=True):
        args[arg_name] = to_checksum_address(value) if arg_type == "address" else value
    return ContractError(name, args, call)


_BYTES_LITERAL = re.compile(r"b(['\"]).*\1", re.DOTALL)
_HEX = re.compile(r"0x[0-9a-fA-F]{8,}")


def revert_data_from_exception(exc: BaseException) -> bytes | None:
    """Digs the raw revert data out of whatever a web3 provider raised."""
    data = getattr(exc, "data", None)
    if isinstance(data, bytes):
        return data
    if isinstance(data, str) and data.startswith("0x"):
        return bytes.fromhex(data[2:])
    if isinstance(data, dict):  # some nodes nest it: {"data": "0x..."}
        inner = data.get("data")
        if isinstance(inner, str) and inner.startswith("0x"):
            return bytes.fromhex(inner[2:])
    message = " ".join(str(a) for a in exc.args)
    literal = _BYTES_LITERAL.search(message)
    if literal:
        try:
            value = ast.literal_eval(literal.group(0))
        except (ValueError, SyntaxError):
            value = None
        if isinstance(value, bytes):
            return value
    hex_match = _HEX.search(message)
    if hex_match:
        return bytes.fromhex(hex_match.group(0)[2:])
    return None


def contract_error_from(exc: BaseException, call: str = "") -> ContractError | None:
    data = revert_data_from_exception(exc)
    return None if data is None else decode_revert_data(data, call)
