"""The dashboard in a real browser: Debian's Chromium driven by Selenium (chromedriver), against
`gitorch serve` on lab nodes. Every page loads without console errors, the login refuses a bad
token, the object tree follows a rollout live after a `git push` (Server-Sent Events, no
reload), a pod's log follows, no Secret value reaches a page, and a narrow window needs no
sideways scroll. A screenshot of each page goes to tests/artifacts/dashboard/.

Selenium is imported here only."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gitorch.nodes.lab import Lab
from gitorch.server.dashboard import Dashboard, Limits
from gitorch.server.http import HttpServer, Site
from gitorch.store.database import PodRecord, Store
from tests.gitrepo import GitRepo, git
from tests.lab import ssh_run
from tests.samples import gitorch
from tests.test_dashboard import C1
from tests.test_dashboard import store as filled  # noqa: F401 (a fixture)
from tests.test_gitops import Serve, _push, bare, last_applied, serve_factory, store  # noqa: F401 (fixtures)
from tests.test_reconcile import node_pods
from tests.waiting import wait_until

ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "dashboard"
TOKEN = "dashboard-token-for-the-browser-test"
CANARY = "canary-password-5b7e0c"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"

NAMESPACE = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: dash\n"
SECRET = f"""\
apiVersion: v1
kind: Secret
metadata: {{name: db, namespace: dash}}
stringData: {{password: {CANARY}}}
"""


def ticker(version: str) -> str:
    """Two pods printing a numbered line every half second; a rollout replaces them one by one."""
    program = "import os, time\\nn = 0\\nwhile True:\\n    print('tick', n, os.environ['VERSION'], flush=True)\\n" \
              "    n += 1\\n    time.sleep(0.5)\\n"
    return f"""\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: ticker, namespace: dash}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: ticker}}}}
  strategy: {{type: RollingUpdate, rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}}}
  template:
    metadata: {{labels: {{app: ticker}}}}
    spec:
      containers:
        - name: main
          command: [python3, -u, -c, "{program}"]
          env:
            - {{name: VERSION, value: "{version}"}}
            - name: PASSWORD
              valueFrom: {{secretKeyRef: {{name: db, key: password}}}}
          # Each new pod is Ready only after 3 s: every step of a rollout stays on the page a while.
          readinessProbe: {{exec: {{command: ["true"]}}, initialDelaySeconds: 3, periodSeconds: 1}}
"""


def require_chromium() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        reason = f"{' and '.join(missing)} missing (Debian packages chromium and chromium-driver; scripts/bootstrap.sh)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: CI must not skip the browser tests", pytrace=False)
        pytest.skip(reason)


@pytest.fixture
def browser() -> Iterator[Any]:
    require_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """The browser, with the console log kept across calls (Chrome hands each entry out once)."""

    def __init__(self, driver: Any, url: str) -> None:
        self.driver = driver
        self.url = url
        self.console: list[dict[str, Any]] = []

    def open(self, path: str) -> None:
        self.driver.get(self.url + path)
        wait_until(f"{path} loaded", lambda: self.driver.execute_script("return document.readyState"),
                   timeout=30, accept=lambda s: s == "complete")

    def errors(self) -> list[dict[str, Any]]:
        """Console entries worse than info (errors and warnings, failed loads included)."""
        self.console += self.driver.get_log("browser")
        return [e for e in self.console if e["level"] in ("SEVERE", "WARNING")]

    def live(self) -> None:
        """Wait until the page's live stream is open (htmx's SSE extension said so)."""
        wait_until("the live stream open", lambda: self.driver.execute_script(
            "var l = document.getElementById('live'); return l ? l.classList.contains('on') : null"),
            timeout=20, accept=lambda on: on is not False)

    def shot(self, name: str) -> None:
        self.driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))

    def text(self, css: str) -> str:
        return str(self.driver.execute_script(
            "var e = document.querySelector(arguments[0]); return e ? e.textContent : ''", css))


def tree_state(page: Page) -> tuple[tuple[str, bool, int, int], ...]:
    """The ticker's revisions as the page shows them: (revision, current, pods, ready pods)."""
    rows = page.driver.execute_script("""
        var w = document.getElementById('deployment-dash-ticker');
        if (!w) return [];
        return Array.from(w.querySelectorAll('li.revision')).map(function (li) {
            var pods = li.querySelectorAll('tbody tr');
            var ready = Array.from(pods).filter(function (tr) { return tr.cells[2].textContent.trim() == '1/1'; });
            return [li.dataset.revision, li.classList.contains('current'), pods.length, ready.length];
        });""")
    return tuple((str(r[0]), bool(r[1]), int(r[2]), int(r[3])) for r in rows)


@pytest.mark.lab
def test_the_dashboard_in_chromium_follows_a_rollout_and_a_log(
    lab: Lab, repo: GitRepo, bare: Path, serve_factory: Callable[..., Serve], browser: Any,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo.commit("nodes", {"nodes.yaml": (lab.state_dir / "nodes.yaml").read_text(), "ns.yaml": NAMESPACE,
                          "secret.yaml": SECRET})
    _push(repo, bare)
    monkeypatch.setenv("GITORCH_UI_TOKEN", TOKEN)
    server = serve_factory(bare, extra=("--ui-token-env", "GITORCH_UI_TOKEN"))
    res = gitorch("hook", "install", str(bare), "--branch", "main", "--notify", f"{server.url}/hooks/wake", cwd=bare)
    assert res.returncode == 0, res.stderr
    page = Page(browser, server.url)
    try:
        v1 = repo.commit("ticker v1", {"apps.yaml": ticker("v1")})
        _push(repo, bare)
        wait_until("v1 applied", last_applied, timeout=60, accept=lambda got: got == v1)
        wait_until("two ticker pods ready", lambda: _ready(store()), timeout=90, accept=lambda n: n == 2)

        # The login refuses a bad token and sets no cookie; the right one leads to the page asked for.
        page.open("/objects")
        assert "/login" in browser.current_url
        _log_in(page, "not-the-token")
        assert "/login" in browser.current_url and "not the dashboard" in page.text("p.error")
        assert browser.get_cookies() == []
        refused = page.errors()  # the browser's only complaint so far: the refusal itself
        assert [e["message"] for e in refused] == [
            f"{server.url}/login/session - Failed to load resource: the server responded with a status of 401 "
            "(Unauthorized)"], refused
        page.console.clear()
        page.shot("login-refused")
        _log_in(page, TOKEN)
        assert browser.current_url == server.url + "/objects"
        assert _cookies(browser) == [("gitorch_ui", True, True, "Strict")]  # HttpOnly, Secure, as the browser keeps it

        # A drift check (it only reports while serve leads) reaches the open overview by itself.
        page.open("/")
        page.live()
        assert "none yet" in page.text("#drift-latest")
        res = gitorch("drift", "--run", "--repo", str(bare), "--rev", "main", cwd=bare)
        assert res.returncode == 0, res.stderr
        wait_until("the drift report on the overview", lambda: page.text("#drift-latest"), timeout=30,
                   accept=lambda text: "#1" in text)

        # Every page, a screenshot each; no console errors, no Secret value.
        with store() as s:
            pod = next(p for p in s.pods() if p.owner_name == "ticker")
        pages = {"overview": "/", "objects": "/objects", "revisions": "/revisions", "revision": f"/revisions/{v1}",
                 "drift": "/drift", "events": "/events", "nodes": "/nodes", "node": f"/nodes/{lab.nodes[0].name}"}
        for name, path in pages.items():
            page.open(path)
            page.live()
            assert browser.find_element("tag name", "h1").text, path
            assert CANARY not in browser.page_source, path
            page.shot(name)
        page.open(f"/revisions/{v1}")
        assert "Deployment dash/ticker" in page.text(".plan") and f"gitorch rollback {v1[:12]}" in page.text("body")
        assert "Deployment/dash/ticker" in page.text("table.rollouts")

        # A pod's log follows: lines keep arriving without a reload.
        page.open(f"/pods/dash/{pod.name}/logs")
        first = wait_until("log lines", lambda: _ticks(page.text("#log")), timeout=30, accept=lambda t: len(t) >= 2)
        assert ssh_run(lab, str(pod.node), "pgrep -f '[.]main[(][)][)] logs' || true").stdout.strip()
        wait_until("the log to follow", lambda: _ticks(page.text("#log")), timeout=30,
                   accept=lambda t: max(t) >= max(first) + 3)
        assert "v1" in page.text("#log")
        page.shot("logs")

        # The object tree follows a rollout after a push, live: the page is never reloaded.
        page.open("/objects")
        page.live()
        # Leaving the log page ended its stream, and with it the agent following the log.
        assert pod.node
        wait_until("the node's log follower gone", lambda: ssh_run(
            lab, str(pod.node), "pgrep -f '[.]main[(][)][)] logs' || true").stdout.strip(), timeout=30,
            accept=lambda out: out == "")
        browser.execute_script("window.stillTheSamePage = true")
        before = tree_state(page)
        assert len(before) == 1 and before[0][1:] == (True, 2, 2), before
        seen = [before]
        (ARTIFACTS / "objects-rollout.png").unlink(missing_ok=True)
        v2 = repo.commit("ticker v2", {"apps.yaml": ticker("v2")})
        _push(repo, bare)

        def progressed() -> tuple[tuple[str, bool, int, int], ...]:
            state = tree_state(page)
            if state != seen[-1]:
                seen.append(state)
                if len(state) > 1 and not (ARTIFACTS / "objects-rollout.png").exists():
                    page.shot("objects-rollout")  # mid-rollout: both revisions with their pods
            return state

        final = wait_until("the tree to show only the new revision, all ready", progressed, timeout=120, interval=0.1,
                           accept=lambda st: len(st) == 1 and st[0][0] != before[0][0] and st[0][1:] == (True, 2, 2),
                           describe=lambda: f"states seen: {seen}")
        assert browser.execute_script("return window.stillTheSamePage") is True
        assert any(len(st) == 2 for st in seen), f"no state with both revisions among {seen}"
        assert len(seen) >= 3, seen  # the old state, at least one step of the rollout, the end
        wait_until("v2 applied", last_applied, timeout=30, accept=lambda got: got == v2)
        with store() as s:
            assert final[0][0] == {p.template_hash for p in s.pods() if p.owner_name == "ticker"}.pop()

        assert page.errors() == []

        # A narrow window: no page wider than the screen; the page prints.
        browser.set_window_size(400, 900)
        with store() as s:
            current = next(p for p in s.pods() if p.owner_name == "ticker")  # the first pod is gone with v1
        assert _too_wide(page, [*pages.values(), f"/pods/dash/{current.name}/logs"]) == []
        page.open("/objects")
        page.shot("objects-narrow")
        pdf = browser.print_page()
        assert len(pdf) > 1000
        assert page.errors() == []
    finally:
        browser.set_window_size(1280, 900)
        git("fetch", "-q", str(bare), "main", cwd=repo.path)
        git("reset", "-q", "--hard", "FETCH_HEAD", cwd=repo.path)
        repo.commit("empty", {"apps.yaml": ""})
        _push(repo, bare)
        server.wake()
        wait_until("the nodes emptied", lambda: not [p for pods in node_pods(lab, "ticker-").values() for p in pods],
                   timeout=60, interval=0.5)
    assert TOKEN not in server.output() and CANARY not in server.output()


def _ready(s: Store) -> int:
    with s:
        return sum(1 for p in s.pods() if p.owner_name == "ticker" and p.ready)


def _log_in(page: Page, token: str) -> None:
    field = page.driver.find_element("id", "token")
    field.clear()
    field.send_keys(token)
    page.driver.find_element("css selector", "form.login button").click()
    wait_until("the login answered", lambda: page.driver.execute_script("return document.readyState"),
               timeout=20, accept=lambda s: s == "complete")


def _ticks(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"tick (\d+)", text)]


def _cookies(browser: Any) -> list[tuple[str, bool, bool, str]]:
    return [(c["name"], c.get("httpOnly"), c.get("secure"), c.get("sameSite")) for c in browser.get_cookies()]


def _too_wide(page: Page, paths: list[str]) -> list[tuple[str, int, int]]:
    """The pages wider than the window (a table scrolls sideways inside its own box instead)."""
    wide = []
    for path in paths:
        page.open(path)
        width, window = page.driver.execute_script(
            "return [document.documentElement.scrollWidth, window.innerWidth]")
        if width > window + 1:
            wide.append((path, width, window))
    return wide


def test_the_login_cookie_as_chromium_keeps_it_and_every_page_in_a_narrow_window(
    filled: Store, browser: Any,  # noqa: F811
) -> None:
    site = Site()
    site.add("dashboard", Dashboard(filled, token=TOKEN).endpoints())
    server = HttpServer("127.0.0.1", 0, site)
    server.start()
    try:
        page = Page(browser, f"http://127.0.0.1:{server.address[1]}")
        page.open("/")
        _log_in(page, TOKEN)
        assert _cookies(browser) == [("gitorch_ui", True, True, "Strict")]
        assert browser.execute_script("return document.cookie") == ""  # HttpOnly: no script reads it
        browser.set_window_size(400, 900)
        paths = ["/", "/objects", "/revisions", f"/revisions/{C1}", "/drift", "/events", "/nodes", "/nodes/node-1",
                 "/pods/shop/web-abc123-0/logs"]
        assert _too_wide(page, paths) == []
        assert page.errors() == []
    finally:
        browser.set_window_size(1280, 900)
        server.close()



def test_a_live_update_keeps_a_folded_workload_folded_and_copy_works(filled: Store, browser: Any) -> None:  # noqa: F811
    site = Site()
    site.add("dashboard", Dashboard(filled, limits=Limits(poll=0.2)).endpoints())
    server = HttpServer("127.0.0.1", 0, site)
    server.start()
    try:
        page = Page(browser, f"http://127.0.0.1:{server.address[1]}")
        page.open("/objects")
        page.live()
        browser.find_element("css selector", "#deployment-shop-web > details > summary").click()
        browser.execute_script("window.stillTheSamePage = true")
        filled.upsert_pods([PodRecord(namespace="shop", name="web-abc123-1", owner_kind="Deployment",
                                      owner_name="web", template_hash="abc123", phase="Pending")])
        wait_until("the new pod on the page", lambda: "web-abc123-1" in page.text("#deployment-shop-web"),
                   timeout=20)
        assert browser.execute_script("return window.stillTheSamePage") is True
        assert browser.execute_script(
            "return document.querySelector('#deployment-shop-web > details').hasAttribute('open')") is False
        page.open(f"/revisions/{C1}")
        button = browser.find_element("css selector", "button.copy")
        button.click()
        wait_until("the copy button to answer", lambda: button.text, timeout=10, accept=lambda t: t != "Copy")
        # On paper: no navigation, no buttons; the content is all there.
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
        assert not browser.find_element("css selector", "header nav").is_displayed()
        assert not button.is_displayed()
        assert browser.find_element("id", "rollback-command").is_displayed()
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": ""})
        assert page.errors() == []
    finally:
        server.close()


def test_a_renewed_live_stream_goes_on_from_its_marks_without_errors(filled: Store, browser: Any) -> None:  # noqa: F811
    """A stream ends after its lifetime with a "renew" event naming the marks it announced last,
    and the page opens the next one from those at once, without a console error: nothing is
    fetched again while nothing changes, and a change after a few renewals still shows."""

    class Counted(Dashboard):
        refreshed = 0
        streams: list[str] = []

        def _objects(self, req: Any) -> dict[str, Any]:
            if req.query.get("part") == "live":
                Counted.refreshed += 1
            return super()._objects(req)

        def _live_stream(self, req: Any) -> Any:
            Counted.streams.append(req.query.get("since", ""))
            return super()._live_stream(req)

    site = Site()
    site.add("dashboard", Counted(filled, limits=Limits(live_lifetime=0.5, poll=0.2)).endpoints())
    server = HttpServer("127.0.0.1", 0, site)
    server.start()
    try:
        page = Page(browser, f"http://127.0.0.1:{server.address[1]}")
        page.open("/objects")
        page.live()
        wait_until("three renewals", lambda: len(Counted.streams), timeout=30, accept=lambda n: n >= 4)
        assert Counted.refreshed == 0
        assert all(re.fullmatch(r"pods:[0-9a-f]{12},objects:[0-9a-f]{12}", s) for s in Counted.streams), Counted.streams
        filled.upsert_pods([PodRecord(namespace="shop", name="web-abc123-1", owner_kind="Deployment",
                                      owner_name="web", template_hash="abc123", phase="Pending")])
        wait_until("the new pod on the page", lambda: "web-abc123-1" in page.text("#deployment-shop-web"),
                   timeout=20)
        assert Counted.refreshed >= 1
        assert page.errors() == []
    finally:
        server.close()
