"""The dashboard over HTTP, without a browser: access (token login, loopback only without a
token, failed-login limit), every page from a real store, the live stream's events and bounds,
plans rendered from a real repository, and no Secret value on any page. The browser tests on
lab nodes are in test_dashboard_browser.py."""

from __future__ import annotations

import concurrent.futures
import html as html_lib
import http.client
import ipaddress
import os
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gitorch.server.dashboard import COOKIE, Dashboard, Limits, RollbackSettings, _Probe
from gitorch.server.http import HttpServer, Site
from gitorch.source.git import open_repository
from gitorch.store.database import PodRecord, Store
from tests.gitrepo import GitRepo, git
from tests.samples import gitorch
from tests.test_gitops import Serve, last_applied, serve_factory  # noqa: F401 (a fixture)
from tests.waiting import wait_until

TOKEN = "a-dashboard-token-0123456789"
CANARY = "canary-s3cret-value-7f1d"
C1, C2 = "1" * 40, "2" * 40


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(f"sqlite:///{tmp_path / 'state.db'}")
    now = datetime.now(UTC)
    s.record_revision(C1, author="Ada <ada@example.org>", message="web v1", committed_at=now)
    s.set_revision_outcome(C1, "applied")
    s.upsert_node("node-1", address="10.0.0.1", pod_cidr="10.244.1.0/24")
    s.heartbeat("node-1", now, {"cpus": 2, "memory": {"totalBytes": 8 << 30, "availableBytes": 50 << 20}},
                conditions=[{"type": "Ready", "status": "True", "reason": "AgentAnswered"}])
    s.upsert_object_status("Deployment", "shop", "web", sync="Synced", health="Healthy", last_applied_revision=C1,
                           body={"history": [{"revision": "abc123", "commit": C1, "subject": "web v1", "since": 1}],
                                 "rollout": {"revision": "abc123", "started": 1}})
    # A Secret whose body holds its value (the controller stores it masked; this is the worst case).
    s.upsert_object_status("Secret", "shop", "db", sync="Synced", health="Healthy", last_applied_revision=C1,
                           body={"manifest": {"stringData": {"password": CANARY}}})
    s.upsert_pods([PodRecord(namespace="shop", name="web-abc123-0", owner_kind="Deployment", owner_name="web",
                             node="node-1", template_hash="abc123", phase="Running", ready=True, ip="10.244.1.2",
                             spec={"containers": [{"env": [{"name": "PASSWORD", "value": CANARY}]}]})])
    s.record_event("Deployment", "shop", "web", reason="ScalingReplicaSet", message="scaled up to 1", revision=C1)
    s.save_drift_report(started_at=now, finished_at=now, mode="report", revision=C1,
                        findings=[{"kind": "PodMissing", "object": "Deployment/shop/web", "node": "node-1",
                                   "detail": "not running", "mode": "report"}])
    yield s
    s.close()


class Listener:
    """A real HTTP listener serving one dashboard, and a client that keeps cookies by hand."""

    def __init__(self, dashboard: Dashboard) -> None:
        site = Site()
        site.add("dashboard", dashboard.endpoints())
        self.server = HttpServer("127.0.0.1", 0, site)
        self.server.start()
        self.port = self.server.address[1]

    def request(self, method: str, path: str, body: str = "", cookie: str = "",
                timeout: float = 10) -> tuple[int, dict[str, str], str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if body else {}
        if cookie:
            headers["Cookie"] = cookie
        conn.request(method, path, body=body or None, headers=headers)
        resp = conn.getresponse()
        text = resp.read().decode()
        conn.close()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, text

    def login(self, token: str) -> tuple[int, dict[str, str], str]:
        return self.request("POST", "/login/session", urllib.parse.urlencode({"token": token, "next": "/objects"}))


@pytest.fixture
def listen() -> Iterator[type[Listener]]:
    made: list[Listener] = []

    class Made(Listener):
        def __init__(self, dashboard: Dashboard) -> None:
            super().__init__(dashboard)
            made.append(self)

    yield Made
    for m in made:
        m.server.close()


PAGES = ["/", "/objects", "/revisions", f"/revisions/{C1}", "/drift", "/events", "/nodes", "/nodes/node-1",
         "/pods/shop/web-abc123-0/logs"]


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_what_the_store_knows_and_no_secret(store: Store, page: str) -> None:
    html = Dashboard(store).render(page)
    assert "<h1>" in html and "</html>" in html
    assert CANARY not in html
    expected = {"/": "web v1", "/objects": "web-abc123-0", "/revisions": "web v1",
                f"/revisions/{C1}": "Deployment/shop/web</a>", "/drift": "PodMissing",
                "/events": "scaled up to 1", "/nodes": "MemoryPressure", "/nodes/node-1": "10.244.1.2"}
    assert expected.get(page, "") in html


def test_the_object_tree_goes_from_workload_to_pods_by_revision(store: Store) -> None:
    store.upsert_object_status("Deployment", "shop", "web", sync="Synced", health="Progressing",
                               last_applied_revision=C1,
                               conditions=[{"type": "Ready", "status": "False", "reason": "Progressing",
                                            "message": "1 of 2 updated"}],
                               body={"history": [{"revision": "abc123", "commit": C1, "subject": "web v1",
                                                  "since": 1}], "rollout": {"revision": "abc123", "started": 1}})
    html = Dashboard(store).render("/objects")
    tree = html[html.index('id="deployment-shop-web"'):]
    assert tree.index("revision <code>abc123") < tree.index("web-abc123-0") < tree.index("10.244.1.2")
    assert 'class="revision current"' in tree
    conditions = re.search(r'<ul class="conditions">(.*?)</ul>', tree, re.S)
    assert conditions and "Ready=False <i>Progressing</i> 1 of 2 updated" in conditions.group(1)
    assert "Secret/db" in html  # other objects are leaves, their data never read


def test_a_cronjobs_runs_are_under_it_in_the_tree(store: Store) -> None:
    """Pods of Job/<cronjob>-<minute> belong to the CronJob (as planning relates them), one group
    per run, newest first; a Job Git declares keeps its own pods, and a pod whose Job matches no
    CronJob is still shown as without an object."""
    store.upsert_object_status("CronJob", "shop", "report", sync="Synced", health="Healthy", last_applied_revision=C1,
                               conditions=[{"type": "Ready", "status": "True", "reason": "Scheduled",
                                            "message": "1 active, 2 run(s) kept"}])
    store.upsert_object_status("Job", "shop", "report-29000003", sync="Synced", health="Healthy",
                               last_applied_revision=C1)

    def pod(name: str, job: str, phase: str) -> PodRecord:
        return PodRecord(namespace="shop", name=name, owner_kind="Job", owner_name=job, template_hash="feed01",
                         phase=phase, node="node-1")

    store.upsert_pods([pod("report-29000001-0", "report-29000001", "Succeeded"),
                       pod("report-29000002-0", "report-29000002", "Running"),
                       pod("report-29000003-0", "report-29000003", "Running"),
                       pod("reports-29000001-0", "reports-29000001", "Running"),
                       pod("report-x-0", "report-x", "Running")])
    html = Dashboard(store).render("/objects")
    cron = re.search(r'<li class="workload" id="cronjob-shop-report".*?</details>', html, re.S)
    assert cron, html
    runs = re.findall(r'data-run="([^"]+)">\s*<span>run <b>Job/\1</b>.*? · (\d/\d) succeeded', cron.group(0), re.S)
    assert runs == [("report-29000002", "0/1"), ("report-29000001", "1/1")]
    assert "report-29000002-0" in cron.group(0) and "report-29000003-0" not in cron.group(0)
    assert "Ready=True <i>Scheduled</i> 1 active, 2 run(s) kept" in cron.group(0)
    declared = re.search(r'id="job-shop-report-29000003".*?</details>', html, re.S)
    assert declared and "report-29000003-0" in declared.group(0)
    orphans = html[html.index("pods without an object"):]
    assert "reports-29000001-0" in orphans and "report-x-0" in orphans and "report-29000001-0" not in orphans


def test_the_drift_page_says_which_findings_a_heal_fixed(store: Store) -> None:
    now = datetime.now(UTC)
    missing = {"kind": "PodMissing", "object": "Deployment/shop/web", "node": "node-1", "detail": "not running",
               "mode": "heal"}
    extra = {"kind": "ExtraPod", "object": "Pod/shop/stray", "node": "node-1", "detail": "not in the plan",
             "mode": "heal"}
    unreachable = {"kind": "NodeUnreachable", "object": "Node/node-2", "node": "node-2", "detail": "timed out",
                   "mode": "heal"}
    store.save_drift_report(started_at=now, finished_at=now, mode="heal", revision=C1,
                            findings=[missing, extra, unreachable],
                            healed=[{"action": "reconcile", "revision": C1, "nodeErrors": {},
                                     "after": [dict(unreachable, detail="still timed out")]}])
    html = Dashboard(store).render("/drift")
    report = html[html.index('<section class="report"'):html.index("</section>")]  # the newest: the heal
    rows = re.findall(r"<tr><td>(\w+)</td>.*?<td>(?:<span[^>]*>)?(healed|remains)(?:</span>)?</td></tr>", report)
    assert rows == [("PodMissing", "healed"), ("ExtraPod", "healed"), ("NodeUnreachable", "remains")]
    assert "2 of 3 finding(s) healed, 1 remain" in report
    healed = re.search(r'<ul class="healed">(.*?)</ul>', report, re.S)
    assert healed and re.findall(r"<li>healed: (.*?)</li>", healed.group(1)) == [
        "PodMissing Deployment/shop/web on node-1", "ExtraPod Pod/shop/stray on node-1"]
    assert "still there: NodeUnreachable Node/node-2 on node-2: still timed out" in report
    older = html[html.index("</section>"):]  # the report-only one: no heal column
    assert "PodMissing" in older and "After the heal" not in older


def test_unknown_revision_or_node_is_a_404(store: Store) -> None:
    with pytest.raises(LookupError, match="404"):
        Dashboard(store).render("/revisions/" + "9" * 40)
    with pytest.raises(LookupError, match="404"):
        Dashboard(store).render("/nodes/nowhere")


def _outside_address() -> str:
    """This machine's address on its way out (not loopback): a request to it from here comes from it."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: only the route is looked up
        address = str(probe.getsockname()[0])
    except OSError:
        address = ""
    finally:
        probe.close()
    if not address or ipaddress.ip_address(address).is_loopback:
        reason = "this machine has no address but loopback: an off-loopback request cannot be made"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI must not skip it)", pytrace=False)
        pytest.skip(reason)
    return address


def test_without_a_token_only_loopback_clients_are_answered(store: Store) -> None:
    site = Site()
    site.add("dashboard", Dashboard(store).endpoints())
    server = HttpServer("0.0.0.0", 0, site)
    server.start()
    try:
        port = server.address[1]
        answers = {}
        for host in ("127.0.0.1", _outside_address()):
            conn = http.client.HTTPConnection(host, port, timeout=10)
            conn.request("GET", "/")
            resp = conn.getresponse()
            answers[host] = (resp.status, resp.read().decode())
            conn.close()
    finally:
        server.close()
    (ok, page), (refused, why) = answers.values()
    assert ok == 200 and "Overview" in page and "web v1" in page
    assert refused == 403 and "--ui-token-env" in why and "web v1" not in why


def test_a_token_login_sets_a_strict_cookie_and_refuses_a_bad_token(store: Store, listen: type[Listener]) -> None:
    server = listen(Dashboard(store, token=TOKEN))
    status, headers, _ = server.request("GET", "/objects")
    assert status == 303 and headers["location"] == "/login?next=/objects"
    status, _, html = server.request("GET", "/login")
    assert status == 200 and 'name="token"' in html

    status, headers, html = server.login("not-the-token")
    assert status == 401 and "set-cookie" not in headers and "not the dashboard" in html
    status, headers, _ = server.login(TOKEN)
    assert status == 303 and headers["location"] == "/objects"
    cookie = headers["set-cookie"]
    for attribute in ("HttpOnly", "Secure", "SameSite=Strict", "Path=/"):
        assert attribute in cookie
    assert TOKEN not in cookie
    session = cookie.split(";", 1)[0]
    status, _, html = server.request("GET", "/objects", cookie=session)
    assert status == 200 and "web-abc123-0" in html
    # A forged or altered session is refused; so is a live part or a stream without one.
    forged = session[:-4] + ("0000" if not session.endswith("0000") else "1111")
    assert server.request("GET", "/objects", cookie=forged)[0] == 303
    assert server.request("GET", f"/?part=live&x={COOKIE}")[0] == 401
    assert server.request("GET", "/live")[0] == 401
    assert server.request("GET", "/static/dashboard.css")[0] == 200  # the login page's style


def test_failed_logins_are_limited_per_address(store: Store, listen: type[Listener]) -> None:
    server = listen(Dashboard(store, token=TOKEN, limits=Limits(login_failures=3)))
    assert [server.login("wrong")[0] for _ in range(3)] == [401, 401, 401]
    assert server.login(TOKEN)[0] == 429  # even the right token waits out the minute


def test_a_next_path_off_the_site_is_not_followed(store: Store, listen: type[Listener]) -> None:
    server = listen(Dashboard(store, token=TOKEN))
    body = urllib.parse.urlencode({"token": TOKEN, "next": "//evil.example/"})
    status, headers, _ = server.request("POST", "/login/session", body)
    assert status == 303 and headers["location"] == "/"


def _read_events(sock: socket.socket, until: str, timeout: float) -> str:
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while until.encode() not in data and time.monotonic() < deadline:
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace")


def _open_live(port: int, topics: str, since: str = "") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"GET /live?topics={topics}&since={since} HTTP/1.1\r\nHost: x\r\n"
                 "Accept: text/event-stream\r\n\r\n".encode())
    return sock


def test_the_live_stream_names_what_changed_and_is_bounded(store: Store, listen: type[Listener]) -> None:
    server = listen(Dashboard(store, limits=Limits(live_clients=1, poll=0.2)))
    first = _open_live(server.port, "pods,nodes")
    head = _read_events(first, "retry:", 10)
    assert "200 OK" in head and "text/event-stream" in head
    # A second stream is refused while the first holds the only place.
    status, headers, _ = server.request("GET", "/live")
    assert status == 503 and headers.get("retry-after")

    store.upsert_pods([PodRecord(namespace="shop", name="web-abc123-1", owner_kind="Deployment", owner_name="web",
                                 template_hash="abc123")])
    got = _read_events(first, "event: pods", 10)
    assert "event: pods" in got and "event: nodes" not in got
    first.close()
    # The place is given back when the client goes away.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        second = _open_live(server.port, "pods")
        head = _read_events(second, "\r\n\r\n", 5)  # the status line and headers
        second.close()
        if "200 OK" in head:
            break
        time.sleep(0.2)
    assert "200 OK" in head


def test_a_live_stream_ends_after_its_lifetime_naming_where_the_next_starts(store: Store,
                                                                            listen: type[Listener]) -> None:
    server = listen(Dashboard(store, limits=Limits(live_lifetime=0.5, poll=0.1)))
    status, _, body = server.request("GET", "/live?topics=pods,nodes", timeout=20)  # returns once the stream ended
    assert status == 200 and body.startswith("retry:")
    renew = re.fullmatch(r"retry: 2000\n\nevent: renew\ndata: (pods:[0-9a-f]{12},nodes:[0-9a-f]{12})\n\n", body)
    assert renew, body
    # A change between one stream's end and the next one's start is announced by the next.
    store.upsert_pods([PodRecord(namespace="shop", name="web-abc123-1", owner_kind="Deployment", owner_name="web",
                                 template_hash="abc123")])
    sock = _open_live(server.port, "pods,nodes", since=renew.group(1))
    got = _read_events(sock, "event: pods", 10)
    sock.close()
    assert "event: pods" in got and "event: nodes" not in got


def _since(html: str) -> str:
    found = re.search(r'sse-connect="/live\?topics=([\w,]+)&amp;since=([\w:,]+)"', html)
    assert found, html[:2000]
    return found.group(2)


def test_a_change_between_a_page_and_its_stream_is_announced(store: Store, listen: type[Listener]) -> None:
    server = listen(Dashboard(store, limits=Limits(poll=0.1)))
    status, _, html = server.request("GET", "/objects")
    assert status == 200
    since = _since(html)
    assert [t.split(":")[0] for t in since.split(",")] == ["pods", "objects"]
    # The pod comes after the page was rendered and before its stream opens.
    store.upsert_pods([PodRecord(namespace="shop", name="web-abc123-1", owner_kind="Deployment", owner_name="web",
                                 template_hash="abc123")])
    sock = _open_live(server.port, "pods,objects", since=since)
    got = _read_events(sock, "event: pods", 10)
    sock.close()
    assert "event: pods" in got and "event: objects" not in got
    # Nothing changed since a page rendered now (its marks were read after the stream above saw
    # the pod): its stream says nothing.
    since = _since(server.request("GET", "/objects")[2])
    sock = _open_live(server.port, "pods,objects", since=since)
    got = _read_events(sock, "event:", 1)
    sock.close()
    assert "event:" not in got, got


def test_viewers_share_one_render_of_a_live_part(store: Store, listen: type[Listener]) -> None:
    class Counted(Dashboard):
        renders = 0

        def _objects(self, req: Any) -> dict[str, Any]:
            if req.query.get("part") == "live":
                Counted.renders += 1
            return super()._objects(req)

    dashboard = Counted(store, limits=Limits(poll=0.2, live_part_seconds=600))  # only a change renders anew
    server = listen(dashboard)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda _: server.request("GET", "/objects?part=live"), range(8)))
    assert {status for status, _, _ in got} == {200} and len({body for _, _, body in got}) == 1
    assert Counted.renders == 1
    # Another query is another render; a change in the store makes the next fetch render anew.
    assert "ConfigMap" not in server.request("GET", "/objects?part=live&namespace=shop")[2]
    assert Counted.renders == 2
    store.upsert_pods([PodRecord(namespace="shop", name="web-abc123-1", owner_kind="Deployment", owner_name="web",
                                 template_hash="abc123")])
    wait_until("the new pod in the live part", lambda: server.request("GET", "/objects?part=live")[2],
               timeout=10, interval=0.1, accept=lambda body: "web-abc123-1" in body)
    assert Counted.renders == 3
    assert "<html" not in server.request("GET", "/objects?part=live")[2]  # the part, not the page


def test_the_kept_live_parts_are_bounded(store: Store) -> None:
    dashboard = Dashboard(store, limits=Limits(live_parts_cached=2))
    for namespace in ("a", "b", "c", "shop"):
        dashboard.render("/objects", {"part": "live", "namespace": namespace})
    assert len(dashboard._live_parts) == 2
    small = Dashboard(store, limits=Limits(live_parts_chars=1000))
    part = small.render("/objects", {"part": "live"})
    assert len(part) > 1000 and len(small._live_parts) == 0  # a part larger than the bound is not kept
    fresh = Dashboard(store, limits=Limits(live_part_seconds=0))  # ages on a kept part would be stale at once
    for _ in range(2):
        fresh.render("/objects", {"part": "live"})
    assert fresh._live_parts.renders == 2
    kept = Dashboard(store)
    for _ in range(2):
        kept.render("/objects", {"part": "live"})
    assert kept._live_parts.renders == 1


def test_a_revision_shows_its_plan_and_the_rollback_command(tmp_path: Path, listen: type[Listener]) -> None:
    repo = GitRepo(tmp_path / "repo")
    ns = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n"
    secret = ("apiVersion: v1\nkind: Secret\nmetadata: {name: db, namespace: shop}\n"
              f"stringData: {{password: {CANARY}}}\n")
    first = repo.commit("namespace", {"ns.yaml": ns})
    second = repo.commit("config <b>and</b> a secret", {
        "cm.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, namespace: shop}\ndata: {a: b}\n",
        "secret.yaml": secret})
    s = Store.open(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        for commit, message in ((first, "namespace"), (second, "config <b>and</b> a secret")):
            s.record_revision(commit, message=message, committed_at=datetime.now(UTC))
            s.set_revision_outcome(commit, "applied")
        html = Dashboard(s, repo=open_repository(repo.path)).render(f"/revisions/{second}")
    finally:
        s.close()
    assert f"gitorch plan: <code>{first[:7]}</code>" in html  # the markdown, rendered
    assert "ConfigMap shop/settings" in html and "Secret shop/db" in html and "(sensitive value)" in html
    assert CANARY not in html
    assert f"gitorch rollback {second[:12]} --reason &#34;...&#34; --repo {repo.path} --branch main</code>" in html
    assert "<b>and</b>" not in html  # a commit message is text, never markup


def test_a_plans_markdown_keeps_only_the_html_a_plan_writes(store: Store) -> None:
    text = ("<!-- gitorch-plan -->\n<details><summary><code>+</code> <b>ConfigMap shop/a</b> created</summary>\n\n"
            "```diff\n+ data.a: <b>x</b>\n```\n\n</details>\n\n<script>alert(1)</script>\n\n"
            "text <img src=x onerror=alert(1)> and <a href='//evil'>a link</a> <details open>\n")
    out = Dashboard(store)._markdown.render(text)
    assert "<details><summary><code>+</code> <b>ConfigMap shop/a</b> created</summary>" in out and "</details>" in out
    assert "+ data.a: &lt;b&gt;x&lt;/b&gt;" in out  # a fence is text, as always
    for tag in ("<script", "<img", "<a ", "<details open"):
        assert tag not in out, out
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out and "&lt;img src=x onerror=alert(1)&gt;" in out


def test_the_rollback_command_of_a_revision_page_works_as_copied(repo: GitRepo, tmp_path: Path,
                                                                 serve_factory: Callable[..., Serve]) -> None:  # noqa: F811
    """Copied from a serve's page and run as it is (the reason filled in), the command commits the
    revision's tree on serve's branch and wakes serve, which applies it."""
    ns = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {}\n"
    first = repo.commit("shop", {"ns.yaml": ns.format("shop")})
    server = serve_factory(repo.path)
    wait_until("the first applied", last_applied, timeout=60, interval=0.2, accept=lambda c: c == first)
    second = repo.commit("shop2", {"ns2.yaml": ns.format("shop2")})
    assert server.wake() == 202
    wait_until("the second applied", last_applied, timeout=60, interval=0.2, accept=lambda c: c == second)
    status, page = _get(f"{server.url}/revisions/{first}")
    assert status == 200
    found = re.search(r'<code id="rollback-command">(.*?)</code>', page)
    assert found, page
    command = html_lib.unescape(found.group(1))
    assert f"--repo {repo.path} --branch main --notify {server.url}/hooks/wake" in command
    assert command.startswith("GITORCH_STATE_DIR=")  # serve's, where --notify finds the wake token
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("GITORCH_STATE_DIR")  # a shell of its own: the command says where the state is
    res = subprocess.run(["bash", "-c", command.replace('"..."', '"back to one namespace"')], cwd=elsewhere,
                         env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "could not notify" not in res.stderr
    head = git("rev-parse", "main", cwd=repo.path).stdout.strip()
    assert head not in (first, second)
    assert (git("rev-parse", "main^{tree}", cwd=repo.path).stdout
            == git("rev-parse", f"{first}^{{tree}}", cwd=repo.path).stdout)
    wait_until("the rollback applied", last_applied, timeout=60, interval=0.2, accept=lambda c: c == head)


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.read().decode()


@pytest.mark.parametrize(("settings", "expected"), [
    pytest.param(RollbackSettings("/srv/git/cluster.git", branch="prod", wake_url="http://127.0.0.1:8090/hooks/wake"),
                 'gitorch rollback 111111111111 --reason "..." --repo /srv/git/cluster.git --branch prod '
                 "--notify http://127.0.0.1:8090/hooks/wake", id="local"),
    pytest.param(RollbackSettings("/srv/my repo", wake_url="http://127.0.0.1:8090/hooks/wake",
                                  state_dir="/var/lib/gitorch", wake_token_env="WAKE"),
                 'GITORCH_STATE_DIR=/var/lib/gitorch GITORCH_WAKE_TOKEN="$WAKE" gitorch rollback 111111111111 '
                 "--reason \"...\" --repo '/srv/my repo' --branch main --notify http://127.0.0.1:8090/hooks/wake",
                 id="state-dir-and-token-variable"),
    pytest.param(RollbackSettings("/srv/git/cluster.git"),
                 'gitorch rollback 111111111111 --reason "..." --repo /srv/git/cluster.git --branch main',
                 id="no-listener"),
    pytest.param(RollbackSettings("https://x-access:t0ken@git.example/org/cluster.git", remote=True, branch="prod"),
                 "git clone --branch prod https://git.example/org/cluster.git gitorch-rollback && "
                 'gitorch rollback 111111111111 --reason "..." --repo gitorch-rollback --branch prod && '
                 "git -C gitorch-rollback push origin prod", id="remote-without-its-token"),
    pytest.param(RollbackSettings("ssh://git:pw@git.example/cluster.git", remote=True),
                 "git clone --branch main ssh://git@git.example/cluster.git gitorch-rollback && "
                 'gitorch rollback 111111111111 --reason "..." --repo gitorch-rollback --branch main && '
                 "git -C gitorch-rollback push origin main", id="remote-over-ssh"),
])
def test_the_rollback_command_repeats_serves_settings(settings: RollbackSettings, expected: str) -> None:
    assert settings.command(C1, settings.branch or "main") == expected


def test_serve_refuses_a_short_dashboard_token(repo: GitRepo, monkeypatch: pytest.MonkeyPatch) -> None:
    repo.commit("ns", {"ns.yaml": "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n"})
    monkeypatch.setenv("GITORCH_UI_TOKEN", "short")
    res = gitorch("serve", "--repo", str(repo.path), "--ui-token-env", "GITORCH_UI_TOKEN", "--listen", "off",
                  cwd=repo.path)
    assert res.returncode == 1
    assert "--ui-token-env GITORCH_UI_TOKEN" in res.stderr and "16 characters" in res.stderr
    assert "Traceback" not in res.stderr


def test_static_files_are_only_the_vendored_ones(store: Store, listen: type[Listener]) -> None:
    server = listen(Dashboard(store))
    status, headers, body = server.request("GET", "/static/htmx-2.0.11.min.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript") and "htmx" in body
    assert server.request("GET", "/static/..%2Fdashboard.py")[0] == 404
    assert server.request("GET", "/static/LICENSE.htmx")[0] == 404
    status, headers, _ = server.request("GET", "/")
    assert "script-src 'self'" in headers["content-security-policy"]


def test_the_tree_by_application_folder(tmp_path: Path) -> None:
    repo = GitRepo(tmp_path / "repo")
    commit = repo.commit("two apps", {
        "base/ns.yaml": "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n",
        "apps/cart/config.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cart, namespace: shop}\n",
        "apps/web/config.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: web, namespace: shop}\n",
    })
    s = Store.open(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        s.record_revision(commit, message="two apps", committed_at=datetime.now(UTC))
        s.set_revision_outcome(commit, "applied")
        for kind, ns, name in (("Namespace", "", "shop"), ("ConfigMap", "shop", "cart"), ("ConfigMap", "shop", "web")):
            s.upsert_object_status(kind, ns, name, sync="Synced", health="Healthy", last_applied_revision=commit)
        dashboard = Dashboard(s, repo=open_repository(repo.path))
        by_folder = dashboard.render("/objects", {"by": "folder"})
        by_namespace = dashboard.render("/objects")
    finally:
        s.close()
    sections = re.findall(r'<section class="namespace" id="([^"]+)">(.*?)</section>', by_folder, re.S)
    found = {name: re.findall(r"<b>(\w+/\w+)</b>", body) for name, body in sections}
    assert found == {"folder-apps/cart": ["ConfigMap/cart"], "folder-apps/web": ["ConfigMap/web"],
                     "folder-base": ["Namespace/shop"]}
    assert [name for name, _ in re.findall(r'<section class="namespace" id="([^"]+)">(.*?)</section>',
                                           by_namespace, re.S)] == ["ns-_cluster", "ns-shop"]


def test_a_huge_or_plain_http_session_is_refused_cleanly(store: Store, listen: type[Listener]) -> None:
    server = listen(Dashboard(store, token=TOKEN))
    status, _, _ = server.request("GET", "/", cookie=f"{COOKIE}={'9' * 5000}.00")
    assert status == 303  # not a 500 from parsing a 5,000-digit number
    probe = _Probe("/login", {}, {})
    probe.client = "192.0.2.10"
    page = Dashboard(store, token=TOKEN)._login_page(probe)  # type: ignore[arg-type]
    assert "plain HTTP" in str(page.body)
    assert "plain HTTP" not in server.request("GET", "/login")[2]  # loopback keeps a Secure cookie


def test_a_namespace_filter_keeps_to_its_namespace(store: Store) -> None:
    store.upsert_object_status("ConfigMap", "other", "settings", sync="Synced", health="Healthy")
    store.record_event("ConfigMap", "other", "settings", reason="Created", message="in other")
    dashboard = Dashboard(store)
    assert "ConfigMap/settings" in dashboard.render("/objects")
    only_shop = dashboard.render("/objects", {"namespace": "shop"})
    assert "Deployment/web" in only_shop and "ConfigMap/settings" not in only_shop
    events = dashboard.render("/events", {"namespace": "other"})
    assert "in other" in events and "scaled up to 1" not in events
