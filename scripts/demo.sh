#!/usr/bin/env bash
# gitorch's main job on the embedded default: validate the example desired-state repo and show its plan.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/bootstrap.sh
echo "== gitorch validate --repo examples/repo"
gitorch validate --repo examples/repo
echo
echo "== gitorch plan --repo examples/repo  (against an empty cluster)"
gitorch plan --repo examples/repo
