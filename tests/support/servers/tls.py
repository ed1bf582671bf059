"""A self-signed certificate for 127.0.0.1 / localhost, made at test time with the
``cryptography`` package when it is installed."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path


def cryptography_available() -> bool:
    """Whether certificates can be made here (tests needing TLS skip otherwise)."""
    try:
        import cryptography  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class SelfSignedCertificate:
    """A certificate and its key on disk; ``client_context`` trusts exactly this one."""

    cert_path: Path
    key_path: Path

    def server_context(self) -> ssl.SSLContext:
        """For the server side of a TLS connection."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_path, self.key_path)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context whose only trusted CA is this certificate."""
        return ssl.create_default_context(cafile=str(self.cert_path))


def make_certificate(directory: Path, common_name: str = "localhost") -> SelfSignedCertificate:
    """Write a fresh key and a certificate valid for ``localhost`` and ``127.0.0.1``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        # Key identifiers keep it acceptable to OpenSSL's strict X.509 checks (Python 3.13+).
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return SelfSignedCertificate(cert_path, key_path)
