"""Real Git signers for tests: SSH signing keys made with ssh-keygen and OpenPGP keys made with
gpg in batch mode (in a private GNUPGHOME), and commits signed with them by git itself."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.gitrepo import GIT_ENV, GitRepo


@dataclass
class Signer:
    """One signing key and the git options that sign with it."""

    name: str
    method: str  # ssh or openpgp
    public: str  # an SSH public key line, or an armored OpenPGP public key
    fingerprint: str  # SHA256:... or 40 hex digits
    config: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def commit(self, repo: GitRepo, message: str, files: dict[str, str] | None = None) -> str:
        """Commit the work tree's changes (with `files` written), signed by this key."""
        if files:
            repo.write(files)
        env = {**os.environ, **GIT_ENV, **self.env}
        subprocess.run(["git", "add", "-A"], cwd=repo.path, env=env, check=True)
        res = subprocess.run(["git", *self.config, "commit", "-q", "-S", "--allow-empty", "-m", message],
                             cwd=repo.path, env=env, capture_output=True, text=True, check=False)
        assert res.returncode == 0, res.stderr
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo.path, env=env, capture_output=True,
                              text=True, check=True).stdout.strip()


def ssh_signer(folder: Path, name: str) -> Signer:
    key = folder / f"{name}_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@example.test", "-f", str(key)],
                   check=True, capture_output=True)
    public = key.with_suffix(".pub").read_text().strip()
    out = subprocess.run(["ssh-keygen", "-lf", str(key.with_suffix(".pub"))], check=True, capture_output=True,
                         text=True).stdout.split()
    return Signer(name, "ssh", public, out[1], ["-c", "gpg.format=ssh", "-c", f"user.signingkey={key}"])


class GpgHome:
    """A private GNUPGHOME with short path (gpg-agent's socket must fit in a sun_path); its agent
    is stopped on close."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="gpg-", dir="/tmp"))

    def env(self) -> dict[str, str]:
        return {"GNUPGHOME": str(self.path)}

    def gpg(self, *args: str, input: str | None = None) -> str:
        res = subprocess.run(["gpg", "--batch", "--no-tty", *args], env={**os.environ, **self.env()},
                             capture_output=True, text=True, check=False, input=input)
        assert res.returncode == 0, res.stderr
        return res.stdout

    def signer(self, name: str) -> Signer:
        uid = f"{name} <{name}@example.test>"
        self.gpg("--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never")
        fpr = next(line.split(":")[9] for line in self.gpg("--with-colons", "--fingerprint", uid).splitlines()
                   if line.startswith("fpr:"))
        public = self.gpg("--armor", "--export", fpr)
        return Signer(name, "openpgp", public, fpr, ["-c", "gpg.format=openpgp", "-c", f"user.signingkey={fpr}"],
                      self.env())

    def close(self) -> None:
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env={**os.environ, **self.env()}, check=False,
                       capture_output=True)
        shutil.rmtree(self.path, ignore_errors=True)
