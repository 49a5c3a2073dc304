#!/usr/bin/env bash
# Install everything (Debian packages and a virtualenv) and run the linters and the whole test suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/bootstrap.sh
echo "== ruff"; ruff check gitorch tests bench
echo "== mypy"; mypy gitorch
echo "== import layers"; lint-imports --no-cache
echo "== pytest"
set +e
python -m pytest -q -ra "$@"
rc=$?
set -e
# pytest exits 5 when it collected no tests: that is a failure for us, not a pass.
if [ "$rc" -eq 5 ]; then echo "no tests ran" >&2; exit 1; fi
exit "$rc"
