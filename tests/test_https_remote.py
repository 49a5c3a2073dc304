"""A remote desired-state repository over HTTPS: a token as the Basic-auth password, a CA from --ca-file."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gitorch.model.errors import SourceError
from gitorch.nodes.lab import Lab
from gitorch.source.git import RemoteAuth, fetch, mirror
from tests.gitrepo import GitRepo, git
from tests.https_git import HttpsGitServer, self_signed_certificate
from tests.samples import gitorch

TOKEN_ENV = "GITORCH_TEST_HTTPS_TOKEN"
NS = "apiVersion: v1\nkind: Namespace\nmetadata: {name: %s}\n"


@dataclass
class Remote:
    server: HttpsGitServer
    bare: Path
    work: GitRepo
    token: str

    @property
    def url(self) -> str:
        return self.server.url("cluster.git")

    def push(self, message: str, files: dict[str, str]) -> str:
        oid = self.work.commit(message, files)
        git("push", "-q", str(self.bare), "HEAD:main", cwd=self.work.path)
        return oid


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[Remote]:
    """A bare repository served over HTTPS with a fresh certificate, and a work tree pushing to it."""
    root = tmp_path / "served"
    root.mkdir()
    bare = root / "cluster.git"
    git("init", "-q", "--bare", "-b", "main", str(bare), cwd=root)
    token = f"tok-{secrets.token_hex(12)}"
    with HttpsGitServer(root, token) as server:
        yield Remote(server, bare, GitRepo(tmp_path / "work"), token)


def test_https_remote_is_mirrored_and_fetched_with_the_token(
    remote: Remote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, remote.token)
    auth = RemoteAuth(token_env=TOKEN_ENV, ca_file=str(remote.server.ca_file))
    first = remote.push("one", {"ns.yaml": NS % "one"})
    repo = mirror(remote.url, tmp_path / "mirror", auth)
    assert repo.resolve("main").oid == first
    second = remote.push("two", {"ns2.yaml": NS % "two"})
    assert mirror(remote.url, tmp_path / "mirror", auth).resolve("main").oid == second
    third = remote.push("three", {"ns3.yaml": NS % "three"})
    fetch(repo, auth)  # the mirror's own origin URL
    assert repo.resolve("main").oid == third
    seen = remote.server.seen()
    # Refused without credentials, then served with the token as the password.
    assert seen[0].status == 401 and seen[0].password is None
    served = [r for r in seen if r.status == 200]
    assert any(r.method == "POST" and r.path.endswith("/git-upload-pack") for r in served)
    assert all(r.password == remote.token and r.user == "x-access-token" for r in served)


def test_a_wrong_token_fails_once_and_is_not_shown(
    remote: Remote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote.push("one", {"ns.yaml": NS % "one"})
    wrong = f"wrong-{secrets.token_hex(12)}"
    monkeypatch.setenv(TOKEN_ENV, wrong)
    auth = RemoteAuth(token_env=TOKEN_ENV, ca_file=str(remote.server.ca_file))
    with pytest.raises(SourceError, match=rf"refused the token in \${TOKEN_ENV}") as caught:
        mirror(remote.url, tmp_path / "mirror", auth)
    assert wrong not in str(caught.value) and remote.token not in str(caught.value)
    assert remote.url in str(caught.value)
    # One refusal is enough: libgit2 alone would replay the request 15 times.
    assert [r.password for r in remote.server.seen()] == [None, wrong]
    assert not (tmp_path / "mirror" / "HEAD").exists()
    monkeypatch.delenv(TOKEN_ENV)
    with pytest.raises(SourceError, match=rf"\${TOKEN_ENV} is not set or empty"):
        mirror(remote.url, tmp_path / "mirror", auth)


def test_an_untrusted_certificate_is_refused_before_the_token_is_sent(
    remote: Remote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote.push("one", {"ns.yaml": NS % "one"})
    monkeypatch.setenv(TOKEN_ENV, remote.token)
    with pytest.raises(SourceError, match=r"TLS certificate of 127\.0\.0\.1 does not verify \(pass --ca-file"):
        mirror(remote.url, tmp_path / "mirror", RemoteAuth(token_env=TOKEN_ENV))
    (tmp_path / "other").mkdir()
    other, _ = self_signed_certificate(tmp_path / "other")
    with pytest.raises(SourceError, match=rf"127\.0\.0\.1 does not verify \(not signed by a CA in {other}") as caught:
        mirror(remote.url, tmp_path / "mirror", RemoteAuth(token_env=TOKEN_ENV, ca_file=str(other)))
    assert remote.token not in str(caught.value)
    assert remote.server.seen() == []  # no request, so no token, ever reached the server
    with pytest.raises(SourceError, match="no such CA certificate file"):
        mirror(remote.url, tmp_path / "mirror", RemoteAuth(token_env=TOKEN_ENV, ca_file=str(tmp_path / "none.pem")))
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    with pytest.raises(SourceError, match="cannot load CA certificates"):
        mirror(remote.url, tmp_path / "mirror", RemoteAuth(token_env=TOKEN_ENV, ca_file=str(tmp_path / "junk.pem")))


def test_serve_names_the_host_of_an_untrusted_certificate(
    remote: Remote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote.push("one", {"ns.yaml": NS % "one"})
    monkeypatch.setenv(TOKEN_ENV, remote.token)
    (tmp_path / "other").mkdir()
    other, _ = self_signed_certificate(tmp_path / "other")
    monkeypatch.setenv("GITORCH_REPO_CA_FILE", str(other))  # the option's environment variable
    proc = gitorch("serve", "--repo", remote.url, "--token-env", TOKEN_ENV, "--listen", "off", cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and remote.token not in proc.stdout + proc.stderr
    assert f"{remote.url}: the TLS certificate of 127.0.0.1 does not verify" in proc.stderr
    assert str(other) in proc.stderr


@pytest.mark.lab
def test_serve_follows_an_https_remote(lab: Lab, remote: Remote, tmp_path: Path) -> None:
    from tests.test_remote import serve_follows

    out, err = serve_follows(
        lab, tmp_path, ["--repo", remote.url, "--token-env", TOKEN_ENV, "--ca-file", str(remote.server.ca_file)],
        remote.push, env={TOKEN_ENV: remote.token},
    )
    assert remote.token not in out and remote.token not in err
    fetches = [r for r in remote.server.seen() if r.method == "POST"]
    assert len(fetches) >= 3 and all(r.password == remote.token for r in fetches)
