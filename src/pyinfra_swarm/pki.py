"""The controller's PKI directory: a small certificate authority for the cluster's registry (a CA, kept in the
project's state directory, never in git, and a server certificate for the registry's address), and the key
that names secret and config versions (`object_key`). The swarm records which directory it was deployed
with (`identity`): another controller's directory is refused before it replaces anything."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import ipaddress
import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pyinfra import logger

VALIDITY = datetime.timedelta(days=3650)
RENEW_BEFORE = datetime.timedelta(days=30)  # a registry certificate expiring sooner is made again


def pki_dir() -> Path:
    """Where the CA, the registry's certificates and generated passwords live on the controller:
    $PYINFRA_SWARM_PKI_DIR, else $XDG_DATA_HOME/pyinfra-swarm/pki (~/.local/share/pyinfra-swarm/pki): one
    place whatever directory or checkout the deploy runs from."""
    configured = os.environ.get("PYINFRA_SWARM_PKI_DIR")
    if configured:
        return Path(configured).expanduser().resolve()
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "pyinfra-swarm" / "pki"


def write_private(path: Path, content: str | bytes) -> None:
    """Write a file only its owner may read (0600), in a directory only its owner may enter (0700)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    path.touch(mode=0o600)
    path.chmod(0o600)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


def object_key(create: bool = True) -> bytes | None:
    """The key that names versions of secrets and configs (an HMAC key, so a name tells nothing about a
    value): made once in the PKI directory, None when it isn't there and `create` is False."""
    path = pki_dir() / "object-key"
    if not path.exists():
        if not create:
            return None
        write_private(path, secrets.token_hex(32) + "\n")
    return bytes.fromhex(path.read_text().strip())


def keyed_digest(content: str, length: int = 10) -> str:
    """The first `length` hex digits of HMAC-SHA256(object key, content)."""
    key = object_key()
    assert key is not None
    return hmac.new(key, content.encode(), hashlib.sha256).hexdigest()[:length]


def identity() -> str | None:
    """This PKI directory's fingerprint (of its object key), as the swarm records it; None before it has one."""
    key = object_key(create=False)
    return hashlib.sha256(b"pyinfra-swarm pki\n" + key).hexdigest()[:16] if key else None


def ca_digest() -> str | None:
    """The sha256 of the registry CA's certificate file (what nodes hold as ca.crt); None without a CA."""
    path = pki_dir() / "ca.crt"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_private(path, pem)


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def certificate_authority(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA of this cluster, made on first use."""
    cert_path, key_path = directory / "ca.crt", directory / "ca.key"
    if cert_path.exists() and key_path.exists():
        return x509.load_pem_x509_certificate(cert_path.read_bytes()), _load_key(key_path)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pyinfra-swarm registry CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write_key(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def expires_within(cert_path: Path, delta: datetime.timedelta) -> bool:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return cert.not_valid_after_utc < datetime.datetime.now(datetime.timezone.utc) + delta


def server_certificate(directory: Path, address: str, renew: bool = False) -> tuple[str, str, str]:
    """(CA cert, server cert, server key) PEM texts for a registry at `address` (an IP or a DNS name),
    made once per address and reused, so re-runs change nothing; made again when `renew` asks, or when it
    expires within RENEW_BEFORE."""
    ca_cert, ca_key = certificate_authority(directory)
    cert_path, key_path = directory / f"registry-{address}.crt", directory / f"registry-{address}.key"
    exists = cert_path.exists() and key_path.exists()
    if exists and not renew and expires_within(cert_path, RENEW_BEFORE):
        logger.warning(f"the registry's certificate ({cert_path}) expires within {RENEW_BEFORE.days} days: renewed")
        renew = True
    if renew or not exists:
        key = ec.generate_private_key(ec.SECP256R1())
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(address))
        except ValueError:
            san = x509.DNSName(address)
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write_key(key_path, key)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return (
        ca_cert.public_bytes(serialization.Encoding.PEM).decode(),
        cert_path.read_text(),
        key_path.read_text(),
    )
