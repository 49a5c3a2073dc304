"""TLS Secrets (`kubernetes.io/tls`): is `tls.crt` a certificate chain and `tls.key` its private key?
Also AES-256-GCM for SOPS values (`source/sops.py`).

The only module that imports `cryptography`. Purely computational, no side effects. Messages
name what is wrong and never quote the key or any part of it.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

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


class AeadError(ValueError):
    """An AES-GCM value failed authentication (wrong key, wrong additional data or altered bytes)."""


def aes_gcm_seal(key: bytes, iv: bytes, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
    """AES-256-GCM with `iv` of any length; returns (ciphertext, 16-byte tag) as SOPS stores them."""
    out = AESGCM(key).encrypt(iv, plaintext, aad)
    return out[:-16], out[-16:]


def aes_gcm_open(key: bytes, iv: bytes, ciphertext: bytes, tag: bytes, aad: bytes) -> bytes:
    """Inverse of `aes_gcm_seal`; raises AeadError (naming nothing secret) when authentication fails."""
    try:
        return AESGCM(key).decrypt(iv, ciphertext + tag, aad)
    except Exception as exc:  # InvalidTag, or a bad key/iv length
        raise AeadError("authentication failed") from exc


def new_serving_pair(
    hosts: list[str], *, ca: tuple[bytes, bytes] | None = None, days: int = 3650
) -> tuple[bytes, bytes, bytes, bytes]:
    """A CA (made here unless `ca` = (cert PEM, key PEM) is given) and a server certificate it
    signs for `hosts` (DNS names or IP addresses): (ca cert, ca key, server cert, server key), PEM.
    EC P-256 keys, unencrypted (the files are written mode 0600)."""
    import datetime
    import ipaddress

    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)
    if ca is None:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = (
            x509.CertificateBuilder().subject_name(name("gitorch API CA")).issuer_name(name("gitorch API CA"))
            .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
    else:
        ca_cert = x509.load_pem_x509_certificates(ca[0])[0]
        loaded = serialization.load_pem_private_key(ca[1], password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise ValueError("the CA key is not an EC or RSA private key")
        ca_key = loaded  # type: ignore[assignment]
    alt: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(name(hosts[0] if hosts else "gitorch")).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_pem = ca_cert.public_bytes(pem)
    ca_key_pem = ca[1] if ca is not None else pem_key(ca_key)
    return ca_pem, ca_key_pem, cert.public_bytes(pem), pem_key(key)
