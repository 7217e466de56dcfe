"""Who may talk to this node: accounts, endpoints and TLS certificates.

In a node it mirrors the contract's active roster (fed from Registered / Deregistered
events); in tests it is filled by hand. Peers are identified by the SHA-256 of their
DER certificate, never by a name (docs/trust.md#the-roster). A record's account is
normalized when the record is made, so the roster is keyed by one spelling and lookups
compare with `==` (docs/architecture.md#addresses).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from swarmnode.address import is_address, normalize


@dataclass(frozen=True)
class PeerRecord:
    account: str
    endpoint: str
    certificate: bytes  # DER, as registered on chain
    fingerprint: bytes = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "account", normalize(self.account))
        object.__setattr__(self, "fingerprint", hashlib.sha256(self.certificate).digest())

    @property
    def certificate_pem(self) -> bytes:
        cert = x509.load_der_x509_certificate(self.certificate)
        return cert.public_bytes(serialization.Encoding.PEM)

    @property
    def tls_name(self) -> str:
        """The name the certificate carries (DNS SubjectAltName): the account, lowercased,
        since DNS names compare without case (the one place an account is lowercase)."""
        return self.account.lower()


class Roster:
    """A thread-safe set of peer records, versioned so that readers can cache."""

    def __init__(self, records: Iterable[PeerRecord] = ()) -> None:
        self._lock = threading.Lock()
        self._by_account: dict[str, PeerRecord] = {}
        self._by_fingerprint: dict[bytes, PeerRecord] = {}
        self.version = 0
        for record in records:
            self.upsert(record)

    def upsert(self, record: PeerRecord) -> None:
        with self._lock:
            old = self._by_account.pop(record.account, None)
            if old is not None:
                self._by_fingerprint.pop(old.fingerprint, None)
            self._by_account[record.account] = record
            self._by_fingerprint[record.fingerprint] = record
            self.version += 1

    def remove(self, account: str) -> None:
        with self._lock:
            old = self._by_account.pop(normalize(account), None)
            if old is not None:
                self._by_fingerprint.pop(old.fingerprint, None)
                self.version += 1

    def get(self, account: str) -> PeerRecord | None:
        """The record for `account`; None if there is none, or `account` is not an address."""
        if not is_address(account):
            return None
        key = normalize(account)
        with self._lock:
            return self._by_account.get(key)

    def by_fingerprint(self, fingerprint: bytes) -> PeerRecord | None:
        with self._lock:
            return self._by_fingerprint.get(fingerprint)

    def records(self) -> list[PeerRecord]:
        with self._lock:
            return list(self._by_account.values())
