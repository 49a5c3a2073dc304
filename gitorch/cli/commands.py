"""The `gitorch` command: parses arguments and wires modules together; no logic of its own.

The only module that imports click.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import click

from gitorch import __version__
from gitorch.cli import console
from gitorch.cli import logs as log_setup
from gitorch.model.diagnostics import errors
from gitorch.model.errors import GitorchError
from gitorch.model.settings import Settings
from gitorch.source import desired, hooks
from gitorch.source.diffs import diff_states
from gitorch.source.git import is_remote, open_repository
from gitorch.source.rendering import PlanReport, diagnostics_text, plan_markdown, plan_text

TRUST_KEY_HELP = (
    "A key trusted to sign the first revision under the Cluster's git.verifyCommits (repeatable): an SSH "
    "public key or .pub file, SHA256:<fingerprint>, an OpenPGP fingerprint, or a file with an armored "
    "OpenPGP public key. Later revisions are checked against the last applied one's bindings."
)
REPO_HELP = "Git repository (a work tree, a folder inside one, or a bare repo). Default: the current directory."


def _settings() -> Settings:
    return Settings.from_env()


def _fail(message: str) -> NoReturn:
    raise GitorchError(message)


def _keyring() -> Any:
    """The age key of this machine's state folder, if any: validate and plan decrypt with it and
    otherwise check SOPS-encrypted files for structure only."""
    from gitorch.source import sops

    try:
        return sops.keyring_from_state(_settings().state_dir, required=False)
    except sops.SopsError as exc:
        _fail(str(exc))


@contextlib.contextmanager
def batch_gc() -> Iterator[None]:
    """For one-shot commands that load a whole commit: parsing keeps every node tree alive (for
    positions), and the cyclic GC's full scans of that growing heap cost more than the parsing
    (measured in bench/plan.py). The long-running controller never does this."""
    import gc

    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
        gc.freeze()  # what was loaded lives until the command exits


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gitorch")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True, envvar="GITORCH_LOG_LEVEL", help="Least severe log record shown (stderr).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              envvar="GITORCH_LOG_FORMAT", help="Logs for people, or one JSON object a line for log shippers.")
def cli(log_level: str, log_format: str) -> None:
    """gitorch: Kubernetes' declarative model on plain Linux servers; the desired state lives in Git."""
    log_setup.setup(log_level, log_format)


# --- desired state ------------------------------------------------------------------------


@cli.command()
@click.option("--repo", "repo_path", default=None, help=REPO_HELP)
@click.option("--rev", default=None, help="Revision to check (branch, tag, commit). Default: HEAD.")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
def validate(repo_path: str | None, rev: str | None, output: str) -> None:
    """Check a commit's manifests against the schemas and cross-object rules; exit 1 on errors."""
    repo = open_repository(repo_path)
    keyring = _keyring()
    with batch_gc():
        state = desired.load(repo, rev, keyring)
    errs = errors(state.diagnostics)
    if output == "json":
        console.write(
            json.dumps(
                {
                    "commit": state.revision.oid,
                    "valid": not errs,
                    "objects": len(state.objects),
                    "files": state.files,
                    "diagnostics": [d.to_json() for d in state.diagnostics],
                },
                indent=2,
            )
        )
    else:
        if state.diagnostics:
            console.write(diagnostics_text(state.diagnostics), stderr=bool(errs))
        if rev is None:
            _warn_uncommitted(repo)
        if not errs:
            console.write(f"{state.revision.short}: {len(state.objects)} objects in {state.files} files are valid.")
    sys.exit(1 if errs else 0)


def _warn_uncommitted(repo: Any) -> None:
    changed = repo.work_tree_changes()
    if changed:
        shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
        console.warn(f"uncommitted changes are not checked (gitorch reads commits only): {shown}")


@cli.command()
@click.option("--repo", "repo_path", default=None, help=REPO_HELP)
@click.option("--base", default=None, help="Revision the change starts from. Default: empty (everything is new).")
@click.option("--head", default=None, help="Revision with the change. Default: HEAD.")
@click.option("--format", "fmt", type=click.Choice(["text", "markdown", "json"]), default="text", show_default=True)
@click.option("--detailed-exitcode", is_flag=True, help="Exit 0 for no changes, 2 for changes, 1 for errors.")
@click.option("--against-cluster", is_flag=True,
              help="Also show what the running cluster would do: placements, rollout steps, DNS names.")
@click.option("--out", "out", default=None, metavar="FILE",
              help="Save the plan (implies --against-cluster) for `gitorch apply --plan FILE`.")
def plan(repo_path: str | None, base: str | None, head: str | None, fmt: str, detailed_exitcode: bool,
         against_cluster: bool, out: str | None) -> None:
    """Show what a change does to the cluster's desired state, ready to post on a pull request."""
    repo = open_repository(repo_path)
    keyring = _keyring()
    with batch_gc():
        head_state = desired.load(repo, head, keyring)
        base_state = desired.load(repo, base if base is not None else "", keyring)
    report = PlanReport(
        base=base_state.revision,
        head=head_state.revision,
        changes=diff_states(base_state, head_state),
        diagnostics=head_state.diagnostics,
        source=str(repo.path),
        standby=tuple(sorted(o.key.name for o in head_state.of_kind("Node") if o.spec.get("standby") is True)),
    )
    preview = None
    if (against_cluster or out) and not errors(head_state.diagnostics):
        import time

        from gitorch.reconcile import reviewing

        with _store() as store:
            observed = reviewing.observed_from_store(head_state, store, time.time())
            preview = reviewing.cluster_preview(head_state, observed, report.changes,
                                                reviewing.holdings_from_store(store))
        if out:
            reviewing.save(out, report.to_json(), preview, head_state.revision.oid)
    if fmt == "json":
        data = report.to_json()
        if preview is not None:
            data["cluster"] = preview.to_json()
        console.write(json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False))  # NaN is not JSON
    elif fmt == "markdown":
        text = plan_markdown(report)
        if preview is not None:
            from gitorch.reconcile import reviewing

            text += reviewing.preview_markdown(preview)
        console.write(text)
    else:
        console.write_diff(plan_text(report))
        if preview is not None:
            from gitorch.reconcile import reviewing

            console.write_diff(reviewing.preview_text(preview))
        if head is None:
            _warn_uncommitted(repo)
        if out:
            console.write(f"saved to {out}; apply exactly this with `gitorch apply --plan {out}`")
    if errors(head_state.diagnostics):
        if fmt == "text":
            console.error(f"{head_state.revision.short} has errors; it would not be applied")
        sys.exit(1)
    if detailed_exitcode and report.changes.has_changes:
        sys.exit(2)
    sys.exit(0)


# --- nodes ------------------------------------------------------------------------------------


@cli.command()
@click.option("--repo", "repo_path", default=None, help=REPO_HELP)
@click.option("--rev", default=None, help="Revision whose Node manifests to use. Default: HEAD.")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--timeout", type=float, default=15.0, show_default=True, help="Seconds to wait for each node.")
def nodes(repo_path: str | None, rev: str | None, output: str, timeout: float) -> None:
    """Ask every Node's agent for its facts, in parallel; exit 1 if any node is unreachable.

    When `gitorch serve` runs on this machine (same state folder), it is asked first: it holds
    a connection to every node already. Nodes it does not reach are connected to directly."""
    from gitorch.nodes import inspection
    from gitorch.nodes.client import Outcome
    from gitorch.nodes.endpoints import endpoints
    from gitorch.server import control

    state = desired.load(open_repository(repo_path), rev)
    state_dir = _settings().state_dir
    answered: dict[str, Outcome[Any]] = {}
    wanted = {e.name: e.where for e in endpoints(state)}
    if wanted:
        reply = control.ask(state_dir, {"verb": "facts", "endpoints": wanted, "timeout": timeout}, timeout + 5)
        for name, got in ((reply or {}).get("nodes") or {}).items():
            if name in wanted and isinstance(got, dict):
                answered[name] = Outcome(name, got.get("value"), str(got.get("error") or ""),
                                         float(got.get("seconds") or 0.0))
    rows = inspection.node_facts(state, state_dir / "known_hosts", timeout=timeout,
                                 progress=console.progress, answered=answered)
    if output == "json":
        console.write(json.dumps(rows, indent=2))
    else:
        if not rows:
            console.write("no Node manifests in this revision")
        console.table(
            ["NODE", "ADDRESS", "REACHABLE", "AGENT", "CPUS", "MEMORY", "PODS", "RUNTIMES", "ERROR"],
            [inspection.table_row(r) for r in rows],
        )
    sys.exit(0 if all(r["reachable"] for r in rows) else 1)


@cli.command()
@click.argument("what", type=click.Choice(["pods", "nodes"]))
@click.option("-n", "--namespace", default=None, help="Only this namespace (pods).")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--containers", is_flag=True, help="One row per container (pods).")
def top(what: str, namespace: str | None, output: str, containers: bool) -> None:
    """CPU and memory use of pods or nodes, as `kubectl top`: the newest samples the agents
    reported to the running `gitorch serve` (asked over its control socket)."""
    from gitorch.cli import views
    from gitorch.server import control

    request: dict[str, Any] = {"verb": "top"}
    if namespace is not None:
        request["namespace"] = namespace
    reply = control.ask(_settings().state_dir, request, 10.0)
    if reply is None:
        _fail("no `gitorch serve` answers on this state folder's control socket: resource metrics live in "
              "its memory; start `gitorch serve` (same GITORCH_STATE_DIR) and wait one metrics interval (15 s)")
    views.top(reply, what, namespace, output, containers)


# --- reconcile ---------------------------------------------------------------------------------


def _store(*, upgrade: bool = False) -> Any:
    """The state store; an empty one is created, one at another schema version is refused
    unless `upgrade` (only `gitorch migrate` and `serve --migrate` change a schema)."""
    from gitorch.store.database import Store

    settings = _settings()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    if settings.state_dir.stat().st_mode & 0o077:  # its own folder: the store, mirrors, known hosts
        os.chmod(settings.state_dir, 0o700)
    return Store.open(settings.database_url, upgrade=upgrade)


@cli.command()
def migrate() -> None:
    """Upgrade the state store's schema to this gitorch's (back the store up first)."""
    with _store(upgrade=True) as store:
        before, after = store.schema_change
    if before == after:
        console.write(f"{store.url}: schema already at version {after}")
    elif before is None:
        console.write(f"{store.url}: created at schema version {after}")
    else:
        console.write(f"{store.url}: schema migrated from version {before} to {after}")


@cli.command()
@click.option("--repo", "repo_path", default=None, help=REPO_HELP)
@click.option("--rev", default=None, help="Revision to apply. Default: HEAD.")
@click.option("--wait/--no-wait", default=False, help="Repeat passes until every workload is Healthy.")
@click.option("--timeout", type=float, default=300.0, show_default=True, help="Seconds --wait may take.")
@click.option("--plan", "plan_file", default=None, metavar="FILE",
              help="Apply a saved plan (from `gitorch plan --out`), refusing if the head or the cluster moved since.")
@click.option("--trust-key", "trust_key", multiple=True, metavar="KEY", help=TRUST_KEY_HELP)
def apply(repo_path: str | None, rev: str | None, wait: bool, timeout: float, plan_file: str | None,
          trust_key: tuple[str, ...]) -> None:
    """Reconcile the cluster to a commit: one pass, or with --wait until it has converged."""
    import time

    from gitorch.cli import applying
    from gitorch.reconcile import leadership, reviewing

    repo = open_repository(repo_path)
    with _store() as store:
        if plan_file:
            saved = reviewing.load_saved(plan_file)
            head = repo.resolve(rev).oid
            state = desired.load(repo, head)
            current = reviewing.observed_hash(reviewing.observed_from_store(state, store, time.time()),
                                              reviewing.holdings_from_store(store))
            reviewing.check_saved(saved, head, current)
            console.write(f"applying the reviewed plan for {head[:7]}")
            rev, wait = head, True
        with leadership.exclusive(store, "apply") as lead:
            ok = applying.apply(repo, store, _settings().state_dir, rev=rev, wait=wait, timeout=timeout,
                                leadership=lead, trust_keys=trust_key)
    sys.exit(0 if ok else 1)


@cli.command()
@click.option("--repo", "repo_path", default=None, help=REPO_HELP)
@click.option("--branch", default=None, help="The branch to deploy from. Default: HEAD.")
@click.option("--interval", type=float, default=1.0, show_default=True,
              help="Seconds between reconcile passes (a pass with nothing to do costs ~50 ms on 3 nodes).")
@click.option("--idle-interval", type=float, default=None, envvar="GITORCH_IDLE_INTERVAL", show_envvar=True,
              help="Seconds between passes while every node's pod watch is open and nothing is left to do (any "
                   "change then wakes a pass at once). Default 10.")
@click.option("--listen", default="127.0.0.1:8090", show_default=True,
              help="HOST:PORT for the dashboard (/), /hooks/git (push webhooks), /hooks/wake and /metrics; "
                   "'off' disables it.")
@click.option("--ui-token-env", default=None, metavar="NAME",
              help="Environment variable holding the dashboard's login token (16 characters or more). Without "
                   "it the dashboard answers only clients on loopback.")
@click.option("--webhook-secret-env", default="GITORCH_WEBHOOK_SECRET", show_default=True,
              help="Environment variable holding the webhook secret (GitHub/Gitea HMAC, GitLab token).")
@click.option("--wake-token-env", default=None, metavar="NAME",
              help="Environment variable holding the token /hooks/wake asks for. Default: $GITORCH_WAKE_TOKEN "
                   "when set, else a token made on first use in the state dir (wake-token, mode 0600).")
@click.option("--dns", "dns_listen", default=None, metavar="ADDR:PORT",
              help="Serve the cluster DNS here (UDP and TCP), kept in step with every pass.")
@click.option("--poll", type=float, default=30.0, show_default=True,
              help="Seconds between fetches of a remote --repo (a webhook fetches at once).")
@click.option("--ssh-key", default=None, help="Private key file for an SSH remote.")
@click.option("--host-key", default=None, help="The SSH remote's host key to pin (default: trust on first use).")
@click.option("--token-env", default=None, help="Environment variable with an HTTPS token for the remote.")
@click.option("--ca-file", default=None, envvar="GITORCH_REPO_CA_FILE", show_envvar=True,
              help="PEM file of the CA that signs an HTTPS remote's certificate (besides the system's CAs).")
@click.option("--pod-watch/--no-pod-watch", default=None,
              help="Follow each agent's pod status pushes, so readiness changes reach every node's service rules "
                   "at once (default on; GITORCH_NO_WATCH=1 turns it off). Off: the next timer pass.")
@click.option("--migrate", "migrate_store", is_flag=True,
              help="Upgrade the state store's schema first, as `gitorch migrate` does. Without it a store at "
                   "another schema version stops serve.")
@click.option("--env-file", default=None, metavar="FILE", envvar="GITORCH_ENV_FILE",
              help="KEY=VALUE settings (systemd's EnvironmentFile=), read at start (the environment wins) and "
                   "again on SIGHUP, when its GITORCH_LOG_LEVEL and GITORCH_LOG_FORMAT take effect.")
@click.option("--kube-api-listen", default="off", show_default=True, metavar="HOST:PORT",
              help="Serve a read-only Kubernetes API over HTTPS here (kubectl, client libraries); every serve "
                   "instance answers. Its CA and certificate are made in STATE_DIR/kubeapi on first start.")
@click.option("--kube-api-token-file", default=None, metavar="FILE",
              help="Bearer tokens the API accepts, one `TOKEN[,USER]` a line. Default: STATE_DIR/kubeapi/tokens, "
                   "made with one token on first start.")
@click.option("--kube-api-host", "kube_api_hosts", multiple=True, metavar="NAME",
              help="Another DNS name or address for the API's certificate (a load balancer's). Repeatable.")
@click.option("--trust-key", "trust_key", multiple=True, metavar="KEY", help=TRUST_KEY_HELP)
def serve(repo_path: str | None, branch: str | None, interval: float, idle_interval: float | None, listen: str,
          webhook_secret_env: str,
          wake_token_env: str | None, dns_listen: str | None, poll: float, ssh_key: str | None, host_key: str | None,
          token_env: str | None, ca_file: str | None, pod_watch: bool | None, migrate_store: bool,
          env_file: str | None, ui_token_env: str | None, trust_key: tuple[str, ...], kube_api_listen: str,
          kube_api_token_file: str | None, kube_api_hosts: tuple[str, ...]) -> None:
    """Run the controller: reconcile the branch's head on every push and every INTERVAL seconds until SIGTERM."""
    reload = _serve_env(env_file)
    from gitorch.server.http import parse_listen
    from gitorch.server.serving import Server

    try:
        address = parse_listen(listen)
    except ValueError as exc:
        _fail(str(exc))
    try:
        kube_address = parse_listen(kube_api_listen)
    except ValueError as exc:
        _fail(str(exc).replace("--listen", "--kube-api-listen").replace("8090", "6443"))
    secret = os.environ.get(webhook_secret_env) or None
    ui_token = None
    if ui_token_env:
        ui_token = os.environ.get(ui_token_env, "")
        if len(ui_token) < 16:
            _fail(f"--ui-token-env {ui_token_env}: the variable is {'unset' if not ui_token else 'too short'}; "
                  f"set it to 16 characters or more (e.g. `export {ui_token_env}=$(openssl rand -hex 16)`)")
    token = hooks.wake_token(_settings().state_dir, wake_token_env) if address is not None else None
    fetcher = None
    if repo_path and is_remote(repo_path):
        import hashlib

        from gitorch.nodes.ssh import check_remote_host
        from gitorch.source.git import RemoteAuth, fetch, mirror

        settings = _settings()
        auth = RemoteAuth(ssh_key=ssh_key, token_env=token_env, host_key=host_key, ca_file=ca_file,
                          known_hosts=str(settings.state_dir / "known_hosts"), host_check=check_remote_host)
        dest = settings.state_dir / "mirrors" / hashlib.sha256(repo_path.encode()).hexdigest()[:16]
        repo = mirror(repo_path, dest, auth)
        url = repo_path

        def fetcher() -> None:
            fetch(repo, auth, url)
    else:
        repo = open_repository(repo_path)
    import dataclasses

    from gitorch.reconcile.controller import ControllerSettings
    from gitorch.server.kubeapi import KubeApiSettings

    controller_settings = dataclasses.replace(ControllerSettings.from_env(), trust_keys=trust_key)
    state_dir = _settings().state_dir
    kube_settings = KubeApiSettings(
        tls_dir=state_dir / "kubeapi",
        token_file=Path(kube_api_token_file) if kube_api_token_file else state_dir / "kubeapi" / "tokens",
        repo=repo_path if repo_path and is_remote(repo_path) else str(repo.path), hosts=kube_api_hosts)
    with _store(upgrade=migrate_store) as store:
        Server(repo, store, state_dir, branch=branch, interval=interval, listen=address,
               settings=controller_settings,
               webhook_secret=secret, wake_token=token, dns_listen=dns_listen, fetcher=fetcher, poll=poll,
               pod_watch=pod_watch, idle_interval=idle_interval, ui_token=ui_token, kube_api=kube_address,
               kube_api_settings=kube_settings, repo_url=repo_path if fetcher is not None else None,
               wake_token_env=wake_token_env).run(reload=reload)


@cli.command()
@click.option("--token-file", default=None, metavar="FILE",
              help="The API's token file (its first token is used). Default: STATE_DIR/kubeapi/tokens.")
@click.option("--server", default=None, metavar="URL",
              help="The API's address, e.g. https://gitorch.example:6443. Default: where serve last served it.")
def kubeconfig(token_file: str | None, server: str | None) -> None:
    """Print a kubeconfig for the read-only Kubernetes API of `serve --kube-api-listen`."""
    from gitorch.server.kubeapi import kubeconfig as make
    from gitorch.server.kubeapi import read_tokens

    folder = _settings().state_dir / "kubeapi"
    ca = folder / "ca.crt"
    if not ca.exists():
        _fail(f"{ca}: no CA yet; start `gitorch serve --kube-api-listen HOST:PORT` once to make it")
    if server is None:
        try:
            server = (folder / "server").read_text().strip()
        except OSError:
            _fail(f"{folder / 'server'}: not served yet; give --server https://HOST:PORT")
    tokens = read_tokens(Path(token_file) if token_file else folder / "tokens")
    if not tokens:
        _fail(f"{token_file or folder / 'tokens'}: no token (one `TOKEN[,USER]` a line, 16 characters or more)")
    console.write(make(server, ca.read_bytes(), next(iter(tokens))).rstrip("\n"))


def _serve_env(env_file: str | None) -> Callable[[], str]:
    """Load `serve --env-file` (the environment wins) and return what SIGHUP runs: read the
    file again and apply its log settings."""
    from click.core import ParameterSource

    from gitorch.server import systemd

    if env_file:
        for key, value in systemd.read_environment_file(env_file).items():
            os.environ.setdefault(key, value)
        root = click.get_current_context().find_root()
        level, fmt = log_setup.current()
        if root.get_parameter_source("log_level") is not ParameterSource.COMMANDLINE:
            level = os.environ.get("GITORCH_LOG_LEVEL", level)
        if root.get_parameter_source("log_format") is not ParameterSource.COMMANDLINE:
            fmt = os.environ.get("GITORCH_LOG_FORMAT", fmt)
        try:
            log_setup.setup(level, fmt)
        except ValueError as exc:
            _fail(f"{env_file}: {exc}")
    start = log_setup.current()

    def reload() -> str:
        return log_setup.reload(systemd.read_environment_file(env_file) if env_file else {}, start)

    return reload


@cli.command("systemd-unit")
@click.option("--user", default="gitorch", show_default=True,
              help="System user to run as (create it: useradd --system --home-dir STATE_DIR gitorch).")
@click.option("--state-dir", default="/var/lib/gitorch", show_default=True,
              help="GITORCH_STATE_DIR: the store, known_hosts, mirrors; the only folder serve may write.")
@click.option("--env-file", default="/etc/gitorch/gitorch.env", show_default=True,
              help="Settings file read at start and on `systemctl reload` (root:USER, mode 0640: it holds secrets).")
@click.option("--executable", default=None, help="Absolute path of gitorch. Default: the one running now.")
@click.argument("serve_args", nargs=-1, type=click.UNPROCESSED)
def systemd_unit(user: str, state_dir: str, env_file: str, executable: str | None,
                 serve_args: tuple[str, ...]) -> None:
    """Print a systemd service unit running `gitorch serve SERVE_ARGS` (after `--`), for
    /etc/systemd/system/gitorch.service."""
    from gitorch.server import systemd

    executable = executable or systemd.default_executable()
    for what, path in (("--state-dir", state_dir), ("--env-file", env_file), ("--executable", executable)):
        if not path.startswith("/") or any(c.isspace() or c in "\"'\\$%" for c in path):
            _fail(f"{what} {path!r}: give an absolute path without spaces, quotes, $ or %")
    console.write(systemd.unit_file(systemd.UnitSettings(
        executable=executable, serve_args=serve_args, user=user, state_dir=state_dir.rstrip("/") or "/",
        env_file=env_file)))


@cli.command()
@click.option("--repo", "repo_path", default=None, help=REPO_HELP)
@click.option("--listen", default="127.0.0.1:53", show_default=True, metavar="ADDR:PORT",
              help="Where to answer DNS queries (UDP and TCP).")
def dns(repo_path: str | None, listen: str) -> None:
    """Serve the cluster DNS alone, from the state store (applied revision, pods, cluster IPs)."""
    import signal as signals
    import threading

    from gitorch.dns.cluster import ClusterDNS, settings_for

    repo = open_repository(repo_path)
    stop = threading.Event()
    signals.signal(signals.SIGTERM, lambda *_: stop.set())
    signals.signal(signals.SIGINT, lambda *_: stop.set())
    with _store() as store:
        server: ClusterDNS | None = None
        try:
            while not stop.is_set():
                last = store.last_applied_revision()
                if last is not None:
                    state = desired.load(repo, last.commit)
                    if server is None:
                        try:
                            server = ClusterDNS(settings_for(state, listen)).start()
                        except (OSError, ValueError) as exc:
                            _fail(f"cannot serve DNS on {listen}: {exc}")
                        console.write(f"cluster DNS on {listen} (port {server.port}), serving {last.commit[:7]}")
                    server.refresh(state, store)
                elif server is None:
                    console.write("nothing applied yet; waiting for `gitorch apply` or `gitorch serve`")
                    server = ClusterDNS(settings_for(None, listen)).start()
                stop.wait(0.5)
        finally:
            if server is not None:
                server.stop()


@cli.command()
@click.argument("rev", required=False)
@click.option("--reason", required=True, help="Why: recorded in the rollback commit's message.")
@click.option("--repo", "repo_path", default=None, help=REPO_HELP)
@click.option("--branch", default="main", show_default=True, help="The branch gitorch deploys from.")
@click.option("--notify", default=None, help="URL to POST after the commit (e.g. http://127.0.0.1:8090/hooks/wake).")
def rollback(rev: str | None, reason: str, repo_path: str | None, branch: str, notify: str | None) -> None:
    """Commit REV's content (default: the last applied revision before the head) on top of the branch."""
    from gitorch.reconcile import rollback as rollback_mod

    repo = open_repository(repo_path)
    if rev is None:
        with _store() as store:
            made = rollback_mod.rollback(repo, branch, rev, reason, store)
    else:
        made = rollback_mod.rollback(repo, branch, rev, reason, None)
    console.write(f"{made.oid[:7]} Rollback to {made.target.short} ({made.target.subject}) on {branch}")
    console.write(made.oid)
    if notify:
        hooks.notify(notify, hooks.wake_token(_settings().state_dir))


@cli.command()
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def status(output: str) -> None:
    """The applied revision and, per object, its sync and health (like `argocd app get`)."""
    from gitorch.cli import views

    with _store() as store:
        views.status(store, output)


@cli.command()
@click.argument("what", type=click.Choice(["pods", "nodes", "deployments", "replicasets", "statefulsets",
                                           "daemonsets", "services", "ingresses", "jobs", "cronjobs",
                                           "serviceaccounts", "revisions", "hpa", "horizontalpodautoscalers",
                                           "vpa", "verticalpodautoscalers"]))
@click.option("-n", "--namespace", default=None, help="Only this namespace.")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def get(what: str, namespace: str | None, output: str) -> None:
    """List pods, nodes, workloads, services, ServiceAccounts (their uids) or revisions as the store knows them."""
    from gitorch.cli import views

    with _store() as store:
        views.get(store, what, namespace, output)


@cli.command()
@click.argument("names", nargs=-1)
@click.option("--repo", "repo_path", default=None, help=REPO_HELP)
@click.option("--rev", default=None, help="Revision whose files the patch applies to. Default: HEAD.")
@click.option("-n", "--namespace", default=None, help="Only this namespace.")
@click.option("--format", "fmt", type=click.Choice(["patch", "markdown"]), default="patch", show_default=True,
              help="A unified diff for `git apply`, or markdown for a pull-request comment.")
def recommend(names: tuple[str, ...], repo_path: str | None, rev: str | None, namespace: str | None,
              fmt: str) -> None:
    """The VerticalPodAutoscalers' recommendations (NAME...: only those) as a ready-to-commit
    patch of their workloads' requests: resizing goes through review like any other change."""
    from gitorch.cli import views

    repo = open_repository(repo_path)
    with batch_gc():
        state = desired.load(repo, rev, _keyring())
    if not state.ok:
        _fail(f"revision {state.revision.short} is not valid (`gitorch validate`): no patch is made against it")
    with _store() as store:
        sys.exit(views.recommend(store, repo, state, names, namespace, fmt))


@cli.command()
@click.argument("ref")
@click.option("-n", "--namespace", default="default", show_default=True)
def describe(ref: str, namespace: str) -> None:
    """Show one object (KIND/NAME such as deployment/web, or pod/NAME) with its events."""
    from gitorch.cli import views

    with _store() as store:
        views.describe(store, ref, namespace)


@cli.command()
@click.option("-n", "--namespace", default=None)
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def events(namespace: str | None, limit: int, output: str) -> None:
    """Recent events: rollouts, scheduling failures, pruning, invalid revisions."""
    from gitorch.cli import views

    with _store() as store:
        views.events(store, namespace, limit, output)


@cli.command()
@click.option("--repo", "repo_path", default=None, help=REPO_HELP)
@click.option("--rev", default=None, help="Branch or commit whose history to read. Default: HEAD.")
@click.option("--since", default=None, metavar="WHEN",
              help="Only commits since then: an ISO date or time (2026-05-01, 2026-05-01T12:00Z) or an age "
                   "(30m, 12h, 7d).")
@click.option("--object", "object_ref", default=None, metavar="KIND/NS/NAME",
              help="Only changes to this object (KIND/NAME for a cluster-scoped kind), e.g. deployment/prod/web.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True,
              help="Commits read at most, newest first.")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def audit(repo_path: str | None, rev: str | None, since: str | None, object_ref: str | None, limit: int,
          output: str) -> None:
    """Who changed which object, when, with which signature, and what the controller did about it."""
    from gitorch.cli import views
    from gitorch.reconcile import auditing

    try:
        key = auditing.parse_object(object_ref) if object_ref else None
        when = views.parse_since(since) if since else None
    except ValueError as exc:
        _fail(str(exc))
    repo = open_repository(repo_path)
    with _store() as store, batch_gc():
        entries = auditing.audit(repo, store, rev=rev, since=when, key=key, limit=limit, keyring=_keyring())
    views.audit(entries, output)


@cli.command()
@click.argument("pod")
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("-c", "--container", default=None)
@click.option("--tail", type=int, default=-1, help="Lines from the end (-1: all).")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("-p", "--previous", is_flag=True, help="The previous container instance's log.")
@click.option("--timestamps", is_flag=True,
              help="Start each line with the time it was written (RFC 3339, UTC; within the node's 1 s pass).")
@click.option("--since", default=None, metavar="WHEN",
              help="Only lines written since then: an age (30s, 5m, 1h) or an ISO time (2026-05-01T12:00Z).")
@click.option("--repo", "repo_path", default=None, help=REPO_HELP)
@click.option("--node", default=None, help="Ask this node (for the ingress proxy: `gitorch logs ingress --node N`).")
def logs(pod: str, namespace: str, container: str | None, tail: int, follow: bool, previous: bool,
         timestamps: bool, since: str | None, repo_path: str | None, node: str | None) -> None:
    """Print a pod's container log, from the node that runs it; `ingress --node N`: that node's
    ingress proxy (HAProxy's access log)."""
    from gitorch.cli import views

    try:
        when = views.parse_since(since).timestamp() if since else None
    except ValueError as exc:
        _fail(str(exc))
    repo = open_repository(repo_path)
    with _store() as store:
        views.logs(store, repo, _settings().state_dir, pod, namespace, container, tail, follow, previous, node,
                   timestamps, when)


@cli.command()
@click.option("--repo", "repo_path", default=None, help=REPO_HELP)
@click.option("--rev", default=None, help="Revision to compare with (--run). Default: HEAD.")
@click.option("--run", "run_now", is_flag=True, help="Run a drift check now and save its report.")
@click.option("--heal", is_flag=True, help="With --run: heal what is found, whatever the Cluster's drift mode.")
@click.option("--dns", "dns_address", default=None, metavar="ADDR:PORT",
              help="With --run: the cluster DNS to check. Default: the one pods use (GITORCH_CLUSTER_DNS, "
                   "the Cluster's dns.address); none known, DNS records are not checked.")
@click.option("--since", default=None, metavar="DURATION|ISO", help="Show every report since then (30m, 2h, ISO time).")
@click.option("--format", "fmt", type=click.Choice(["text", "markdown", "json"]), default="text", show_default=True)
@click.option("--exit-code", "exit_code", is_flag=True,
              help="Exit 2 when the latest report has findings left (after any heal), 0 when clean: for CI "
                   "and cron, like `git diff --exit-code`.")
def drift(repo_path: str | None, rev: str | None, run_now: bool, heal: bool, dns_address: str | None,
          since: str | None, fmt: str, exit_code: bool) -> None:
    """Drift between Git, the store, the nodes and the cluster DNS: the latest report, or
    with --run a new one."""
    from gitorch.model.addresses import parse_hostport
    from gitorch.reconcile import drift as drift_mod
    from gitorch.reconcile import leadership
    from gitorch.reconcile.controller import Controller, ControllerSettings

    try:
        when = drift_mod.parse_since(since) if since else None
    except ValueError as exc:
        _fail(str(exc))
    try:
        if dns_address:
            parse_hostport(dns_address)
    except ValueError as exc:
        _fail(f"--dns: {exc}")
    with _store() as store:
        if run_now:
            controller = Controller(open_repository(repo_path), store, _settings().state_dir,
                                    ControllerSettings.from_env())
            try:
                with contextlib.ExitStack() as stack:
                    lead = None
                    try:
                        lead = stack.enter_context(leadership.exclusive(store, "drift --heal"))
                    except leadership.LeaderBusy:
                        if heal:
                            raise
                        console.warn("another controller leads: this drift check only reports")
                    drift_mod.run(controller, rev=rev, heal=heal, dns=dns_address,
                                  fence=lead.fence if lead else None, report_only=lead is None)
            finally:
                controller.close()
        reports = store.drift_reports()
        docs = drift_mod.history(reports, when)
    console.write(drift_mod.render(docs, fmt, many=when is not None))
    if exit_code and reports and drift_mod.remaining(reports[0]):
        sys.exit(2)


# --- encrypted Secrets (SOPS) -------------------------------------------------------------


@cli.group()
def secret() -> None:
    """Secrets encrypted in Git in SOPS's format (age keys): sops users can read them, and gitorch reads theirs."""


def _sops_identities() -> list[Any]:
    from gitorch.source import sops

    return sops.load_key_file(sops.key_file_path(_settings().state_dir))


def _read_sops_file(path: Path) -> Any:
    from gitorch.source.manifests import load_plain

    try:
        return load_plain(path.read_text(), str(path))
    except (OSError, ValueError) as exc:
        _fail(f"{path}: {exc}")


def _write_result(path: Path, doc: Any, in_place: bool) -> None:
    from gitorch.source.manifests import dump_documents

    text = dump_documents([doc])
    if in_place:
        tmp = path.with_name(f".{path.name}.gitorch-tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    else:
        sys.stdout.write(text)


@secret.command("keygen")
def secret_keygen() -> None:
    """Make the controller's age key (state folder, mode 0600, or $GITORCH_AGE_KEY_FILE); print its recipient."""
    from gitorch.source import sops

    path = sops.key_file_path(_settings().state_dir)
    try:
        recipient = sops.generate_key_file(path)
    except sops.SopsError as exc:
        _fail(str(exc))
    console.write(f"wrote {path}")
    console.write(recipient)


def _exposed_secret_values(doc: Any, rules: Any) -> str:
    """The data/stringData keys of a Secret that `rules` leave in plaintext, for a message ("" when none)."""
    from gitorch.source import sops

    if not isinstance(doc, dict) or doc.get("kind") != "Secret":
        return ""
    found = [".".join(str(p) for p in path) for path in sops.left_plaintext(doc, rules)]
    return ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")


@secret.command("encrypt")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--age", "recipients", multiple=True, metavar="RECIPIENT",
              help="age public key (age1...) that may decrypt; repeat for several. Default: the controller's key.")
@click.option("--encrypted-regex", default=None,
              help="Encrypt only values under keys matching this. Default: ^(data|stringData)$ (a Secret's values).")
@click.option("--unencrypted-regex", default=None, help="Encrypt every value except under keys matching this.")
@click.option("--encrypted-suffix", default=None, help="Encrypt only values under keys with this suffix.")
@click.option("--unencrypted-suffix", default=None, help="Encrypt every value except under keys with this suffix.")
@click.option("--mac-only-encrypted", is_flag=True,
              help="The MAC covers only encrypted values: plaintext ones may change (SOPS's mac_only_encrypted).")
@click.option("-i", "--in-place", is_flag=True, help="Replace FILE instead of writing to stdout.")
def secret_encrypt(file: Path, recipients: tuple[str, ...], encrypted_regex: str | None,
                   unencrypted_regex: str | None, encrypted_suffix: str | None, unencrypted_suffix: str | None,
                   mac_only_encrypted: bool, in_place: bool) -> None:
    """Encrypt FILE (one YAML document, e.g. a Secret) in SOPS's format.

    A rule that would leave a value of a Secret's data or stringData in plaintext is refused."""
    from gitorch.source import sops

    given = {name: value for name, value in (("encrypted_regex", encrypted_regex),
                                             ("unencrypted_regex", unencrypted_regex),
                                             ("encrypted_suffix", encrypted_suffix),
                                             ("unencrypted_suffix", unencrypted_suffix)) if value is not None}
    if len(given) > 1:
        _fail("give at most one of " + ", ".join("--" + n.replace("_", "-") for n in given))
    selector, pattern = next(iter(given.items()), ("encrypted_regex", sops.DEFAULT_ENCRYPTED_REGEX))
    rules = sops.Rules(selector, pattern, mac_only_encrypted)
    plain = _read_sops_file(file)
    try:
        exposed = _exposed_secret_values(plain, rules)
        if exposed:
            _fail(f"{file}: --{selector.replace('_', '-')} {pattern!r} would leave {exposed} in plaintext; "
                  "a Secret's data and stringData values must all be encrypted (omit the option for the default "
                  f"{sops.DEFAULT_ENCRYPTED_REGEX}, or choose one that covers them)")
        keys = list(recipients) or [sops.recipient_of(i) for i in _sops_identities()]
        doc = sops.encrypt_document(plain, keys, rules=rules)
    except sops.SopsError as exc:
        _fail(f"{file}: {exc}")
    _write_result(file, doc, in_place)


@secret.command("decrypt")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("-i", "--in-place", is_flag=True, help="Replace FILE instead of writing to stdout.")
def secret_decrypt(file: Path, in_place: bool) -> None:
    """Decrypt a SOPS FILE with the controller's age key (checks its MAC)."""
    from gitorch.source import sops

    try:
        doc = sops.decrypt_document(_read_sops_file(file), _sops_identities())
    except sops.SopsError as exc:
        _fail(f"{file}: {exc}")
    _write_result(file, doc, in_place)


@secret.command("edit")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
def secret_edit(file: Path) -> None:
    """Decrypt FILE into $EDITOR (a 0600 temp file), then encrypt it again with the file's rules for the
    same recipients (its key groups too)."""
    import subprocess
    import tempfile

    from gitorch.source import sops
    from gitorch.source.manifests import dump_documents, load_plain

    enc = _read_sops_file(file)
    try:
        if not sops.is_encrypted(enc):
            raise sops.SopsError("not encrypted (no sops block); use `gitorch secret encrypt`")
        meta = enc["sops"]
        others = sops.other_keys(meta)
        if others:  # re-encrypting would drop them: sops can write those keys, gitorch cannot
            raise sops.SopsError(f"also encrypted for {', '.join(others)} keys, which gitorch cannot write; "
                                 "edit it with sops")
        rules = sops.Rules.of(meta)
        groups = sops.recipients(meta)
        threshold = int(meta.get("shamir_threshold") or 0) if len(groups) > 1 else 0
        plain = sops.decrypt_document(enc, _sops_identities())
    except (sops.SopsError, ValueError) as exc:
        _fail(f"{file}: {exc}")
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    with tempfile.TemporaryDirectory(prefix="gitorch-edit-") as tmp:
        work = Path(tmp) / file.name
        fd = os.open(work, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(dump_documents([plain]))
        if subprocess.run([*editor.split(), str(work)], check=False).returncode != 0:
            _fail(f"{editor} failed; {file} is unchanged")
        try:
            edited = load_plain(work.read_text(), file.name)
        except ValueError as exc:
            _fail(f"{exc} ({file} is unchanged)")
    if edited == plain:
        console.write(f"{file}: no changes", stderr=True)
        return
    try:
        if len(groups) > 1:
            doc = sops.encrypt_document(edited, [], rules=rules, groups=groups, shamir_threshold=threshold)
        else:
            doc = sops.encrypt_document(edited, groups[0] if groups else [], rules=rules)
    except sops.SopsError as exc:
        _fail(f"{file}: {exc}")
    _write_result(file, doc, True)
    exposed = _exposed_secret_values(edited, rules)
    if exposed:
        console.write(f"{file}: warning: the file's sops.{rules.selector} {rules.pattern!r} leaves {exposed} in "
                      "plaintext; a Cluster with secrets.requireEncryption refuses it", stderr=True)


# --- git hooks ---------------------------------------------------------------------------


@cli.group()
def hook() -> None:
    """Git hooks for a repository gitorch watches."""


@hook.command("install")
@click.argument("repo", type=click.Path(file_okay=False, path_type=Path))
@click.option("--branch", default="main", show_default=True, help="The branch gitorch deploys from.")
@click.option("--path", "subdir", default="", help="Folder of the repository that holds the manifests.")
@click.option("--force", is_flag=True, help="Replace a hook gitorch did not write.")
@click.option("--notify", default=hooks.DEFAULT_NOTIFY, show_default=True,
              help="URL the post-receive hook POSTs to after a push to the branch (`gitorch serve`'s /hooks/wake).")
@click.option("--wake-token-env", default=None, metavar="NAME",
              help="Environment variable holding the controller's wake token (as given to `serve`). Default: "
                   "$GITORCH_WAKE_TOKEN when set, else the state dir's wake-token file (made if missing).")
@click.option("--trust-key", "trust_key", multiple=True, metavar="KEY", help=TRUST_KEY_HELP)
def hook_install(repo: Path, branch: str, subdir: str, force: bool, notify: str, wake_token_env: str | None,
                 trust_key: tuple[str, ...]) -> None:
    """Install hooks: pre-receive refuses invalid manifests (and, under the Cluster's git.verifyCommits,
    commits not signed or not granted), post-receive wakes the controller (it holds the wake token, so
    it is readable by its owner only)."""
    from gitorch.source import signatures

    keys = [str(Path(k).expanduser().resolve()) if Path(k).expanduser().is_file() else k for k in trust_key]
    signatures.trust_keys(keys)  # refuse a bad key now, not at the first push
    token = hooks.wake_token(_settings().state_dir, wake_token_env)
    for path in hooks.install(repo, branch=branch, token=token, path=subdir, force=force, notify=notify,
                              trust_keys=keys):
        console.write(f"installed {path}")


@hook.command("run", hidden=True)
@click.argument("name", type=click.Choice(["pre-receive"]))
@click.option("--branch", default="main")
@click.option("--path", "subdir", default="")
@click.option("--trust-key", "trust_key", multiple=True)
def hook_run(name: str, branch: str, subdir: str, trust_key: tuple[str, ...]) -> None:
    """Run inside git: check the pushed commit of the watched branch."""
    from gitorch.source import signatures
    from gitorch.source.git import is_zero_oid

    git_dir = Path(os.environ.get("GIT_DIR", ".")).resolve()
    repo = open_repository(git_dir)
    repo.root = subdir.strip("/")
    status = 0
    keyring = _keyring()
    check = signatures.RangeCheck(repo, lambda oid: desired.load(repo, oid, keyring), signatures.trust_keys(trust_key),
                                  trusted_as=f"the tip of {branch!r}")
    for update in hooks.parse_updates(sys.stdin.read()):
        if update.ref != f"refs/heads/{branch}":
            continue
        if is_zero_oid(update.new):
            console.write(f"gitorch: refusing to delete {branch!r}: gitorch deploys from it", stderr=True)
            status = 1
            continue
        state = desired.load(repo, update.new, keyring)
        errs = errors(state.diagnostics)
        if not errs:  # the branch's tip before the push is the trusted revision (its keys and grants)
            trusted = None if is_zero_oid(update.old) else desired.load(repo, update.old, keyring)
            refusals = check.check(trusted, state)
            if refusals:
                console.write(f"gitorch: push to {branch!r} refused: {len(refusals)} change(s) not allowed "
                              "(the Cluster sets git.verifyCommits):", stderr=True)
                console.write(diagnostics_text([r.diagnostic() for r in refusals]), stderr=True)
                status = 1
                continue
        if errs:
            console.write(
                f"gitorch: push to {branch!r} refused: {update.new[:7]} has {len(errs)} error(s) in its desired state:",
                stderr=True,
            )
            console.write(diagnostics_text(state.diagnostics), stderr=True)
            console.write("gitorch: fix them and push again (`gitorch validate` checks locally)", stderr=True)
            status = 1
        else:
            console.write(f"gitorch: {update.new[:7]} is valid ({len(state.objects)} objects)", stderr=True)
    sys.exit(status)


# --- the local lab --------------------------------------------------------------------------


@cli.group()
def lab() -> None:
    """A local multi-node lab cluster: real SSH nodes in network namespaces on this machine."""


@lab.command("up")
@click.argument("count", type=click.IntRange(1, 250))
@click.option(
    "--nodes-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the nodes' Node manifests here (for a desired-state repo).",
)
@click.option("--subnet", default="10.231.0.0/24", show_default=True, help="Private network of the lab.")
def lab_up(count: int, nodes_file: Path | None, subnet: str) -> None:
    """Start COUNT nodes, each with its own IP and sshd."""
    from gitorch.nodes import lab as labmod

    labmod.preflight()
    result = labmod.up(count, state_dir=_settings().lab_dir, subnet=subnet, nodes_file=nodes_file)
    console.table(
        ["NODE", "ADDRESS", "PID"],
        [(n.name, n.address, n.pid) for n in result.nodes],
    )
    console.write(f"{len(result.nodes)} node(s) up; SSH key {result.identity_file}")
    if nodes_file:
        console.write(f"Node manifests written to {nodes_file}")


@lab.command("down")
def lab_down() -> None:
    """Stop every lab node and remove its network (safe to repeat, also after a crash)."""
    from gitorch.nodes import lab as labmod

    removed = labmod.down(_settings().lab_dir)
    for line in removed:
        console.write(line)
    if not removed:
        console.write("no lab is running")


@lab.command("status")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def lab_status(output: str) -> None:
    """Show the lab's nodes and whether each answers."""
    from gitorch.nodes import lab as labmod

    rows = labmod.status(_settings().lab_dir)
    if output == "json":
        console.write(json.dumps(rows, indent=2))
        return
    if not rows:
        console.write("no lab is running (start one with `gitorch lab up 3`)")
        return
    console.table(
        ["NODE", "ADDRESS", "PID", "ALIVE"],
        [(r["name"], r["address"], r["pid"], "yes" if r["alive"] else "NO") for r in rows],
    )


@lab.command("ssh", context_settings={"ignore_unknown_options": True})
@click.argument("node")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def lab_ssh(node: str, command: tuple[str, ...]) -> None:
    """Open a shell on NODE, or run `-- COMMAND` there."""
    from gitorch.nodes import lab as labmod

    current = labmod.load(_settings().lab_dir)
    if current is None:
        _fail("no lab is running (start one with `gitorch lab up 3`)")
    argv = labmod.ssh_command(current, node, list(command))
    os.execvp(argv[0], argv)


# --- entry point ----------------------------------------------------------------------------


def _error(message: str) -> None:
    """One line for people, or one JSON record when logs are JSON (a shipper reads stderr)."""
    if log_setup.current()[1] == "json":
        import logging

        logging.getLogger("gitorch").error(message, extra={"event": "error"})
    else:
        console.error(message)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors print one line (no traceback) and exit 1."""
    run: Callable[..., Any] = cli.main
    log_setup.setup()
    try:
        run(args=argv, prog_name="gitorch", standalone_mode=False)
    except click.exceptions.Abort:
        console.error("aborted")
        sys.exit(130)
    except click.exceptions.ClickException as exc:
        exc.show()
        sys.exit(1 if exc.exit_code == 2 else exc.exit_code)
    except GitorchError as exc:
        _error(str(exc))
        sys.exit(1)
    except KeyboardInterrupt:
        console.error("interrupted")
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)
