"""TLS Secrets (`kubernetes.io/tls`): is `tls.crt` a certificate chain and `tls.key` its private key?

The only module that imports `cryptography`. Purely computational, no side effects. Messages
name what is wrong and never quote the key or any part of it.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

MAX_PEM_BYTES = 64 * 1024  # a chain of a few certificates; more is a mistake, not a certificate


def _public_bytes(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def tls_pair_problem(cert_pem: bytes, key_pem: bytes) -> str | None:
    """None when `cert_pem` holds one or more PEM certificates, `key_pem` an unencrypted private
    key, and the first certificate is that key's; else what is wrong (without the key)."""
    if len(cert_pem) > MAX_PEM_BYTES or len(key_pem) > MAX_PEM_BYTES:
        return f"tls.crt or tls.key is over {MAX_PEM_BYTES} bytes"
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        return "tls.crt is not a PEM certificate (expected -----BEGIN CERTIFICATE-----)"
    try:
        key: PrivateKeyTypes = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        return "tls.key is encrypted with a passphrase; HAProxy needs it unencrypted"
    except Exception:
        return "tls.key is not a PEM private key (expected -----BEGIN PRIVATE KEY-----, RSA or EC)"
    if not isinstance(
        key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey
    ):
        return "tls.key is not an RSA, EC or EdDSA private key"
    if _public_bytes(chain[0].public_key()) != _public_bytes(key.public_key()):
        return "tls.key is not the private key of the first certificate in tls.crt"
    return None


def certificate_hosts(cert_pem: bytes) -> list[str]:
    """The DNS names the first certificate is for (its subjectAltName), for SNI and for warnings."""
    cert = x509.load_pem_x509_certificates(cert_pem)[0]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(san.get_values_for_type(x509.DNSName))
