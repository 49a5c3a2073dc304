"""What git.verifyCommits costs per pushed commit: gitorch's range check (signature with
ssh-keygen or gpg, then the commit's object-level changes against the signer's grants) against
git's own `git verify-commit` (signature only), the named peer, on the same commits.

Builds a repository of --commits commits signed alternately by an SSH and an OpenPGP key, each
changing one Deployment in a namespace the signer is granted. Last line: ms per commit.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gitorch.source import desired
from gitorch.source.git import open_repository
from gitorch.source.signatures import RangeCheck
from tests.gitrepo import GitRepo
from tests.signers import GpgHome, ssh_signer
from tests.test_signed_commits import base_files, deployment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--commits", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    home = GpgHome()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-sig-") as tmp:
            folder = Path(tmp)
            keys = {"admin": ssh_signer(folder, "admin"), "dev": ssh_signer(folder, "dev"),
                    "stranger": ssh_signer(folder, "stranger"), "ops": home.signer("ops")}
            repo = GitRepo(folder / "repo")
            base = keys["admin"].commit(repo, "grants", base_files(keys))
            oids = []
            for i in range(args.commits):
                signer, ns = (keys["dev"], "staging") if i % 2 == 0 else (keys["ops"], "prod")
                oids.append(signer.commit(repo, f"web {i}", {f"{ns}/web.yaml": deployment(ns, replicas=i + 1)}))
            r = open_repository(repo.path)
            trusted, head = desired.load(r, base), desired.load(r, oids[-1])
            ours = []
            for _ in range(args.repeats):
                check = RangeCheck(r, lambda oid: desired.load(r, oid))
                start = time.perf_counter()
                refusals = check.check(trusted, head)
                ours.append((time.perf_counter() - start) / len(oids))
                assert not refusals, [x.message for x in refusals]
            allowed = folder / "allowed_signers"
            allowed.write_text("".join(f"{k.name} {k.public}\n" for k in keys.values() if k.method == "ssh"))
            env = {**os.environ, **home.env()}
            peer = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                for oid in oids:
                    res = subprocess.run(["git", "-c", f"gpg.ssh.allowedSignersFile={allowed}", "verify-commit", oid],
                                         cwd=repo.path, env=env, capture_output=True, check=False)
                    assert res.returncode == 0, res.stderr
                peer.append((time.perf_counter() - start) / len(oids))
    finally:
        home.close()
    o, p = statistics.median(ours) * 1000, statistics.median(peer) * 1000
    print(f"{args.commits} signed commits (half SSH, half OpenPGP), median of {args.repeats}:")
    print(f"  gitorch range check (signature + grants of each change): {o:.1f} ms/commit")
    print(f"  git verify-commit (signature only):                       {p:.1f} ms/commit ({o / p:.2f}x)")
    print(f"{o:.1f} ms per commit checked")


if __name__ == "__main__":
    main()
