"""A node's keys: its chain account and its TLS key with a self-signed certificate.

No certificate authority: the swarm contract is the roster, and peers accept a certificate
only if its SHA-256 is registered there. The account address goes into a DNS
SubjectAltName because gRPC clients always check a name (docs/trust.md#mutual-tls).

On disk a node's identity is a directory (`swarmnode init --dir NODE_DIR`):

    account.json  the chain account: a standard Ethereum keystore (v3), encrypted with the
                  passphrase (the empty one when none is given), so `--keystore` reads it
    tls.key       the TLS private key, PEM PKCS8, *not* encrypted: the gRPC server needs the
                  raw key in memory and a node restarts unattended; owner-only permissions
                  and the 0700 directory are what protect it. Losing it costs a new
                  registration, never funds.
    tls.crt       the self-signed certificate, PEM, naming the account
    node.json     address and certificate fingerprint for humans; derived, never read back

Every file is written whole or not at all (a temporary file in the same directory, created
0600 before any byte goes in, fsynced, then renamed over the target), and nothing is
replaced unless the caller says `force`: a node's account may hold funds and its
certificate may be registered, so an accident must not cost either.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import secrets
import stat
import warnings
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from swarmnode.exceptions import ConfigError

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

CERT_VALIDITY = datetime.timedelta(days=3650)

ACCOUNT_FILE = "account.json"
TLS_KEY_FILE = "tls.key"
TLS_CERT_FILE = "tls.crt"
SUMMARY_FILE = "node.json"
IDENTITY_FILES = (ACCOUNT_FILE, TLS_KEY_FILE, TLS_CERT_FILE, SUMMARY_FILE)
SECRET_FILES = (ACCOUNT_FILE, TLS_KEY_FILE)

FILE_MODE = 0o600
DIR_MODE = 0o700
# Any permission bit for group or others on a secret file is refused, not only read: a
# group-writable key file lets someone else swap the node's identity.
_LOOSE_BITS = 0o077

Kdf = Literal["scrypt", "pbkdf2"]


class IdentityWarning(UserWarning):
    """Something about an identity that works but deserves the user's attention.

    A warning rather than an error, so that the library never decides on its own to change
    permissions on a directory the user chose; the CLI prints these as one line each.
    """


@dataclass(frozen=True)
class TlsIdentity:
    """A TLS key and the self-signed certificate for it, as PEM (and DER for the contract)."""

    key_pem: bytes = field(repr=False)  # a secret: never in a repr, never in a log
    cert_pem: bytes
    cert_der: bytes

    def __repr__(self) -> str:
        """What identifies it, short enough for a log line; never the key."""
        return f"TlsIdentity(names={self.account_name!r}, sha256=0x{self.fingerprint.hex()})"

    @property
    def fingerprint(self) -> bytes:
        """SHA-256 of the DER certificate: what the contract stores."""
        return hashlib.sha256(self.cert_der).digest()

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_der_x509_certificate(self.cert_der)

    @property
    def account_name(self) -> str | None:
        """The account the certificate names (its one DNS SubjectAltName), or None.

        Exactly one DNS name, so that a certificate cannot name two accounts at once.
        """
        try:
            san = self.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except x509.ExtensionNotFound:
            return None
        names = san.value.get_values_for_type(x509.DNSName)
        return names[0] if len(names) == 1 else None

    @property
    def not_valid_after(self) -> datetime.datetime:
        return self.certificate.not_valid_after_utc

    @classmethod
    def generate(cls, account: str) -> TlsIdentity:
        key = ec.generate_private_key(ec.SECP256R1())
        name = account.lower()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + CERT_VALIDITY)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(
            key_pem=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            cert_pem=cert.public_bytes(serialization.Encoding.PEM),
            cert_der=cert.public_bytes(serialization.Encoding.DER),
        )

    @classmethod
    def from_pem(
        cls,
        key_pem: bytes,
        cert_pem: bytes,
        *,
        key_source: str = "TLS key",
        cert_source: str = "TLS certificate",
    ) -> TlsIdentity:
        """Parse and check a key and certificate read from somewhere (files, usually).

        Checked: both parse, the certificate's self-signature is valid (so a flipped byte is
        caught even where it still parses) and the key is the certificate's key. A
        ConfigError names the source at fault; which account the certificate names is the
        caller's check, since only the caller knows the account.
        """
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError as exc:
            raise ConfigError(f"{cert_source}: not a PEM certificate ({exc})") from None
        try:
            cert.verify_directly_issued_by(cert)
        except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
            raise ConfigError(
                f"{cert_source}: not a valid self-signed certificate (its signature does not "
                "verify: the file was changed or damaged)"
            ) from None
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except TypeError:
            raise ConfigError(
                f"{key_source}: the key is encrypted; swarmnode keeps the TLS key unencrypted "
                "(owner-only permissions protect it)"
            ) from None
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise ConfigError(f"{key_source}: not a PEM private key ({exc})") from None
        spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
            raise ConfigError(f"{key_source}: this key does not belong to {cert_source}")
        return cls(
            key_pem=key_pem,
            cert_pem=cert.public_bytes(serialization.Encoding.PEM),
            cert_der=cert.public_bytes(serialization.Encoding.DER),
        )


def certificate_names(certificate_der: bytes, account: str) -> bool:
    """Whether a peer's DER certificate names `account` (its one DNS SubjectAltName).

    A node accepts a peer only on this, so that a certificate copied from the chain is worth
    nothing to an account it does not name: the handshake proves the key, this proves whose
    key it is (docs/trust.md#the-roster). Anything that does not parse names nobody.
    """
    try:
        named = TlsIdentity(key_pem=b"", cert_pem=b"", cert_der=certificate_der).account_name
    except ValueError:
        return False
    return named is not None and named == account.lower()


@dataclass(frozen=True)
class IdentitySummary:
    """What anyone may see of a node's identity: no key, so no passphrase needed."""

    directory: Path
    address: str  # EIP-55 checksummed
    cert_der: bytes = field(repr=False)
    not_valid_after: datetime.datetime

    @property
    def fingerprint(self) -> bytes:
        return hashlib.sha256(self.cert_der).digest()

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(self.directory / name for name in IDENTITY_FILES)

    def to_dict(self) -> dict[str, Any]:
        return {
            "account": self.address,
            "tls_certificate_sha256": "0x" + self.fingerprint.hex(),
            "certificate_names": self.address.lower(),
            "certificate_not_after": self.not_valid_after.isoformat(),
            "files": {
                ACCOUNT_FILE: "the account key: Ethereum keystore v3 (passphrase-encrypted)",
                TLS_KEY_FILE: "the TLS private key: PEM PKCS8, unencrypted, owner-only",
                TLS_CERT_FILE: "the self-signed TLS certificate naming the account: PEM",
            },
            "note": (
                f"for humans only: derived from {ACCOUNT_FILE} and {TLS_CERT_FILE}, "
                "never read back by swarmnode"
            ),
        }


@dataclass(frozen=True)
class NodeIdentity:
    """A node's chain account and TLS identity, loaded and cross-checked.

    The account signs the node's transactions; the certificate, which names the account,
    is what the node registers and what its peers pin. Build one with `create` or `load`.
    """

    directory: Path
    account: LocalAccount = field(repr=False)
    tls: TlsIdentity

    @property
    def address(self) -> str:
        return str(self.account.address)

    @property
    def fingerprint(self) -> bytes:
        return self.tls.fingerprint

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(self.directory / name for name in IDENTITY_FILES)

    def summary(self) -> IdentitySummary:
        return IdentitySummary(
            directory=self.directory,
            address=self.address,
            cert_der=self.tls.cert_der,
            not_valid_after=self.tls.not_valid_after,
        )

    @staticmethod
    def existing_files(directory: Path) -> list[Path]:
        """The identity files already in `directory` (dangling links count: they are there)."""
        return [directory / n for n in IDENTITY_FILES if os.path.lexists(directory / n)]

    @classmethod
    def refuse_overwrite(cls, directory: Path) -> None:
        """ConfigError naming the first identity file already in `directory`, if any.

        Public so that a caller can refuse before it asks a person for a passphrase.
        """
        existing = cls.existing_files(directory)
        if existing:
            raise ConfigError(
                f"{existing[0]}: already exists; pass --force to replace the identity in "
                f"{directory} (the old account key and certificate are lost)"
            )

    @classmethod
    def create(
        cls,
        directory: Path,
        passphrase: str = "",
        *,
        force: bool = False,
        kdf: Kdf | None = None,
        iterations: int | None = None,
    ) -> NodeIdentity:
        """Make a new account and TLS identity and write them into `directory`.

        Refuses (ConfigError naming the file) when any identity file is already there,
        unless `force`; with `force` the old account and certificate are gone for good.
        `kdf` and `iterations` go to eth_account's keystore encryption; leave them None
        (eth_account's defaults, scrypt n=2**18) except in tests, where a cheap work factor
        keeps them fast. Emits IdentityWarning when an existing directory is open to group
        or others.
        """
        # here, not at the top: eth_account takes over half a second to import, and the TLS half
        # of an identity (all that p2p and the simulator use) never needs it
        from eth_account import Account

        if not force:
            cls.refuse_overwrite(directory)
        _prepare_directory(directory)
        account: LocalAccount = Account.create()
        tls = TlsIdentity.generate(account.address)
        keystore = Account.encrypt(account.key, passphrase, kdf=kdf, iterations=iterations)
        identity = cls(directory=directory, account=account, tls=tls)
        summary = identity.summary()
        _write_all(
            directory,
            {
                ACCOUNT_FILE: json.dumps(keystore, indent=2).encode() + b"\n",
                TLS_KEY_FILE: tls.key_pem,
                TLS_CERT_FILE: tls.cert_pem,
                SUMMARY_FILE: json.dumps(summary.to_dict(), indent=2).encode() + b"\n",
            },
        )
        return identity

    @classmethod
    def inspect(cls, directory: Path) -> IdentitySummary:
        """Read and check everything but the encrypted account key: no passphrase needed.

        The address comes from the keystore's (unauthenticated) address field; `load`
        confirms it against the decrypted key.
        """
        address, _, tls = _read_public(directory)
        _check_certificate_names(directory / TLS_CERT_FILE, tls, address)
        return IdentitySummary(
            directory=directory,
            address=address,
            cert_der=tls.cert_der,
            not_valid_after=tls.not_valid_after,
        )

    @classmethod
    def load(cls, directory: Path, passphrase: str | None = "") -> NodeIdentity:
        """Read, decrypt and cross-check a node's identity; ConfigError names what is wrong.

        Checked: each file is there and parses; the key files are owner-only; the keystore
        decrypts with `passphrase` to the account its address field states; the certificate
        is intact, its key is tls.key, it names that account and has not expired.

        `passphrase` None: none was given (no argument, variable, file or prompt). A key
        encrypted with the empty passphrase (a dev chain's, `init --empty-passphrase`) still
        opens; any other is refused with how to give one, not as a wrong passphrase.
        """
        # here, not at the top: eth_account takes over half a second to import, and the TLS half
        # of an identity (all that p2p and the simulator use) never needs it
        from eth_account import Account

        address, keystore, tls = _read_public(directory)
        path = directory / ACCOUNT_FILE
        try:
            key = Account.decrypt(keystore, passphrase or "")
        except ValueError as exc:
            if "MAC mismatch" in str(exc) and passphrase is None:
                raise ConfigError(
                    f"{path}: cannot decrypt: no passphrase given (set {PASSPHRASE_ENV}, or "
                    f"{PASSPHRASE_FILE_ENV} to a file holding it, or run at a terminal to be "
                    "asked)"
                ) from None
            if "MAC mismatch" in str(exc):
                empty = " (the empty one was given)" if not passphrase else ""
                raise ConfigError(f"{path}: cannot decrypt: wrong passphrase{empty}") from None
            raise ConfigError(f"{path}: not a usable keystore ({exc})") from None
        except (KeyError, TypeError, NotImplementedError) as exc:
            raise ConfigError(f"{path}: not a usable keystore ({exc!r})") from None
        account: LocalAccount = Account.from_key(key)
        if account.address != address:
            raise ConfigError(
                f"{path}: its address field says {address} but its key is {account.address}"
            )
        _check_certificate_names(directory / TLS_CERT_FILE, tls, account.address)
        return cls(directory=directory, account=account, tls=tls)


def _read_public(directory: Path) -> tuple[str, dict[str, Any], TlsIdentity]:
    """The checks `inspect` and `load` share: files, permissions, parsing, key vs certificate.

    Returns the keystore's stated address, the keystore and the TLS identity.
    """
    # here, not at the top: eth_utils costs about 0.2 s to import, for the keystore check alone;
    # a keystore's address field is bare hex, which address.normalize rightly refuses
    from eth_utils.address import is_hex_address, to_checksum_address

    if not directory.is_dir():
        raise ConfigError(f"{directory}: no such identity directory (run `swarmnode init`)")
    for name in (ACCOUNT_FILE, TLS_KEY_FILE, TLS_CERT_FILE):
        _check_file(directory / name, secret=name in SECRET_FILES)
    account_path = directory / ACCOUNT_FILE
    try:
        keystore = json.loads(_read(account_path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{account_path}: not a keystore file (not JSON: {exc})") from None
    if not isinstance(keystore, dict) or keystore.get("version") != 3:
        raise ConfigError(f"{account_path}: not an Ethereum keystore (version 3 expected)")
    raw_address = keystore.get("address")
    if not isinstance(raw_address, str) or not is_hex_address(
        "0x" + raw_address.removeprefix("0x")
    ):
        raise ConfigError(f"{account_path}: the keystore has no valid address field")
    address = str(to_checksum_address("0x" + raw_address.removeprefix("0x")))

    cert_path = directory / TLS_CERT_FILE
    tls = TlsIdentity.from_pem(
        _read(directory / TLS_KEY_FILE),
        _read(cert_path),
        key_source=str(directory / TLS_KEY_FILE),
        cert_source=str(cert_path),
    )
    return address, keystore, tls


def _check_certificate_names(cert_path: Path, tls: TlsIdentity, address: str) -> None:
    """The certificate must name the account (peers dial that name) and still be valid.

    Separate from `_read_public` so that `load` first confirms the address against the
    decrypted key: a keystore whose address field was edited is then blamed, not tls.crt.
    """
    named = tls.account_name
    if named != address.lower():
        raise ConfigError(
            f"{cert_path}: the certificate names {named or 'no account'}, "
            f"not this node's account {address.lower()}"
        )
    if tls.not_valid_after < datetime.datetime.now(datetime.UTC):
        raise ConfigError(
            f"{cert_path}: the certificate expired on {tls.not_valid_after:%Y-%m-%d}; "
            "make a new identity (`swarmnode init --force`) and register it"
        )


def _check_file(path: Path, *, secret: bool) -> None:
    """A missing file, a non-file, or a secret others can touch is a ConfigError naming it.

    Checked with lstat before reading: a key file must be a plain file of the node's own,
    not a link whose target's permissions nobody looked at.
    """
    try:
        info = path.lstat()
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing (run `swarmnode init`)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{path}: not a regular file")
    mode = stat.S_IMODE(info.st_mode)
    if secret and mode & _LOOSE_BITS:
        raise ConfigError(
            f"{path}: mode {mode:04o} lets group or others at a private key; "
            f"it must be owner-only (chmod 600 {path})"
        )


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None


def _prepare_directory(directory: Path) -> None:
    """Create `directory` 0700, or accept an existing one, warning when it is open.

    An existing directory is never chmod-ed: the user may have pointed at a directory other
    things use. The key files are 0600 whatever the directory is; the warning says what an
    open directory still allows.
    """
    try:
        info = directory.stat()
    except FileNotFoundError:
        try:
            directory.parent.mkdir(parents=True, exist_ok=True)
            directory.mkdir(mode=DIR_MODE)
            os.chmod(directory, DIR_MODE)  # mkdir's mode is masked by the umask; ours is not
        except OSError as exc:
            raise ConfigError(f"{directory}: cannot create ({exc.strerror})") from None
        return
    except OSError as exc:
        raise ConfigError(f"{directory}: cannot use ({exc.strerror})") from None
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"{directory}: not a directory")
    mode = stat.S_IMODE(info.st_mode)
    if mode & _LOOSE_BITS:
        risk = (
            "others can replace the identity files"
            if mode & 0o022
            else "others can see which files are there"
        )
        warnings.warn(
            IdentityWarning(
                f"{directory}: mode {mode:04o} is open to group or others ({risk}); the key "
                f"files are owner-only, but consider chmod 700 {directory}"
            ),
            stacklevel=3,
        )


def _write_all(directory: Path, contents: dict[str, bytes]) -> None:
    """Write every file through a temporary one, then rename them all into place.

    All temporaries are written and fsynced before the first rename, so a crash or a full
    disk leaves the old set (or none) rather than a key from one identity beside a
    certificate from another; the window left is the few renames, and `load` would catch
    a mixed set (the key must match the certificate, the certificate must name the account).
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for name, data in contents.items():
            staged.append((_write_temporary(directory, name, data), directory / name))
        for temporary, target in staged:
            try:
                os.replace(temporary, target)
            except OSError as exc:
                raise ConfigError(f"{target}: cannot write ({exc.strerror})") from None
        _fsync_directory(directory)
    finally:
        for temporary, _ in staged:
            if os.path.lexists(temporary):
                os.unlink(temporary)


def _write_temporary(directory: Path, name: str, data: bytes) -> Path:
    """A new file beside `name`, created owner-only before a single byte goes in, fsynced.

    os.open with O_EXCL creates it with mode 0600 (never chmod after writing: between the
    write and the chmod the secret would be readable); fchmod pins 0600 against a umask that
    would take the owner's own bits away.
    """
    temporary = directory / f".{name}.{secrets.token_hex(8)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(temporary, flags | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    except OSError as exc:
        raise ConfigError(f"{directory / name}: cannot write ({exc.strerror})") from None
    try:
        os.fchmod(fd, FILE_MODE)
        remaining = memoryview(data)
        while remaining:  # os.write may write less than asked
            remaining = remaining[os.write(fd, remaining) :]
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        os.unlink(temporary)
        raise ConfigError(f"{directory / name}: cannot write ({exc.strerror})") from None
    os.close(fd)
    return temporary


def _fsync_directory(directory: Path) -> None:
    """Make the renames durable: a rename lives in the directory, not in the file."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # some platforms cannot open a directory; the files themselves are synced
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# The account keystore's passphrase, for every command that decrypts or writes one
# (docs/trust.md#keys): the variable itself, or the path of a file holding it (a systemd
# credential, a container secret), so that the secret itself need not sit in an environment.
PASSPHRASE_ENV = "SWARMNODE_KEY_PASSPHRASE"
PASSPHRASE_FILE_ENV = "SWARMNODE_KEY_PASSPHRASE_FILE"


def take_passphrase(environ: MutableMapping[str, str] | None = None) -> str | None:
    """The passphrase given in the environment, or None when none is; both variables are
    removed as they are read, so that nothing the process starts later inherits them and a
    long-running daemon's os.environ no longer holds them (docs/trust.md#keys)."""
    env = os.environ if environ is None else environ
    if env is os.environ:
        for name in (PASSPHRASE_ENV, PASSPHRASE_FILE_ENV):
            _blank_in_initial_environment(name)
    direct = env.pop(PASSPHRASE_ENV, None)
    named = env.pop(PASSPHRASE_FILE_ENV, None)
    if direct is not None and named is not None:
        raise ConfigError(
            f"both {PASSPHRASE_ENV} and {PASSPHRASE_FILE_ENV} are set: give the passphrase one way"
        )
    if named is not None:
        return read_passphrase_file(Path(named))
    return direct


def _blank_in_initial_environment(name: str) -> None:
    """Overwrite `name`'s value with NULs where the kernel keeps the environment the process
    was started with (before it is unset, which only drops glibc's pointer to it).

    os.environ.pop leaves that copy in place, and /proc/PID/environ shows it for the life of
    the process (proc(5)); writing over it there, as setproctitle does with argv, is what
    takes it out of that view (its length stays). Only bytes inside that block are touched,
    never a string setenv allocated; on anything but Linux, or if anything looks unexpected,
    it does nothing.
    """
    # here, not at the top: ctypes is needed only on the way a passphrase is taken
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        # fields 50 and 51 of /proc/self/stat (after the parenthesised name: 3 on)
        fields = Path("/proc/self/stat").read_bytes().rsplit(b")", 1)[1].split()
        start, end = int(fields[47]), int(fields[48])
        environ = ctypes.POINTER(ctypes.c_void_p).in_dll(ctypes.CDLL(None), "environ")
    except (OSError, ValueError, IndexError):
        return
    prefix = name.encode() + b"="
    index = 0
    while (address := environ[index]) is not None:
        index += 1
        if not start <= address < end:
            continue
        entry = ctypes.string_at(address)
        if entry.startswith(prefix) and address + len(entry) <= end:
            ctypes.memset(address + len(prefix), 0, len(entry) - len(prefix))


def read_passphrase_file(path: Path) -> str:
    """The file's text less one trailing newline (what `echo` or an editor adds).

    Refused unless owner-only, like the keys themselves: a passphrase that group or others
    can read is one they can use with a copied keystore, and one they can write is one they
    choose for the next `init`. systemd credentials already are owner-only; a container
    secret needs its mode set (0400).
    """
    where = f"{path} ({PASSPHRASE_FILE_ENV})"
    try:
        # O_NONBLOCK: a FIFO at that path must not hang the process before the check below
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read ({exc.strerror})") from None
    try:
        info = os.fstat(fd)  # the file opened, not whatever the path names by now
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{where}: not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & _LOOSE_BITS:
            raise ConfigError(
                f"{where}: mode {mode:04o} lets group or others at the passphrase; "
                f"it must be owner-only (chmod 600 {path})"
            )
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read()
    finally:
        os.close(fd)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not UTF-8 text") from None
    for newline in ("\r\n", "\n"):
        if text.endswith(newline):
            return text[: -len(newline)]
    return text


__all__ = [
    "ACCOUNT_FILE",
    "IDENTITY_FILES",
    "PASSPHRASE_ENV",
    "PASSPHRASE_FILE_ENV",
    "SECRET_FILES",
    "SUMMARY_FILE",
    "TLS_CERT_FILE",
    "TLS_KEY_FILE",
    "IdentitySummary",
    "IdentityWarning",
    "NodeIdentity",
    "TlsIdentity",
    "read_passphrase_file",
    "take_passphrase",
]
