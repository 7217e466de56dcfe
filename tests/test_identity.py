"""A node's identity on disk: owner-only files, never overwritten by accident, checked on load.

Real files in tmp_path throughout. The in-process tests use a cheap scrypt work factor; the
CLI tests run `python -m swarmnode` as a user would, with eth_account's default (slow) one,
so there are few of them.
"""

from __future__ import annotations

import datetime
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from eth_account import Account
from typer.testing import CliRunner

from swarmnode.exceptions import ConfigError
from swarmnode.identity import (
    ACCOUNT_FILE,
    IDENTITY_FILES,
    SUMMARY_FILE,
    TLS_CERT_FILE,
    TLS_KEY_FILE,
    IdentityWarning,
    NodeIdentity,
    TlsIdentity,
)
from swarmnode.ledger.keys import PASSPHRASE_ENV, load_signer

PASSPHRASE = "correct horse battery staple"
CHEAP: dict[str, Any] = {"kdf": "scrypt", "iterations": 2}  # tests only: n=2 instead of 2**18


@pytest.fixture(autouse=True)
def no_passphrase_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)


@pytest.fixture
def node_dir(tmp_path: Path) -> Path:
    return tmp_path / "node"


@pytest.fixture
def made(node_dir: Path) -> NodeIdentity:
    return NodeIdentity.create(node_dir, PASSPHRASE, **CHEAP)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.fixture
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    value: int = request.param
    old = os.umask(value)
    try:
        yield value
    finally:
        os.umask(old)


# --- writing -------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o277], indirect=True, ids=oct)
def test_files_are_owner_only_and_the_directory_0700_whatever_the_umask(
    node_dir: Path, umask: int
) -> None:
    NodeIdentity.create(node_dir, PASSPHRASE, **CHEAP)
    assert mode(node_dir) == 0o700
    assert sorted(os.listdir(node_dir)) == sorted(IDENTITY_FILES)  # no temporary left behind
    for name in IDENTITY_FILES:
        assert mode(node_dir / name) == 0o600, name


def test_secret_bytes_only_ever_go_into_a_file_that_is_already_0600(
    node_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write
    seen: list[bytes] = []

    def checked_write(fd: int, data: Any) -> int:
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o600
        seen.append(bytes(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", checked_write)
    identity = NodeIdentity.create(node_dir, PASSPHRASE, **CHEAP)
    monkeypatch.undo()
    assert identity.tls.key_pem in seen  # the TLS key went through the checked path


def test_an_existing_open_directory_is_warned_about_and_left_alone(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    with pytest.warns(IdentityWarning, match=r"mode 0755"):
        NodeIdentity.create(shared, PASSPHRASE, **CHEAP)
    assert mode(shared) == 0o755
    assert all(mode(shared / name) == 0o600 for name in IDENTITY_FILES)


def test_missing_parents_are_created(tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b" / "node"
    NodeIdentity.create(deep, PASSPHRASE, **CHEAP)
    assert mode(deep) == 0o700


def test_a_directory_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        NodeIdentity.create(not_a_dir, PASSPHRASE, **CHEAP)


def test_an_existing_identity_is_not_overwritten_without_force(
    node_dir: Path, made: NodeIdentity
) -> None:
    before = snapshot(node_dir)
    with pytest.raises(ConfigError, match=rf"{ACCOUNT_FILE}: already exists.*--force"):
        NodeIdentity.create(node_dir, PASSPHRASE, **CHEAP)
    assert snapshot(node_dir) == before  # byte for byte


@pytest.mark.parametrize("stray", [TLS_KEY_FILE, TLS_CERT_FILE, SUMMARY_FILE])
def test_any_one_identity_file_already_there_blocks_the_whole_identity(
    node_dir: Path, stray: str
) -> None:
    node_dir.mkdir()
    (node_dir / stray).write_bytes(b"someone's file")
    with pytest.raises(ConfigError, match=rf"{stray}: already exists"):
        NodeIdentity.create(node_dir, PASSPHRASE, **CHEAP)
    assert snapshot(node_dir) == {stray: b"someone's file"}  # nothing else was written


def test_a_dangling_link_counts_as_an_existing_file(node_dir: Path) -> None:
    node_dir.mkdir()
    (node_dir / TLS_KEY_FILE).symlink_to(node_dir / "nowhere")
    with pytest.raises(ConfigError, match=rf"{TLS_KEY_FILE}: already exists"):
        NodeIdentity.create(node_dir, PASSPHRASE, **CHEAP)


def test_force_replaces_every_file(node_dir: Path, made: NodeIdentity) -> None:
    before = snapshot(node_dir)
    replaced = NodeIdentity.create(node_dir, "another", force=True, **CHEAP)
    after = snapshot(node_dir)
    assert replaced.address != made.address
    assert all(after[name] != before[name] for name in IDENTITY_FILES)
    assert NodeIdentity.load(node_dir, "another").address == replaced.address
    assert all(mode(node_dir / name) == 0o600 for name in IDENTITY_FILES)


# --- loading -------------------------------------------------------------------------------


def test_load_gives_back_the_identity_that_was_created(node_dir: Path, made: NodeIdentity) -> None:
    loaded = NodeIdentity.load(node_dir, PASSPHRASE)
    assert loaded.address == made.address
    assert loaded.account.key == made.account.key
    assert loaded.tls == made.tls
    assert loaded.fingerprint == made.fingerprint
    assert loaded.tls.account_name == made.address.lower()
    keystore = json.loads((node_dir / ACCOUNT_FILE).read_text())
    assert Account.from_key(Account.decrypt(keystore, PASSPHRASE)).address == made.address


def test_the_keystore_is_one_that_keystore_option_reads(
    node_dir: Path, made: NodeIdentity, monkeypatch: pytest.MonkeyPatch
) -> None:
    keystore = node_dir / ACCOUNT_FILE
    signer = load_signer(1, keystore=keystore, passphrase=PASSPHRASE)
    assert signer.address == made.address
    monkeypatch.setenv(PASSPHRASE_ENV, PASSPHRASE)
    assert load_signer(1, keystore=keystore).address == made.address


def test_without_a_passphrase_the_keystore_uses_the_empty_one(node_dir: Path) -> None:
    made = NodeIdentity.create(node_dir, "", **CHEAP)
    assert NodeIdentity.load(node_dir).address == made.address
    assert load_signer(1, keystore=node_dir / ACCOUNT_FILE).address == made.address


def test_inspect_needs_no_passphrase(node_dir: Path, made: NodeIdentity) -> None:
    summary = NodeIdentity.inspect(node_dir)
    assert summary == made.summary()
    assert summary.fingerprint == made.fingerprint


def test_node_json_is_for_humans_and_never_read_back(node_dir: Path, made: NodeIdentity) -> None:
    human = json.loads((node_dir / SUMMARY_FILE).read_text())
    assert human["account"] == made.address
    assert human["tls_certificate_sha256"] == "0x" + made.fingerprint.hex()
    (node_dir / SUMMARY_FILE).unlink()
    assert NodeIdentity.load(node_dir, PASSPHRASE).address == made.address


def test_wrong_passphrase_is_refused_naming_the_keystore(
    node_dir: Path, made: NodeIdentity
) -> None:
    with pytest.raises(ConfigError, match=rf"{ACCOUNT_FILE}: cannot decrypt: wrong passphrase"):
        NodeIdentity.load(node_dir, "not it")


def test_a_certificate_naming_another_account_is_refused(
    node_dir: Path, made: NodeIdentity
) -> None:
    other = TlsIdentity.generate(Account.create().address)  # its key and its certificate
    (node_dir / TLS_KEY_FILE).write_bytes(other.key_pem)
    (node_dir / TLS_CERT_FILE).write_bytes(other.cert_pem)
    expected = rf"{TLS_CERT_FILE}: the certificate names {other.account_name}, not this node"
    with pytest.raises(ConfigError, match=expected):
        NodeIdentity.load(node_dir, PASSPHRASE)
    with pytest.raises(ConfigError, match=expected):
        NodeIdentity.inspect(node_dir)


def test_a_key_that_is_not_the_certificates_is_refused(node_dir: Path, made: NodeIdentity) -> None:
    (node_dir / TLS_KEY_FILE).write_bytes(TlsIdentity.generate(made.address).key_pem)
    with pytest.raises(ConfigError, match=rf"{TLS_KEY_FILE}: this key does not belong"):
        NodeIdentity.load(node_dir, PASSPHRASE)


def _flip_base64(pem: bytes, line: int) -> bytes:
    """Change one base64 character in the middle of a body line: still valid base64."""
    lines = pem.split(b"\n")
    body = bytearray(lines[line])
    middle = len(body) // 2
    body[middle] = ord("B") if body[middle] != ord("B") else ord("C")
    lines[line] = bytes(body)
    return b"\n".join(lines)


@pytest.mark.parametrize("line", [1, 4, -4], ids=["header", "middle", "signature"])
def test_a_tampered_certificate_is_refused(node_dir: Path, made: NodeIdentity, line: int) -> None:
    cert = node_dir / TLS_CERT_FILE
    cert.write_bytes(_flip_base64(cert.read_bytes(), line))
    with pytest.raises(ConfigError, match=rf"{TLS_CERT_FILE}: not a"):
        NodeIdentity.load(node_dir, PASSPHRASE)


@pytest.mark.parametrize("keep", [0, 100, 400], ids=["empty", "header-only", "truncated"])
def test_a_truncated_certificate_is_refused(node_dir: Path, made: NodeIdentity, keep: int) -> None:
    cert = node_dir / TLS_CERT_FILE
    cert.write_bytes(cert.read_bytes()[:keep])
    with pytest.raises(ConfigError, match=rf"{TLS_CERT_FILE}: not a PEM certificate"):
        NodeIdentity.load(node_dir, PASSPHRASE)


def test_an_expired_certificate_is_refused(node_dir: Path, made: NodeIdentity) -> None:
    key = serialization.load_pem_private_key(made.tls.key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, made.address.lower())])
    past = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    old = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(past)
        .not_valid_after(past + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(made.address.lower())]), False)
        .sign(key, hashes.SHA256())
    )
    (node_dir / TLS_CERT_FILE).write_bytes(old.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(ConfigError, match=rf"{TLS_CERT_FILE}: the certificate expired on 2020"):
        NodeIdentity.load(node_dir, PASSPHRASE)


@pytest.mark.parametrize("name", [ACCOUNT_FILE, TLS_KEY_FILE])
@pytest.mark.parametrize("loose", [0o640, 0o604, 0o620])
def test_a_key_file_open_to_group_or_others_is_refused(
    node_dir: Path, made: NodeIdentity, name: str, loose: int
) -> None:
    (node_dir / name).chmod(loose)
    expected = rf"{name}: mode {loose:04o} lets group or others at a private key"
    with pytest.raises(ConfigError, match=expected):
        NodeIdentity.load(node_dir, PASSPHRASE)
    with pytest.raises(ConfigError, match=expected):
        NodeIdentity.inspect(node_dir)


@pytest.mark.parametrize("name", [ACCOUNT_FILE, TLS_KEY_FILE, TLS_CERT_FILE])
def test_a_missing_file_is_refused_by_name(node_dir: Path, made: NodeIdentity, name: str) -> None:
    (node_dir / name).unlink()
    with pytest.raises(ConfigError, match=rf"{name}: missing"):
        NodeIdentity.load(node_dir, PASSPHRASE)


def test_a_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such identity directory"):
        NodeIdentity.load(tmp_path / "nope", PASSPHRASE)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not an Ethereum keystore"),
        (b'{"version": 3, "address": "zz"}', "no valid address field"),
    ],
)
def test_a_corrupt_keystore_is_refused(
    node_dir: Path, made: NodeIdentity, content: bytes, needle: str
) -> None:
    (node_dir / ACCOUNT_FILE).write_bytes(content)
    with pytest.raises(ConfigError, match=rf"{ACCOUNT_FILE}: .*{needle}"):
        NodeIdentity.load(node_dir, PASSPHRASE)


def test_an_edited_address_field_is_blamed_on_the_keystore(
    node_dir: Path, made: NodeIdentity
) -> None:
    path = node_dir / ACCOUNT_FILE
    keystore = json.loads(path.read_text())
    keystore["address"] = Account.create().address[2:]
    path.write_text(json.dumps(keystore))
    with pytest.raises(ConfigError, match=rf"{ACCOUNT_FILE}: its address field says"):
        NodeIdentity.load(node_dir, PASSPHRASE)


def test_an_encrypted_tls_key_is_refused_with_the_reason(made: NodeIdentity) -> None:
    key = serialization.load_pem_private_key(made.tls.key_pem, password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    with pytest.raises(ConfigError, match="the key is encrypted"):
        TlsIdentity.from_pem(encrypted, made.tls.cert_pem)


def test_no_secret_in_a_repr(made: NodeIdentity) -> None:
    text = repr(made) + repr(made.tls) + repr(made.summary())
    assert "PRIVATE KEY" not in text
    assert made.account.key.hex() not in text
    assert made.fingerprint.hex() in text  # but what identifies it is there


# --- the command ---------------------------------------------------------------------------


def swarmnode(*args: str, passphrase: str | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m swarmnode ...` with no terminal (stdin is /dev/null) and a clean environment."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "COLUMNS": "200"}
    if passphrase is not None:
        env[PASSPHRASE_ENV] = passphrase
    return subprocess.run(
        [sys.executable, "-m", "swarmnode", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("swarmnode: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.slow
def test_cli_init_refuses_to_overwrite_and_force_replaces(node_dir: Path) -> None:
    first = swarmnode("init", "--dir", str(node_dir), passphrase=PASSPHRASE)
    assert first.returncode == 0, first.stderr
    assert first.stderr == ""
    summary = NodeIdentity.inspect(node_dir)
    assert summary.address in first.stdout
    assert "0x" + summary.fingerprint.hex() in first.stdout
    for name in IDENTITY_FILES:
        assert str(node_dir / name) in first.stdout
    assert "fund" in first.stdout and "register" in first.stdout
    assert mode(node_dir) == 0o700
    assert all(mode(node_dir / name) == 0o600 for name in IDENTITY_FILES)
    keystore = json.loads((node_dir / ACCOUNT_FILE).read_text())
    assert keystore["crypto"]["kdfparams"]["n"] == 2**18  # eth_account's default work factor
    signer = load_signer(1, keystore=node_dir / ACCOUNT_FILE, passphrase=PASSPHRASE)
    assert signer.address == summary.address

    before = snapshot(node_dir)
    again = swarmnode("init", "--dir", str(node_dir), passphrase=PASSPHRASE)
    assert_one_line_error(again, str(node_dir / ACCOUNT_FILE), "already exists", "--force")
    assert snapshot(node_dir) == before

    forced = swarmnode("init", "--dir", str(node_dir), "--force", passphrase=PASSPHRASE)
    assert forced.returncode == 0, forced.stderr
    assert "replaced the identity" in forced.stderr
    assert NodeIdentity.inspect(node_dir).address != summary.address
    assert snapshot(node_dir) != before


@pytest.mark.slow
def test_cli_init_with_empty_passphrase_warns_and_uses_the_empty_one(
    node_dir: Path,
) -> None:
    # without --empty-passphrase, init refuses here (tests/test_passphrase.py)
    result = swarmnode("init", "--dir", str(node_dir), "--empty-passphrase")
    assert result.returncode == 0, result.stderr
    warnings = result.stderr.splitlines()
    assert warnings and all(line.startswith("swarmnode: warning: ") for line in warnings)
    assert "empty passphrase" in result.stderr
    assert "EMPTY passphrase" in result.stdout
    keystore = json.loads((node_dir / ACCOUNT_FILE).read_text())
    assert Account.from_key(Account.decrypt(keystore, "")).address in result.stdout


def test_cli_init_asks_a_person_at_a_terminal(
    node_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import swarmnode.cli
    from swarmnode.cli import init as init_module

    monkeypatch.setattr(init_module, "_stdin_is_a_terminal", lambda: True)
    result = CliRunner().invoke(
        swarmnode.cli.app, ["init", "--dir", str(node_dir)], input="s3cret\ns3cret\n"
    )
    assert result.exit_code == 0, result.output
    assert "s3cret" not in result.output  # hidden input
    assert NodeIdentity.load(node_dir, "s3cret").address in result.output


def test_cli_identity_show_prints_address_and_fingerprint(
    node_dir: Path, made: NodeIdentity
) -> None:
    shown = swarmnode("identity", "show", "--dir", str(node_dir))
    assert shown.returncode == 0, shown.stderr
    assert made.address in shown.stdout
    assert "0x" + made.fingerprint.hex() in shown.stdout
    as_json = swarmnode("identity", "show", "--dir", str(node_dir), "--json")
    report = json.loads(as_json.stdout)
    assert report["account"] == made.address
    assert report["tls_certificate_sha256"] == "0x" + made.fingerprint.hex()


@pytest.mark.parametrize("fault", ["missing-dir", "group-readable-key", "tampered-cert"])
def test_cli_errors_are_one_line_without_a_traceback(
    node_dir: Path, made: NodeIdentity, fault: str
) -> None:
    needles: tuple[str, ...]
    if fault == "missing-dir":
        target, needles = node_dir.parent / "nope", ("no such identity directory",)
    elif fault == "group-readable-key":
        (node_dir / TLS_KEY_FILE).chmod(0o640)
        target, needles = node_dir, (str(node_dir / TLS_KEY_FILE), "0640")
    else:
        cert = node_dir / TLS_CERT_FILE
        cert.write_bytes(_flip_base64(cert.read_bytes(), 4))
        target, needles = node_dir, (str(cert),)
    assert_one_line_error(swarmnode("identity", "show", "--dir", str(target)), *needles)


def test_cli_init_into_a_file_is_one_line(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    result = swarmnode("init", "--dir", str(not_a_dir), passphrase=PASSPHRASE)
    assert_one_line_error(result, str(not_a_dir), "not a directory")
