"""A node's TLS identity: an EC key and a self-signed certificate that names its chain account.

No certificate authority: the swarm contract is the roster, and peers accept a certificate
only if its SHA-256 is registered there. The account address goes into a DNS
SubjectAltName because gRPC clients always check a name (DESIGN.md "Trust").
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CERT_VALIDITY = datetime.timedelta(days=3650)


@dataclass(frozen=True)
class TlsIdentity:
    key_pem: bytes
    cert_pem: bytes
    cert_der: bytes

    @property
    def fingerprint(self) -> bytes:
        """SHA-256 of the DER certificate: what the contract stores."""
        return hashlib.sha256(self.cert_der).digest()

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
