#!/usr/bin/env bash
# gitorch's main job on the embedded default (SQLite, a local lab cluster on this machine):
# validate examples/repo, bring up a 3-node lab, put the example in a bare Git repository
# whose Node manifests are the lab's, show its plan, start the controller (`gitorch serve`,
# with the cluster DNS) in the background, `git push`, and wait until the cluster has
# converged. The controller keeps running afterwards; the script says how to stop it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/bootstrap.sh

export GITORCH_STATE_DIR=${GITORCH_STATE_DIR:-/var/lib/gitorch-demo}
work=$GITORCH_STATE_DIR/cluster-repo
bare=$GITORCH_STATE_DIR/cluster.git
pidfile=$GITORCH_STATE_DIR/serve.pid
log=$GITORCH_STATE_DIR/serve.log
listen=127.0.0.1:8090

stop_controller() {
    if [ -f "$pidfile" ]; then
        pid=$(cat "$pidfile")
        if kill -0 "$pid" 2>/dev/null; then
            echo "stopping the controller an earlier run left (pid $pid)"
            kill "$pid"
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        fi
        rm -f "$pidfile"
    fi
}

echo "== gitorch validate --repo examples/repo"
gitorch validate --repo examples/repo

echo; echo "== gitorch lab up 3   (real SSH nodes in network namespaces on this machine)"
mkdir -p "$GITORCH_STATE_DIR"
stop_controller
rm -rf "$work" "$bare" "$GITORCH_STATE_DIR/gitorch.db"*
mkdir -p "$work"
cp -r examples/repo/. "$work/"
gitorch lab up 3 --nodes-file "$work/nodes.yaml"
# lab-1 and lab-2 run the ingress proxy, as node-1 and node-2 do in examples/repo/nodes.yaml.
python3 - "$work/nodes.yaml" <<'PY'
import re, sys
path = sys.argv[1]
text = open(path).read()
for node in ("lab-1", "lab-2"):
    text, found = re.subn(rf'^(\s*)(kubernetes.io/hostname: "?{node}"?)$', r'\1\2\n\1gitorch.dev/ingress: "true"',
                          text, flags=re.M)
    if found != 1:
        sys.exit(f"{path}: no hostname label for {node} to add the ingress label next to")
open(path, "w").write(text)
PY
host=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["host_address"])' \
    "$GITORCH_STATE_DIR/lab/lab.json")

echo; echo "== a desired-state repository: examples/repo with the lab's Node manifests"
git -C "$work" init -q -b main
git -C "$work" add -A
git -C "$work" -c user.name=gitorch-demo -c user.email=demo@gitorch.invalid commit -q -m "examples/repo on the local lab"
git -C "$work" log --oneline
git init -q --bare -b main "$bare"
git -C "$work" remote add origin "$bare"
gitorch hook install "$bare" --branch main --notify "http://$listen/hooks/wake"

echo; echo "== gitorch plan --repo $work"
gitorch plan --repo "$work" | tail -n 25

echo; echo "== gitorch serve --repo $bare --dns $host:53   (in the background; log: $log)"
# The cluster DNS listens on the lab bridge's host address, which every node (and, through
# its egress masquerade, every pod) reaches; pods' resolv.conf names it.
setsid gitorch serve --repo "$bare" --branch main --listen "$listen" --dns "$host:53" \
    >"$log" 2>&1 </dev/null &
echo $! >"$pidfile"
python3 - "$listen" "$pidfile" <<'PY'
import os, sys, time, urllib.request
listen, pidfile = sys.argv[1], sys.argv[2]
pid = int(open(pidfile).read())
deadline = time.monotonic() + 60
while True:
    try:
        urllib.request.urlopen(f"http://{listen}/metrics", timeout=2).read()
        break
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            sys.exit("gitorch serve exited; see its log")
        if time.monotonic() > deadline:
            sys.exit(f"gitorch serve did not answer on {listen} within 60 s")
        time.sleep(0.3)
PY

echo; echo "== git push origin main   (the post-receive hook wakes the controller at once)"
git -C "$work" push -q origin main 2>&1 | grep -v '^remote: *$' || true
head=$(git -C "$work" rev-parse HEAD)
python3 - "$head" <<'PY'
import json, subprocess, sys, time
head = sys.argv[1]
start = time.monotonic()
deadline, said = start + 240, ""
while True:
    out = subprocess.run(["gitorch", "status", "-o", "json"], capture_output=True, text=True)
    doc = json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip() else {}
    objects = doc.get("objects") or []
    waiting = [f"{o['kind']} {o['name']}: {o['health']}" for o in objects if o["health"] != "Healthy"]
    if doc.get("appliedRevision") == head and objects and not waiting:
        print(f"converged on {head[:7]}: {len(objects)} objects Healthy, {time.monotonic() - start:.1f} s after the push")
        break
    line = f"waiting: {', '.join(waiting[:4]) or 'the first pass'}"
    if line != said:
        print(line, flush=True)
        said = line
    if time.monotonic() > deadline:
        sys.exit("not converged within 240 s; see `gitorch status` and the controller's log")
    time.sleep(1)
PY

echo; echo "== gitorch status"
gitorch status
echo; echo "== gitorch get pods"
gitorch get pods
echo; echo "== gitorch get services"
gitorch get services

echo; echo "== the cluster DNS: dig @$host web.shop.svc.cluster.local, and a node reaching web by name"
dig +short @"$host" web.shop.svc.cluster.local A
dig +short @"$host" kv.shop.svc.cluster.local A | sort
gitorch lab ssh lab-1 -- python3 -c \
    'import urllib.request as u; print(u.urlopen("http://web.shop.svc.cluster.local/", timeout=5).read().decode())'

echo; echo "== the shop from this machine, through its LoadBalancer address"
lb=$(gitorch get services -n shop -o json | python3 -c 'import json, sys; print(next(s["status"]["loadBalancer"]["ingress"][0]["ip"] for s in json.load(sys.stdin) if s["name"] == "web-public"))')
python3 - "$lb" <<'PY'
import sys, time, urllib.request
url = f"http://{sys.argv[1]}/"
for _ in range(50):
    try:
        print(f"GET {url} -> {urllib.request.urlopen(url, timeout=2).read().decode().strip()[:80]}")
        break
    except OSError:
        time.sleep(0.2)
else:
    sys.exit(f"{url} did not answer")
PY

echo; echo "== the shop on HTTPS through its Ingress (HAProxy on lab-1 and lab-2, behind the proxy's LoadBalancer address)"
gitorch get ingresses -n shop
addr=$(gitorch get ingresses -n shop -o json | python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["status"]["loadBalancer"]["ingress"][0]["ip"])')
for _ in $(seq 50); do
    curl -sf --cacert examples/repo/ca.crt --resolve "shop.example:443:$addr" https://shop.example/ && break
    sleep 0.2
done
curl -s -o /dev/null -w 'http://shop.example/ -> %{http_code} %{redirect_url}\n' --resolve "shop.example:80:$addr" http://shop.example/

echo; echo "== gitorch drift --run --repo $bare --dns $host:53   (Git, the store, the nodes and the DNS agree)"
gitorch drift --run --repo "$bare" --dns "$host:53"

cat <<MSG

The controller keeps running (pid $(cat "$pidfile"), log $log). Try:
  export GITORCH_STATE_DIR=$GITORCH_STATE_DIR PATH=$PWD/.venv/bin:\$PATH
  edit $work/apps/shop/web.yaml, then: git -C $work commit -am "..." && git -C $work push
  gitorch get pods -n shop                               # the rollout, as it happens
  gitorch lab ssh lab-2 -- nft delete table ip gitorch   # break a node's Service rules by hand ...
  gitorch drift --run --repo $bare --dns $host:53        # ... drift reports it (compares Git, store, nodes, DNS)
  gitorch events | tail -2                               # serve rebuilds it at its resync (5 min, GITORCH_RESYNC)
  curl -s http://$listen/metrics | grep ^gitorch_        # Prometheus metrics
  open http://$listen/ in a browser on this machine     # the dashboard (loopback needs no token)
  kill \$(cat $pidfile); gitorch lab down
                                                         # stop the controller, remove the lab
MSG
