"""A contract function's call data and a view's answer, encoded and decoded as web3 does it.

The short ways to the chain (the embedded chain's direct calls into eth-tester, the JSON-RPC
path of swarmnode.ledger.rpc) skip web3's contract layer, which validates the arguments and
formats the result on every call; what they return must still be what web3 returns, type
for type (tests/test_embedded_views.py, tests/test_jsonrpc.py compare the two).
"""

from __future__ import annotations

from typing import Any, ClassVar, cast

from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_utils.abi import function_abi_to_4byte_selector, get_abi_input_types, get_abi_output_types
from eth_utils.address import to_checksum_address
from web3.contract.contract import ContractFunction
from web3.types import TxParams


class ViewAbi:
    """How one function's arguments are encoded and a view's answer decoded, as web3 does
    it: one value for a view with one output, else a list of them (`as_web3`)."""

    _known: ClassVar[dict[str, ViewAbi]] = {}

    def __init__(self, fn: ContractFunction) -> None:
        self._selector = bytes(function_abi_to_4byte_selector(fn.abi))
        self._inputs = get_abi_input_types(fn.abi)
        self._outputs = get_abi_output_types(fn.abi)

    @classmethod
    def of(cls, fn: ContractFunction) -> ViewAbi:
        """The codec of `fn`, built once per function name (SwarmLedger overloads none)."""
        known = cls._known.get(fn.fn_name)
        if known is None:
            known = cls._known[fn.fn_name] = cls(fn)
        return known

    def encode(self, args: tuple[Any, ...] | list[Any]) -> bytes:
        """Call data: the 4-byte selector and the ABI-encoded arguments."""
        return self._selector + abi_encode(self._inputs, list(args))

    def decode(self, data: bytes) -> Any:
        values = [
            as_web3(kind, value)
            for kind, value in zip(self._outputs, abi_decode(self._outputs, data), strict=True)
        ]
        return values[0] if len(values) == 1 else values


def call_data(fn: ContractFunction) -> str:
    """`fn`'s call data as a 0x-prefixed hex string, as JSON-RPC and web3 carry it."""
    return "0x" + ViewAbi.of(fn).encode(fn.args).hex()


def as_web3(kind: str, value: Any) -> Any:
    """`value` of ABI type `kind` as web3 returns it: arrays as lists, addresses checksummed
    (the views return addresses and arrays of them, nothing deeper)."""
    if kind == "address":
        return to_checksum_address(value)
    if kind == "address[]":
        return [to_checksum_address(v) for v in value]
    if isinstance(value, tuple):
        return list(value)
    return value


def contract_transaction(
    fn: ContractFunction, address: str, fields: TxParams, tip: int, base_fee: int
) -> TxParams:
    """`fn`'s transaction to the contract at `address` with the sender's fields (from, nonce,
    gas, chain id), as web3's build_transaction makes it: call data, no value, the tip, and
    its default strategy's fee cap of the tip plus twice the newest base fee."""
    built = dict(fields)
    built.update(
        to=address,
        data=call_data(fn),
        value=0,
        maxPriorityFeePerGas=tip,
        maxFeePerGas=tip + 2 * base_fee,
    )
    return cast(TxParams, built)
