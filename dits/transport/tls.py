"""Self-signed server certificates and their fingerprints, for certificate pinning.

dits servers use self-signed certificates: a client pins the server's SHA-256 fingerprint on first
contact (or gets it out of band) instead of trusting a CA. This module creates such a certificate
and computes fingerprints; it does not open sockets or decide whom to trust.

The key is EC P-256 because both qh3 (whose default signature algorithms omit EdDSA) and OpenSSL
accept it.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["ensure_self_signed", "fingerprint_of_der", "load_fingerprint"]

VALIDITY_DAYS = 3650
"""Self-signed certificates are pinned, not expired-and-rotated, so they live for ten years."""


def fingerprint_of_der(der: bytes) -> str:
    """Return the pin of a DER certificate: ``"sha256:"`` followed by 64 lowercase hex digits."""
    return "sha256:" + hashlib.sha256(der).hexdigest()


def load_fingerprint(cert_path: str | os.PathLike[str]) -> str:
    """Return the fingerprint of the first certificate in a PEM file.

    Raises:
        OSError: the file cannot be read.
        ValueError: the file holds no PEM certificate.
    """
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    return fingerprint_of_der(cert.public_bytes(serialization.Encoding.DER))


def ensure_self_signed(
    cert_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    hostnames: Iterable[str] = (),
) -> str:
    """Create a self-signed certificate and key unless both files already exist.

    The certificate names localhost, 127.0.0.1, ::1 and ``hostnames`` (DNS names or IP
    addresses) as subject alternative names. Each file is written to a temporary name and renamed,
    so a crash leaves either no file or a complete one; the key file is created with mode 0600.

    Args:
        cert_path: where the PEM certificate goes.
        key_path: where the PEM (PKCS#8, unencrypted) private key goes.
        hostnames: extra names clients may use to reach the server.

    Returns:
        The fingerprint of the (new or existing) certificate, see :func:`fingerprint_of_der`.
    """
    cert_file, key_file = Path(cert_path), Path(key_path)
    if cert_file.exists() and key_file.exists():
        return load_fingerprint(cert_file)

    extra = list(hostnames)
    names = ["localhost", "127.0.0.1", "::1", *extra]
    sans: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):  # dedupe, keep order
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, extra[0] if extra else "dits")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))  # tolerate clock skew
        .not_valid_after(now + datetime.timedelta(days=VALIDITY_DAYS))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomic(key_file, key_pem, mode=0o600)
    _write_atomic(cert_file, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return fingerprint_of_der(cert.public_bytes(serialization.Encoding.DER))


def _write_atomic(path: Path, data: bytes, *, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp creates the file 0600 from the start, so the key is never world-readable.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
