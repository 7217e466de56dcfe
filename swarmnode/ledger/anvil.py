"""A local dev chain: anvil (from the npm package @foundry-rs/anvil) as a child process.

Started on 127.0.0.1 with the prague hardfork (py-evm and solc agree on it), on a port the
OS picks unless one is given. The process id is kept so that it is stopped by id, never by
name. anvil writes its state file (`--state`) only on SIGTERM or SIGINT, or every
`state_interval` seconds: a SIGKILL loses what came after the last write.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType

from swarmnode.exceptions import ChainUnavailable, ConfigError

DEV_CHAIN_ID = 31337
# anvil's first dev account (from its public test mnemonic): well known, worthless anywhere
# but a local dev chain, and only ever used on chain id 31337.
DEV_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
DEV_ACCOUNT = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
ANVIL_ENV = "SWARMNODE_ANVIL"
_LISTENING = re.compile(r"Listening on ([0-9.]+):(\d+)")


def find_anvil() -> str:
    """The anvil binary: $SWARMNODE_ANVIL, the checkout's contracts/node_modules, or PATH.

    In node_modules, the native binary of the platform package is run directly: the npm
    wrapper script spawns it as a child, so a SIGKILL sent to the wrapper would leave anvil
    running with its port held.
    """
    explicit = os.environ.get(ANVIL_ENV)
    if explicit:
        return explicit
    modules = Path(__file__).resolve().parents[2] / "contracts" / "node_modules" / "@foundry-rs"
    machine = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine(), "")
    native = modules / f"anvil-{sys.platform}-{machine}" / "bin" / "anvil"
    if native.exists():
        return str(native)
    found = shutil.which("anvil")
    if found:
        return found
    raise ConfigError(
        "anvil not found: run the setup (`make setup`, which installs @foundry-rs/anvil "
        f"into contracts/node_modules), put anvil on PATH, or set {ANVIL_ENV}"
    )


class AnvilProcess:
    """One anvil child process; a context manager that always stops it."""

    def __init__(
        self,
        *,
        port: int = 0,
        state: Path | None = None,
        state_interval: int | None = None,
        log_path: Path | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.port = port
        self.state = state
        self.state_interval = state_interval
        self._log_path = log_path
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._own_log = False  # a temporary log this object made, removed on a clean stop
        self._binary = "anvil"  # the binary start() ran, for its error messages

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> str:
        """Starts anvil and returns its URL once it listens."""
        if self._process is not None and self._process.poll() is None:
            raise ConfigError("anvil is already running")
        binary = self._binary = find_anvil()
        args = [binary, "--host", "127.0.0.1", "--port", str(self.port)]
        args += ["--hardfork", "prague", "--chain-id", str(DEV_CHAIN_ID)]
        if self.state is not None:
            args += ["--state", str(self.state)]
        if self.state_interval is not None:
            args += ["--state-interval", str(self.state_interval)]
        if self._log_path is None:
            handle, name = tempfile.mkstemp(prefix="anvil-", suffix=".log")
            os.close(handle)
            self._log_path = Path(name)
            self._own_log = True
        offset = self._log_path.stat().st_size if self._log_path.exists() else 0
        with open(self._log_path, "ab") as log:
            try:
                self._process = subprocess.Popen(
                    args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                )
            except OSError as exc:  # a wrong $SWARMNODE_ANVIL, a binary for another machine
                raise ConfigError(
                    f"cannot run anvil at {binary}: {exc.strerror or exc}; point {ANVIL_ENV} "
                    "at anvil, or run the setup (`make setup`)"
                ) from None
        self.port = self._await_listening(offset)
        self._await_answering()
        return self.url

    def _await_answering(self) -> None:
        """Waits for one JSON-RPC answer. anvil prints "Listening on" before it installs its
        SIGTERM handler; a SIGTERM in between kills it without writing its state file, which
        a loaded machine made happen. Once it answers a call, its main loop, which installs
        the handler, has run."""
        assert self._process is not None
        deadline = time.monotonic() + self._startup_timeout
        request = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []})
        while True:
            try:
                with urllib.request.urlopen(
                    urllib.request.Request(
                        self.url, request.encode(), {"Content-Type": "application/json"}
                    ),
                    timeout=max(0.1, deadline - time.monotonic()),
                ) as reply:
                    reply.read()
                return
            except OSError as exc:
                if self._process.poll() is not None or time.monotonic() >= deadline:
                    self.kill()
                    raise ChainUnavailable(f"anvil did not answer at {self.url}: {exc}") from None
                time.sleep(0.02)  # a child process starting; nothing to wait on instead

    def _await_listening(self, offset: int) -> int:
        assert self._process is not None and self._log_path is not None
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            with open(self._log_path, "rb") as log:
                log.seek(offset)
                text = log.read().decode(errors="replace")
            match = _LISTENING.search(text)
            if match:
                return int(match.group(2))
            if self._process.poll() is not None:
                said = text.strip()[-300:] or "it printed nothing"
                raise ChainUnavailable(
                    f"anvil ({self._binary}) exited with code {self._process.returncode}: {said}"
                )
            time.sleep(0.02)  # waiting for a child process to print; nothing to wait on instead
        self.kill()
        raise ChainUnavailable(f"anvil did not start listening within {self._startup_timeout:g} s")

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (anvil writes its state file then), escalating to SIGKILL after `timeout`.
        A log file this object made itself in the temporary folder is removed once anvil
        exited (by either signal), so that runs leave nothing behind; a log the caller named
        is kept."""
        return self._signal(signal.SIGTERM, timeout)

    def kill(self) -> int | None:
        """SIGKILL: anvil writes nothing; a state file keeps only its last periodic write."""
        return self._signal(signal.SIGKILL, 15.0)

    def _signal(self, sig: signal.Signals, timeout: float) -> int | None:
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._process = None
        if self._own_log and self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None
            self._own_log = False
        return process.returncode

    def __enter__(self) -> AnvilProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
