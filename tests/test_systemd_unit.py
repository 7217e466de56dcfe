"""The systemd unit an operator installs (contrib/swarmnode.service, README: "Running a node
as a service"): systemd itself finds nothing wrong with it, and it agrees with the node.

`systemd-analyze verify` exits 0 on a key it does not know (it only says so on stderr), so
any stderr fails the test. The unit names /opt/swarmnode/bin/swarmnode, where the README
installs it; verify refuses a program that does not exist, so the check runs on a copy
that names this checkout's instead. Without systemd-analyze the check is skipped, except
under CI (CI=true), where it fails: .ci/run installs systemd.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from swarmnode.identity import PASSPHRASE_FILE_ENV
from swarmnode.rules import SwarmParams

UNIT = Path(__file__).resolve().parents[1] / "contrib" / "swarmnode.service"
INSTALLED = "/opt/swarmnode/bin/swarmnode"
HERE = str(Path(sys.executable).parent / "swarmnode")  # this environment's console script


def settings(section: str) -> list[tuple[str, str]]:
    """(key, value) of every line of `section`, in order (a key may repeat)."""
    pairs, current = [], None
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section:
            key, _, value = line.partition("=")
            pairs.append((key, value))
    return pairs


def one(section: str, key: str) -> str:
    values = [v for k, v in settings(section) if k == key]
    assert len(values) == 1, f"{key} in [{section}]: {values}"
    return values[0]


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is missing under CI: .ci/run installs systemd")
        pytest.skip("systemd-analyze is not installed here")
    return subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )


def installed_here(folder: Path, extra: str = "") -> Path:
    """The unit as shipped, with this checkout's swarmnode where /opt/swarmnode's would be."""
    copy = folder / "swarmnode.service"
    copy.write_text(UNIT.read_text().replace(INSTALLED, HERE) + extra)
    return copy


def test_systemd_finds_nothing_wrong_with_the_unit(tmp_path: Path) -> None:
    assert Path(HERE).exists()
    done = verify(installed_here(tmp_path))
    assert done.stderr == "" and done.returncode == 0, done.stderr


def test_the_check_fails_on_what_systemd_only_warns_about(tmp_path: Path) -> None:
    done = verify(installed_here(tmp_path, "[Service]\nRestartOnFailure=yes\n"))
    assert done.returncode == 0  # verify's exit code alone would let this through
    assert "Unknown key" in done.stderr and "RestartOnFailure" in done.stderr


def test_the_unit_stops_later_than_the_node_and_restarts_only_after_a_failure() -> None:
    grace = 2 * SwarmParams().transfer_deadline  # stop_grace's default, deploy's deadline
    assert int(one("Service", "TimeoutStopSec")) >= grace + 60
    assert one("Service", "Restart") == "on-failure"


def test_the_passphrase_comes_from_a_credential_the_node_reads() -> None:
    name, _, source = one("Service", "LoadCredential").partition(":")
    assert source == "/etc/swarmnode/passphrase"
    environment = [v for k, v in settings("Service") if k == "Environment"]
    assert f"{PASSPHRASE_FILE_ENV}=%d/{name}" in environment  # %d: $CREDENTIALS_DIRECTORY
    assert not any(v.startswith("SWARMNODE_KEY_PASSPHRASE=") for v in environment)


def test_the_command_it_starts_is_one_the_cli_takes(tmp_path: Path) -> None:
    program, *arguments = one("Service", "ExecStart").split()
    assert program == INSTALLED
    done = subprocess.run(
        [HERE, *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ["PATH"]},
        cwd=tmp_path,
    )
    # parsed as written: what stops it is the missing node folder, in one line
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "swarmnode: /var/lib/swarmnode/node/node.toml: no such config file"
    ), done.stderr
