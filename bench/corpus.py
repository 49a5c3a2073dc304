"""The compatibility corpus (issue 10) as a figure: every unit of tests/data/corpus (a file, a
kustomization, the files a documentation page applies together) loaded as tests/test_corpus.py
loads it. Last line: objects accepted as-is, of how many, and the percentage (the issue's target:
at least 95%), with the seconds the whole corpus took (git commits included).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from tests.gitrepo import GitRepo
from tests.test_corpus import outcomes, units


def main() -> None:
    accepted = total = 0
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="corpus-bench-") as tmp:
        for i, (name, root, files) in enumerate(units()):
            got = outcomes(GitRepo(Path(tmp) / f"unit{i}"), root, files)
            ok = sum(v == "accepted" for v in got.values())
            accepted, total = accepted + ok, total + len(got)
            print(f"{name}: {ok}/{len(got)} accepted")
    print(f"corpus: {accepted}/{total} objects accepted as-is ({100 * accepted / total:.1f}%) "
          f"in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
