"""The account keystore's passphrase: how it is given, when `init` refuses, and that it does
not stay in a process's environment once read (docs/trust.md#keys)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import swarmnode.cli
from swarmnode.config import NodeConfig
from swarmnode.daemon import load_identity
from swarmnode.exceptions import ConfigError
from swarmnode.identity import (
    ACCOUNT_FILE,
    PASSPHRASE_ENV,
    PASSPHRASE_FILE_ENV,
    NodeIdentity,
    take_passphrase,
)
from swarmnode.ledger.keys import load_signer
from swarmnode.simulation.processes import _child_environment

CHEAP: dict[str, Any] = {"kdf": "scrypt", "iterations": 2}  # tests only: n=2 instead of 2**18
SECRET = "s3cret with spaces "


@pytest.fixture(autouse=True)
def no_passphrase_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    monkeypatch.delenv(PASSPHRASE_FILE_ENV, raising=False)


def secret_file(tmp_path: Path, text: str = SECRET + "\n", mode: int = 0o600) -> Path:
    path = tmp_path / "passphrase"
    path.write_text(text)
    path.chmod(mode)
    return path


def made(tmp_path: Path) -> NodeIdentity:
    return NodeIdentity.create(tmp_path / "node", SECRET, **CHEAP)


def init(node_dir: Path, *flags: str) -> Any:
    """`swarmnode init` in process: CliRunner's stdin is no terminal."""
    return CliRunner().invoke(swarmnode.cli.app, ["init", "--dir", str(node_dir), *flags])


@pytest.fixture
def cheap_init(monkeypatch: pytest.MonkeyPatch) -> None:
    """`init` with a test's key derivation: seconds of scrypt per test otherwise."""
    create = NodeIdentity.create

    def cheap(directory: Path, passphrase: str = "", *, force: bool = False) -> NodeIdentity:
        return create(directory, passphrase, force=force, **CHEAP)

    monkeypatch.setattr(NodeIdentity, "create", cheap)


def test_init_without_a_terminal_or_a_passphrase_refuses_and_writes_nothing(
    tmp_path: Path,
) -> None:
    node_dir = tmp_path / "node"
    result = subprocess.run(
        [sys.executable, "-m", "swarmnode", "init", "--dir", str(node_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "COLUMNS": "200"},
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("swarmnode: "), result.stderr
    for way in (PASSPHRASE_ENV, PASSPHRASE_FILE_ENV, "terminal", "--empty-passphrase"):
        assert way in lines[0]
    assert not node_dir.exists()


def test_init_refuses_an_empty_passphrase_unless_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, "")  # e.g. `SWARMNODE_KEY_PASSPHRASE=$UNSET_VARIABLE`
    refused = init(tmp_path / "node")
    assert isinstance(refused.exception, ConfigError)
    assert "--empty-passphrase" in str(refused.exception)
    assert not (tmp_path / "node").exists()
    monkeypatch.setenv(PASSPHRASE_ENV, "pw")
    both = init(tmp_path / "node", "--empty-passphrase")
    assert isinstance(both.exception, ConfigError)
    assert "one or the other" in str(both.exception)
    assert not (tmp_path / "node").exists()


@pytest.mark.usefixtures("cheap_init")
def test_init_reads_the_passphrase_file_and_takes_the_variable_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSPHRASE_FILE_ENV, str(secret_file(tmp_path)))
    result = init(tmp_path / "node")
    assert result.exit_code == 0, result.output
    assert PASSPHRASE_FILE_ENV not in os.environ
    assert SECRET not in result.output
    # one trailing newline stripped, the rest (spaces too) is the passphrase
    assert NodeIdentity.load(tmp_path / "node", SECRET).address in result.output


def test_signing_with_a_keystore_reads_the_passphrase_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    identity = made(tmp_path)
    monkeypatch.setenv(PASSPHRASE_FILE_ENV, str(secret_file(tmp_path)))
    signer = load_signer(5, keystore=tmp_path / "node" / ACCOUNT_FILE)
    assert signer.address == identity.address
    assert PASSPHRASE_FILE_ENV not in os.environ


@pytest.mark.parametrize("how", ["env", "file"])
def test_the_daemon_keeps_no_passphrase_in_its_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    identity = made(tmp_path)
    if how == "env":
        monkeypatch.setenv(PASSPHRASE_ENV, SECRET)
    else:
        monkeypatch.setenv(PASSPHRASE_FILE_ENV, str(secret_file(tmp_path)))
    config = NodeConfig(
        identity_dir=tmp_path / "node", deployment=tmp_path / "deployment.json", task="x:y"
    )
    assert load_identity(config).address == identity.address
    assert PASSPHRASE_ENV not in os.environ and PASSPHRASE_FILE_ENV not in os.environ
    child = subprocess.run(["env"], capture_output=True, text=True, check=True)
    assert "SWARMNODE_KEY_PASSPHRASE" not in child.stdout  # what it starts inherits neither


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/PID/environ")
def test_proc_environ_no_longer_shows_the_passphrase_once_taken() -> None:
    """Unsetting alone leaves the value in the block the process started with, which
    /proc/PID/environ (what `ps e` and anyone with the same uid read) shows until it exits."""
    probe = (
        "import os; from swarmnode.identity import take_passphrase; "
        "before = open('/proc/self/environ', 'rb').read(); taken = take_passphrase(); "
        "after = open('/proc/self/environ', 'rb').read(); secret = taken.encode(); "
        "print(secret in before, secret in after, 'SWARMNODE_KEY_PASSPHRASE' in os.environ)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={"PATH": os.environ.get("PATH", ""), PASSPHRASE_ENV: SECRET},
    )
    assert done.stdout.split() == ["True", "False", "False"], done.stderr


@pytest.mark.parametrize("fault", ["missing", "group-readable", "others-readable", "a-dir"])
def test_a_bad_passphrase_file_is_one_line_naming_it(tmp_path: Path, fault: str) -> None:
    if fault == "missing":
        path, needle = tmp_path / "nope", "no such file"
    elif fault == "a-dir":
        path, needle = tmp_path, "not a regular file"
    else:
        mode = 0o640 if fault == "group-readable" else 0o604
        path, needle = secret_file(tmp_path, mode=mode), f"{mode:04o}"
    env = {PASSPHRASE_FILE_ENV: str(path)}
    with pytest.raises(ConfigError) as caught:
        take_passphrase(env)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and needle in message
    assert PASSPHRASE_FILE_ENV in message
    assert env == {}  # taken out even when refused


def test_both_ways_at_once_is_refused() -> None:
    env = {PASSPHRASE_ENV: "a", PASSPHRASE_FILE_ENV: "/dev/null"}
    with pytest.raises(ConfigError, match="one way"):
        take_passphrase(env)
    assert env == {}


def test_only_one_trailing_newline_is_stripped(tmp_path: Path) -> None:
    path = secret_file(tmp_path, text="pw\n\n")
    assert take_passphrase({PASSPHRASE_FILE_ENV: str(path)}) == "pw\n"
    assert take_passphrase({}) is None


def test_the_process_simulator_gives_its_daemons_the_empty_passphrase_one_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PASSPHRASE_FILE_ENV, "/somewhere/else")
    env = _child_environment()
    assert env[PASSPHRASE_ENV] == "" and PASSPHRASE_FILE_ENV not in env


def test_no_passphrase_given_and_a_wrong_one_are_told_apart(tmp_path: Path) -> None:
    """Before: a node started without any passphrase said "wrong passphrase", as if one had
    been given. Now it says none was given and how to give one."""
    made(tmp_path)
    with pytest.raises(ConfigError) as none_given:
        NodeIdentity.load(tmp_path / "node", None)
    message = str(none_given.value)
    assert "no passphrase given" in message and "wrong" not in message
    for way in (PASSPHRASE_ENV, PASSPHRASE_FILE_ENV, "terminal"):
        assert way in message
    with pytest.raises(ConfigError, match=r"wrong passphrase$"):
        NodeIdentity.load(tmp_path / "node", "not it")
    with pytest.raises(ConfigError, match=r"wrong passphrase \(the empty one was given\)"):
        NodeIdentity.load(tmp_path / "node", "")
    assert NodeIdentity.load(tmp_path / "node", SECRET).address


def test_a_key_with_the_empty_passphrase_opens_with_none_given(tmp_path: Path) -> None:
    identity = NodeIdentity.create(tmp_path / "dev", "", **CHEAP)
    assert NodeIdentity.load(tmp_path / "dev", None).address == identity.address


def run_config(tmp_path: Path) -> Path:
    """A node.toml for `made`'s identity whose deployment file is missing: `run` gets as far
    as the deployment once the key is open, and stops there in one line."""
    config = tmp_path / "node" / "node.toml"
    config.write_text(
        '[node]\nidentity_dir = "."\ndeployment = "../missing.json"\n'
        'task = "swarmnode.training:example_task"\n'
    )
    return config


def test_run_without_a_terminal_or_a_passphrase_says_none_was_given(tmp_path: Path) -> None:
    made(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "swarmnode", "run", "--config", str(run_config(tmp_path))],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "COLUMNS": "200"},
        stdin=subprocess.DEVNULL,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert "no passphrase given" in lines[0] and "wrong" not in lines[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a pseudo-terminal")
@pytest.mark.parametrize("answer", ["not it", SECRET])
def test_run_at_a_terminal_asks_for_the_passphrase(tmp_path: Path, answer: str) -> None:
    """Before: `run` never asked and said "wrong passphrase". Now, on a terminal, it asks:
    a wrong answer is refused as wrong, the right one opens the key (and the run goes on to
    the deployment, missing here)."""
    made(tmp_path)
    leader, follower = os.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "swarmnode", "run", "--config", str(run_config(tmp_path))],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "COLUMNS": "200"},
        start_new_session=True,  # no controlling terminal: getpass talks to stdin, the pty
    )
    os.close(follower)
    try:
        seen = _read_until(leader, b"assphrase", 120)
        assert b"assphrase" in seen, seen
        os.write(leader, answer.encode() + b"\n")
        seen += _read_until(leader, None, 120)
        assert process.wait(timeout=60) == 1
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(leader)
    text = seen.decode(errors="replace")
    assert answer not in text  # not echoed
    last = text.strip().splitlines()[-1]
    if answer == SECRET:
        assert "missing.json" in last and "passphrase" not in last, text
    else:
        assert "wrong passphrase" in last, text


def _read_until(fd: int, needle: bytes | None, seconds: float) -> bytes:
    """What the pseudo-terminal shows until `needle` (None: until the other side closes),
    waiting at most `seconds`."""
    import select

    deadline = time.monotonic() + seconds
    seen = b""
    while time.monotonic() < deadline and (needle is None or needle not in seen):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: every holder of the other side closed it
            break
        if not chunk:
            break
        seen += chunk
    return seen
