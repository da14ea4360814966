"""TLS contexts for both legs: serving clients, and connecting to the server."""

from __future__ import annotations

import datetime
import ssl
import tempfile
from pathlib import Path

from .config import Settings, Upstream


def client_facing_context(settings: Settings) -> ssl.SSLContext | None:
    """The context the proxy serves TLS with, or None when TLS to clients is off."""
    if settings.tls_cert:
        cert, key = settings.tls_cert, settings.tls_key or settings.tls_cert
    elif settings.tls_self_signed:
        cert, key = self_signed_certificate(Path(tempfile.mkdtemp(prefix="pgmp-tls-")))
    else:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


def upstream_context(upstream: Upstream) -> ssl.SSLContext | None:
    """The context for TLS to the server, following libpq's sslmode meanings."""
    if upstream.sslmode == "disable" or upstream.is_unix:
        return None
    if upstream.sslmode in ("verify-ca", "verify-full"):
        ctx = ssl.create_default_context(
            cafile=str(upstream.sslrootcert) if upstream.sslrootcert else None
        )
        ctx.check_hostname = upstream.sslmode == "verify-full"
        return ctx
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # libpq's require/prefer: encrypt, do not verify
    return ctx


def self_signed_certificate(directory: Path, common_name: str = "localhost") -> tuple[Path, Path]:
    """Write a fresh self-signed certificate and key into `directory`; return their paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(common_name), x509.DNSName("localhost")]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path
