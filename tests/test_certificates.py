"""TLS Secret checks: a good certificate+key pair passes; every kind of bad pair gets a message
that names the problem and never holds any of the key."""

from __future__ import annotations

import pytest

from gitorch.source.certificates import certificate_hosts, tls_pair_problem
from tests.tls import certificate_pem, key_pem, new_key


def _cert_pem(key: object) -> bytes:
    return certificate_pem(key, ["www.shop.test", "*.www.shop.test"])  # type: ignore[arg-type]


KEY = new_key()
OTHER = new_key()


def test_good_pair() -> None:
    assert tls_pair_problem(_cert_pem(KEY), key_pem(KEY)) is None
    assert certificate_hosts(_cert_pem(KEY)) == ["www.shop.test", "*.www.shop.test"]


@pytest.mark.parametrize(
    ("cert", "key", "says"),
    [
        (_cert_pem(KEY), key_pem(OTHER), "not the private key of the first certificate"),
        (b"hello", key_pem(KEY), "tls.crt is not a PEM certificate"),
        (_cert_pem(KEY), key_pem(KEY)[:-60] + b"\n-----END PRIVATE KEY-----\n", "tls.key is not a PEM private key"),
        (_cert_pem(KEY), key_pem(KEY, b"pass"), "encrypted with a passphrase"),
        (_cert_pem(KEY), _cert_pem(KEY), "tls.key is not a PEM private key"),
        (_cert_pem(KEY) * 200, key_pem(KEY), "over 65536 bytes"),
    ],
    ids=["other-key", "not-pem", "truncated-key", "encrypted-key", "cert-as-key", "huge"],
)
def test_bad_pairs_say_why_without_the_key(cert: bytes, key: bytes, says: str) -> None:
    problem = tls_pair_problem(cert, key)
    assert problem is not None and says in problem
    body = b"".join(line for line in key.splitlines() if not line.startswith(b"-----"))
    for i in range(0, max(len(body) - 8, 1), 8):
        assert body[i : i + 8].decode(errors="replace") not in problem
