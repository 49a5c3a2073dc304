#!/usr/bin/env bash
# gitorch's main job on the embedded default (SQLite, a local lab cluster on this machine):
# validate examples/repo, bring up a 3-node lab, commit the example as a desired-state repo
# whose Node manifests are the lab's, show its plan, and apply it until it has converged.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/bootstrap.sh

export GITORCH_STATE_DIR=${GITORCH_STATE_DIR:-/var/lib/gitorch-demo}
work=$GITORCH_STATE_DIR/cluster-repo

echo "== gitorch validate --repo examples/repo"
gitorch validate --repo examples/repo

echo; echo "== gitorch lab up 3   (real SSH nodes in network namespaces on this machine)"
rm -rf "$work" "$GITORCH_STATE_DIR/gitorch.db"*
mkdir -p "$work"
cp -r examples/repo/. "$work/"
gitorch lab up 3 --nodes-file "$work/nodes.yaml"

echo; echo "== a desired-state repository: examples/repo with the lab's Node manifests"
git -C "$work" init -q -b main
git -C "$work" add -A
git -C "$work" -c user.name=gitorch-demo -c user.email=demo@gitorch.invalid commit -q -m "examples/repo on the local lab"
git -C "$work" log --oneline

echo; echo "== gitorch plan --repo $work"
gitorch plan --repo "$work" | tail -n 25

echo; echo "== gitorch apply --wait --repo $work"
gitorch apply --wait --repo "$work" --timeout 180

echo; echo "== gitorch status"
gitorch status
echo; echo "== gitorch get pods"
gitorch get pods
echo; echo "== gitorch get services"
gitorch get services
web_ip=$(gitorch get services -n shop -o json | python3 -c 'import json,sys; print(next(s["clusterIP"] for s in json.load(sys.stdin) if s["name"] == "web"))')
cat <<MSG

The cluster keeps running. Try:
  export GITORCH_STATE_DIR=$GITORCH_STATE_DIR PATH=$PWD/.venv/bin:\$PATH
  gitorch lab ssh lab-1 -- python3 -c 'import urllib.request as u; print(u.urlopen("http://$web_ip/").read().decode())'
                                                         # the web Service's cluster IP, from a node
  gitorch describe deployment/web -n shop
  edit $work/apps/shop/web.yaml, commit, then: gitorch apply --wait --repo $work
  gitorch lab down                                       # remove the lab
MSG
