"""`gitorch secret keygen|encrypt|decrypt|edit` as a user runs them, with the key in the state folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CANARY = "canary-cli-5b2e91"
SECRET_YAML = f"""apiVersion: v1
kind: Secret
metadata:
  name: db
  namespace: prod
stringData:
  password: {CANARY}
"""


def gitorch(state: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "GITORCH_STATE_DIR": str(state)}
    full.pop("GITORCH_AGE_KEY_FILE", None)
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "gitorch", *args], capture_output=True, text=True, env=full,
                          timeout=60)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    r = gitorch(d, "secret", "keygen")
    assert r.returncode == 0, r.stderr
    assert (d / "age.key").stat().st_mode & 0o777 == 0o600
    assert r.stdout.strip().splitlines()[-1].startswith("age1")
    return d


def test_encrypt_decrypt_round_trip_and_nothing_leaks(state: Path, tmp_path: Path) -> None:
    src = tmp_path / "db.yaml"
    src.write_text(SECRET_YAML)
    enc = gitorch(state, "secret", "encrypt", str(src))
    assert enc.returncode == 0, enc.stderr
    assert CANARY not in enc.stdout + enc.stderr
    assert "ENC[AES256_GCM," in enc.stdout and "name: db" in enc.stdout
    out = tmp_path / "db.enc.yaml"
    out.write_text(enc.stdout)
    dec = gitorch(state, "secret", "decrypt", str(out))
    assert dec.returncode == 0, dec.stderr
    assert f"password: {CANARY}" in dec.stdout
    # Someone else's key: a one-line error naming the file and the recipients, no value, no traceback.
    other = gitorch(tmp_path / "other", "secret", "keygen")
    assert other.returncode == 0
    bad = gitorch(tmp_path / "other", "secret", "decrypt", str(out))
    assert bad.returncode == 1 and "none of our age keys is a recipient" in bad.stderr
    assert CANARY not in bad.stderr + bad.stdout and "Traceback" not in bad.stderr


def test_key_file_readable_by_others_is_refused(state: Path, tmp_path: Path) -> None:
    src = tmp_path / "db.yaml"
    src.write_text(SECRET_YAML)
    (state / "age.key").chmod(0o644)
    r = gitorch(state, "secret", "encrypt", str(src))
    assert r.returncode == 1 and "chmod 600" in r.stderr


def test_key_file_from_environment(state: Path, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere.key"
    (state / "age.key").rename(moved)
    src = tmp_path / "db.yaml"
    src.write_text(SECRET_YAML)
    r = gitorch(state, "secret", "encrypt", "-i", str(src), env={"GITORCH_AGE_KEY_FILE": str(moved)})
    assert r.returncode == 0, r.stderr
    assert CANARY not in src.read_text()
    assert gitorch(state, "secret", "decrypt", str(src)).returncode == 1
    r = gitorch(state, "secret", "decrypt", str(src), env={"GITORCH_AGE_KEY_FILE": str(moved)})
    assert CANARY in r.stdout


def test_edit_reencrypts_what_the_editor_changed(state: Path, tmp_path: Path) -> None:
    src = tmp_path / "db.yaml"
    src.write_text(SECRET_YAML)
    assert gitorch(state, "secret", "encrypt", "-i", str(src)).returncode == 0
    before = src.read_text()
    editor = tmp_path / "editor.sh"
    editor.write_text("#!/bin/sh\nsed -i 's/canary-cli-5b2e91/rotated-7781/' \"$1\"\n")
    editor.chmod(0o755)
    r = gitorch(state, "secret", "edit", str(src), env={"EDITOR": str(editor), "VISUAL": ""})
    assert r.returncode == 0, r.stderr
    after = src.read_text()
    assert after != before and "rotated-7781" not in after and CANARY not in after
    assert "password: rotated-7781" in gitorch(state, "secret", "decrypt", str(src)).stdout


def test_encrypt_refuses_a_rule_that_leaves_a_secret_value_in_plaintext(state: Path, tmp_path: Path) -> None:
    src = tmp_path / "db.yaml"
    src.write_text(SECRET_YAML + "data:\n  token: dG9rZW4=\n")
    r = gitorch(state, "secret", "encrypt", "--encrypted-regex", "^data$", str(src))
    assert r.returncode == 1
    assert "--encrypted-regex '^data$' would leave stringData.password in plaintext" in r.stderr
    assert CANARY not in r.stdout + r.stderr and "Traceback" not in r.stderr
    r = gitorch(state, "secret", "encrypt", "--unencrypted-suffix", "word", str(src))
    assert r.returncode == 1 and "would leave stringData.password in plaintext" in r.stderr
    r = gitorch(state, "secret", "encrypt", "--encrypted-regex", "^data$", "--unencrypted-suffix", "x", str(src))
    assert r.returncode == 1 and "at most one of" in r.stderr
    # A rule that covers both is written as asked, with the MAC over the encrypted values only.
    r = gitorch(state, "secret", "encrypt", "--unencrypted-regex", "^(apiVersion|kind|metadata)$",
                "--mac-only-encrypted", str(src))
    assert r.returncode == 0, r.stderr
    assert "unencrypted_regex: ^(apiVersion|kind|metadata)$" in r.stdout and "mac_only_encrypted: true" in r.stdout
    assert CANARY not in r.stdout and "kind: Secret" in r.stdout


def _sops_file(state: Path, tmp_path: Path, groups: list[list[str]], threshold: int = 0,
               single_group: bool = False) -> Path:
    """A Secret with rules other than gitorch's default, as another SOPS user may have written it."""
    from gitorch.source import sops
    from gitorch.source.manifests import dump_documents, load_plain

    rules = sops.Rules("unencrypted_regex", "^(apiVersion|kind|metadata|type)$", mac_only_encrypted=True)
    body = load_plain(SECRET_YAML + "type: Opaque\n")
    if len(groups) == 1:
        doc = sops.encrypt_document(body, groups[0], rules=rules)
        if single_group:  # the recipients only under key_groups, which SOPS reads as one group
            doc["sops"] = {"key_groups": [{"age": doc["sops"].pop("age")}], **doc["sops"]}
    else:
        doc = sops.encrypt_document(body, [], rules=rules, groups=groups, shamir_threshold=threshold)
    out = tmp_path / "db.enc.yaml"
    out.write_text(dump_documents([doc]))
    return out


def _edit(state: Path, tmp_path: Path, src: Path, env: dict[str, str] | None = None) -> None:
    editor = tmp_path / "editor.sh"
    editor.write_text(f"#!/bin/sh\nsed -i 's/{CANARY}/rotated-7781/' \"$1\"\n")
    editor.chmod(0o755)
    r = gitorch(state, "secret", "edit", str(src), env={"EDITOR": str(editor), "VISUAL": "", **(env or {})})
    assert r.returncode == 0, r.stderr
    assert "rotated-7781" not in src.read_text() and CANARY not in src.read_text()


def test_edit_keeps_the_files_rules_and_its_key_group_recipients(state: Path, tmp_path: Path) -> None:
    from gitorch.source import sops
    from gitorch.source.manifests import load_plain

    other = tmp_path / "other" / "age.key"
    mine, theirs = (state / "age.key").read_text().split()[3], sops.generate_key_file(other)
    src = _sops_file(state, tmp_path, [[mine, theirs]], single_group=True)
    _edit(state, tmp_path, src)
    meta = load_plain(src.read_text())["sops"]
    assert meta["unencrypted_regex"] == "^(apiVersion|kind|metadata|type)$" and meta["mac_only_encrypted"] is True
    assert "encrypted_regex" not in meta and "type: Opaque" in src.read_text()
    assert [s["recipient"] for s in meta["age"]] == [mine, theirs]  # one group: at the top, as SOPS writes it
    # The other recipient still opens it.
    r = gitorch(state, "secret", "decrypt", str(src), env={"GITORCH_AGE_KEY_FILE": str(other)})
    assert r.returncode == 0 and "password: rotated-7781" in r.stdout, r.stderr


def test_edit_keeps_shamir_key_groups(state: Path, tmp_path: Path) -> None:
    from gitorch.source import sops
    from gitorch.source.manifests import load_plain

    other = tmp_path / "other" / "age.key"
    mine, theirs = (state / "age.key").read_text().split()[3], sops.generate_key_file(other)
    both = tmp_path / "both.key"
    both.write_text((state / "age.key").read_text() + other.read_text())
    both.chmod(0o600)
    src = _sops_file(state, tmp_path, [[mine], [theirs]], threshold=2)
    _edit(state, tmp_path, src, env={"GITORCH_AGE_KEY_FILE": str(both)})
    meta = load_plain(src.read_text())["sops"]
    assert meta["shamir_threshold"] == 2 and "age" not in meta
    assert [[s["recipient"] for s in g["age"]] for g in meta["key_groups"]] == [[mine], [theirs]]
    # One group's key alone opens only a part of the data key.
    r = gitorch(state, "secret", "decrypt", str(src))
    assert r.returncode == 1 and "split among 2 key groups, 2 of which are needed; our age keys open 1" in r.stderr
    r = gitorch(state, "secret", "decrypt", str(src), env={"GITORCH_AGE_KEY_FILE": str(both)})
    assert r.returncode == 0 and "password: rotated-7781" in r.stdout, r.stderr


def test_edit_refuses_a_file_also_encrypted_for_keys_gitorch_cannot_write(state: Path, tmp_path: Path) -> None:
    src = _sops_file(state, tmp_path, [[(state / "age.key").read_text().split()[3]]])
    pgp = ("  pgp:\n  - fp: FBC7B9E2A4F9289AC0C1D4843D16CEE4A27381B4\n"
           "    enc: x\n    created_at: '2026-01-01T00:00:00Z'\n")
    src.write_text(src.read_text().replace("sops:\n", "sops:\n" + pgp, 1))
    before = src.read_text()
    r = gitorch(state, "secret", "edit", str(src), env={"EDITOR": "false", "VISUAL": ""})
    assert r.returncode == 1 and "also encrypted for pgp keys" in r.stderr and "edit it with sops" in r.stderr
    assert src.read_text() == before


def test_edit_warns_when_the_files_rules_leave_a_secret_value_in_plaintext(state: Path, tmp_path: Path) -> None:
    from gitorch.source import sops
    from gitorch.source.manifests import dump_documents, load_plain

    mine = (state / "age.key").read_text().split()[3]
    src = tmp_path / "db.enc.yaml"
    body = load_plain(SECRET_YAML + "data:\n  token: dG9rZW4=\n")
    src.write_text(dump_documents([sops.encrypt_document(body, [mine], rules=sops.Rules("encrypted_regex", "^data$"))]))
    editor = tmp_path / "editor.sh"
    editor.write_text(f"#!/bin/sh\nsed -i 's/{CANARY}/rotated-7781/' \"$1\"\n")
    editor.chmod(0o755)
    r = gitorch(state, "secret", "edit", str(src), env={"EDITOR": str(editor), "VISUAL": ""})
    assert r.returncode == 0, r.stderr
    assert "warning: the file's sops.encrypted_regex '^data$' leaves stringData.password in plaintext" in r.stderr
    assert "rotated-7781" not in r.stderr and "encrypted_regex: ^data$" in src.read_text()


def test_encrypt_refuses_a_document_that_is_not_a_mapping(state: Path, tmp_path: Path) -> None:
    src = tmp_path / "list.yaml"
    src.write_text(f"- {CANARY}\n- b\n")
    r = gitorch(state, "secret", "encrypt", str(src))
    assert r.returncode == 1 and "expected one YAML mapping" in r.stderr
    assert "Traceback" not in r.stderr and CANARY not in r.stderr
