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
