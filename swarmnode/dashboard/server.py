"""The dashboard's HTTP side: the page, its script and style, and a JSON snapshot.

One thread refreshes the model every `interval` seconds and keeps the newest snapshot;
requests only read it, so a page polling every second costs the chain one refresh a
second however many browsers are open. The files come from the package (static/), never
from the internet. The standard library's ThreadingHTTPServer is enough for a page a few
operators look at.
"""

from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from swarmnode.dashboard.model import SwarmModel

log = logging.getLogger(__name__)

_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}


def _static(name: str) -> bytes:
    return (resources.files("swarmnode.dashboard") / "static" / name).read_bytes()


class Dashboard:
    """Serves `model` on host:port (0: a free port) until `stop`."""

    def __init__(
        self, model: SwarmModel, *, host: str = "127.0.0.1", port: int = 0, interval: float = 1.0
    ) -> None:
        self._model = model
        self._interval = interval
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._snapshot = b'{"loading": true}'
        self._error: str | None = None
        self._files = {name: _static(name) for name in _TYPES}
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/"

    def start(self) -> str:
        """Reads the swarm once (a chain that does not answer fails here, not in a page),
        then serves and refreshes in the background; returns the page's URL."""
        self._publish(self._model.refresh())
        self._threads = [
            threading.Thread(target=self._server.serve_forever, name="dashboard-http"),
            threading.Thread(target=self._refresh_loop, name="dashboard-refresh"),
        ]
        for thread in self._threads:
            thread.start()
        return self.url

    def stop(self) -> None:
        """Stops refreshing and serving, and closes the socket; waits for both threads."""
        self._stop.set()
        if self._threads:
            self._server.shutdown()
        for thread in self._threads:
            thread.join(timeout=10)
        self._server.server_close()

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._publish(self._model.refresh())
            except Exception as exc:  # the chain went away: say so on the page, keep trying
                message = f"the last refresh failed ({type(exc).__name__}: {exc})"
                if message != self._error:
                    log.warning("dashboard refresh failed: %s", message)
                with self._lock:
                    self._error = message

    def _publish(self, snapshot: dict[str, Any]) -> None:
        body = json.dumps(snapshot).encode()
        with self._lock:
            self._snapshot = body
            self._error = None

    def _current(self) -> bytes:
        with self._lock:
            if self._error is None:
                return self._snapshot
            snapshot = json.loads(self._snapshot)
            snapshot["error"] = self._error
            return json.dumps(snapshot).encode()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        dashboard = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/api/swarm":
                    self._send(dashboard._current(), "application/json")
                    return
                name = "index.html" if path == "/" else path.removeprefix("/static/")
                if name not in dashboard._files:
                    self.send_error(HTTPStatus.NOT_FOUND, f"no {path} here")
                    return
                self._send(dashboard._files[name], _TYPES[name])

            def _send(self, body: bytes, kind: str) -> None:
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("dashboard %s: " + format, self.address_string(), *args)

        return Handler
