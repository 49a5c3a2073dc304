"""The pre-receive hook refuses a real `git push` of an invalid desired state and accepts a valid one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.gitrepo import GitRepo, git
from tests.samples import CONFIG, NAMESPACE, deployment, gitorch


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    bare = tmp_path / "cluster.git"
    git("init", "-q", "--bare", "-b", "main", str(bare), cwd=tmp_path)
    res = gitorch("hook", "install", str(bare), "--branch", "main", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (bare / "hooks" / "pre-receive").stat().st_mode & 0o111
    return bare


def _push(repo: GitRepo, remote: Path, ref: str = "main") -> tuple[int, str]:
    res = git("push", str(remote), f"HEAD:refs/heads/{ref}", cwd=repo.path, check=False)
    return res.returncode, res.stderr


def test_valid_push_is_accepted(repo: GitRepo, remote: Path) -> None:
    oid = repo.commit("valid", {"ns.yaml": NAMESPACE, "config.yaml": CONFIG})
    code, err = _push(repo, remote)
    assert code == 0, err
    assert "is valid (2 objects)" in err
    assert git("rev-parse", "main", cwd=remote).stdout.strip() == oid


def test_invalid_push_is_refused_with_the_errors(repo: GitRepo, remote: Path) -> None:
    good = repo.commit("valid", {"ns.yaml": NAMESPACE, "config.yaml": CONFIG})
    assert _push(repo, remote)[0] == 0
    broken = deployment().replace("replicas: 3", "replicas: three")
    repo.commit("broken", {"web.yaml": broken})
    code, err = _push(repo, remote)
    assert code != 0
    assert "push to 'main' refused" in err
    assert "web.yaml:7:13: /spec/replicas: expected integer" in err
    # The branch did not move and the broken commit is not in the repository.
    assert git("rev-parse", "main", cwd=remote).stdout.strip() == good


def test_other_branches_are_not_checked(repo: GitRepo, remote: Path) -> None:
    repo.commit("broken", {"web.yaml": "kind: [unclosed\n"})
    code, err = _push(repo, remote, ref="feature")
    assert code == 0, err


def test_deleting_the_watched_branch_is_refused(repo: GitRepo, remote: Path) -> None:
    repo.commit("valid", {"ns.yaml": NAMESPACE})
    assert _push(repo, remote)[0] == 0
    res = git("push", str(remote), ":refs/heads/main", cwd=repo.path, check=False)
    assert res.returncode != 0
    assert "refusing to delete 'main'" in res.stderr


def test_install_refuses_to_overwrite_a_foreign_hook(tmp_path: Path) -> None:
    bare = tmp_path / "other.git"
    git("init", "-q", "--bare", str(bare), cwd=tmp_path)
    (bare / "hooks" / "pre-receive").write_text("#!/bin/sh\nexit 0\n")
    res = gitorch("hook", "install", str(bare), cwd=tmp_path)
    assert res.returncode == 1
    assert "already exists and was not written by gitorch" in res.stderr
    assert gitorch("hook", "install", str(bare), "--force", cwd=tmp_path).returncode == 0


def test_post_receive_wakes_serve_with_the_wake_token(
    repo: GitRepo, remote: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gitorch.model.settings import Settings
    from tests.test_gitops import Serve, revisions
    from tests.waiting import wait_until

    first = repo.commit("ns", {"ns.yaml": NAMESPACE})
    assert _push(repo, remote)[0] == 0
    server = Serve(remote, tmp_path / "serve.log")  # an hour between passes: only the hook wakes it
    try:
        wait_until("the first pass", revisions, timeout=30, interval=0.2, accept=lambda got: first in got)
        res = gitorch("hook", "install", str(remote), "--notify", f"{server.url}/hooks/wake", cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        hook = remote / "hooks" / "post-receive"
        token = (Settings.from_env().state_dir / "wake-token").read_text().strip()
        # The hook holds the token, so only its owner may read it; the token is not on its command line.
        assert hook.stat().st_mode & 0o777 == 0o700 and token in hook.read_text()
        assert (Settings.from_env().state_dir / "wake-token").stat().st_mode & 0o777 == 0o600

        second = repo.commit("config", {"config.yaml": CONFIG})
        code, err = _push(repo, remote)
        assert code == 0 and "controller notified" in err, err
        wait_until("a pass of the pushed commit", revisions, timeout=30, interval=0.2, accept=lambda got: second in got)
        assert "woken by post-receive hook" in server.output()

        # A hook written with another token is refused; the push still goes through.
        monkeypatch.setenv("GITORCH_WAKE_TOKEN", "another-token-0123456789")
        assert gitorch("hook", "install", str(remote), "--notify", f"{server.url}/hooks/wake",
                       cwd=tmp_path).returncode == 0
        third = repo.commit("three", {"three.yaml": NAMESPACE.replace("shop", "three")})
        code, err = _push(repo, remote)
        assert code == 0 and "refused this hook's wake token" in err, err
        assert git("rev-parse", "main", cwd=remote).stdout.strip() == third
        assert server.output().count("woken by post-receive hook") == 1
    finally:
        server.stop()
    assert token not in server.output()


def test_wake_token_from_the_environment_must_be_set_and_sound(tmp_path: Path, remote: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    res = gitorch("hook", "install", str(remote), "--wake-token-env", "NO_SUCH_TOKEN_VAR", cwd=tmp_path)
    assert res.returncode == 1 and "NO_SUCH_TOKEN_VAR" in res.stderr and "Traceback" not in res.stderr
    monkeypatch.setenv("SHORT_TOKEN", "short")
    res = gitorch("hook", "install", str(remote), "--wake-token-env", "SHORT_TOKEN", cwd=tmp_path)
    assert res.returncode == 1 and "16 to 256 printable" in res.stderr and "short" not in res.stderr


REQUIRE_ENCRYPTION = """apiVersion: gitorch.dev/v1
kind: Cluster
metadata:
  name: sealed
spec:
  secrets:
    requireEncryption: true
"""
PLAIN_SECRET = """apiVersion: v1
kind: Secret
metadata:
  name: db
stringData:
  password: hook-canary-31337
"""


def test_a_plaintext_secret_is_refused_when_the_cluster_requires_encryption(
        repo: GitRepo, remote: Path, tmp_path: Path) -> None:
    repo.commit("sealed cluster", {"cluster.yaml": REQUIRE_ENCRYPTION, "ns.yaml": NAMESPACE})
    assert _push(repo, remote)[0] == 0
    repo.commit("plaintext", {"secret.yaml": PLAIN_SECRET})
    code, err = _push(repo, remote)
    assert code != 0
    assert ("secret.yaml:4:9: /metadata/name: Secret default/db is not encrypted, and the Cluster sets "
            "secrets.requireEncryption") in err
    assert "gitorch secret encrypt -i secret.yaml" in err and "hook-canary-31337" not in err
    # Encrypted for a key the hook does not have: its structure is checked, and it is accepted.
    src = repo.path / "secret.yaml"
    env = {**os.environ, "GITORCH_STATE_DIR": str(tmp_path / "author-state")}
    for args in (["keygen"], ["encrypt", "-i", str(src)]):
        res = subprocess.run([sys.executable, "-m", "gitorch", "secret", *args], env=env, capture_output=True,
                             text=True, check=False)
        assert res.returncode == 0, res.stderr
    repo.commit("encrypted", {"secret.yaml": src.read_text()})
    code, err = _push(repo, remote)
    assert code == 0, err


@pytest.mark.parametrize("rules", [
    ("encrypted_regex", "^data$"),  # hides data, not stringData
    ("unencrypted_regex", "^(apiVersion|kind|metadata|password)$"),
    ("encrypted_suffix", "token"),  # (an unencrypted_suffix would hide kind and metadata too)
], ids=lambda r: r[0])
def test_a_sops_secret_whose_rules_leave_a_value_in_plaintext_is_refused(
        repo: GitRepo, remote: Path, rules: tuple[str, str]) -> None:
    from gitorch.source import sops
    from gitorch.source.manifests import dump_documents, load_plain

    repo.commit("sealed cluster", {"cluster.yaml": REQUIRE_ENCRYPTION, "ns.yaml": NAMESPACE})
    assert _push(repo, remote)[0] == 0
    body = load_plain(PLAIN_SECRET + "data:\n  token: aG9vay1jYW5hcnk=\n", "secret.yaml")
    # A sops block, a MAC and one encrypted value: only the rules leave stringData.password readable.
    recipient = sops.recipient_of(sops.parse_identities(
        "AGE-SECRET-KEY-1G0Q5K9TV4REQ3ZSQRMTMG8NSWQGYT0T7TZ33RAZEE0GZYVZN0APSU24RK7")[0])
    text = dump_documents([sops.encrypt_document(body, [recipient], rules=sops.Rules(*rules))])
    assert "ENC[AES256_GCM," in text and "hook-canary-31337" in text
    line = next(n for n, t in enumerate(text.splitlines(), 1) if "hook-canary-31337" in t)
    column = text.splitlines()[line - 1].index("hook-canary-31337") + 1
    repo.commit("half sealed", {"secret.yaml": text})
    code, err = _push(repo, remote)
    assert code != 0
    assert (f"secret.yaml:{line}:{column}: /stringData/password: Secret default/db: this value is in plaintext "
            "(the file's SOPS rules leave it unencrypted), and the Cluster sets secrets.requireEncryption") in err
    assert "gitorch secret decrypt -i secret.yaml && gitorch secret encrypt -i secret.yaml" in err
    assert "hook-canary-31337" not in err and "Traceback" not in err
