"""A small JSON-RPC client over one urllib3 connection pool: one job, `request`.

web3's HTTP provider costs about 0.85 ms of Python a request on anvil (requests merges the
proxy settings of the environment into every call) and its middleware asks eth_chainId
before every contract call; the same request over a pooled urllib3 connection costs about
0.37 ms (docs/chain.md#the-json-rpc-path). The ledger's hot path (views, gas estimates,
nonces, submissions, receipts, logs) goes through here; deployment and other cold paths
keep web3.

Errors come out in the shapes the ledger already handles:
- an error reply raises `RpcError` with the node's `code`, `message` and `data`, so that
  `swarmnode.ledger.errors.revert_data_from_exception` finds revert data in `.data`;
- no answer (refused, reset, timed out) raises `RpcUnavailable`, a ConnectionError, which
  `TransactionSender.guard` turns into ChainUnavailable;
- a reply that is not JSON-RPC raises `NotJsonRpc`, naming the URL.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from typing import Any

from urllib3 import BaseHTTPResponse, HTTPConnectionPool, Timeout
from urllib3.connectionpool import connection_from_url
from urllib3.exceptions import HTTPError, LocationValueError, ProtocolError
from urllib3.util import make_headers, parse_url

from swarmnode.exceptions import ConfigError, LedgerError

# Many node threads of one process share a client (the simulator, one RpcChain's ledgers),
# each ledger one request at a time: connections are opened as needed and this many kept.
# Beyond it a request never waits for a connection, but opens one and closes it after use
# (urllib3 warns of each), so it is above any swarm the simulator runs in one process.
POOL_SIZE = 256
# Statuses that mean "the node behind this gateway is not answering now", not "this is no
# JSON-RPC endpoint": retried with backoff like a refused connection.
_UNAVAILABLE_STATUSES = frozenset({429, 502, 503, 504})
_SHOWN_BYTES = 120  # of a reply that is not JSON-RPC, in its error message


class RpcError(Exception):
    """The node answered with a JSON-RPC error. Not a LedgerError on purpose: the ledger
    names reverts from `data` first, and lets a LedgerError through unnamed."""

    def __init__(self, method: str, code: int, message: str, data: Any) -> None:
        self.method = method
        self.code = code
        self.message = message
        self.data = data
        detail = f" data={data}" if isinstance(data, str) else ""
        super().__init__(f"{method}: {message} (code {code}){detail}")


class RpcUnavailable(ConnectionError):
    """No answer from the node: refused, reset, timed out, or a gateway saying it is down."""


class NotJsonRpc(LedgerError):
    """The URL answered, but not as a JSON-RPC node does."""


class JsonRpc:
    """JSON-RPC 2.0 over HTTP(S) to one URL, thread-safe (urllib3's pool is)."""

    def __init__(self, url: str, *, timeout: float = 10.0, pool_size: int = POOL_SIZE) -> None:
        try:
            parsed = parse_url(url)
        except LocationValueError as exc:
            raise ConfigError(f"{url}: not a URL ({exc})") from exc
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ConfigError(f"{url}: an RPC URL starts with http:// or https:// and names a host")
        self.url = url
        headers = {"Content-Type": "application/json"}
        if parsed.auth:  # https://user:secret@node/...: as requests (web3's way) sends it
            headers.update(make_headers(basic_auth=parsed.auth))
        self._headers = headers
        self._path = parsed.request_uri
        self._pool: HTTPConnectionPool = connection_from_url(
            url,
            maxsize=pool_size,
            block=False,
            timeout=Timeout(connect=timeout, read=timeout),
            retries=False,
        )
        self._ids = itertools.count(1)  # next() on a count is atomic under the GIL

    def request(self, method: str, params: Sequence[Any] = ()) -> Any:
        """`method`'s result; RpcError for an error reply (see the module docstring)."""
        ident = next(self._ids)
        body = json.dumps(
            {"jsonrpc": "2.0", "id": ident, "method": method, "params": list(params)},
            separators=(",", ":"),
        ).encode()
        response = self._post(method, body)
        try:
            reply = json.loads(response.data)
        except ValueError:
            reply = None
        if not isinstance(reply, dict) or ("result" not in reply and "error" not in reply):
            if response.status in _UNAVAILABLE_STATUSES:
                raise RpcUnavailable(f"{method}: {self.url} answered HTTP {response.status}")
            shown = bytes(response.data[:_SHOWN_BYTES]).decode(errors="replace")
            raise NotJsonRpc(
                f"{method}: {self.url} did not answer as a JSON-RPC node "
                f"(HTTP {response.status}: {shown!r})"
            )
        error = reply.get("error")
        if error is not None:
            if not isinstance(error, dict):
                raise NotJsonRpc(f"{method}: {self.url} sent a malformed error: {error!r}")
            raise RpcError(
                method, int(error.get("code", 0)), str(error.get("message", "")), error.get("data")
            )
        return reply["result"]

    def _post(self, method: str, body: bytes) -> BaseHTTPResponse:
        """One POST, tried a second time only when a kept-alive connection turned out closed
        (the node closed it while it sat in the pool): every request here is safe to repeat,
        a signed transaction included. Timeouts are not repeated."""
        for attempt in (1, 2):
            try:
                response = self._pool.urlopen(
                    "POST", self._path, body=body, headers=self._headers, retries=False
                )
                return response
            except ProtocolError as exc:
                if attempt == 2:
                    raise RpcUnavailable(f"{method}: no answer from {self.url} ({exc})") from exc
            except HTTPError as exc:  # refused, timed out, TLS failure: urllib3's own types
                raise RpcUnavailable(f"{method}: no answer from {self.url} ({exc})") from exc
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Closes the pooled connections; the client takes no requests after this."""
        self._pool.close()
