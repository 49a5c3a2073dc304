#!/usr/bin/env python3
"""gitorch node agent and pod supervisor: the kubelet of gitorch, in one stdlib-only file.

The controller ships this file to every node and runs

    /usr/bin/python3 agent-<sha>.py VERB [--root DIR]      (JSON request on stdin)

It prints exactly one JSON document on stdout, ``{"ok": true, ...}`` or
``{"ok": false, "error": "one line"}``, and exits 0; exit status 1 means the request itself
was broken (bad JSON, unknown verb, wrong types). Empty stdin is the request ``{}``.
All state lives under ``--root`` (default /var/lib/gitorch). Python 3.9+, stdlib only.

Verbs (request keys -> response keys besides ``ok``):

- ``facts``  {"refresh": bool} -> hostname, os, kernel, arch, goos, goarch, bootId, cpus (honours
  affinity and cgroup CPU quota; float if fractional), cpuMillis, cpusOnline,
  memory{totalBytes, availableBytes, limitBytes}, disk{path, totalBytes, freeBytes} of /,
  stateDisk{...} of the root, python, runtimes ["process", "podman"?, "docker"?],
  runtimeDetails{podman|docker: {available, path, message}}, cgroup{version v1|v2|none,
  memory, cpu (writable), message}, limits (supported|unsupported), volumeMounts
  (bind|unsupported), podNetwork ("bridge" once a pod network is set up, else "host"),
  services ("nftables", or "unavailable: <why>"), agentVersion, agentSha,
  supervisor{running, pid, version, sha}, pods{"namespace/name": {phase, ready, restarts}}.
  Runtime and mount checks are cached in the root for 5 minutes; ``refresh`` re-checks.
  A running supervisor also publishes this answer in facts.json (every 2 s, and when its
  pods' status changes; see publish_facts), which `gitorch nodes` reads without Python.
- ``sync``  {"pods": [PodSpec, ...], "network": {podCIDR, gateway, routes: [{cidr, via}],
  clusterCIDR}, "dns": {nameservers, domain, options}, "services": [{name, protocol,
  clusterIP, port, nodePort, endpoints: [{ip, port}]}], "serviceCIDR",
  "ackTimeoutSeconds": 2} -> generation, changed, acked,
  services{ok, changed, message, count, hash, repaired} (with "services": the nftables
  table ``ip gitorch`` was rebuilt in one transaction unless the same table is already in
  place and lists as it did when built; ``repaired`` says why a hand-edited one was rebuilt),
  observedGeneration, stale, supervisor{...}, pods[PodStatus]. The complete desired set;
  a pod is its (namespace, name), unique on a node: one name may run in several
  namespaces (a namespace is a DNS label, default "default"). An unchanged set keeps its
  generation and restarts nothing. Starts the supervisor if needed (and replaces one running an older agent file:
  pods stay up and are re-adopted), then waits for it to acknowledge the generation.
  With "dns", each pod (by its dnsPolicy) gets its own /etc/resolv.conf, bind-mounted in
  its private mount namespace: the nameservers (resolv.conf has no port: the cluster DNS
  must answer on 53), search <ns>.svc.<domain> svc.<domain> <domain>, the options. With
  "services", the table also masquerades pod traffic leaving for outside clusterCIDR.
  With "fence": {term, holder, lease} (a controller's leadership term: a fencing token;
  lease names the state store whose terms it counts), a term lower than the highest this
  node has seen of the same lease is refused before anything is done, with
  ``reason: "StaleTerm"``, term, seenTerm and holder in the answer; an equal or higher one
  is accepted, a higher one (or one of another lease: a new store took the node over)
  remembered (fence.json, written before acting). A sync without a fence (a one-shot CLI
  run) is accepted. Instead of "services", "servicesDelta": {base, digest, set: [entry],
  remove: [name]} changes the table this node holds (services-table.json) by entry name:
  a node that does not hold ``base`` (or whose result is not ``digest``) answers
  services{ok: false, reason: "ServicesBaseMismatch", tableDigest} and the controller sends
  the whole table. services{} always carries the ``tableDigest`` the node now holds.
  With "policies" (gitorch.reconcile.policies' entries for this node's pods, ``ip`` null for
  a pod not started yet), the table ``ip gitorch-policy`` enforces NetworkPolicy on the forward
  hook (and pods' egress to the node itself on input), each pod's chains on the address the
  supervisor gives it (bound before the pod's network namespace exists; policy-bindings.json):
  policies{ok, changed, message, count, hash, repaired, programmed}; ok false with programmed
  true when same-node traffic bypasses it.
- ``status``  {"verify": bool, "since": etag} -> generation, observedGeneration, stale (no supervisor
  running: the pods are as last seen), supervisor{...}, fence{term, holder, lease} (or null),
  pods[PodStatus] (sorted by namespace, name), metrics (the supervisor's latest sample, every
  "metrics": {"intervalSeconds"} of the last sync, default 15: {timestamp, intervalSeconds,
  cgroup (v1|v2|none), node{cpuMillis, memoryBytes} from /proc/stat and /proc/meminfo,
  pods[{namespace, name, containers[{name, cpuMillis, memoryBytes, lastOOMKilledAt?}]}]}: CPU in millicores over
  the last interval (or since the container started) from cpu.stat usage_usec (v2) or
  cpuacct.usage (v1), memory as the kubelet's working set (usage minus inactive_file); only
  containers with a cgroup of their own, i.e. process-runtime ones; null before the first
  sample or with no supervisor running), etag. When ``since`` equals the etag of the
  document now: only {unchanged: true, etag}.
  With ``verify``, also servicesDrift{checked, missing, extra, message, tableMissing}: the
  live nftables table against the one programmed last (rules as "chain: rule"), and
  policiesDrift{checked, missing, extra, message} likewise for the policy table.
- ``logs``  {"pod", "namespace" (optional if the name is unambiguous on the node),
  "container" (optional if the pod has one), "tail" (lines, -1 = all), "previous",
  "follow", "timestamps"} -> pod, namespace, container, previous, log. ``previous`` is the log of the
  container's previous instance, or the part rotated out at 10 MiB. With ``follow`` the
  request must be one line and the output is raw log text, not JSON, streamed until stdin
  closes or the pod's logs disappear; errors found before streaming are one JSON document.
  With ``timestamps`` each line starts with its time as the kubelet prints it
  (``2026-12-07T20:00:01.123456789Z line``): the time the supervisor saw it written, from the
  log's side index (see LogIndexer: at most one supervisor pass late), for followed lines
  the time they were read; the answer also has timestamps: true and leftOut (oldest lines
  left out to keep the answer within 20 MiB).
- ``stop-supervisor``  {} -> stopped, pid. Pods keep running.
- ``watch``  no request; streams one JSON line per event until stdin closes (the SSH
  channel goes away): ``{"ok": true, "event": "status", "digest", "writtenAt", "pods":
  [{name, namespace, phase, ready, podIP, terminating}]}`` at once and whenever what
  endpoints depend on changes in status.json (a pod's phase, readiness or IP, a pod added
  or gone; ``writtenAt`` is the file's mtime in epoch seconds), and ``{"ok": true, "event":
  "heartbeat", "digest"}`` every 10 s so a dead stream is noticed. It polls the file's
  stat every 50 ms and never takes the agent lock. ``serve`` refuses it (own session).
- ``serve``  one request per stdin line (``{"verb": ..., ...}``), one JSON line each, until
  stdin closes: how the controller calls every verb but ``watch``, ``logs`` with follow
  and ``supervise`` over one long-lived SSH channel.
- ``supervise``  internal: the long-running supervisor, started detached by ``sync``.

PodStatus: name, namespace, hash, desiredHash (a pending replacement's hash; null while a
removed pod terminates), phase (Pending|Running|Succeeded|Failed), reason (InvalidPodSpec,
NoContainerRuntime, InitContainerFailed), message, ready, restarts, startedAt, terminating,
podIP (own network namespace ``gitorch-<key>`` on bridge gitorch0; null for host network),
containers[...], initContainers[...]. Container: name, state (waiting|running|terminated),
reason (ContainerCreating, PodInitializing, CrashLoopBackOff, VolumeSetupFailed,
NoContainerRuntime, Completed, Error, OOMKilled, StartError, Unknown), message, ready,
started, restartCount, pid, startedAt, finishedAt, exitCode, signal, lastExitCode,
lastState{exitCode, signal, reason, message, startedAt, finishedAt}, limits
(applied|unsupported|none), runtime (process|podman|docker), image.

Root layout: desired.json (the pods' specs with their secret values taken out: each pod's
are in its own pods/<key>/secrets.json, 0600 in a 0700 folder, written by sync and removed
with the pod from the desired set), state.json (pids for re-adoption),
status.json, metrics.json, ack.json, fence.json, supervisor.{pid,lock,log}, node-checks.json, and
pods/<key>/{volumes/<volume>/, logs/<container>.log[.1][.times]} (.times: the log's
side index of (offset, time) entries, at most 4096 a log). A pod's key names its folder,
network namespace, veth and cgroup: "<namespace>_<name>", hashed past 100 characters (see
pod_key). Pods adopted from an agent that keyed them by bare name keep that key (state.json
says so) until they are replaced: an upgrade restarts nothing.

Secrets (env values and volume files marked secret) are masked in supervisor.log and in
every message/error the agent prints or the supervisor writes; a container's own log is
its own output and is returned as written. Outside the pod's folder, its secret env values
are still in its processes' environment (/proc/PID/environ) and, for image containers, in
the container runtime's own record of the container: root on the node can read those.

Environment read by the supervisor: GITORCH_BACKOFF_BASE (seconds, default 10; the cap,
30x, and the reset window, 60x, scale with it), GITORCH_CONTAINER_RUNTIMES (comma list
to consider, default "podman,docker"; empty means none).
"""

from __future__ import annotations

# Only what every verb needs is imported here; http.client, ssl, socket, shlex, platform
# and traceback are imported where used, because every controller call pays start-up time.
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import pwd
import re
import select
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

AGENT_VERSION = "0.1.0"

DEFAULT_ROOT = "/var/lib/gitorch"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LOG_MAX_BYTES = 10 * 1024 * 1024
TICK_SECONDS = 0.1  # while something is being stopped
IDLE_SECONDS = 1.0  # otherwise at most this long between passes (signals wake us sooner)
CHECK_CACHE_SECONDS = 300.0
RUNTIME_CHECK_TIMEOUT = 5.0
MASK = "******"
CONFIG_RETRY_SECONDS = 10.0  # a container refused for its configuration is tried again after this

Json = dict[str, Any]

# ---------------------------------------------------------------------------------------
# Protocol: request parsing, one JSON document out, secret masking
# ---------------------------------------------------------------------------------------


class RequestError(Exception):
    """The request itself is broken: answered with ok=false and exit status 1."""


class AgentError(Exception):
    """The request was fine but could not be carried out: ok=false, exit status 0."""

    reason = ""  # a machine-readable "reason" in the answer, for errors callers act on

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details = details  # more keys of the answer, with the reason

    def answer(self) -> Json:
        doc: Json = {"ok": False, "error": one_line(str(self))}
        if self.reason:
            doc.update(self.details, reason=self.reason)
        return doc


class StaleTerm(AgentError):
    """A controller's sync carried an older leadership term than one this node has seen."""

    reason = "StaleTerm"

    def __init__(self, term: int, seen: int, holder: str) -> None:
        super().__init__(f"stale controller term {term} (node has seen {seen}, held by {holder})",
                         term=term, seenTerm=seen, holder=holder)


# Free-text fields of documents the agent prints or the supervisor writes: the only places
# where a secret could surface (probe output, exception text). Identifiers such as pod names
# and timestamps are left alone, so a short secret cannot mangle what the controller parses.
TEXT_KEYS = frozenset({"message", "error"})


class Redactor:
    """Masks known secret values in log lines and in the free-text fields of documents."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        self.update(secrets)

    def update(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret containing another is masked whole.
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def doc(self, obj: Any) -> Any:
        """A copy of a JSON-like value with its TEXT_KEYS strings masked."""
        if isinstance(obj, dict):
            return {k: self(v) if k in TEXT_KEYS and isinstance(v, str) else self.doc(v)
                    for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.doc(v) for v in obj]
        return obj


def secret_values(raw_pods: Iterable[Any]) -> list[str]:
    """Every value marked secret in raw pod specs (env values and secret volume files)."""
    found: list[str] = []
    for pod in raw_pods:
        if not isinstance(pod, dict):
            continue
        for key in ("containers", "initContainers"):
            for ctr in pod.get(key) or []:
                if not isinstance(ctr, dict):
                    continue
                for env in ctr.get("env") or []:
                    if isinstance(env, dict) and env.get("secret") and env.get("value"):
                        found.append(str(env["value"]))
        for vol in pod.get("volumes") or []:
            if isinstance(vol, dict) and vol.get("secret") and isinstance(vol.get("files"), dict):
                found.extend(str(v) for v in vol["files"].values() if v)
    return found


# Each pod's secret values live only in its own folder, pods/<key>/secrets.json (0600 in a
# 0700 folder): desired.json keeps the specs with those values taken out (null), so no file
# holds the secrets of several pods for any one of them (or anything else) to read.
SECRETS_FILE = "secrets.json"


def _secret_places(pod: Json) -> Iterator[tuple[str, dict[str, Any], str]]:
    """(place, the dict holding the value, its key) of every secret value of a raw pod spec."""
    for group in ("containers", "initContainers"):
        for i, ctr in enumerate(pod.get(group) or []):
            for j, env in enumerate(ctr.get("env") or [] if isinstance(ctr, dict) else []):
                if isinstance(env, dict) and env.get("secret"):
                    yield f"{group}/{i}/env/{j}", env, "value"
    for i, vol in enumerate(pod.get("volumes") or []):
        if isinstance(vol, dict) and vol.get("secret") and isinstance(vol.get("files"), dict):
            for name in sorted(vol["files"]):
                yield f"volumes/{i}/files/{name}", vol["files"], name


def split_secrets(pod: Json) -> tuple[Json, dict[str, str], bool]:
    """(the spec with its secret values nulled, the values by place, whether it has any
    secret place). A spec that already went through here has places and no values."""
    out = json.loads(json.dumps(pod))
    values: dict[str, str] = {}
    places = False
    for place, holder, key in _secret_places(out):
        places = True
        if holder.get(key) is not None:
            values[place] = str(holder[key])
        holder[key] = None
    return out, values, places


def merge_secrets(pod: Json, values: dict[str, str]) -> Json:
    """The spec with its secret values put back; "secretsMissing" says what could not be."""
    out = json.loads(json.dumps(pod))
    missing = 0
    for place, holder, key in _secret_places(out):
        if holder.get(key) is None:
            if place in values:
                holder[key] = values[place]
            else:
                missing += 1
    if missing:
        out["secretsMissing"] = f"{missing} secret value(s) missing on this node ({SECRETS_FILE})"
    return out


def secrets_path(paths: Paths, pod: Json) -> str:
    namespace, name = pod_id(pod)
    return os.path.join(paths.pod_dir(pod_key(namespace, name)), SECRETS_FILE)


def read_secrets(paths: Paths, pod: Json) -> dict[str, str]:
    """A pod's secret values as sync stored them for its hash (empty if none or another)."""
    doc = read_json(secrets_path(paths, pod), {})
    if not isinstance(doc, dict) or doc.get("hash") != str(pod.get("hash") or ""):
        return {}
    values = doc.get("values")
    return {str(k): str(v) for k, v in values.items()} if isinstance(values, dict) else {}


def with_secrets(paths: Paths, pod: Json) -> Json:
    """A spec from desired.json with its secret values back from the pod's own file."""
    if not any(True for _ in _secret_places(pod)):
        return pod
    return merge_secrets(pod, read_secrets(paths, pod))


def emit(doc: Json, redact: Redactor | None = None) -> None:
    if redact is not None:
        doc = redact.doc(doc)
    sys.stdout.write(json.dumps(doc, sort_keys=True) + "\n")
    sys.stdout.flush()


def one_line(text: str) -> str:
    return " ".join(text.split())


def read_request(verb: str) -> Json:
    """Read the JSON request from stdin (empty stdin means {})."""
    if verb in ("supervise", "serve", "watch") or sys.stdin is None or sys.stdin.isatty():
        return {}
    if verb == "logs":
        # ``logs --follow`` keeps stdin open to signal the end, so its request is one line.
        text = sys.stdin.readline()
        try:
            return _parse_request(text)
        except RequestError:
            text += sys.stdin.read()
    else:
        text = sys.stdin.read()
    return _parse_request(text)


def _parse_request(text: str) -> Json:
    if not text.strip():
        return {}
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise RequestError(f"request is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise RequestError("request must be a JSON object")
    return doc


def parse_argv(argv: list[str]) -> tuple[str, str]:
    """(verb, root) from ``VERB [--root DIR]``."""
    usage = f"usage: agent.py VERB [--root DIR]; verbs: {', '.join(sorted(VERBS))}"
    verb: str | None = None
    root = DEFAULT_ROOT
    args = iter(argv)
    for arg in args:
        if arg == "--root":
            value = next(args, None)
            if not value:
                raise RequestError("--root needs a directory")
            root = value
        elif arg.startswith("--root="):
            root = arg.split("=", 1)[1]
        elif arg.startswith("-"):
            raise RequestError(f"unknown option {arg}; {usage}")
        elif verb is None:
            verb = arg
        else:
            raise RequestError(f"unexpected argument {arg!r}; {usage}")
    if verb is None:
        raise RequestError(usage)
    if verb not in VERBS:
        raise RequestError(f"unknown verb {verb!r}; {usage}")
    return verb, root


def main(argv: list[str] | None = None) -> int:
    try:
        verb, root = parse_argv(sys.argv[1:] if argv is None else argv)
        request = read_request(verb)
    except RequestError as exc:
        emit({"ok": False, "error": one_line(str(exc))})
        return 1
    paths = Paths(root)
    redact = Redactor()
    try:
        os.makedirs(paths.root, mode=0o700, exist_ok=True)
        return VERBS[verb](paths, request, redact)
    except RequestError as exc:
        emit({"ok": False, "error": one_line(str(exc))}, redact)
        return 1
    except AgentError as exc:
        emit(exc.answer(), redact)
        return 0
    except Exception as exc:  # a bug must still answer in protocol, never a traceback
        emit({"ok": False, "error": one_line(f"internal error: {type(exc).__name__}: {exc}")},
             redact)
        return 0


# ---------------------------------------------------------------------------------------
# Files and paths
# ---------------------------------------------------------------------------------------


class Paths:
    """Where everything of one agent root lives."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.desired = os.path.join(self.root, "desired.json")
        self.state = os.path.join(self.root, "state.json")
        self.status = os.path.join(self.root, "status.json")
        self.ack = os.path.join(self.root, "ack.json")
        self.pidfile = os.path.join(self.root, "supervisor.pid")
        self.lock = os.path.join(self.root, "supervisor.lock")
        self.agent_lock = os.path.join(self.root, "agent.lock")
        self.log = os.path.join(self.root, "supervisor.log")
        self.checks = os.path.join(self.root, "node-checks.json")
        self.services = os.path.join(self.root, "services.json")
        self.services_table = os.path.join(self.root, "services-table.json")
        self.policies = os.path.join(self.root, "policies.json")
        self.policy_bindings = os.path.join(self.root, "policy-bindings.json")
        self.policy_lock = os.path.join(self.root, "policy.lock")
        self.announce = os.path.join(self.root, "announce.json")
        self.fence = os.path.join(self.root, "fence.json")
        self.metrics = os.path.join(self.root, "metrics.json")
        self.facts = os.path.join(self.root, "facts.json")
        self.pods = os.path.join(self.root, "pods")

    # ``key`` is a pod's pod_key (or, for a pod adopted from an agent before namespaces
    # were part of its identity, its bare name).
    def pod_dir(self, key: str) -> str:
        return os.path.join(self.pods, key)

    def volume_dir(self, key: str, volume: str) -> str:
        return os.path.join(self.pods, key, "volumes", volume)

    def exit_file(self, key: str, container: str) -> str:
        return os.path.join(self.pods, key, "logs", f"{container}.exit")

    def log_file(self, key: str, container: str, previous: bool = False) -> str:
        path = os.path.join(self.pods, key, "logs", f"{container}.log")
        return path + ".1" if previous else path

    @property
    def instance_tag(self) -> str:
        """Suffix that keeps several roots on one machine (tests) from sharing cgroups."""
        if self.root == DEFAULT_ROOT:
            return ""
        return "-" + hashlib.sha256(self.root.encode()).hexdigest()[:8]


def atomic_write(path: str, data: str, mode: int = 0o600, sync: bool = False) -> None:
    tmp = f"{path}.tmp.{os.getpid()}.{threading.get_ident()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data.encode())
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_json(path: str, default: Any) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return default


def read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def copytruncate(path: str, max_bytes: int) -> None:
    """Rotate a log that its writers keep open with O_APPEND: copy to .1, then truncate.

    Renaming would leave the writer appending to the old file; a few lines written between
    the copy and the truncate may be lost, the usual logrotate trade-off.
    """
    try:
        if os.path.getsize(path) <= max_bytes:
            return
        shutil.copyfile(path, path + ".1")
        os.truncate(path, 0)
    except OSError:
        pass


# ---------------------------------------------------------------------------------------
# Log times: a side index of (offset, time) beside each container log
# ---------------------------------------------------------------------------------------
#
# Containers write straight into their log file (no pipe between them and it, so they survive
# the supervisor), so no line carries the time it was written. The supervisor notes, on each
# pass where a running container's log grew, the log's size and mtime (the time of its latest
# write) in <log>.times: 16 bytes an entry, little-endian offset and nanoseconds since the
# epoch. A line's time is that of the first entry whose offset covers the line's end, an
# upper bound off by at most one pass (IDLE_SECONDS); bytes no entry covers yet get the log's
# mtime. The index moves with its log (restart: .log.1.times; size rotation: likewise, the
# new log starting a new index) and goes with the pod's folder.

LOG_INDEX_SUFFIX = ".times"
LOG_INDEX_ENTRIES = 4096  # per log (64 KiB): when full, the older half is thinned to half
LOG_INDEX_ENTRY = 16
LOG_INDEX_SECONDS = 0.25  # at most this often (passes come every 0.1 s while a pod stops)
STAMPED_REPLY_MAX_BYTES = 2 * LOG_MAX_BYTES  # a stamped log answer; the oldest lines beyond are left out


def read_log_index(path: str) -> list[tuple[int, int]]:
    """The (offset, ns) entries of a log's index (path: the log), in order; [] if none."""
    import struct

    try:
        with open(path + LOG_INDEX_SUFFIX, "rb") as fh:
            data = fh.read(2 * LOG_INDEX_ENTRIES * LOG_INDEX_ENTRY)
    except OSError:
        return []
    usable = len(data) - len(data) % LOG_INDEX_ENTRY  # an append being written: left for next time
    return [(int(o), int(t)) for o, t in struct.iter_unpack("<QQ", data[:usable])]


def write_log_index(path: str, entries: list[tuple[int, int]]) -> None:
    import struct

    atomic_write_bytes(path + LOG_INDEX_SUFFIX, b"".join(struct.pack("<QQ", o, t) for o, t in entries))


def atomic_write_bytes(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp.{os.getpid()}.{threading.get_ident()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class LogIndexer:
    """The supervisor's side of the log times: one entry per log per pass where it grew."""

    def __init__(self) -> None:
        self.marks: dict[str, tuple[int, int, int]] = {}  # log -> (last offset, its ns, entries)

    def note(self, log: str) -> None:
        import struct

        try:
            st = os.stat(log)
        except OSError:
            return
        mark = self.marks.get(log)
        if mark is None:  # first look (or after a supervisor restart): the index on disk goes on
            entries = read_log_index(log)
            mark = (entries[-1][0], entries[-1][1], len(entries)) if entries else (0, 0, 0)
        offset, ns, count = mark
        if st.st_size < offset:  # cut short by someone else: the index no longer fits the log
            self.forget(log, drop=True)
            offset, ns, count = 0, 0, 0
        if st.st_size == offset:
            self.marks[log] = (offset, ns, count)
            return
        ns = max(ns, st.st_mtime_ns)  # the latest write: an upper bound of every byte's time
        if count >= LOG_INDEX_ENTRIES:
            entries = read_log_index(log)
            half = len(entries) // 2
            # The later entry of each older pair stays: still an upper bound, only coarser.
            entries = entries[1:half:2] + entries[half:] + [(st.st_size, ns)]
            write_log_index(log, entries)
            count = len(entries)
        else:
            fd = os.open(log + LOG_INDEX_SUFFIX, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, struct.pack("<QQ", st.st_size, ns))
            finally:
                os.close(fd)
            count += 1
        self.marks[log] = (st.st_size, ns, count)

    def forget(self, log: str, drop: bool = False) -> None:
        self.marks.pop(log, None)
        if drop:
            with contextlib.suppress(OSError):
                os.unlink(log + LOG_INDEX_SUFFIX)

    def keep_only(self, logs: set[str]) -> None:
        """Drop what is remembered of logs no longer noted (their pods went)."""
        for log in [k for k in self.marks if k not in logs]:
            del self.marks[log]

    def previous(self, log: str) -> None:
        """A container restarts: its log (and index) become .1, the next instance's start empty.
        Orders matter to a reader: a .1 never has another log's index."""
        with contextlib.suppress(OSError):
            os.unlink(log + ".1" + LOG_INDEX_SUFFIX)
        os.replace(log, log + ".1")
        with contextlib.suppress(OSError):
            os.replace(log + LOG_INDEX_SUFFIX, log + ".1" + LOG_INDEX_SUFFIX)
        self.forget(log)

    def rotate(self, log: str, max_bytes: int) -> None:
        """copytruncate with the index: entries for everything before the copy, moved to .1's."""
        try:
            if os.path.getsize(log) <= max_bytes:
                return
            self.note(log)
            with contextlib.suppress(OSError):
                os.unlink(log + ".1" + LOG_INDEX_SUFFIX)
            shutil.copyfile(log, log + ".1")
            with contextlib.suppress(OSError):
                os.replace(log + LOG_INDEX_SUFFIX, log + ".1" + LOG_INDEX_SUFFIX)
            os.truncate(log, 0)  # after the index went: a reader never sees the old one on the new log
        except OSError:
            pass
        self.forget(log)


def rfc3339nano(ns: int) -> bytes:
    """As the kubelet prints a log line's time: UTC, nine fraction digits."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z").encode()


def stamp_lines(data: bytes, start: int, entries: list[tuple[int, int]], bound_ns: int,
                budget: int = STAMPED_REPLY_MAX_BYTES) -> tuple[bytes, int]:
    """Each line of ``data`` (read from offset ``start`` of its log) prefixed with its time: the
    first index entry's at or past the line's end, at most ``bound_ns`` (the log's mtime after
    the read). The newest lines that fit in ``budget`` bytes; also how many were left out."""
    import bisect

    offsets = [o for o, _ in entries]
    pieces: list[bytes] = []
    size = 0
    left_out = 0
    end = len(data)
    last_ns, last_prefix = -1, b""
    while end > 0:
        cut = data.rfind(b"\n", 0, end - 1) + 1  # this line's first byte
        line = data[cut:end]
        if size + len(line) + 31 > budget:  # 31: a stamp and its space
            left_out = data.count(b"\n", 0, end) + (not data.endswith(b"\n", 0, end))
            break
        i = bisect.bisect_left(offsets, start + end)
        ns = min(entries[i][1], bound_ns) if i < len(entries) else bound_ns
        if ns != last_ns:
            last_ns, last_prefix = ns, rfc3339nano(ns) + b" "
        pieces.append(last_prefix + line)
        size += len(line) + len(last_prefix)
        end = cut
    pieces.reverse()
    return b"".join(pieces), left_out


def since_cut(data: bytes, start: int, entries: list[tuple[int, int]], bound_ns: int, since_ns: int) -> int:
    """Where in ``data`` (read from offset ``start`` of its log) the first line stamped at or
    after ``since_ns`` begins (stamps as `stamp_lines` gives them: they only grow with the
    offset); ``len(data)`` when there is none."""
    import bisect

    i = bisect.bisect_left([t for _, t in entries], since_ns)  # the first entry at or after it
    if i == len(entries) and bound_ns < since_ns:
        return len(data)  # even the lines no entry covers yet are older
    boundary = entries[i - 1][0] - start if i > 0 else 0  # lines ending at or before it are older
    if boundary <= 0:
        return 0
    if boundary >= len(data):
        return len(data)
    return data.rfind(b"\n", 0, boundary) + 1  # the line holding byte `boundary` starts there


def select_lines(data: bytes, start: int, tail: int, since_ns: int | None, entries: list[tuple[int, int]],
                 bound_ns: int) -> tuple[int, bytes]:
    """The lines of ``data`` written at or after ``since_ns`` (all when None), then the last
    ``tail`` of them (all when < 0), with their new offset in the log."""
    if since_ns is not None:
        cut = since_cut(data, start, entries, bound_ns, since_ns)
        start, data = start + cut, data[cut:]
    if tail >= 0:
        lines = data.splitlines(keepends=True)
        kept = b"".join(lines[-tail:]) if tail else b""
        start, data = start + len(data) - len(kept), kept
    return start, data


@contextlib.contextmanager
def flocked(path: str) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def lock_held(path: str) -> bool:
    """True when some process holds the flock on path (the supervisor's liveness lock)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


_OWN_SHA: str | None = None


def own_sha() -> str:
    global _OWN_SHA
    if _OWN_SHA is None:
        try:
            with open(os.path.abspath(__file__), "rb") as fh:
                _OWN_SHA = hashlib.sha256(fh.read()).hexdigest()[:12]
        except OSError:
            _OWN_SHA = "unknown"
    return _OWN_SHA


# ---------------------------------------------------------------------------------------
# /proc: processes, start times, process groups
# ---------------------------------------------------------------------------------------


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, process group, start time in clock ticks) of a process, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read().decode(errors="replace")
        # comm may contain spaces and parentheses; fields resume after the last ')'.
        rest = data[data.rindex(")") + 2:].split()
        return rest[0], int(rest[2]), int(rest[19])
    except (OSError, ValueError, IndexError):
        return None


def process_alive(pid: int, start: int | None) -> bool:
    """Alive, not a zombie, and (when known) the same process, not a reused pid."""
    stat = proc_stat(pid)
    if stat is None or stat[0] in ("Z", "X", "x"):
        return False
    return start is None or stat[2] == start


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in a process group."""
    members: list[int] = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return members
    for name in names:
        if not name.isdigit():
            continue
        stat = proc_stat(int(name))
        if stat is not None and stat[1] == pgid and stat[0] not in ("Z", "X", "x"):
            members.append(int(name))
    return members


def is_supervisor_pid(pid: int, root: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().decode(errors="replace").split("\0")
    except OSError:
        return False
    return "supervise" in argv and root in argv


# ---------------------------------------------------------------------------------------
# Facts: what this node is and can do
# ---------------------------------------------------------------------------------------


def os_pretty_name() -> str:
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        text = read_text(path)
        if text is None:
            continue
        for line in text.splitlines():
            if line.startswith("PRETTY_NAME="):
                value = line.split("=", 1)[1].strip()
                if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                    value = value[1:-1]
                return value.replace('\\"', '"')
    return os.uname().sysname


def meminfo() -> dict[str, int]:
    values: dict[str, int] = {}
    for line in (read_text("/proc/meminfo") or "").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            scale = 1024 if len(parts) > 2 and parts[2] == "kB" else 1
            values[parts[0].rstrip(":")] = int(parts[1]) * scale
    return values


def own_cgroups(pid: str = "self") -> dict[str, str]:
    """Controller -> cgroup path of a process; key "" is the v2 unified hierarchy."""
    paths: dict[str, str] = {}
    for line in (read_text(f"/proc/{pid}/cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[1] == "":
            paths[""] = parts[2]
        for ctrl in parts[1].split(","):
            if ctrl:
                paths[ctrl] = parts[2]
    return paths


def cgroup_mounts() -> list[tuple[str, str, list[str]]]:
    """(mount point, fstype, options) of every cgroup and cgroup2 mount."""
    found: list[tuple[str, str, list[str]]] = []
    for line in (read_text("/proc/self/mounts") or "").splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] in ("cgroup", "cgroup2"):
            found.append((parts[1], parts[2], parts[3].split(",")))
    return found


def runtime_cgroup_dirs(runtime: str, name: str) -> list[str]:
    """The cgroup directories podman put a running container in (memory and CPU accounting,
    each hierarchy's), found with `podman inspect`; [] for docker or while it is not there."""
    binary = shutil.which(runtime, path=DEFAULT_PATH)
    if runtime != "podman" or binary is None:
        return []
    try:
        proc = subprocess.run([binary, "inspect", *runtime_flags(runtime), "--format", "{{.State.CgroupPath}}",
                               "--", name], capture_output=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    path = proc.stdout.decode(errors="replace").strip() if proc.returncode == 0 else ""
    if not path.startswith("/") or ".." in path.split("/"):
        return []
    dirs = []
    for mount, fstype, options in cgroup_mounts():
        if (fstype == "cgroup2" and mount == "/sys/fs/cgroup") or (
                fstype == "cgroup" and ("memory" in options or "cpuacct" in options)):
            d = os.path.join(mount, path.lstrip("/"))
            if os.path.isdir(d):
                dirs.append(d)
    return dirs


def _ancestors(mount: str, path: str) -> list[str]:
    """The cgroup dir of path and each ancestor up to the mount point, innermost first."""
    dirs = []
    parts = [p for p in path.split("/") if p]
    while True:
        dirs.append(os.path.join(mount, *parts))
        if not parts:
            return dirs
        parts.pop()


def effective_cpus() -> tuple[float, int]:
    """(usable CPUs honouring affinity and any cgroup CPU quota, CPUs online)."""
    online = os.cpu_count() or 1
    try:
        usable = float(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        usable = float(online)
    own = own_cgroups()
    for mount, fstype, opts in cgroup_mounts():
        if fstype == "cgroup2" and "" in own:
            for d in _ancestors(mount, own[""]):
                parts = (read_text(os.path.join(d, "cpu.max")) or "").split()
                if len(parts) == 2 and parts[0] != "max":
                    usable = min(usable, int(parts[0]) / max(1, int(parts[1])))
        elif fstype == "cgroup" and "cpu" in opts and "cpu" in own:
            for d in _ancestors(mount, own["cpu"]):
                quota = (read_text(os.path.join(d, "cpu.cfs_quota_us")) or "").strip()
                period = (read_text(os.path.join(d, "cpu.cfs_period_us")) or "").strip()
                if quota.lstrip("-").isdigit() and period.isdigit() and int(quota) > 0:
                    usable = min(usable, int(quota) / max(1, int(period)))
    return round(usable, 3), online


def cgroup_memory_limit() -> int | None:
    own = own_cgroups()
    limit: int | None = None
    for mount, fstype, opts in cgroup_mounts():
        if fstype == "cgroup2" and "" in own:
            files = [os.path.join(d, "memory.max") for d in _ancestors(mount, own[""])]
        elif fstype == "cgroup" and "memory" in opts and "memory" in own:
            files = [os.path.join(d, "memory.limit_in_bytes")
                     for d in _ancestors(mount, own["memory"])]
        else:
            continue
        for path in files:
            value = (read_text(path) or "").strip()
            # v1 reports "no limit" as a huge page-rounded number.
            if value.isdigit() and int(value) < (1 << 60):
                limit = int(value) if limit is None else min(limit, int(value))
    return limit


def disk(path: str) -> Json:
    try:
        usage = shutil.disk_usage(path)
    except OSError:
        return {"path": path, "totalBytes": None, "freeBytes": None}
    return {"path": path, "totalBytes": usage.total, "freeBytes": usage.free}


def wanted_runtimes() -> list[str]:
    raw = os.environ.get("GITORCH_CONTAINER_RUNTIMES", "podman,docker")
    return [r.strip() for r in raw.split(",") if r.strip() in ("podman", "docker")]


def runtime_flags(name: str) -> list[str]:
    """podman's global flags, given after the subcommand (podman accepts them anywhere).

    runc, not podman's default crun, is what runs containers where the OCI runtime has to
    live with cgroup v1 and a nested PID namespace (lab nodes, older hosts).
    """
    return ["--runtime", "runc"] if name == "podman" and shutil.which("runc") else []


def _runtime_check(name: str) -> Json:
    path = shutil.which(name)
    if path is None:
        return {"available": False, "path": None, "message": f"{name} not installed"}
    argv = [path, "info", *runtime_flags(name)]
    argv += ["--format", "{{.Host.Arch}}" if name == "podman" else "{{.ServerVersion}}"]
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, timeout=RUNTIME_CHECK_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"available": False, "path": path, "message": one_line(f"{name} info: {exc}")}
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        tail = err[-1] if err else f"exit status {proc.returncode}"
        return {"available": False, "path": path, "message": one_line(f"{name} info: {tail}")}
    return {"available": True, "path": path, "message": ""}


def _mount_check(paths: Paths) -> tuple[str, str]:
    if os.geteuid() != 0:
        return "unsupported", "not running as root"
    unshare, mount = shutil.which("unshare"), shutil.which("mount")
    if unshare is None or mount is None:
        return "unsupported", "unshare or mount not installed"
    try:
        # A throw-away private mount namespace: bind the root dir onto itself.
        proc = subprocess.run([unshare, "--mount", "--propagation", "private", "--",
                               mount, "--bind", "--", paths.root, paths.root],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "unsupported", one_line(str(exc))
    if proc.returncode != 0:
        return "unsupported", one_line(proc.stderr.decode(errors="replace")) or "unshare failed"
    return "bind", ""


def node_checks(paths: Paths, refresh: bool = False) -> Json:
    """Slow checks (container runtimes, mount namespaces), cached in the root for 5 min."""
    key = ",".join(wanted_runtimes())
    cached = read_json(paths.checks, {})
    if (not refresh and isinstance(cached, dict) and cached.get("key") == key
            and time.time() - float(cached.get("checkedAt", 0)) < CHECK_CACHE_SECONDS):
        return cached
    runtimes = {name: _runtime_check(name) if name in wanted_runtimes() else
                {"available": False, "path": None,
                 "message": "disabled by GITORCH_CONTAINER_RUNTIMES"}
                for name in ("podman", "docker")}
    mounts, message = _mount_check(paths)
    checks = {"key": key, "checkedAt": time.time(), "runtimes": runtimes,
              "volumeMounts": mounts, "volumeMountsMessage": message}
    with contextlib.suppress(OSError):
        atomic_write(paths.checks, json.dumps(checks, sort_keys=True))
    return checks


def image_runtime(checks: Json) -> tuple[str, str] | None:
    """(name, binary) of the container runtime for image containers: podman preferred."""
    for name in ("podman", "docker"):
        info = checks.get("runtimes", {}).get(name, {})
        if info.get("available") and info.get("path"):
            return name, str(info["path"])
    return None


_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "i686": "386", "i386": "386", "armv7l": "arm",
           "armv6l": "arm", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}
"""uname's machine names as Go's GOARCH names, which Kubernetes' kubernetes.io/arch label uses."""


def cmd_facts(paths: Paths, request: Json, redact: Redactor) -> int:
    emit(facts_answer(paths, refresh=bool(request.get("refresh"))), redact)
    return 0


def facts_answer(paths: Paths, refresh: bool = False, cgroups: Cgroups | None = None) -> Json:
    """The `facts` verb's answer: what the verb prints and what the supervisor publishes
    (publish_facts, with the cgroups it detected at start: probing them is half the cost),
    built here only."""
    checks = node_checks(paths, refresh=refresh)
    mem = meminfo()
    cpus, online = effective_cpus()
    cg = cgroups if cgroups is not None else Cgroups.detect(paths)
    status = read_json(paths.status, {})
    pods = {}
    for pod in status.get("pods", []) if isinstance(status, dict) else []:
        if isinstance(pod, dict):
            pods[f"{pod.get('namespace') or 'default'}/{pod.get('name')}"] = {
                "phase": pod.get("phase"), "ready": pod.get("ready"), "restarts": pod.get("restarts")}
    runtimes = ["process"] + [n for n, info in checks["runtimes"].items() if info["available"]]
    uname = os.uname()
    return {
        "ok": True,
        "hostname": uname.nodename,
        "os": os_pretty_name(),
        "kernel": uname.release,
        "arch": uname.machine,
        "goos": sys.platform if sys.platform in ("linux", "darwin", "freebsd") else uname.sysname.lower(),
        "goarch": _GOARCH.get(uname.machine, uname.machine),
        "bootId": (read_text("/proc/sys/kernel/random/boot_id") or "").strip() or None,
        "cpus": int(cpus) if cpus == int(cpus) else cpus,
        "cpuMillis": int(cpus * 1000),
        "cpusOnline": online,
        "memory": {"totalBytes": mem.get("MemTotal"),
                   "availableBytes": mem.get("MemAvailable", mem.get("MemFree")),
                   "limitBytes": cgroup_memory_limit()},
        "disk": disk("/"),
        "stateDisk": disk(paths.root),
        "python": ".".join(str(v) for v in sys.version_info[:3]),
        "runtimes": runtimes,
        "runtimeDetails": checks["runtimes"],
        "cgroup": {"version": cg.version, "memory": cg.writable.get("memory", False),
                   "cpu": cg.writable.get("cpu", False), "message": cg.message},
        "limits": "supported" if cg.usable else "unsupported",
        "volumeMounts": checks["volumeMounts"],
        "podNetwork": "bridge" if pod_network_works(paths) else "host",
        "services": services_fact(paths),
        "agentVersion": AGENT_VERSION,
        "agentSha": own_sha(),
        "supervisor": supervisor_info(paths),
        "pods": pods,
    }


FACTS_PUBLISH_SECONDS = 2.0
"""How often the supervisor refreshes facts.json (also at once when its pods' status changes).
Readers treat a copy older than FACTS_MAX_AGE_SECONDS of nodes/client.py as absent."""


def boottime() -> float:
    """Seconds since boot, as the first field of /proc/uptime counts them (CLOCK_BOOTTIME):
    a reader compares facts.json's time with the node's own clock, read in the same `cat`."""
    return time.clock_gettime(getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC))


def publish_facts(paths: Paths, redact: Redactor, cgroups: Cgroups | None = None) -> None:
    """facts.json: the `facts` answer with the time it was made, so that `gitorch nodes`
    reads it with one `cat` (no Python start on the node) while it is fresh. One line:
    {"at": seconds since boot, "bootId", "sha": this agent's, "facts": answer}."""
    answer = redact.doc(facts_answer(paths, cgroups=cgroups))
    atomic_write(paths.facts, json.dumps({"at": round(boottime(), 3), "bootId": answer.get("bootId"),
                                          "sha": own_sha(), "facts": answer}, sort_keys=True) + "\n",
                 mode=0o600)


# ---------------------------------------------------------------------------------------
# Specs: the PodSpec the controller sends, parsed and checked once
# ---------------------------------------------------------------------------------------


class SpecError(ValueError):
    """A pod spec this agent cannot run; the pod is reported Failed with InvalidPodSpec."""


class SecretsMissing(SpecError):
    """The pod's secret values are not in its folder (removed by hand, or not written yet)."""


SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
RESTART_POLICIES = ("Always", "OnFailure", "Never")
DNS_POLICIES = ("ClusterFirst", "ClusterFirstWithHostNet", "Default", "None")


def safe_name(value: Any, where: str, error: type[Exception] = SpecError) -> str:
    # Names become path components and cgroup names, so they must not escape their dir.
    if not isinstance(value, str) or not SAFE_NAME.match(value):
        raise error(f"{where}: invalid name {value!r} (letters, digits, '.', '_', '-')")
    return value


# A namespace is a DNS label (RFC 1123, as Kubernetes has it): no '_', so "<namespace>_<name>"
# names one pod unambiguously (the kubelet's /var/log/pods uses the same form).
NAMESPACE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
POD_KEY_MAX = 100


def safe_namespace(value: Any, where: str, error: type[Exception] = SpecError) -> str:
    """The pod's namespace ("default" when absent), checked: it becomes part of paths."""
    if value is None or value == "":
        return "default"
    if not isinstance(value, str) or not NAMESPACE.match(value):
        raise error(f"{where}: invalid namespace {value!r} (a DNS label: letters, digits, '-')")
    return value


def pod_key(namespace: str, name: str) -> str:
    """The pod's name on this node's disk and kernel (its folder, network namespace, cgroup):
    "<namespace>_<name>", or, past POD_KEY_MAX characters, its first part and a hash of the
    whole, one character longer than any unhashed key so the two kinds never meet."""
    key = f"{namespace}_{name}"
    if len(key) <= POD_KEY_MAX:
        return key
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:16]
    return f"{key[:POD_KEY_MAX - 16]}-{digest}"


def _number(raw: Any, where: str, default: float, minimum: float = 0.0) -> float:
    if raw is None:
        return default
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise SpecError(f"{where}: must be a number")
    if raw < minimum:
        raise SpecError(f"{where}: must be >= {minimum:g}")
    return float(raw)


def _int_or_none(raw: Any, where: str) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise SpecError(f"{where}: must be a non-negative integer")
    return raw or None


def _strings(raw: Any, where: str) -> tuple[str, ...]:
    """A list of strings that can become a process's arguments (no NUL: exec cannot pass it;
    newlines are fine: `sh -c` scripts have them)."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
        raise SpecError(f"{where}: must be a list of strings")
    for i, text in enumerate(raw):
        if "\0" in text:
            raise SpecError(f"{where}[{i}]: contains a NUL character")
    return tuple(raw)


def _has_control(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def _path(raw: Any, where: str, *, image: bool = False) -> str:
    """An absolute path, without control characters; for a container runtime's ``-v``
    (``image``), also without ':' and ',', which would split it into more options."""
    if not isinstance(raw, str) or not raw.startswith("/"):
        raise SpecError(f"{where}: must be an absolute path")
    if _has_control(raw):
        raise SpecError(f"{where}: contains a control character")
    if image and (":" in raw or "," in raw):
        raise SpecError(f"{where}: {raw!r} contains ':' or ',', which a container runtime "
                        "would read as more mount options")
    return raw


# The OCI / Docker image reference grammar (distribution/reference): [domain/]path[:tag][@digest].
_ALNUM = r"[a-z0-9]+"
_PATH_COMPONENT = rf"{_ALNUM}(?:(?:[._]|__|-+){_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
IMAGE_REFERENCE = re.compile(
    rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*(?::\w[\w.-]{{0,127}})?(?:@{_DIGEST})?",
    re.ASCII)


def image_reference(raw: Any, where: str) -> str:
    """An image reference as the OCI grammar has it, so it can never become an option."""
    if not isinstance(raw, str) or not raw:
        raise SpecError(f"{where}: must be a non-empty string or null")
    if len(raw) > 512 or not IMAGE_REFERENCE.fullmatch(raw):
        raise SpecError(f"{where}: {raw[:100]!r} is not an image reference "
                        "([registry/]name[:tag][@digest])")
    return raw


def _port(raw: Any, where: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= 65535:
        raise SpecError(f"{where}: must be a port number (named ports are resolved upstream)")
    return raw


@dataclass(frozen=True)
class ProbeSpec:
    kind: str  # httpGet | tcpSocket | exec | grpc
    handler: Json
    initial_delay: float
    period: float
    timeout: float
    success_threshold: int
    failure_threshold: int

    @classmethod
    def parse(cls, raw: Any, where: str) -> ProbeSpec | None:
        if raw is None:
            return None
        if not isinstance(raw, dict):
            raise SpecError(f"{where}: must be an object")
        kinds = [k for k in ("httpGet", "tcpSocket", "exec", "grpc") if raw.get(k) is not None]
        if len(kinds) != 1:
            raise SpecError(f"{where}: needs exactly one of httpGet, tcpSocket, exec, grpc")
        kind = kinds[0]
        handler = raw[kind]
        if not isinstance(handler, dict):
            raise SpecError(f"{where}.{kind}: must be an object")
        if kind in ("httpGet", "tcpSocket"):
            _port(handler.get("port"), f"{where}.{kind}.port")
            texts = [handler.get("host"), handler.get("path"), handler.get("scheme")]
            for h in handler.get("httpHeaders") or []:
                if not isinstance(h, dict):
                    raise SpecError(f"{where}.{kind}.httpHeaders: must be objects")
                texts += [h.get("name"), h.get("value")]
            if any(t is not None and (not isinstance(t, (str, int)) or _has_control(str(t)))
                   for t in texts):
                raise SpecError(f"{where}.{kind}: host, path, scheme and headers must be "
                                "strings without control characters")
        elif kind == "grpc":
            _port(handler.get("port"), f"{where}.grpc.port")
            service = handler.get("service", "")
            if not isinstance(service, str) or len(service) > 253 or _has_control(service):
                raise SpecError(f"{where}.grpc.service: must be a name without control characters")
        elif not _strings(handler.get("command"), f"{where}.exec.command"):
            raise SpecError(f"{where}.exec.command: must not be empty")
        return cls(
            kind=kind,
            handler=handler,
            initial_delay=_number(raw.get("initialDelaySeconds"), f"{where}.initialDelaySeconds",
                                  0.0),
            # Sub-second periods are allowed (Kubernetes says >= 1) so tests can be quick.
            period=_number(raw.get("periodSeconds"), f"{where}.periodSeconds", 10.0, 0.05),
            timeout=_number(raw.get("timeoutSeconds"), f"{where}.timeoutSeconds", 1.0, 0.05),
            success_threshold=int(_number(raw.get("successThreshold"),
                                          f"{where}.successThreshold", 1, 1)),
            failure_threshold=int(_number(raw.get("failureThreshold"),
                                          f"{where}.failureThreshold", 3, 1)),
        )


@dataclass(frozen=True)
class EnvVar:
    name: str
    value: str
    secret: bool


@dataclass(frozen=True)
class MountSpec:
    volume: str
    path: str
    read_only: bool
    sub_path: str | None = None  # a path inside the volume, mounted instead of its root


# Linux capabilities by number (linux/capability.h), as Kubernetes names them (without CAP_).
CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
    "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
    "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
    "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF",
    "CHECKPOINT_RESTORE",
)
# What containerd and CRI-O give a container that is not privileged (Kubernetes' default set).
DEFAULT_CAPABILITIES = frozenset({
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE", "NET_RAW",
    "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
})
MAX_ID = 2**31 - 1


def _capability_names(raw: Any, where: str) -> tuple[str, ...]:
    out = []
    for name in _strings(raw, where):
        name = name.upper().removeprefix("CAP_")
        if name != "ALL" and name not in CAPABILITIES:
            raise SpecError(f"{where}: unknown capability {name!r}")
        out.append(name)
    return tuple(out)


def _id(raw: Any, where: str) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= MAX_ID:
        raise SpecError(f"{where}: must be a uid or gid, 0 to {MAX_ID}")
    return raw


@dataclass(frozen=True)
class SecuritySpec:
    """A container's effective securityContext, as the controller resolved it (pod and container
    levels merged). Without one (an image container of the `default` account that sets
    nothing), the runtime's defaults: the image's USER."""

    run_as_user: int | None
    run_as_group: int | None
    account: str | None  # the ServiceAccount whose uid (and gid) it runs as without run_as_user
    run_as_non_root: bool
    groups: tuple[int, ...]
    read_only_root: bool
    privileged: bool
    no_new_privs: bool
    cap_add: tuple[str, ...]
    cap_drop: tuple[str, ...]
    seccomp: str | None  # RuntimeDefault | Unconfined | None (unset: unconfined, as the kubelet)

    @classmethod
    def parse(cls, raw: Any, where: str) -> SecuritySpec | None:
        if raw is None:
            return None
        if not isinstance(raw, dict):
            raise SpecError(f"{where}: must be an object")
        account = raw.get("account")
        if account is not None:
            account = safe_name(account, f"{where}.account")
        caps = raw.get("capabilities") or {}
        if not isinstance(caps, dict):
            raise SpecError(f"{where}.capabilities: must be an object")
        groups = raw.get("groups") or []
        if not isinstance(groups, list):
            raise SpecError(f"{where}.groups: must be a list of gids")
        seccomp = raw.get("seccomp")
        if seccomp not in (None, "RuntimeDefault", "Unconfined"):
            raise SpecError(f"{where}.seccomp: must be RuntimeDefault or Unconfined")
        return cls(
            run_as_user=_id(raw.get("runAsUser"), f"{where}.runAsUser"),
            run_as_group=_id(raw.get("runAsGroup"), f"{where}.runAsGroup"),
            account=account,
            run_as_non_root=bool(raw.get("runAsNonRoot")),
            groups=tuple(sorted({g for i, g in enumerate(groups) if _id(g, f"{where}.groups[{i}]") is not None})),
            read_only_root=bool(raw.get("readOnlyRootFilesystem")),
            privileged=bool(raw.get("privileged")),
            no_new_privs=bool(raw.get("noNewPrivs")),
            cap_add=_capability_names(caps.get("add"), f"{where}.capabilities.add"),
            cap_drop=_capability_names(caps.get("drop"), f"{where}.capabilities.drop"),
            seccomp=seccomp,
        )

    def capabilities(self) -> frozenset[str] | None:
        """The bounding set (None: every capability, as privileged): the default set, less
        what is dropped (ALL: everything), plus what is added, as the CRI runtimes compute it."""
        if self.privileged or "ALL" in self.cap_add:
            return None
        kept = set() if "ALL" in self.cap_drop else set(DEFAULT_CAPABILITIES) - set(self.cap_drop)
        return frozenset(kept | set(self.cap_add))


@dataclass(frozen=True)
class ContainerSpec:
    name: str
    init: bool
    image: str | None
    command: tuple[str, ...]
    args: tuple[str, ...]
    env: tuple[EnvVar, ...]
    working_dir: str | None
    cpu_millis: int | None
    memory_bytes: int | None
    liveness: ProbeSpec | None
    readiness: ProbeSpec | None
    startup: ProbeSpec | None
    mounts: tuple[MountSpec, ...]
    pre_stop: ProbeSpec | None = None  # lifecycle hooks: kind exec, httpGet or sleep
    post_start: ProbeSpec | None = None
    security: SecuritySpec | None = None
    pull: str = "missing"  # imagePullPolicy as podman's --pull: always, missing or never
    sidecar: bool = False  # an init container with restartPolicy Always

    @classmethod
    def parse(cls, raw: Any, where: str, init: bool) -> ContainerSpec:
        if not isinstance(raw, dict):
            raise SpecError(f"{where}: must be an object")
        name = safe_name(raw.get("name"), f"{where}.name")
        image = raw.get("image")
        if image is not None:
            image = image_reference(image, f"{where}.image")
        command = _strings(raw.get("command"), f"{where}.command")
        args = _strings(raw.get("args"), f"{where}.args")
        if image is None and not command and not args:
            raise SpecError(f"{where}: needs a command (without an image there is no "
                            "entrypoint to fall back to)")
        env: list[EnvVar] = []
        for i, item in enumerate(raw.get("env") or []):
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise SpecError(f"{where}.env[{i}]: needs a name")
            env_name = item["name"]
            if not env_name or "=" in env_name or not env_name.isprintable():
                raise SpecError(f"{where}.env[{i}].name: must be printable characters "
                                "other than '='")
            value = "" if item.get("value") is None else str(item["value"])
            if "\0" in value:  # the value itself stays out of the message: it may be secret
                raise SpecError(f"{where}.env[{i}] ({env_name}): the value contains a NUL "
                                "character")
            env.append(EnvVar(env_name, value, bool(item.get("secret"))))
        working_dir = raw.get("workingDir")
        if working_dir is not None:
            working_dir = _path(working_dir, f"{where}.workingDir")
        resources = raw.get("resources") or {}
        if not isinstance(resources, dict):
            raise SpecError(f"{where}.resources: must be an object")
        mounts: list[MountSpec] = []
        for i, item in enumerate(raw.get("volumeMounts") or []):
            if not isinstance(item, dict):
                raise SpecError(f"{where}.volumeMounts[{i}]: must be an object")
            path = _path(item.get("mountPath"), f"{where}.volumeMounts[{i}].mountPath",
                         image=image is not None)
            if os.path.normpath(path) == "/":
                raise SpecError(f"{where}.volumeMounts[{i}].mountPath: must be an absolute "
                                "path other than /")
            sub = item.get("subPath")
            if sub is not None:
                parts = str(sub).split("/")
                if not isinstance(sub, str) or not sub or sub.startswith("/") or ".." in parts \
                        or _has_control(sub):
                    raise SpecError(f"{where}.volumeMounts[{i}].subPath: must be a relative path inside "
                                    "the volume, without '..'")
            mounts.append(MountSpec(safe_name(item.get("name"), f"{where}.volumeMounts[{i}]"),
                                    os.path.normpath(path), bool(item.get("readOnly")),
                                    os.path.normpath(sub) if sub else None))
        return cls(
            name=name, init=init, image=image, command=command, args=args, env=tuple(env),
            working_dir=working_dir,
            cpu_millis=_int_or_none(resources.get("cpuMillis"), f"{where}.resources.cpuMillis"),
            memory_bytes=_int_or_none(resources.get("memoryBytes"),
                                      f"{where}.resources.memoryBytes"),
            liveness=ProbeSpec.parse(raw.get("livenessProbe"), f"{where}.livenessProbe"),
            readiness=ProbeSpec.parse(raw.get("readinessProbe"), f"{where}.readinessProbe"),
            startup=ProbeSpec.parse(raw.get("startupProbe"), f"{where}.startupProbe"),
            mounts=tuple(mounts),
            pre_stop=_hook(raw.get("preStop"), f"{where}.preStop"),
            post_start=_hook(raw.get("postStart"), f"{where}.postStart"),
            security=SecuritySpec.parse(raw.get("security"), f"{where}.security"),
            pull=_pull_policy(raw.get("imagePullPolicy"), raw.get("image"), f"{where}.imagePullPolicy"),
            sidecar=_sidecar(raw.get("restartPolicy"), f"{where}.restartPolicy", init),
        )


def _sidecar(raw: Any, where: str, init: bool) -> bool:
    if raw is None:
        return False
    if raw != "Always" or not init:
        raise SpecError(f"{where}: only an init container takes one, and only Always (a sidecar)")
    return True


PULL_POLICIES = {"Always": "always", "IfNotPresent": "missing", "Never": "never"}


def _pull_policy(raw: Any, image: Any, where: str) -> str:
    """Kubernetes' imagePullPolicy as the runtime's --pull value. Unset, it is the API server's
    default: Always for an image tagged :latest or not tagged at all, else IfNotPresent (an
    image by digest included)."""
    if raw is None:
        return PULL_POLICIES[default_pull_policy(image)]
    if raw not in PULL_POLICIES:
        raise SpecError(f"{where}: must be one of {', '.join(PULL_POLICIES)}")
    return PULL_POLICIES[raw]


def default_pull_policy(image: Any) -> str:
    """The imagePullPolicy Kubernetes gives a container that sets none."""
    if not isinstance(image, str) or not image or "@" in image:
        return "IfNotPresent"
    tag = image.rsplit("/", 1)[-1].partition(":")[2]  # a registry's :port is before the last "/"
    return "Always" if tag in ("", "latest") else "IfNotPresent"


# A postStart hook may run this long; then it has failed (the kubelet waits for ever).
POST_START_TIMEOUT = 120.0


def _hook(raw: Any, where: str) -> ProbeSpec | None:
    """A lifecycle hook as a one-shot probe (its timeout is set when it runs)."""
    if raw is None:
        return None
    if isinstance(raw, dict) and set(raw) == {"sleep"}:
        seconds = (raw["sleep"] or {}).get("seconds") if isinstance(raw["sleep"], dict) else None
        if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 0:
            raise SpecError(f"{where}.sleep.seconds: must be a whole number of seconds")
        return ProbeSpec("sleep", {"seconds": seconds}, 0.0, 1.0, 1.0, 1, 1)
    spec = ProbeSpec.parse(raw, where)
    if spec is not None and spec.kind not in ("exec", "httpGet"):
        raise SpecError(f"{where}: needs exactly one of exec, httpGet, sleep")
    return spec


def _file_mode(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o777:
        raise SpecError(f"{where}: must be file permission bits, 0 to 0777")
    return value


HOST_PATH_TYPES = ("", "DirectoryOrCreate", "Directory", "FileOrCreate", "File", "Socket", "CharDevice",
                   "BlockDevice")


class MountFailed(OSError):
    """A volume that cannot be set up as the pod asks (the kubelet's FailedMount): the pod stays
    ContainerCreating and the agent tries again."""


def check_host_path(path: str, kind: str) -> None:
    """hostPath.type as the kubelet checks it before the pod starts, in its words: the ...OrCreate
    types make what is missing (a folder 0755, an empty file 0644 whose folder must exist), the
    others only check; "" checks nothing (gitorch then makes a missing folder, as Docker does)."""
    if kind in ("", "DirectoryOrCreate") and not os.path.lexists(path):
        os.makedirs(path, mode=0o755, exist_ok=True)
    elif kind == "FileOrCreate" and not os.path.lexists(path):
        try:
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW, 0o644))
        except OSError as exc:
            raise MountFailed(f"hostPath type check failed: {path}: {exc.strerror}") from None
    if not kind:
        return
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = 0
    want, what = {
        "DirectoryOrCreate": (stat.S_ISDIR, "a directory"),
        "Directory": (stat.S_ISDIR, "a directory"),
        "FileOrCreate": (stat.S_ISREG, "a file"),
        "File": (stat.S_ISREG, "a file"),
        "Socket": (stat.S_ISSOCK, "a socket file"),
        "CharDevice": (stat.S_ISCHR, "a character device"),
        "BlockDevice": (stat.S_ISBLK, "a block device"),
    }[kind]
    if not want(mode):
        raise MountFailed(f"hostPath type check failed: {path} is not {what}")


@dataclass(frozen=True)
class VolumeSpec:
    name: str
    kind: str  # files | emptyDir | hostPath
    files: tuple[tuple[str, str], ...]
    secret: bool
    host_path: str | None
    default_mode: int | None = None  # a files volume's permission bits (else 0644, 0600 for a Secret)
    modes: tuple[tuple[str, int], ...] = ()  # per file, over default_mode
    memory: bool = False  # an emptyDir with medium Memory: a tmpfs
    size_limit: int | None = None  # its size in bytes (else half the node's memory, tmpfs's default)
    host_path_type: str = ""  # hostPath.type: what must be at the path before the pod starts
    size_text: str = ""  # an emptyDir's sizeLimit as written (1Gi), for the eviction message

    @classmethod
    def parse(cls, raw: Any, where: str) -> VolumeSpec:
        if not isinstance(raw, dict):
            raise SpecError(f"{where}: must be an object")
        name = safe_name(raw.get("name"), f"{where}.name")
        if raw.get("files") is not None:
            files = raw["files"]
            if not isinstance(files, dict):
                raise SpecError(f"{where}.files: must be an object of file name -> content")
            items = []
            for key, value in files.items():
                parts = str(key).split("/")
                if key.startswith("/") or any(p in ("", ".", "..") for p in parts) \
                        or _has_control(key):
                    raise SpecError(f"{where}.files: invalid file name {key!r}")
                items.append((str(key), "" if value is None else str(value)))
            default_mode = _file_mode(raw.get("defaultMode"), f"{where}.defaultMode")
            modes = raw.get("modes") or {}
            if not isinstance(modes, dict):
                raise SpecError(f"{where}.modes: must be an object of file name -> mode")
            return cls(name, "files", tuple(sorted(items)), bool(raw.get("secret")), None, default_mode,
                       tuple(sorted((str(k), _file_mode(v, f"{where}.modes.{k}") or 0) for k, v in modes.items())))
        if raw.get("emptyDir"):
            memory = raw.get("medium") == "Memory"
            size = raw.get("sizeLimit")
            if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
                raise SpecError(f"{where}.sizeLimit: must be a number of bytes")
            # On disk, sizeLimit is watched (check_local_storage): past it, the pod is evicted.
            return cls(name, "emptyDir", (), False, None, memory=memory, size_limit=size,
                       size_text=str(raw.get("sizeLimitText") or size or ""))
        host = raw.get("hostPath")
        if host is not None:
            kind = raw.get("hostPathType") or ""
            if kind not in HOST_PATH_TYPES:
                raise SpecError(f"{where}.hostPathType: must be one of {', '.join(HOST_PATH_TYPES)}")
            return cls(name, "hostPath", (), False,
                       os.path.normpath(_path(host, f"{where}.hostPath")), host_path_type=kind)
        raise SpecError(f"{where}: needs one of files, emptyDir, hostPath")


@dataclass(frozen=True)
class PodSpec:
    name: str
    namespace: str
    hash: str
    restart_policy: str
    grace: float
    host_network: bool
    init_containers: tuple[ContainerSpec, ...]
    containers: tuple[ContainerSpec, ...]
    volumes: tuple[VolumeSpec, ...]
    dns_policy: str = "ClusterFirst"
    dns_config: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]] = ((), (), ())
    """(nameservers, searches, options) of the pod's dnsConfig."""
    volume_owner: SecuritySpec | None = None
    """Who owns the pod's volumes (run_as_user/account, run_as_group, groups = (fsGroup,))."""

    @classmethod
    def parse(cls, raw: Json) -> PodSpec:
        if raw.get("secretsMissing"):
            raise SecretsMissing(str(raw["secretsMissing"]))
        name = safe_name(raw.get("name"), "name")
        policy = raw.get("restartPolicy") or "Always"
        if policy not in RESTART_POLICIES:
            raise SpecError(f"restartPolicy: must be one of {', '.join(RESTART_POLICIES)}")
        containers = raw.get("containers")
        if not isinstance(containers, list) or not containers:
            raise SpecError("containers: needs at least one container")
        inits = raw.get("initContainers") or []
        if not isinstance(inits, list):
            raise SpecError("initContainers: must be a list")
        init_specs = tuple(ContainerSpec.parse(c, f"initContainers[{i}]", True)
                           for i, c in enumerate(inits))
        app_specs = tuple(ContainerSpec.parse(c, f"containers[{i}]", False)
                          for i, c in enumerate(containers))
        names = [c.name for c in init_specs + app_specs]
        if len(set(names)) != len(names):
            raise SpecError("containers: container names must be unique within the pod")
        volumes = tuple(VolumeSpec.parse(v, f"volumes[{i}]")
                        for i, v in enumerate(raw.get("volumes") or []))
        vol_names = {v.name for v in volumes}
        if len(vol_names) != len(volumes):
            raise SpecError("volumes: volume names must be unique within the pod")
        for ctr in init_specs + app_specs:
            for m in ctr.mounts:
                if m.volume not in vol_names:
                    raise SpecError(f"container {ctr.name}: volumeMount {m.volume!r} names no "
                                    "volume of the pod")
                host = next(v.host_path for v in volumes if v.name == m.volume)
                if ctr.image is not None and host is not None:
                    _path(host, f"volumes.{m.volume}.hostPath (mounted by image container "
                          f"{ctr.name})", image=True)
        dns_policy = raw.get("dnsPolicy") or "ClusterFirst"
        if dns_policy not in DNS_POLICIES:
            raise SpecError(f"dnsPolicy: must be one of {', '.join(DNS_POLICIES)}")
        dns_config = raw.get("dnsConfig") or {}
        if not isinstance(dns_config, dict):
            raise SpecError("dnsConfig: must be an object")
        options = []
        for i, o in enumerate(dns_config.get("options") or []):
            if not isinstance(o, dict) or not o.get("name"):
                raise SpecError(f"dnsConfig.options[{i}]: needs a name")
            options.append(str(o["name"]) + (f":{o['value']}" if o.get("value") not in (None, "") else ""))
        config = (_strings(dns_config.get("nameservers"), "dnsConfig.nameservers"),
                  _strings(dns_config.get("searches"), "dnsConfig.searches"), tuple(options))
        for text in (t for group in config for t in group):
            if not text or any(c.isspace() for c in text) or _has_control(text):
                raise SpecError(f"dnsConfig: {text!r} is not a single word")
        return cls(
            name=name,
            namespace=safe_namespace(raw.get("namespace"), "namespace"),
            hash=str(raw.get("hash") or ""),
            restart_policy=policy,
            grace=_number(raw.get("terminationGracePeriodSeconds"),
                          "terminationGracePeriodSeconds", 30.0),
            host_network=bool(raw.get("hostNetwork")),
            init_containers=init_specs,
            containers=app_specs,
            volumes=volumes,
            dns_policy=dns_policy,
            dns_config=config,
            volume_owner=_volume_owner(raw.get("volumeOwner")),
        )

    def volume(self, name: str) -> VolumeSpec:
        return next(v for v in self.volumes if v.name == name)


def _volume_owner(raw: Any) -> SecuritySpec | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise SpecError("volumeOwner: must be an object")
    fs_group = raw.get("fsGroup")
    body = {k: raw[k] for k in ("runAsUser", "runAsGroup", "account") if k in raw}
    return SecuritySpec.parse({**body, "groups": [fs_group] if fs_group is not None else []}, "volumeOwner")


# ---------------------------------------------------------------------------------------
# cgroups: memory and CPU limits where the node lets us write them
# ---------------------------------------------------------------------------------------


class Cgroups:
    """Container resource limits through cgroup v2, or the v1 memory and cpu hierarchies.

    The gitorch subtree is created under the supervisor's own cgroup (the root cgroup on a
    node, so /sys/fs/cgroup[/memory]/gitorch/<pod>/<container>), which keeps containers
    inside whatever accounts for the supervisor itself.
    """

    def __init__(self, version: str, bases: dict[str, str], writable: dict[str, bool],
                 message: str) -> None:
        self.version = version  # v1 | v2 | none
        self.bases = bases  # controller ("memory"/"cpu"; "unified" for v2) -> base dir
        self.writable = writable
        self.message = message

    @property
    def usable(self) -> bool:
        return any(self.writable.values())

    @classmethod
    def detect(cls, paths: Paths) -> Cgroups:
        """Find where limits can be written; probes leave no directory behind."""
        leaf = "gitorch" + paths.instance_tag
        own = own_cgroups()
        mounts = cgroup_mounts()
        v2 = [m for m in mounts if m[1] == "cgroup2" and m[0] == "/sys/fs/cgroup"]
        if v2:
            mount = v2[0][0]
            controllers = (read_text(os.path.join(mount, "cgroup.controllers")) or "").split()
            if "memory" not in controllers and "cpu" not in controllers:
                return cls("v2", {}, {}, "memory and cpu controllers not available")
            for base in (os.path.join(mount, own.get("", "/").lstrip("/"), leaf),
                         os.path.join(mount, leaf)):
                if _prepare_v2(mount, base):
                    ok = {c: c in controllers for c in ("memory", "cpu")}
                    return cls("v2", {"unified": base}, ok, "")
            return cls("v2", {}, {"memory": False, "cpu": False},
                       "cannot create a cgroup with memory and cpu controllers enabled")
        bases: dict[str, str] = {}
        writable: dict[str, bool] = {}
        for ctrl in ("memory", "cpu"):
            mount_point = next((m[0] for m in mounts if m[1] == "cgroup" and ctrl in m[2]), None)
            if mount_point is None:
                writable[ctrl] = False
                continue
            base = os.path.join(mount_point, own.get(ctrl, "/").lstrip("/"), leaf)
            writable[ctrl] = _probe_dir(base)
            if writable[ctrl]:
                bases[ctrl] = base
        # CPU usage (cpuacct.usage) lives in the cpuacct hierarchy: the cpu one's where both are
        # mounted together (cpu,cpuacct), else a hierarchy of its own, used for accounting only.
        acct = next((m for m in mounts if m[1] == "cgroup" and "cpuacct" in m[2]), None)
        if acct is not None and "cpu" not in acct[2]:
            base = os.path.join(acct[0], own.get("cpuacct", "/").lstrip("/"), leaf)
            if _probe_dir(base):
                bases["cpuacct"] = base
        if not any(m[1] == "cgroup" for m in mounts):
            return cls("none", {}, {"memory": False, "cpu": False}, "no cgroup hierarchy mounted")
        missing = [c for c in ("memory", "cpu") if not writable.get(c)]
        message = f"{' and '.join(missing)} cgroup not writable" if missing else ""
        return cls("v1", bases, writable, message)

    def create(self, pod: str, container: str, memory: int | None,
               cpu_millis: int | None) -> tuple[list[str], str, str]:
        """Create a container's cgroup(s) and write limits: (dirs, limits state, message)."""
        wants = memory is not None or cpu_millis is not None
        dirs: list[str] = []
        problems: list[str] = []
        try:
            if self.version == "v2" and "unified" in self.bases:
                pod_dir = os.path.join(self.bases["unified"], pod)
                os.makedirs(pod_dir, exist_ok=True)
                _enable_v2(self.bases["unified"])
                _enable_v2(pod_dir)
                d = os.path.join(pod_dir, container)
                os.makedirs(d, exist_ok=True)
                dirs.append(d)
                if memory is not None and not _write(d, "memory.max", str(memory)):
                    problems.append("memory.max")
                if cpu_millis is not None and not _write(
                        d, "cpu.max", f"{max(1000, cpu_millis * 100)} 100000"):
                    problems.append("cpu.max")
            else:
                if "memory" in self.bases:
                    d = os.path.join(self.bases["memory"], pod, container)
                    os.makedirs(d, exist_ok=True)
                    dirs.append(d)
                    value = str(memory) if memory is not None else "-1"
                    if not _write(d, "memory.limit_in_bytes", value) and memory is not None:
                        problems.append("memory.limit_in_bytes")
                    # No swapping around the limit; absent without swap accounting.
                    _write(d, "memory.memsw.limit_in_bytes", value)
                elif memory is not None:
                    problems.append("memory cgroup")
                if "cpu" in self.bases:
                    d = os.path.join(self.bases["cpu"], pod, container)
                    os.makedirs(d, exist_ok=True)
                    dirs.append(d)
                    quota = str(max(1000, cpu_millis * 100)) if cpu_millis is not None else "-1"
                    _write(d, "cpu.cfs_period_us", "100000")
                    if not _write(d, "cpu.cfs_quota_us", quota) and cpu_millis is not None:
                        problems.append("cpu.cfs_quota_us")
                elif cpu_millis is not None:
                    problems.append("cpu cgroup")
                if "cpuacct" in self.bases:
                    d = os.path.join(self.bases["cpuacct"], pod, container)
                    os.makedirs(d, exist_ok=True)
                    dirs.append(d)
        except OSError as exc:
            problems.append(one_line(str(exc)))
        if not wants:
            return dirs, "none", ""
        if problems:
            return dirs, "unsupported", "limits not applied: " + ", ".join(problems)
        return dirs, "applied", ""

    @staticmethod
    def oom_kills(dirs: list[str]) -> int:
        total = 0
        for d in dirs:
            for name in ("memory.events", "memory.oom_control"):
                for line in (read_text(os.path.join(d, name)) or "").splitlines():
                    parts = line.split()
                    if len(parts) == 2 and parts[0] == "oom_kill" and parts[1].isdigit():
                        total += int(parts[1])
        return total

    @staticmethod
    def kill_all(dirs: list[str]) -> None:
        """SIGKILL whatever is left in the container's cgroups (also processes that setsid)."""
        for d in dirs:
            for line in (read_text(os.path.join(d, "cgroup.procs")) or "").split():
                if line.isdigit():
                    with contextlib.suppress(OSError):
                        os.kill(int(line), signal.SIGKILL)

    @staticmethod
    def remove(dirs: list[str]) -> bool:
        """rmdir container cgroups, then their pod and base dirs once empty; True when gone."""
        done = True
        for d in dirs:
            for path in (d, os.path.dirname(d), os.path.dirname(os.path.dirname(d))):
                try:
                    os.rmdir(path)
                except FileNotFoundError:
                    pass
                except OSError:
                    if path == d:
                        done = False
        return done


def _write(d: str, name: str, value: str) -> bool:
    try:
        with open(os.path.join(d, name), "w") as fh:
            fh.write(value)
        return True
    except OSError:
        return False


def _probe_dir(base: str) -> bool:
    existed = os.path.isdir(base)
    try:
        os.makedirs(base, exist_ok=True)
        probe = os.path.join(base, f"probe-{os.getpid()}")
        os.mkdir(probe)
        os.rmdir(probe)
        return True
    except OSError:
        return False
    finally:
        if not existed:
            with contextlib.suppress(OSError):
                os.rmdir(base)


def _enable_v2(d: str) -> None:
    for ctrl in ("memory", "cpu"):
        _write(d, "cgroup.subtree_control", f"+{ctrl}")


def _prepare_v2(mount: str, base: str) -> bool:
    existed = os.path.isdir(base)
    try:
        for parent in reversed(_ancestors(mount, os.path.relpath(os.path.dirname(base), mount))):
            _enable_v2(parent)
        os.makedirs(base, exist_ok=True)
        _enable_v2(base)
        enabled = (read_text(os.path.join(base, "cgroup.subtree_control")) or "").split()
        return "memory" in enabled or "cpu" in enabled
    except OSError:
        return False
    finally:
        if not existed:
            with contextlib.suppress(OSError):
                os.rmdir(base)


# ---------------------------------------------------------------------------------------
# Resource metrics: what metrics-server gets from the kubelet, sampled from cgroups and /proc
# ---------------------------------------------------------------------------------------

DEFAULT_METRICS_INTERVAL = 15.0  # seconds between samples (metrics-server's resolution)


def cgroup_cpu_usec(dirs: list[str]) -> int | None:
    """Cumulative CPU time of a container's cgroups in microseconds: v2 cpu.stat usage_usec,
    v1 cpuacct.usage (nanoseconds). None where no cgroup accounts for it."""
    for d in dirs:
        for line in (read_text(os.path.join(d, "cpu.stat")) or "").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == "usage_usec" and parts[1].isdigit():
                return int(parts[1])
        value = (read_text(os.path.join(d, "cpuacct.usage")) or "").strip()
        if value.isdigit():
            return int(value) // 1000
    return None


def cgroup_working_set(dirs: list[str]) -> int | None:
    """The kubelet's working set: memory in use (v2 memory.current, v1 memory.usage_in_bytes)
    minus the inactive page cache (inactive_file; v1's total_inactive_file), which the
    kernel can reclaim before an OOM kill."""
    for d in dirs:
        used = (read_text(os.path.join(d, "memory.current")) or "").strip()
        inactive_key = "inactive_file"
        if not used.isdigit():
            used = (read_text(os.path.join(d, "memory.usage_in_bytes")) or "").strip()
            inactive_key = "total_inactive_file"
        if not used.isdigit():
            continue
        inactive = 0
        for line in (read_text(os.path.join(d, "memory.stat")) or "").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == inactive_key and parts[1].isdigit():
                inactive = int(parts[1])
        return max(0, int(used) - inactive)
    return None


def node_cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat's first line."""
    first = (read_text("/proc/stat") or "").split("\n", 1)[0].split()
    if len(first) < 5 or first[0] != "cpu" or not all(v.isdigit() for v in first[1:]):
        return None
    values = [int(v) for v in first[1:9]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


def rate_millis(before: tuple[float, int] | None, after: tuple[float, int], per_second: float) -> int | None:
    """Millicores used between two (time, cumulative usage) samples; usage counts per_second
    units per CPU second. None without an earlier sample, or when the counter went back."""
    if before is None or after[0] <= before[0] or after[1] < before[1]:
        return None
    return round((after[1] - before[1]) / per_second / (after[0] - before[0]) * 1000)


def metrics_interval(raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 1 <= raw <= 3600:
        return DEFAULT_METRICS_INTERVAL
    return float(raw)


# ---------------------------------------------------------------------------------------
# Probes: liveness, readiness and startup, each on its own thread
# ---------------------------------------------------------------------------------------

ProbeAction = Callable[[], tuple[bool, str]]


def probe_http(handler: Json, timeout: float) -> tuple[bool, str]:
    import http.client
    import ssl

    host = handler.get("host") or "127.0.0.1"
    port = int(handler["port"])
    path = handler.get("path") or "/"
    scheme = str(handler.get("scheme") or "HTTP").upper()
    url = f"{scheme.lower()}://{host}:{port}{path}"
    conn: http.client.HTTPConnection
    if scheme == "HTTPS":
        # Kubernetes does not verify probe certificates either.
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    headers = {"User-Agent": f"gitorch-probe/{AGENT_VERSION}", "Accept": "*/*"}
    for h in handler.get("httpHeaders") or []:
        if isinstance(h, dict) and "name" in h:
            headers[str(h["name"])] = str(h.get("value", ""))
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        resp.read(10240)
        if 200 <= resp.status < 400:
            return True, ""
        return False, f"HTTP probe failed with statuscode: {resp.status}"
    except (OSError, http.client.HTTPException) as exc:
        return False, f"Get {url}: {exc or type(exc).__name__}"
    finally:
        conn.close()


def probe_tcp(handler: Json, timeout: float) -> tuple[bool, str]:
    import socket

    host = handler.get("host") or "127.0.0.1"
    port = int(handler["port"])
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True, ""
    except OSError as exc:
        return False, f"dial tcp {host}:{port}: {exc.strerror or exc}"


GRPC_SERVING = {1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def probe_grpc(handler: Json, timeout: float) -> tuple[bool, str]:
    """The gRPC Health Checking Protocol (grpc.health.v1.Health/Check), as the kubelet's grpc
    probe calls it: one unary call over cleartext HTTP/2, stdlib only. Healthy when the answer's
    status is SERVING; a call that ends without a message (an error status) is a failure."""
    import socket
    import struct

    host = str(handler.get("host") or "127.0.0.1")
    port = int(handler["port"])
    service = str(handler.get("service") or "").encode()

    def frame(kind: int, flags: int, payload: bytes) -> bytes:
        stream = 1 if kind in (0, 1) else 0  # DATA and HEADERS on the call's stream
        return struct.pack(">I", len(payload))[1:] + bytes((kind, flags)) + struct.pack(">I", stream) + payload

    def literal(name: bytes, value: bytes) -> bytes:  # HPACK: literal without indexing, new name, no Huffman
        def string(b: bytes) -> bytes:
            if len(b) < 127:
                return bytes((len(b),)) + b
            rest, out = len(b) - 127, bytearray((127,))
            while rest >= 128:
                out.append(rest % 128 + 128)
                rest //= 128
            return bytes(out) + bytes((rest,)) + b
        return b"\x00" + string(name) + string(value)

    message = (b"\x0a" + bytes((len(service),)) + service) if service and len(service) < 128 else b""
    headers = b"".join(literal(n, v) for n, v in (
        (b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/grpc.health.v1.Health/Check"),
        (b":authority", f"{host}:{port}".encode()), (b"content-type", b"application/grpc"), (b"te", b"trailers")))
    request = (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, b"") + frame(1, 4, headers)
               + frame(0, 1, b"\x00" + struct.pack(">I", len(message)) + message))
    deadline = time.monotonic() + timeout
    where = f"{host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(request)
            buf, body = b"", b""
            while True:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = sock.recv(65536)
                if not chunk:
                    return False, f"gRPC health check on {where}: connection closed without an answer"
                buf += chunk
                while len(buf) >= 9:
                    size = int.from_bytes(buf[:3], "big")
                    if len(buf) < 9 + size:
                        break
                    kind, flags, stream = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                    payload, buf = buf[9:9 + size], buf[9 + size:]
                    if kind == 4 and not flags & 1:
                        sock.sendall(frame(4, 1, b""))  # acknowledge the server's SETTINGS
                    elif kind == 0 and stream == 1:
                        body += payload
                        if len(body) >= 5 and len(body) >= 5 + int.from_bytes(body[1:5], "big"):
                            msg = body[5:5 + int.from_bytes(body[1:5], "big")]
                            status = msg[1] if len(msg) >= 2 and msg[0] == 0x08 else 0
                            name = GRPC_SERVING.get(status, "UNKNOWN")
                            if status == 1:
                                return True, ""
                            return False, f'service unhealthy (responded with "{name}")'
                    elif (kind == 1 and stream == 1 and flags & 1) or kind in (3, 7):  # trailers only, RST, GOAWAY
                        return False, f"gRPC health check on {where} failed: the server answered with an error status"
    except TimeoutError:
        return False, f"timeout: health rpc on {where} did not complete within {timeout:g}s"
    except OSError as exc:
        return False, f"timeout: failed to connect service {where} within {timeout:g}s: {exc.strerror or exc}"


def probe_exec(argv: list[str], env: dict[str, str], cwd: str, timeout: float) -> tuple[bool, str]:
    try:
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
    except OSError as exc:
        return False, f"exec {argv[0]}: {exc.strerror or exc}"
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return False, f"command timed out after {timeout:g}s"
    text = one_line(out.decode(errors="replace"))[-512:]
    if proc.returncode == 0:
        return True, text
    return False, text or f"command exited with {proc.returncode}"


class ProbeWorker:
    """Runs one probe periodically and applies Kubernetes' threshold counting.

    ``result()`` is None until a threshold is reached, then True (successThreshold
    consecutive successes) or False (failureThreshold consecutive failures).
    """

    def __init__(self, which: str, spec: ProbeSpec, action: ProbeAction,
                 container_started: float, wake: Callable[[], None]) -> None:
        self.which = which
        self.spec = spec
        self._action = action
        self._started = container_started
        self._wake = wake
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._status: bool | None = None
        self._message = ""
        self._ok = 0
        self._failed = 0
        self._thread = threading.Thread(target=self._loop, name=f"probe-{which}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def result(self) -> tuple[bool | None, str]:
        with self._lock:
            return self._status, self._message

    def _loop(self) -> None:
        delay = self._started + self.spec.initial_delay - time.time()
        if self._stop.wait(max(0.0, delay)):
            return
        while not self._stop.is_set():
            try:
                ok, message = self._action()
            except Exception as exc:  # a probe bug must fail the probe, not the thread
                ok, message = False, f"probe error: {type(exc).__name__}: {exc}"
            changed = False
            with self._lock:
                if ok:
                    self._ok, self._failed = self._ok + 1, 0
                    if self._ok >= self.spec.success_threshold and self._status is not True:
                        self._status, changed = True, True
                else:
                    self._ok, self._failed = 0, self._failed + 1
                    if self._failed >= self.spec.failure_threshold and self._status is not False:
                        self._status, changed = False, True
                self._message = message
            if changed:
                self._wake()
            if self._stop.wait(self.spec.period):
                return


# ---------------------------------------------------------------------------------------
# Processes: pods and containers as the supervisor tracks them
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backoff:
    """Crash-loop back-off: base, 2x base, ... capped at 30x base, reset after 60x base."""

    base: float = 10.0

    @classmethod
    def from_env(cls) -> Backoff:
        try:
            base = float(os.environ.get("GITORCH_BACKOFF_BASE", "10"))
        except ValueError:
            base = 10.0
        return cls(base if base > 0 else 10.0)

    @property
    def reset_after(self) -> float:
        return self.base * 60

    def delay(self, count: int) -> float:
        return float(min(self.base * 30, self.base * (2 ** min(count, 30))))


class Container:
    """One container of a pod: its current process, its restarts and its probes."""

    # Persisted in state.json so a new supervisor can re-adopt the process.
    FIELDS = ("name", "init", "state", "reason", "message", "pid", "proc_start", "started_at",
              "term", "last_state", "restart_count", "backoff_count", "next_start", "cgroups",
              "oom_base", "limits", "runtime", "runtime_name", "mount_ns", "startup_done",
              "succeeded", "ever_started", "kill_reason", "kill_deadline", "kill_sent",
              "draining", "ready", "exit_file")

    def __init__(self, name: str, init: bool, spec: ContainerSpec | None = None) -> None:
        self.name = name
        self.init = init
        self.spec = spec
        self.state = "waiting"  # waiting | running | terminated
        self.reason = "ContainerCreating"
        self.message = ""
        self.pid: int | None = None
        self.proc_start: int | None = None
        self.started_at: float | None = None
        self.term: Json | None = None  # the last termination of this container
        self.last_state: Json | None = None  # the termination before a restart
        self.restart_count = 0
        self.backoff_count = 0
        self.next_start = 0.0
        self.cgroups: list[str] = []
        self.runtime_cgroups: list[str] = []  # where podman put an image container: read for its metrics
        self.oom_base = 0
        self.limits = "none"
        self.runtime = "process"
        self.runtime_name: str | None = None
        self.mount_ns = False
        self.startup_done = False
        self.succeeded = False
        self.ever_started = False
        self.kill_reason: str | None = None
        self.kill_deadline: float | None = None
        self.kill_sent = False
        self.term_pending = False  # SIGTERM waits for the preStop hook (or the grace period)
        self.hook: threading.Thread | None = None
        self.post_start: threading.Thread | None = None  # running: not ready, not probed
        self.post_start_error = ""
        self.draining = False  # main process gone, waiting for the rest of its group
        self.exit_file: str | None = None  # where its exit_recorder leaves the exit status
        # Not persisted:
        self.cpu_sample: tuple[float, int] | None = None  # (time, CPU usec) of the last sample
        self.popen: subprocess.Popen[bytes] | None = None
        self.probes: dict[str, ProbeWorker] = {}
        self.env: dict[str, str] = {}
        self.ready = False
        # Ready when an earlier supervisor handed it over: stays ready until its own first
        # probe result, so an agent upgrade does not pull every endpoint out of the Services.
        self.adopted_ready = False

    def record(self) -> Json:
        return {f: getattr(self, f) for f in self.FIELDS}

    @classmethod
    def from_record(cls, rec: Json) -> Container:
        ctr = cls(str(rec["name"]), bool(rec.get("init")))
        for f in cls.FIELDS:
            if f in rec:
                setattr(ctr, f, rec[f])
        ctr.ready = ctr.adopted_ready = bool(rec.get("ready")) and ctr.state == "running"
        return ctr

    @property
    def busy(self) -> bool:
        """A process of this container may still be alive."""
        return self.state == "running" or self.draining

    def poll_exit(self) -> tuple[bool, int | None]:
        """(exited, returncode); returncode None when unknown.

        A process re-adopted from an earlier supervisor is not our child: its exit status
        comes from the file its exit_recorder wrote (none when something SIGKILLed that sh,
        or an older agent started it without one)."""
        if self.popen is not None:
            rc = self.popen.poll()
            return (rc is not None), rc
        if self.pid is None:
            return True, None
        if process_alive(self.pid, self.proc_start):
            return False, None
        return True, read_exit_file(self.exit_file)

    def group_alive(self) -> bool:
        return self.pid is not None and bool(group_members(self.pid))

    def stop_probes(self, keep_ready: bool = False) -> None:
        for worker in self.probes.values():
            worker.stop()
        self.probes.clear()
        if not keep_ready:
            self.ready = self.adopted_ready = False


PodId = tuple[str, str]
"""(namespace, name): who a pod is on a node."""


def pod_id(raw: Json) -> PodId:
    return str(raw.get("namespace") or "default"), str(raw.get("name"))


class Pod:
    """One pod instance on this node (a new hash means a new instance)."""

    def __init__(self, name: str, namespace: str, pod_hash: str, spec: PodSpec | None,
                 grace: float, key: str | None = None) -> None:
        self.name = name
        self.namespace = namespace
        # Its folder, network namespace and cgroup name (see pod_key).
        self.key = key or pod_key(namespace, name)
        self.hash = pod_hash
        self.spec = spec
        self.grace = grace
        self.created_at = time.time()
        self.prepared = False
        self.prepare_retry = 0.0
        self.stopping = False
        self.stopped = False
        self.fatal: list[str] | None = None  # [reason, message]: the pod is Failed
        self.evicting: str | None = None  # why its containers are being killed, before it is Failed (Evicted)
        self.message = ""
        self.internal_error = ""
        self.netns = False  # runs in its own network namespace (else on the node's network)
        self.ip: str | None = None  # kept for the pod's life, also across replacements
        self.init_containers: list[Container] = []
        self.containers: list[Container] = []
        if spec is not None:
            self.init_containers = [Container(c.name, True, c) for c in spec.init_containers]
            waiting = "PodInitializing" if spec.init_containers else "ContainerCreating"
            for c in spec.containers:
                ctr = Container(c.name, False, c)
                ctr.reason = waiting
                self.containers.append(ctr)

    @property
    def ident(self) -> PodId:
        return self.namespace, self.name

    @property
    def label(self) -> str:
        return f"{self.namespace}/{self.name}"

    def all_containers(self) -> list[Container]:
        return self.init_containers + self.containers

    def record(self) -> Json:
        return {"name": self.name, "namespace": self.namespace, "key": self.key, "hash": self.hash,
                "grace": self.grace, "createdAt": self.created_at, "prepared": self.prepared,
                "stopping": self.stopping, "fatal": self.fatal, "netns": self.netns,
                "ip": self.ip, "initContainers": [c.record() for c in self.init_containers],
                "containers": [c.record() for c in self.containers]}

    @classmethod
    def from_record(cls, rec: Json) -> Pod:
        # A record without "key" was written by an agent that named pods on disk by their
        # bare name: the pod keeps those names (folder, netns, veth) for its life.
        name = str(rec["name"])
        key = rec.get("key") if isinstance(rec.get("key"), str) else name
        safe_name(key, "state.json: pod key", ValueError)
        pod = cls(name, str(rec.get("namespace", "default")),
                  str(rec.get("hash", "")), None, float(rec.get("grace", 30)), key)
        pod.created_at = float(rec.get("createdAt", time.time()))
        pod.prepared = bool(rec.get("prepared"))
        pod.stopping = bool(rec.get("stopping"))
        pod.fatal = rec.get("fatal")
        pod.netns = bool(rec.get("netns"))
        pod.ip = rec.get("ip") if isinstance(rec.get("ip"), str) else None
        pod.init_containers = [Container.from_record(c) for c in rec.get("initContainers", [])]
        pod.containers = [Container.from_record(c) for c in rec.get("containers", [])]
        return pod

    def attach(self, spec: PodSpec) -> bool:
        """Give a pod re-adopted from state.json its spec again; False if they do not match."""
        by_name = {c.name: c for c in self.all_containers()}
        wanted = spec.init_containers + spec.containers
        if {c.name for c in wanted} != set(by_name):
            return False
        for cspec in wanted:
            by_name[cspec.name].spec = cspec
        self.spec = spec
        self.grace = spec.grace
        return True

    def phase(self) -> str:
        if self.fatal:
            return "Failed"
        if any(not c.succeeded for c in self.init_containers):
            return "Pending"
        if self.containers and all(c.state == "terminated" for c in self.containers):
            ok = all((c.term or {}).get("exitCode") == 0 for c in self.containers)
            return "Succeeded" if ok else "Failed"
        if self.containers and all(c.ever_started for c in self.containers):
            return "Running"
        return "Pending"


def build_env(paths: Paths, pod: Pod, spec: ContainerSpec, uid: int | None = None) -> dict[str, str]:
    """A clean environment: PATH, HOME (of `uid`, else of the agent's user), the pod identity,
    volume dirs, then the pod's env."""
    try:
        home = pwd.getpwuid(os.getuid() if uid is None else uid).pw_dir or "/"
    except KeyError:
        home = "/"
    env = {"PATH": DEFAULT_PATH, "HOME": home, "HOSTNAME": pod.name, "POD_NAME": pod.name,
           "POD_NAMESPACE": pod.namespace}
    if pod.ip is not None:
        env["POD_IP"] = pod.ip
    if pod.spec is not None:
        for vol in pod.spec.volumes:
            key = "GITORCH_VOLUME_" + re.sub(r"[^A-Za-z0-9]", "_", vol.name).upper()
            env[key] = volume_source(paths, pod, vol)
    for var in spec.env:
        env[var.name] = var.value
    return env


def volume_source(paths: Paths, pod: Pod, vol: VolumeSpec) -> str:
    if vol.kind == "hostPath" and vol.host_path is not None:
        return vol.host_path
    return paths.volume_dir(pod.key, vol.name)


# How often the supervisor measures emptyDirs on disk against their sizeLimit (the kubelet's
# eviction manager looks every 10 s).
LOCAL_STORAGE_SECONDS = float(os.environ.get("GITORCH_LOCAL_STORAGE_SECONDS", "10"))
DISK_USAGE_MAX_ENTRIES = 100_000


def disk_usage(folder: str, stop_above: int) -> int:
    """Bytes a folder's files take on disk (du's count: allocated blocks), not following links;
    the walk stops once past `stop_above`, or after DISK_USAGE_MAX_ENTRIES entries (what it
    counted so far)."""
    total, seen, todo = 0, 0, [folder]
    while todo and total <= stop_above and seen < DISK_USAGE_MAX_ENTRIES:
        try:
            with os.scandir(todo.pop()) as entries:
                for entry in entries:
                    seen += 1
                    with contextlib.suppress(OSError):
                        info = entry.stat(follow_symlinks=False)
                        total += info.st_blocks * 512
                        if stat.S_ISDIR(info.st_mode):
                            todo.append(entry.path)
        except OSError:
            continue
    return total


def mount_tmpfs(folder: str, size: int | None) -> None:
    """An emptyDir with medium Memory, as the kubelet makes it: a tmpfs, `size` bytes at most
    (a write beyond fails with ENOSPC). OSError when it cannot be mounted (not root)."""
    options = "mode=0777" + (f",size={size}" if size else "")
    proc = subprocess.run([shutil.which("mount") or "mount", "-t", "tmpfs", "-o", options, "tmpfs", "--", folder],
                          capture_output=True, text=True, timeout=15, check=False)
    if proc.returncode != 0:
        raise OSError(f"tmpfs for {folder}: {one_line(proc.stderr) or 'mount failed'}")


def mount_source(paths: Paths, pod: Pod, vol: VolumeSpec, mount: MountSpec) -> str:
    """What a volumeMount binds: the volume, or its subPath. A subPath that does not exist in
    an emptyDir or hostPath volume is made a directory, as the kubelet does; in a ConfigMap or
    Secret volume it must be one of its files or folders."""
    root = volume_source(paths, pod, vol)
    if mount.sub_path is None:
        return root
    src = os.path.join(root, mount.sub_path)
    real_root = os.path.realpath(root)
    if os.path.realpath(src) != real_root and not os.path.realpath(src).startswith(real_root + os.sep):
        raise StartError(f"volumeMount {mount.path}: subPath {mount.sub_path} leaves volume {vol.name}")
    if not os.path.lexists(src):
        if vol.kind == "files":
            raise StartError(f"volumeMount {mount.path}: subPath {mount.sub_path} is not in volume {vol.name}")
        os.makedirs(src, exist_ok=True)
    return src


def write_files_volume(directory: str, vol: VolumeSpec) -> None:
    """Write a ConfigMap/Secret volume; rewritten in place when its content changes."""
    mode_dir, mode_file = (0o700, 0o600) if vol.secret else (0o755, 0o644)
    if vol.default_mode is not None:
        mode_file = vol.default_mode
        mode_dir = 0o755 if mode_file & 0o044 else 0o711 if mode_file & 0o011 else 0o700
    modes = dict(vol.modes)
    os.makedirs(directory, mode=mode_dir, exist_ok=True)
    os.chmod(directory, mode_dir)
    wanted = set()
    for rel, content in vol.files:
        mode = modes.get(rel, mode_file)
        path = os.path.join(directory, rel)
        wanted.add(os.path.normpath(path))
        os.makedirs(os.path.dirname(path), mode=mode_dir, exist_ok=True)
        current = None
        with contextlib.suppress(OSError), open(path, encoding="utf-8") as fh:
            current = fh.read()
        if current != content:
            atomic_write(path, content, mode=mode)
        os.chmod(path, mode)
    for dirpath, _dirs, files in os.walk(directory):
        for name in files:
            path = os.path.normpath(os.path.join(dirpath, name))
            if path not in wanted:
                with contextlib.suppress(OSError):
                    os.unlink(path)


CLAIM_ROOT = "/var/lib/gitorch/volumes"  # where PersistentVolumeClaims live (reconcile/podspecs.py)


def give_volume(folder: str, owner: tuple[int, int, bool], recursive: bool) -> None:
    """Make `folder` (and with `recursive`, what it holds) the pod user's: owned by its uid and
    group; a folder is 0770 (2770 with fsGroup: new files get the group), a file keeps its
    permission bits, group-readable with fsGroup (as the kubelet does for fsGroup volumes)."""
    uid, gid, setgid = owner
    paths = [folder]
    if recursive:
        for dirpath, dirs, files in os.walk(folder):
            paths += [os.path.join(dirpath, n) for n in dirs + files]
    for path in paths:
        st = os.lstat(path)
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.lchown(path, uid, gid)
        if os.path.isdir(path) and not os.path.islink(path):
            if path == folder and not recursive:
                os.chmod(path, 0o2770 if setgid else 0o770)
            elif setgid:
                os.chmod(path, (st.st_mode & 0o7777) | 0o2050)
        elif setgid and not os.path.islink(path):
            os.chmod(path, (st.st_mode & 0o777) | 0o040)


def find_executable(cmd0: str, env: dict[str, str], cwd: str,
                    mounts: Iterable[str]) -> str | None:
    """An error message if the command cannot be found, checked before starting it."""
    if "/" in cmd0:
        full = os.path.normpath(os.path.join(cwd, cmd0))
        if any(full == m or full.startswith(m + "/") for m in mounts):
            return None  # lives in a volume that only exists inside the mount namespace
        if os.path.isfile(full) and os.access(full, os.X_OK):
            return None
        return f'exec: "{cmd0}": no such executable file'
    if shutil.which(cmd0, path=env.get("PATH", DEFAULT_PATH)) is None:
        return f'exec: "{cmd0}": executable file not found in $PATH'
    return None


class StartError(Exception):
    """A container could not be started (reported as terminated, reason StartError)."""


class ConfigError(Exception):
    """A container must not start as configured (reported as waiting, reason
    CreateContainerConfigError, and tried again later, as the kubelet does)."""


@dataclass(frozen=True)
class Identity:
    """Who a container's processes are: None keeps the agent's own uid or gid."""

    uid: int | None
    gid: int | None
    groups: tuple[int, ...]


def resolve_identity(sec: SecuritySpec, namespace: str, accounts: dict[str, int]) -> Identity:
    """runAsUser, else the ServiceAccount's uid (its gid too); the gid is runAsGroup, else the
    account's, else the user's group on the node, else 0 (as runc does for a uid the image's
    /etc/passwd lacks)."""
    uid, gid = sec.run_as_user, sec.run_as_group
    if uid is None and sec.account is not None:
        account = accounts.get(f"{namespace}/{sec.account}")
        if account is None:
            raise StartError(f"ServiceAccount {namespace}/{sec.account} has no uid on this node yet")
        uid = account
        gid = account if gid is None else gid
    if uid is not None and gid is None:
        try:
            gid = pwd.getpwuid(uid).pw_gid
        except KeyError:
            gid = 0
    return Identity(uid, gid, sec.groups)


def check_non_root(sec: SecuritySpec, ident: Identity, pod: str, container: str) -> None:
    """The kubelet's verifyRunAsNonRoot, with its messages (`pod` as its format.Pod names it)."""
    if not sec.run_as_non_root:
        return
    if sec.run_as_user is not None:
        if sec.run_as_user == 0:
            raise ConfigError(f'container\'s runAsUser breaks non-root policy (pod: "{pod}", container: {container})')
        return
    if (ident.uid if ident.uid is not None else os.getuid()) == 0:
        raise ConfigError(f'container has runAsNonRoot and image will run as root (pod: "{pod}", '
                          f"container: {container})")


def setpriv_argv(sec: SecuritySpec, ident: Identity) -> list[str]:
    """What runs the container's command with its identity: util-linux's setpriv (uid, gid,
    groups, capability bounding set, no_new_privs), after SECCOMP_EXEC for RuntimeDefault (the
    filter is installed while still root, as runc does)."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise StartError("securityContext needs setpriv (util-linux) on the node")
    argv = [setpriv]
    if ident.uid is not None:
        argv.append(f"--reuid={ident.uid}")
    if ident.gid is not None:
        argv.append(f"--regid={ident.gid}")
    if ident.uid is not None or ident.gid is not None or ident.groups:
        argv.append(f"--groups={','.join(map(str, ident.groups))}" if ident.groups else "--clear-groups")
    caps = sec.capabilities()
    if caps is not None:
        argv += ["--inh-caps=-all", "--bounding-set=" + ",".join(["-all", *(f"+{c.lower()}" for c in sorted(caps))])]
    if sec.no_new_privs:
        argv.append("--no-new-privs")
    argv.append("--")
    if sec.seccomp == "RuntimeDefault":
        argv = [*seccomp_argv(), *argv]
    return argv


# System calls the RuntimeDefault filter refuses with EPERM: those Docker's default profile
# leaves out (module and kexec loading, mounts and namespaces, clocks, keyrings, BPF, perf,
# swap, reboot, other processes' memory), as x86_64 numbers.
SECCOMP_DENIED_X86_64 = (
    101, 134, 135, 136, 139, 153, 154, 155, 156, 163, 164, 165, 166, 167, 168, 169, 172, 173, 174, 175, 176, 177,
    178, 179, 180, 212, 227, 237, 238, 239, 246, 248, 249, 250, 272, 279, 298, 303, 304, 305, 308, 310, 311, 312,
    313, 320, 321, 323, 428, 429, 430, 431, 432, 433, 442,
)


def seccomp_filter(denied: Iterable[int]) -> bytes:
    """A classic BPF program for seccomp: other architectures (and x32 calls) killed, the
    `denied` numbers answered EPERM, everything else allowed."""
    import struct

    ld_abs, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    allow, eperm, kill = 0x7FFF0000, 0x00050000 | 1, 0x80000000
    numbers = sorted(set(denied))
    prog = [(ld_abs, 0, 0, 4), (jeq, 1, 0, 0xC000003E), (ret, 0, 0, kill), (ld_abs, 0, 0, 0)]
    last = len(numbers) + 1  # index of `ret eperm`, counted from after the x32 check
    prog.append((jge, last, 0, 0x40000000))
    for i, nr in enumerate(numbers):
        prog.append((jeq, last - 1 - i, 0, nr))
    prog += [(ret, 0, 0, allow), (ret, 0, 0, eperm)]
    return b"".join(struct.pack("<HBBI", *ins) for ins in prog)


# Installs the filter given as hex (argv[1]), then execs what follows "--": run as `python3 -S -c`,
# a few lines compiled at each start, not this whole file.
SECCOMP_EXEC = r"""
import ctypes, os, sys
code, argv = bytes.fromhex(sys.argv[1]), sys.argv[3:]
if os.uname().machine != "x86_64":
    sys.exit(f"seccompProfile RuntimeDefault: not supported on {os.uname().machine} nodes")
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
buf = ctypes.create_string_buffer(code, len(code))
prog = Prog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
libc = ctypes.CDLL(None, use_errno=True)
if os.getuid() != 0 and libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS: needed without CAP_SYS_ADMIN
    sys.exit(f"seccomp: no_new_privs: {os.strerror(ctypes.get_errno())}")
if libc.prctl(22, 2, ctypes.byref(prog), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
    sys.exit(f"seccomp: {os.strerror(ctypes.get_errno())}")
try:
    os.execvp(argv[0], argv)
except OSError as exc:
    sys.exit(f"seccomp: {argv[0]}: {exc}")
"""


def seccomp_argv() -> list[str]:
    """The command line that runs what follows under the RuntimeDefault filter."""
    code = seccomp_filter(SECCOMP_DENIED_X86_64).hex()
    return [sys.executable or "/usr/bin/python3", "-S", "-c", SECCOMP_EXEC, code, "--"]


# ---------------------------------------------------------------------------------------
# Runtimes: how a container's argv is built (process, or podman/docker for images)
# ---------------------------------------------------------------------------------------


def process_argv(paths: Paths, pod: Pod, spec: ContainerSpec, env: dict[str, str],
                 cgroup_dirs: list[str], bind_mounts: bool, exit_file: str,
                 resolv: str | None = None, prefix: Iterable[str] = ()) -> tuple[list[str], str, bool]:
    """(argv, cwd, uses a mount namespace) for a container run directly on the node.

    When the process must join cgroups or see volumes at their mountPath (or the pod's own
    resolv.conf, a file at ``resolv``, at /etc/resolv.conf), a tiny sh preamble does that
    first. The same sh then stays as the container's parent (see ``exit_recorder``): the
    tracked pid is its process group's leader, in the container's namespaces and cgroups.
    """
    from shlex import quote as q

    assert pod.spec is not None
    cmd = list(spec.command) + list(spec.args)
    mounts = []
    if bind_mounts:
        for m in spec.mounts:
            src = mount_source(paths, pod, pod.spec.volume(m.volume), m)
            mounts.append((src, m.path, m.read_only))
    cwd = spec.working_dir or "/"
    problem = find_executable(cmd[0], env, cwd, [m[1] for m in mounts])
    if problem:
        raise StartError(problem)
    resolv = resolv if bind_mounts else None
    read_only_root = spec.security is not None and spec.security.read_only_root
    if read_only_root and not bind_mounts:
        raise StartError("readOnlyRootFilesystem needs a private mount namespace, which this node cannot make "
                         f"({paths.root}: see the node's volumeMounts check)")
    cmd = [*prefix, *cmd]
    if not mounts and not cgroup_dirs and resolv is None and not read_only_root:
        if not os.path.isdir(cwd):
            raise StartError(f"workingDir {cwd}: no such directory")
        return recording_exit(cmd, exit_file), cwd, False
    lines = ["set -e"]
    lines += [f"echo $$ > {q(os.path.join(d, 'cgroup.procs'))}" for d in cgroup_dirs]
    # `--` everywhere a path follows; `exec "$@"` needs none: sh's exec takes no options.
    for src, dst, _ in mounts:  # the mount points first: the node may be read-only below
        if os.path.isdir(src):
            lines.append(f"mkdir -p -- {q(dst)}")
        else:  # a subPath naming one file (a ConfigMap key, say): bound over a file
            lines += [f"mkdir -p -- {q(os.path.dirname(dst))}", f"[ -e {q(dst)} ] || : > {q(dst)}"]
    if read_only_root:
        # Every mount of the node read-only in this mount namespace (/proc and /dev stay as
        # they are, as in a container), then the exit file's folder writable again for the
        # shim; volumes bound below inherit read-only and are made writable one by one.
        # Read here, not by the agent: `ip netns exec` gives the shim a mount namespace of its own.
        # A mount point that does not resolve, or that a later mount covers (podman's storage
        # under a node's own /var/lib/containers, say), lies under another mount: nothing reaches
        # it. Any other mount point that refuses is tried again to say why, and that ends it.
        lines += ["covered() {",
                  "  awk -v id=\"$1\" -v p=\"$2\" '$1 == id { after = 1; next }",
                  "    after && ($5 == p || $5 == \"/\" || index(p, $5 \"/\") == 1) { hit = 1 }",
                  "    END { exit !hit }' /proc/self/mountinfo",
                  "}",
                  "while read -r id _ _ _ raw _; do",
                  '  case "$raw" in /proc|/proc/*|/dev|/dev/*) continue ;; esac',
                  "  point=$(printf '%b' \"$raw\")",
                  '  [ -e "$point" ] || continue',
                  '  mount -o remount,bind,ro -- "$point" 2>/dev/null || covered "$id" "$raw" '
                  '|| mount -o remount,bind,ro -- "$point"',
                  "done < /proc/self/mountinfo"]
        logs = os.path.dirname(exit_file)
        lines += [f"mount --bind -- {q(logs)} {q(logs)}", f"mount -o remount,bind,rw -- {q(logs)}"]
    for src, dst, read_only in mounts:
        lines.append(f"mount --bind -- {q(src)} {q(dst)}")
        if read_only:
            lines.append(f"mount -o remount,bind,ro -- {q(dst)}")
        elif read_only_root:
            lines.append(f"mount -o remount,bind,rw -- {q(dst)}")
    if resolv is not None:
        # A file over a file (through a symlink too); a node without one keeps none.
        lines.append(f"if [ -e /etc/resolv.conf ]; then mount --bind -- {q(resolv)} /etc/resolv.conf; fi")
    lines += [f"cd -- {q(cwd)}", *exit_recorder(exit_file)]
    argv = ["/bin/sh", "-c", "\n".join(lines), "gitorch-init", *cmd]
    private = bool(mounts) or resolv is not None or read_only_root
    if private:
        unshare = shutil.which("unshare") or "unshare"
        # No --fork: unshare execs sh in place, so the pid stays the container's pid.
        argv = [unshare, "--mount", "--propagation", "private", "--", *argv]
    return argv, "/", private


def exit_recorder(exit_file: str) -> list[str]:
    """sh lines that run "$@" as a child and write its exit status to ``exit_file``.

    The supervisor is the parent of what it starts, so a process adopted by a new
    supervisor (the old one killed, or replaced by an agent upgrade) ends with no exit
    status anyone can read. This small sh (as conmon is for podman) outlives any
    supervisor: it waits for the container and leaves the status in a file. It is the
    process group's leader, so signals to the group still reach the container; it ignores
    nothing itself (a trap, reset on exec, so the container gets every default) and waits
    out a SIGTERM the container handles. A child killed by signal N reads as 128+N.
    """
    from shlex import quote as q

    return ["set +e", "trap : TERM INT", '( exec "$@" )', "rc=$?",
            f"echo \"$rc\" > {q(exit_file)}", 'exit "$rc"']


def recording_exit(argv: list[str], exit_file: str) -> list[str]:
    """argv run under ``exit_recorder``."""
    return ["/bin/sh", "-c", "\n".join(exit_recorder(exit_file)), "gitorch-shim", *argv]


def read_exit_file(path: str | None) -> int | None:
    """The exit status an ``exit_recorder`` left, or None (none, or not readable)."""
    if not path:
        return None
    try:
        with open(path, encoding="ascii") as fh:
            text = fh.read(16).strip()
    except (OSError, ValueError):
        return None
    return int(text) if text.isdigit() and int(text) < 256 else None


def image_argv(paths: Paths, pod: Pod, spec: ContainerSpec, runtime: tuple[str, str],
               name: str, env: dict[str, str],
               resolv: str | None = None, ident: Identity | None = None) -> tuple[list[str], dict[str, str]]:
    """(argv, environment of the runtime client) for an image container.

    Env values travel through the client's environment (``--env NAME``), never its argv, so
    secrets do not show up in ps.
    """
    assert pod.spec is not None
    kind, binary = runtime
    # imagePullPolicy: Always pulls on every start, IfNotPresent only a missing image, Never
    # runs what the node has (a missing image fails at once instead of waiting on a registry).
    # --quiet: a pull's progress stays out of the container's log (its errors do not).
    argv = [binary, "run", *runtime_flags(kind), "--rm", "--name", name, "--pull", spec.pull, "--quiet",
            "--network", f"ns:{netns_path(pod.key)}" if pod.netns and kind == "podman" else "host",
            "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]
    if kind == "podman":
        argv.append("--replace")
    client_env = {"PATH": DEFAULT_PATH, "HOME": env.get("HOME", "/")}
    for key, value in env.items():
        if key in ("PATH", "HOME") and not any(v.name == key for v in spec.env):
            continue  # keep the image's own PATH/HOME unless the pod sets them
        if key in ("PATH", "HOME"):
            argv += ["--env", f"{key}={value}"]
        else:
            client_env[key] = value
            argv += ["--env", key]
    mounts = [(mount_source(paths, pod, pod.spec.volume(m.volume), m), m.path, m.read_only)
              for m in spec.mounts]
    if resolv is not None and pod.netns and kind == "podman":
        mounts.append((resolv, "/etc/resolv.conf", True))  # docker runs on the host network
    for src, dst, read_only in mounts:
        # The spec's paths were checked; the agent's own (its --root) are checked here.
        if any(c in text for text in (src, dst) for c in ":,\0\n"):
            raise StartError(f"volume path {src!r} or {dst!r} contains ':', ',' or a control "
                             f"character: {kind} -v would misread it")
        argv += ["-v", f"{src}:{dst}" + (":ro" if read_only else "")]
    if spec.memory_bytes is not None:
        argv += ["--memory", str(spec.memory_bytes)]
    if spec.cpu_millis is not None:
        argv += ["--cpus", f"{spec.cpu_millis / 1000:.3f}"]
    if spec.working_dir:
        argv += ["-w", spec.working_dir]
    argv += security_flags(spec.security, ident)
    if spec.command:
        argv += ["--entrypoint", json.dumps(list(spec.command))]
    assert spec.image is not None
    # `--`: whatever the image and args are, nothing after it is read as an option.
    argv += ["--", spec.image, *spec.args]
    return argv, client_env


def security_flags(sec: SecuritySpec | None, ident: Identity | None) -> list[str]:
    """A securityContext as podman's (and docker's) own flags; without one, the runtime's defaults."""
    if sec is None:
        return []
    out: list[str] = []
    if ident is not None and ident.uid is not None:
        out += ["--user", f"{ident.uid}:{ident.gid if ident.gid is not None else 0}"]
    elif ident is not None and ident.gid is not None:
        out += ["--group-add", str(ident.gid)]
    for g in ident.groups if ident is not None else ():
        out += ["--group-add", str(g)]
    if sec.read_only_root:
        out.append("--read-only")
    if sec.privileged:
        out.append("--privileged")
    else:
        out += [f"--cap-drop={c}" for c in sec.cap_drop]
        out += [f"--cap-add={c}" for c in sec.cap_add]
    if sec.no_new_privs:
        out += ["--security-opt", "no-new-privileges"]
    if sec.seccomp == "Unconfined":
        out += ["--security-opt", "seccomp=unconfined"]
    return out


def run_quietly(argv: list[str], timeout: float) -> None:
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=timeout, check=False)


def in_background(argv: list[str], timeout: float) -> None:
    threading.Thread(target=run_quietly, args=(argv, timeout), daemon=True).start()


# ---------------------------------------------------------------------------------------
# Pod network: a bridge holding the node's pod CIDR gateway, one netns + veth per pod
# ---------------------------------------------------------------------------------------

BRIDGE = "gitorch0"
NETNS_DIR = "/run/netns"


class NetworkError(OSError):
    """Setting up or tearing down pod networking failed."""


@dataclass(frozen=True)
class NetworkSpec:
    """The node's pod network as the controller sends it with ``sync``."""

    cidr: str
    gateway: str
    prefix: int
    routes: tuple[tuple[str, str], ...]  # (other node's pod CIDR, that node's address)

    @classmethod
    def parse(cls, raw: Any) -> NetworkSpec | None:
        import ipaddress

        if not isinstance(raw, dict) or not raw.get("podCIDR"):
            return None
        try:
            net = ipaddress.ip_network(str(raw["podCIDR"]))
            gateway = str(raw.get("gateway") or next(net.hosts()))
            ipaddress.ip_address(gateway)
            routes = []
            for r in raw.get("routes") or []:
                if isinstance(r, dict) and r.get("cidr") and r.get("via"):
                    routes.append((str(ipaddress.ip_network(str(r["cidr"]))),
                                   str(ipaddress.ip_address(str(r["via"])))))
        except (ValueError, StopIteration) as exc:
            raise RequestError(f"sync: network: {exc}") from exc
        return cls(str(net), gateway, net.prefixlen, tuple(sorted(routes)))

    def free_ip(self, taken: Iterable[str], after: str | None = None) -> str | None:
        """The first address of the CIDR after ``after`` (wrapping round; the lowest without
        one) that is neither the gateway nor taken."""
        import ipaddress

        used = set(taken) | {self.gateway}
        hosts = [str(h) for h in ipaddress.ip_network(self.cidr).hosts()]
        start = hosts.index(after) + 1 if after in hosts else 0
        for host in hosts[start:] + hosts[:start]:
            if host not in used:
                return host
        return None

    def holds(self, ip: str | None) -> bool:
        import ipaddress

        try:
            return ip is not None and ipaddress.ip_address(ip) in ipaddress.ip_network(self.cidr)
        except ValueError:
            return False


def netns_name(key: str) -> str:
    """A pod's network namespace, from its key (a file name: at most 109 characters)."""
    return f"gitorch-{key}"


def netns_path(key: str) -> str:
    return os.path.join(NETNS_DIR, netns_name(key))


def veth_names(key: str, tag: str) -> tuple[str, str]:
    """(host side, pod side before its rename to eth0): interface names have 15 chars."""
    digest = hashlib.sha256(f"{key}{tag}".encode()).hexdigest()[:11]
    return f"gv{digest}", f"gp{digest}"


def ip_cmd(*args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """Run ip(8). iproute2 takes no ``--``; none is needed: every argument is a keyword, an
    agent-made interface or netns name (from a pod key, which starts with a letter or a
    digit) or an address that ipaddress parsed."""
    binary = shutil.which("ip", path=DEFAULT_PATH) or "ip"
    try:
        proc = subprocess.run([binary, *args], stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetworkError(f"ip {' '.join(args)}: {exc}") from exc
    if check and proc.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: "
                           f"{one_line(proc.stderr.decode(errors='replace')) or proc.returncode}")
    return proc


def link_exists(name: str) -> bool:
    return os.path.exists(os.path.join("/sys/class/net", name))


def mac_for(ip: str) -> str:
    """A MAC derived from an IPv4 address (0a:58 + its four bytes, as the CNI bridge plugin
    does): a pod re-created with the same IP keeps its MAC, so neighbours' ARP entries stay
    right instead of black-holing it until they expire (tens of seconds)."""
    import ipaddress

    return "0a:58:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(ip).packed)


def node_network_up(net: NetworkSpec, old_routes: Iterable[tuple[str, str]] = ()) -> None:
    """The bridge with the gateway address, forwarding, and routes to the other nodes' pods;
    idempotent, so it also repairs what a reboot or a person removed."""
    if not link_exists(BRIDGE):
        ip_cmd("link", "add", BRIDGE, "type", "bridge")
    # A bridge without an address of its own takes its lowest port's, which changes as pods
    # come and go: pods would keep sending to a gateway MAC that is gone.
    gateway_mac = mac_for(net.gateway)
    if (read_text(f"/sys/class/net/{BRIDGE}/address") or "").strip() != gateway_mac:
        ip_cmd("link", "set", BRIDGE, "address", gateway_mac)
        # Running pods learnt the old one (a node set up by an older agent): forget it now.
        for ns in os.listdir(NETNS_DIR) if os.path.isdir(NETNS_DIR) else ():
            if ns.startswith(netns_name("")):
                ip_cmd("-n", ns, "neigh", "flush", "all", check=False)
    addrs = ip_cmd("-o", "addr", "show", "dev", BRIDGE).stdout.decode(errors="replace")
    want = f"{net.gateway}/{net.prefix}"
    for line in addrs.splitlines():
        parts = line.split()
        if "inet" in parts:
            have = parts[parts.index("inet") + 1]
            if have != want:
                ip_cmd("addr", "del", have, "dev", BRIDGE, check=False)
    if want not in addrs.split():
        ip_cmd("addr", "replace", want, "dev", BRIDGE)
    ip_cmd("link", "set", BRIDGE, "up")
    try:
        with open("/proc/sys/net/ipv4/ip_forward", "w") as fh:
            fh.write("1")
    except OSError as exc:
        raise NetworkError(f"enabling ip_forward: {exc}") from exc
    for cidr, via in old_routes:
        if (cidr, via) not in net.routes:
            ip_cmd("route", "del", cidr, "via", via, check=False)
    for cidr, via in net.routes:
        ip_cmd("route", "replace", cidr, "via", via)


BRIDGE_NF = "/proc/sys/net/bridge/bridge-nf-call-iptables"


def bridge_netfilter() -> str:
    """Make bridged IPv4 traffic (pod to pod on one node) pass the ip family's hooks, where
    the NetworkPolicy table is: br_netfilter loaded and net.bridge.bridge-nf-call-iptables 1
    (per network namespace). Returns "" when it is, else why not."""
    if not os.path.exists(BRIDGE_NF):
        modprobe = shutil.which("modprobe", path=DEFAULT_PATH)
        if modprobe:
            run_quietly([modprobe, "br_netfilter"], 10)
    if not os.path.exists(BRIDGE_NF):
        return "the br_netfilter module is not loaded and could not be (modprobe br_netfilter)"
    if (read_text(BRIDGE_NF) or "").strip() != "1":
        try:
            with open(BRIDGE_NF, "w") as fh:
                fh.write("1")
        except OSError as exc:
            return f"net.bridge.bridge-nf-call-iptables is 0 and could not be set to 1: {exc}"
    return ""


def pod_network_ok(key: str, tag: str) -> bool:
    return os.path.exists(netns_path(key)) and link_exists(veth_names(key, tag)[0])


# Pods are IPv4 only: their eth0 gets no IPv6 at all (not even a link-local fe80:: address),
# so no pod traffic passes beside the NetworkPolicy table, which is of the ip family. lo keeps
# ::1 for programs that try localhost there first. A kernel without IPv6 has nothing to turn off.
NO_IPV6 = "echo 1 > /proc/sys/net/ipv6/conf/eth0/disable_ipv6 || true"


def pod_network_up(key: str, tag: str, ip: str, net: NetworkSpec) -> None:
    """A fresh netns for the pod: lo, eth0 with its IP on the node bridge, default route."""
    pod_network_down(key, tag)
    ns = netns_name(key)
    host, peer = veth_names(key, tag)
    ip_cmd("netns", "add", ns)
    ip_cmd("link", "add", host, "type", "veth", "peer", "name", peer)
    ip_cmd("link", "set", peer, "netns", ns)
    ip_cmd("link", "set", host, "master", BRIDGE)
    ip_cmd("link", "set", host, "up")
    ip_cmd("-n", ns, "link", "set", "lo", "up")
    ip_cmd("-n", ns, "link", "set", peer, "name", "eth0", "address", mac_for(ip))
    ip_cmd("netns", "exec", ns, "sh", "-c", NO_IPV6)
    ip_cmd("-n", ns, "addr", "add", f"{ip}/{net.prefix}", "dev", "eth0")
    ip_cmd("-n", ns, "link", "set", "eth0", "up")
    ip_cmd("-n", ns, "route", "replace", "default", "via", net.gateway)
    for problem in unprivileged_ports([key]).values():
        raise NetworkError(problem)


UNPRIVILEGED_PORTS = "/proc/sys/net/ipv4/ip_unprivileged_port_start"
CLONE_NEWNET = 0x40000000


def unprivileged_ports(keys: Iterable[str]) -> dict[str, str]:
    """Any user may bind any port in these pods' network namespaces, as containerd sets up a pod
    sandbox (net.ipv4.ip_unprivileged_port_start=0): a pod runs as its account's user, not root,
    and still serves on port 80. Returns why it failed, per key (none: all done).

    /proc/sys/net is the network namespace of the thread writing it: a thread of its own joins
    each namespace (setns) and then ends, so no other thread leaves the node's namespace and no
    process is started (nsenter and sh cost ~5 ms a pod)."""
    failed: dict[str, str] = {}

    def write_in_each() -> None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        for key in keys:
            try:
                fd = os.open(netns_path(key), os.O_RDONLY | os.O_CLOEXEC)
                try:
                    if libc.setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
                finally:
                    os.close(fd)
                with open(UNPRIVILEGED_PORTS, "w", encoding="ascii") as fh:
                    fh.write("0")
            except OSError as exc:
                failed[key] = f"net.ipv4.ip_unprivileged_port_start in {netns_name(key)}: {exc}"

    worker = threading.Thread(target=write_in_each, name="netns-sysctl", daemon=True)
    worker.start()
    worker.join()
    return failed


def ip_batch(lines: list[str], netns: str | None = None) -> None:
    """Run many ip(8) commands in one process (``ip -batch``, in netns if given); it stops at
    the first that fails. Each line's words are keywords, agent-made names or parsed
    addresses (see ip_cmd), so none holds a space, a quote or a '#', but for NO_IPV6, a
    constant, quoted (ip's batch reader takes a double-quoted word whole)."""
    binary = shutil.which("ip", path=DEFAULT_PATH) or "ip"
    argv = [binary, *(["-n", netns] if netns else []), "-batch", "-"]
    try:
        proc = subprocess.run(argv, input="".join(f"{line}\n" for line in lines).encode(),
                              capture_output=True, timeout=10 + len(lines) / 10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetworkError(f"ip -batch ({len(lines)} commands): {exc}") from exc
    if proc.returncode != 0:
        raise NetworkError(f"ip -batch: {one_line(proc.stderr.decode(errors='replace')) or proc.returncode}")


def pods_network_up(pods: list[tuple[str, str]], tag: str, net: NetworkSpec) -> set[str]:
    """Fresh netns for many pods (key, IP) at once, as pod_network_up makes one; the keys done.

    Measured on a lab node: pod_network_up's ten ip(8) processes cost 40-50 ms a pod (20 new
    pods held the supervisor's loop for a second, and CPU and the kernel's rtnl lock are
    shared by every node on a machine); one batch for the node's side (the peer made in the
    pod's namespace as eth0) and one per pod inside its namespace cost ~3 ms a pod. A pod
    left out (a batch failed, e.g. an old ip(8)) is for pod_network_up to retry alone.
    """
    for key, _ip in pods:
        pod_network_down(key, tag)
    lines = []
    for key, ip in pods:
        ns, host = netns_name(key), veth_names(key, tag)[0]
        lines += [f"netns add {ns}",
                  f"link add {host} type veth peer name eth0 address {mac_for(ip)} netns {ns}",
                  f'netns exec {ns} sh -c "{NO_IPV6}"',
                  f"link set {host} master {BRIDGE} up"]
    try:
        ip_batch(lines)
    except NetworkError:
        return set()
    done = set()
    for key, ip in pods:
        if not pod_network_ok(key, tag):
            continue
        try:
            ip_batch(["link set lo up", f"addr add {ip}/{net.prefix} dev eth0", "link set eth0 up",
                      f"route replace default via {net.gateway}"], netns_name(key))
        except NetworkError:
            continue
        done.add(key)
    return done - unprivileged_ports(done).keys()


def pod_network_down(key: str, tag: str) -> None:
    """Remove the pod's veth (explicitly: netns deletion frees it lazily) and netns."""
    host, peer = veth_names(key, tag)
    for name in (host, peer):
        if link_exists(name):
            ip_cmd("link", "del", name, check=False)
    if os.path.exists(netns_path(key)):
        ip_cmd("netns", "del", netns_name(key))


def pod_network_works(paths: Paths) -> bool:
    """The controller sent a pod network and the node bridge carries it."""
    desired = read_json(paths.desired, {})
    return isinstance(desired, dict) and bool((desired.get("network") or {}).get("podCIDR")) \
        and link_exists(BRIDGE)


@dataclass(frozen=True)
class ClusterDNSSpec:
    """The cluster DNS as the controller sends it with ``sync`` (``dns``): what a pod's
    /etc/resolv.conf names. resolv.conf has no port: the server must answer on port 53."""

    nameservers: tuple[str, ...]
    domain: str
    options: tuple[str, ...]

    @classmethod
    def parse(cls, raw: Any) -> ClusterDNSSpec | None:
        import ipaddress

        if not isinstance(raw, dict) or not raw.get("nameservers"):
            return None
        servers = raw["nameservers"]
        if not isinstance(servers, list):
            raise RequestError("sync: dns.nameservers must be a list")
        try:
            nameservers = tuple(str(ipaddress.ip_address(str(n))) for n in servers)
        except ValueError as exc:
            raise RequestError(f"sync: dns.nameservers: {exc}") from exc
        domain = str(raw.get("domain") or "cluster.local").strip(".")
        options = raw.get("options", ["ndots:5"])
        if not isinstance(options, list):
            raise RequestError("sync: dns.options must be a list")
        words = (domain, *(str(o) for o in options))
        if not domain or any(not w or any(c.isspace() for c in w) for w in words):
            raise RequestError("sync: dns: domain and options must be single words")
        return cls(nameservers, domain, tuple(str(o) for o in options))


def resolv_conf(spec: PodSpec, netns: bool, dns: ClusterDNSSpec | None) -> str | None:
    """The pod's /etc/resolv.conf, as the kubelet writes it for its dnsPolicy; None keeps
    the node's own (``Default``, host-network ``ClusterFirst``, or no cluster DNS known)."""
    servers, searches, options = spec.dns_config
    policy = spec.dns_policy
    if policy == "None":
        base_servers: tuple[str, ...] = ()
        base_search: tuple[str, ...] = ()
        base_options: tuple[str, ...] = ()
    elif policy == "ClusterFirstWithHostNet" or (policy == "ClusterFirst" and netns):
        if dns is None:
            return None
        d = dns.domain
        base_servers, base_options = dns.nameservers, dns.options
        base_search = (f"{spec.namespace}.svc.{d}", f"svc.{d}", d)
    else:
        return None
    all_servers = list(dict.fromkeys(base_servers + servers))[:3]  # glibc reads three
    all_search = list(dict.fromkeys(base_search + searches))
    merged: dict[str, str] = {}
    for opt in base_options + options:  # the pod's dnsConfig wins, option by option
        merged[opt.split(":", 1)[0]] = opt
    if not all_servers and not all_search and not merged:
        return None
    lines = ["# written by the gitorch node agent for this pod"]
    lines += [f"nameserver {n}" for n in all_servers]
    if all_search:
        lines.append("search " + " ".join(all_search))
    if merged:
        lines.append("options " + " ".join(merged.values()))
    return "\n".join(lines) + "\n"


def in_pod_netns(argv: list[str], key: str) -> list[str]:
    """Wrap argv so it runs in the pod's network namespace; nsenter execs in place, so the
    pid is still the container's."""
    nsenter = shutil.which("nsenter", path=DEFAULT_PATH) or "nsenter"
    return [nsenter, f"--net={netns_path(key)}", "--", *argv]


# ---------------------------------------------------------------------------------------
# Service proxy: one nftables table (kube-proxy's job) DNAT-ing cluster IPs and node ports
# to ready endpoints, rebuilt atomically by ``sync`` when the controller's table changes
# ---------------------------------------------------------------------------------------

NFT_TABLE = "ip gitorch"
MASQ_MARK = "0x4000"
SERVICE_PROTOCOLS = ("tcp", "udp", "sctp")


def _ip4(raw: Any, where: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.IPv4Address(str(raw)))
    except ValueError as exc:
        raise RequestError(f"sync: {where}: {exc}") from exc


def _service_port(raw: Any, where: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 < raw < 65536:
        raise RequestError(f"sync: {where}: must be a port number, not {raw!r}")
    return raw


_CIDR = re.compile(r"(\d{1,3}\.){3}\d{1,3}/\d{1,2}")


def parse_services(raw: Any) -> list[Json]:
    """The controller's service table, checked: [{name, protocol, clusterIP, port,
    nodePort, endpoints: [{ip, port}]}]. Raises RequestError naming what is wrong."""
    if not isinstance(raw, list):
        raise RequestError("sync: services must be a list")
    out = []
    for i, s in enumerate(raw):
        where = f"services[{i}]"
        if not isinstance(s, dict):
            raise RequestError(f"sync: {where} must be an object")
        proto = str(s.get("protocol") or "TCP").lower()
        if proto not in SERVICE_PROTOCOLS:
            raise RequestError(f"sync: {where}.protocol: {proto!r} is not TCP, UDP or SCTP")
        vip = _ip4(s["clusterIP"], f"{where}.clusterIP") if s.get("clusterIP") else None
        node_port = _service_port(s["nodePort"], f"{where}.nodePort") if s.get("nodePort") else None
        eps = s.get("endpoints") or []
        if not isinstance(eps, list):
            raise RequestError(f"sync: {where}.endpoints must be a list")
        endpoints = sorted({(_ip4(e.get("ip") if isinstance(e, dict) else None, f"{where}.endpoints[{j}].ip"),
                             _service_port(e.get("port"), f"{where}.endpoints[{j}].port"))
                            for j, e in enumerate(eps)})
        affinity = s.get("affinitySeconds")
        if affinity is not None and (isinstance(affinity, bool) or not isinstance(affinity, int)
                                     or not 1 <= affinity <= 86400):
            raise RequestError(f"sync: {where}.affinitySeconds must be 1 to 86400")
        lb = _ip4(s["loadBalancerIP"], f"{where}.loadBalancerIP") if s.get("loadBalancerIP") else None
        ranges = s.get("sourceRanges") or []
        if not isinstance(ranges, list) or not all(isinstance(r, str) and _CIDR.fullmatch(r) for r in ranges):
            raise RequestError(f"sync: {where}.sourceRanges must be a list of IPv4 CIDRs")
        host_port = _service_port(s["hostPort"], f"{where}.hostPort") if s.get("hostPort") else None
        if host_port is not None and len(endpoints) != 1:
            raise RequestError(f"sync: {where}: a hostPort entry has exactly one endpoint, its pod")
        out.append({"name": str(s.get("name") or where), "protocol": proto, "clusterIP": vip, "hostPort": host_port,
                    "port": _service_port(s.get("port"), f"{where}.port"), "nodePort": node_port,
                    "endpoints": endpoints, "affinity": affinity, "loadBalancerIP": lb,
                    "sourceRanges": ranges, "local": bool(s.get("local"))})
    return out


def nft_ruleset(services: list[Json], pod_cidr: str | None, cluster_cidrs: Iterable[str] = ()) -> str:
    """The whole ``ip gitorch`` table as one ``nft -f`` transaction: created if missing,
    deleted and rebuilt, so a reader never sees half a table. With ``cluster_cidrs`` (every
    pod address of the cluster), pods' traffic to anywhere else leaving the node by another
    interface than the bridge is masqueraded, so the replies find their way back."""
    rules: list[str] = []  # in chain "services": VIP/node-port matches
    rejects: list[str] = []  # services with no endpoint: refused, not black-holed
    chains: list[str] = []
    for i, s in enumerate(services):
        proto, eps = s["protocol"], s["endpoints"]
        match = f"meta l4proto {proto} th dport"
        comment = f'comment "{re.sub(r"[^A-Za-z0-9._:/-]", "_", s["name"])[:100]}"'
        if s.get("hostPort"):
            # A pod's hostPort, as the CNI portmap plugin does it: this node's addresses at that
            # port go to the pod; only for a pod of this node (the table is the cluster's).
            (ip, port), = eps
            if _in_cidr(ip, pod_cidr):
                rules.append(f"fib daddr type local ip daddr != 127.0.0.0/8 {match} {s['hostPort']} goto hp{i} "
                             f"{comment}")
                chains.append(f"chain hp{i} {{\n meta l4proto {proto} dnat to {ip}:{port} {comment}\n }}")
            continue
        targets = []
        if s["clusterIP"]:
            targets.append((f"ip daddr {s['clusterIP']} {match} {s['port']}", f"svc{i}"))
        if s["nodePort"]:
            targets.append((f"fib daddr type local ip daddr != 127.0.0.0/8 {match} {s['nodePort']}", f"np{i}"))
        lb = s.get("loadBalancerIP")
        if lb:
            # loadBalancerSourceRanges: only those clients are sent on; the rest are refused.
            ranges = s.get("sourceRanges") or []
            only = f"ip saddr {{ {', '.join(ranges)} }} " if ranges else ""
            targets.append((f"ip daddr {lb} {only}{match} {s['port']}", f"np{i}"))
            if ranges:
                rejects.append(f"ip daddr {lb} ip saddr != {{ {', '.join(ranges)} }} {match} {s['port']} reject "
                               f"{comment}")
        if not eps:
            rejects.extend(f"{m} reject {comment}" for m, _ in targets)
            continue
        rules.extend(f"{m} goto {chain} {comment}" for m, chain in targets)
        mine = [j for j, (ip, _) in enumerate(eps) if s.get("local") and _in_cidr(ip, pod_cidr)]
        if (s["nodePort"] or lb) and s.get("local"):
            # externalTrafficPolicy Local: only this node's pods, and the client's own address kept.
            if not mine:
                chains.append(f"chain np{i} {{\n drop {comment}\n }}")
            elif len(mine) == 1:
                chains.append(f"chain np{i} {{\n goto ep{i}_{mine[0]} {comment}\n }}")
            else:
                arms = ", ".join(f"{k} : goto ep{i}_{j}" for k, j in enumerate(mine))
                chains.append(f"chain np{i} {{\n numgen random mod {len(mine)} vmap {{ {arms} }} {comment}\n }}")
        elif s["nodePort"] or lb:
            # Node-port and LoadBalancer traffic may come back from a pod on another node: masquerade it.
            chains.append(f"chain np{i} {{\n meta mark set meta mark | {MASQ_MARK} goto svc{i} {comment}\n }}")
        # sessionAffinity ClientIP, as kube-proxy's nftables mode does it: each endpoint keeps
        # the clients it served in a set whose entries expire `affinity` seconds after their
        # last connection, and a client in one of those sets goes back to that endpoint.
        affinity = s.get("affinity")
        sticky = "".join(f" ip saddr @aff{i}_{j} goto ep{i}_{j} {comment}\n" for j in range(len(eps))) \
            if affinity else ""
        if len(eps) == 1:
            chains.append(f"chain svc{i} {{\n{sticky} goto ep{i}_0 {comment}\n }}")
        else:
            arms = ", ".join(f"{j} : goto ep{i}_{j}" for j in range(len(eps)))
            chains.append(f"chain svc{i} {{\n{sticky} numgen random mod {len(eps)} vmap {{ {arms} }} {comment}\n }}")
        for j, (ip, port) in enumerate(eps):
            # Every rule names its Service: a hand edit anywhere is reported against it.
            remember = f" update @aff{i}_{j} {{ ip saddr }} {comment}\n" if affinity else ""
            if affinity:
                chains.append(f"set aff{i}_{j} {{\n type ipv4_addr; flags dynamic,timeout; timeout {affinity}s;\n }}")
            chains.append(f"chain ep{i}_{j} {{\n{remember} meta l4proto {proto} dnat to {ip}:{port} {comment}\n }}")
    # A pod reaching a service backed by a pod on this same bridge (itself included) would
    # get the reply straight over the bridge, never un-NATed: make it go through the node.
    local = f"ip saddr {pod_cidr} " if pod_cidr else ""
    import ipaddress

    inside = [str(n) for n in ipaddress.collapse_addresses(ipaddress.IPv4Network(c) for c in cluster_cidrs)]
    egress = ""
    if pod_cidr and inside:
        egress = (f"  ip saddr {pod_cidr} ip daddr != {{ {', '.join(inside)} }} "
                  f"oifname != \"{BRIDGE}\" masquerade\n")
    lines = [
        f"table {NFT_TABLE}",
        f"delete table {NFT_TABLE}",
        f"table {NFT_TABLE} {{",
        " chain prerouting {\n  type nat hook prerouting priority dstnat; policy accept;\n  jump services\n }",
        " chain output {\n  type nat hook output priority -100; policy accept;\n  jump services\n }",
        " chain postrouting {\n  type nat hook postrouting priority srcnat; policy accept;\n"
        f"  meta mark & {MASQ_MARK} == {MASQ_MARK} masquerade\n"
        f"  ct status dnat oifname \"{BRIDGE}\" {local}masquerade\n{egress} }}",
        " chain services {\n" + "".join(f"  {r}\n" for r in rules) + " }",
        " chain reject-forward {\n  type filter hook forward priority filter; policy accept;\n  jump no-endpoints\n }",
        " chain reject-input {\n  type filter hook input priority filter; policy accept;\n  jump no-endpoints\n }",
        " chain reject-output {\n  type filter hook output priority 0; policy accept;\n  jump no-endpoints\n }",
        " chain no-endpoints {\n" + "".join(f"  {r}\n" for r in rejects) + " }",
        *(" " + c for c in chains),
        "}",
    ]
    return "\n".join(lines) + "\n"


def _in_cidr(address: str, cidr: str | None) -> bool:
    import ipaddress

    if not cidr:
        return False
    try:
        return ipaddress.IPv4Address(address) in ipaddress.IPv4Network(cidr)
    except ValueError:
        return False


def cluster_pod_cidrs(raw: Any, net: NetworkSpec | None) -> list[str]:
    """Every pod address of the cluster: the network block's ``clusterCIDR``, else this
    node's pod CIDR and those routed to the other nodes."""
    import ipaddress

    if net is None:
        return []
    cluster = raw.get("clusterCIDR") if isinstance(raw, dict) else None
    if cluster:
        try:
            return [str(ipaddress.IPv4Network(str(cluster))), net.cidr]
        except ValueError as exc:
            raise RequestError(f"sync: network.clusterCIDR: {exc}") from exc
    return [net.cidr, *(cidr for cidr, _ in net.routes)]


def nft_binary() -> str | None:
    return shutil.which("nft", path=DEFAULT_PATH)


def service_route(cidr: str) -> None:
    """A node without a default route could not even send to a cluster IP (the output
    hook runs after routing): route the service CIDR to the pod bridge then."""
    if not link_exists(BRIDGE):
        return
    import ipaddress

    probe = str(next(ipaddress.ip_network(cidr).hosts()))
    if ip_cmd("route", "get", probe, check=False).returncode != 0:
        ip_cmd("route", "replace", cidr, "dev", BRIDGE)


def nft_listing(nft: str | None = None) -> str | None:
    """The live ``ip gitorch`` table as nft prints it, or None when there is none (or no
    nft). The listing is canonical: the same rules always print the same text."""
    nft = nft or nft_binary()
    if nft is None:
        return None
    try:
        # Terse: without the sets' elements (session affinity's clients come and go by themselves).
        proc = subprocess.run([nft, "-t", "list", "table", *NFT_TABLE.split()], capture_output=True,
                              timeout=15, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.decode(errors="replace") if proc.returncode == 0 else None


def listing_rules(listing: str) -> list[str]:
    """The listing's rules, each prefixed by its chain: what a hand edit adds or removes. A
    base chain's hook and policy count as a rule (a policy turned to drop is an edit too)."""
    out, chain = [], ""
    for raw in listing.splitlines():
        line = raw.strip()
        if line.startswith("chain ") and line.endswith("{"):
            chain = line[6:-1].strip()
        elif line and line not in ("}", "{") and not line.startswith("table "):
            out.append(f"{chain}: {line}")
    return out


def services_drift(paths: Paths) -> Json:
    """The live service table against the one this agent programmed last:
    {checked, missing: [rule], extra: [rule], message}. Unchecked without a record."""
    state = read_json(paths.services, {})
    recorded = state.get("listing") if isinstance(state, dict) and state.get("ok") else None
    boot = (read_text("/proc/sys/kernel/random/boot_id") or "").strip()
    if isinstance(state, dict) and state.get("ok") is False and state.get("message") \
            and state.get("bootId") == boot:
        # The last sync could not program it (no nft, a refused ruleset): Services do not
        # work on this node, which is drift too.
        return {"checked": True, "missing": [], "extra": [], "tableMissing": True,
                "message": f"table {NFT_TABLE} not programmed: {state['message']}"}
    if not isinstance(recorded, str) or state.get("bootId") != boot:
        return {"checked": False, "missing": [], "extra": [], "message": "no table programmed since boot"}
    if nft_binary() is None:  # the table may well be there: say why it cannot be read
        return {"checked": True, "missing": [], "extra": [], "tableMissing": False,
                "message": f"table {NFT_TABLE} cannot be listed: nft not found (apt-get install nftables)"}
    live = nft_listing()
    want, have = listing_rules(recorded), listing_rules(live or "")
    # As multisets: a rule duplicated by hand is one not programmed by gitorch.
    missing = list((Counter(want) - Counter(have)).elements())
    extra = list((Counter(have) - Counter(want)).elements())
    message = ""
    if live is None:
        message = f"table {NFT_TABLE} is missing"
    elif missing or extra:
        message = f"table {NFT_TABLE}: {len(missing)} rule(s) missing, {len(extra)} not programmed by gitorch"
    elif live != recorded:  # what program_services rebuilds must not pass for clean here
        message = f"table {NFT_TABLE}: rules reordered by hand"
    return {"checked": True, "missing": missing[:50], "extra": extra[:50], "message": message,
            "tableMissing": live is None}


def program_services(paths: Paths, services: list[Json], pod_cidr: str | None,
                     service_cidr: str | None, cluster_cidrs: Iterable[str] = ()) -> Json:
    """Make the node's nftables table match ``services`` (and masquerade pod egress, see
    nft_ruleset). A no-op when the table built last time (this boot) is the same and still
    lists as it did then; a table edited or removed by hand is rebuilt ("repaired").
    Returns {ok, changed, message, count, hash, repaired}."""
    text = nft_ruleset(services, pod_cidr, cluster_cidrs)
    digest = hashlib.sha256(f"{text}\0{service_cidr}".encode()).hexdigest()[:16]
    boot = (read_text("/proc/sys/kernel/random/boot_id") or "").strip()
    state = read_json(paths.services, {})
    nft = nft_binary()
    repaired = ""
    if isinstance(state, dict) and state.get("ok") and state.get("hash") == digest \
            and state.get("bootId") == boot:
        live = nft_listing(nft)
        if live is not None and state.get("listing") is None:
            # Built, but its listing could not be read then: take it now, not as an edit.
            atomic_write(paths.services, json.dumps({**state, "listing": live}))
            state["listing"] = live
        if live is not None and live == state.get("listing"):
            return {"ok": True, "changed": False, "message": "", "count": len(services), "hash": digest,
                    "repaired": ""}
        repaired = f"table {NFT_TABLE} was missing" if live is None else f"table {NFT_TABLE} was edited by hand"
    ok, message, listing = False, "", None
    if nft is None:
        message = "nft not found (apt-get install nftables)"
    else:
        try:
            proc = subprocess.run([nft, "-f", "-"], input=text.encode(), capture_output=True,
                                  timeout=15, check=False)
            ok = proc.returncode == 0
            message = "" if ok else f"nft -f: {one_line(proc.stderr.decode(errors='replace'))[:500]}"
            if ok and service_cidr:
                service_route(service_cidr)
            listing = nft_listing(nft) if ok else None
        except (OSError, subprocess.TimeoutExpired, NetworkError, ValueError, StopIteration) as exc:
            ok, message = False, f"nft: {exc}"
    atomic_write(paths.services, json.dumps({"ok": ok, "hash": digest if ok else None, "bootId": boot,
                                             "message": message, "count": len(services),
                                             "listing": listing, "at": time.time()}))
    return {"ok": ok, "changed": ok, "message": message, "count": len(services), "hash": digest,
            "repaired": repaired if ok else ""}


# NetworkPolicy enforcement (issue 12): one table of its own, so the Service table and
# this one are rebuilt and drift-checked apart. Its base chain sits on the node's forward
# hook, where every pod's traffic passes (bridged pod-to-pod traffic too, through
# br_netfilter, on by default in each network namespace): after the Service DNAT of
# prerouting, so a policy sees the endpoint pod's address as Kubernetes requires, and
# before the masquerade of postrouting, so it sees the client pod's own address.
POLICY_TABLE = "ip gitorch-policy"
_PORT_PROTOCOLS = ("TCP", "UDP")


def parse_policies(raw: Any) -> list[Json]:
    """A sync's `policies`: [{pod, ip, ingress, egress}], a direction None (not isolated) or
    [{peers: None | [CIDR], ports: None | [[protocol, first, last]]}] (gitorch.reconcile.policies)."""
    if not isinstance(raw, list) or len(raw) > 10000:
        raise RequestError("sync: policies must be a list of at most 10000 entries")
    out: list[Json] = []
    for i, e in enumerate(raw):
        where = f"sync: policies[{i}]"
        if not isinstance(e, dict):
            raise RequestError(f"{where} must be an object")
        ip = e.get("ip")
        entry: Json = {"pod": str(e.get("pod") or where)[:200],
                       "ip": None if ip is None else _ip4(ip, f"{where}.ip")}
        for direction in ("ingress", "egress"):
            rules = e.get(direction)
            if rules is not None and (not isinstance(rules, list) or len(rules) > 4096):
                raise RequestError(f"{where}.{direction} must be null or a list of at most 4096 rules")
            parsed = []
            for j, r in enumerate(rules or []):
                at = f"{where}.{direction}[{j}]"
                peers, ports = (r.get("peers"), r.get("ports")) if isinstance(r, dict) else (0, 0)
                if peers is not None and not (isinstance(peers, list) and len(peers) <= 65536
                                              and all(isinstance(c, str) and _CIDR.fullmatch(c) for c in peers)):
                    raise RequestError(f"{at}.peers must be null or a list of IPv4 CIDRs")
                if ports is not None and not (isinstance(ports, list) and len(ports) <= 1024 and all(
                        isinstance(p, list) and len(p) == 3 and p[0] in _PORT_PROTOCOLS
                        and all(isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 65535 for n in p[1:])
                        and p[1] <= p[2] for p in ports)):
                    raise RequestError(f"{at}.ports must be null or a list of [TCP|UDP, first, last]")
                parsed.append({"peers": peers, "ports": ports})
            entry[direction] = None if rules is None else parsed
        out.append(entry)
    return out


def policy_binding(entries: list[Json], bound: dict[str, str]) -> dict[str, str]:
    """Which address each isolated pod's chains apply to (pod -> IP): the one the supervisor
    gave the pod when it made its network namespace (``bound``, the truth on this node), else
    the one the controller last saw, unless another pod holds that address now (reused)."""
    taken = set(bound.values())
    out = {e["pod"]: bound[e["pod"]] for e in entries if e["pod"] in bound}
    for e in entries:
        if e["pod"] not in out and e.get("ip") and e["ip"] not in taken:
            out[e["pod"]] = e["ip"]
            taken.add(e["ip"])
    return out


def policy_ruleset(entries: list[Json], binding: dict[str, str] | None = None) -> str:
    """The whole ``ip gitorch-policy`` table as one ``nft -f`` transaction (none at all when
    no pod of this node is isolated): per isolated pod a chain per direction that returns
    for what a rule allows and rejects the rest, jumped to from the pod's address (``binding``,
    see policy_binding; an isolated pod not yet given one has no traffic to police);
    replies of allowed connections pass."""
    import ipaddress

    if binding is None:
        binding = policy_binding(entries, {})
    lines = [f"table {POLICY_TABLE}", f"delete table {POLICY_TABLE}"]
    entries = [e for e in entries if e["pod"] in binding]
    if not entries:
        return "\n".join(lines) + "\n"
    maps: dict[str, list[str]] = {"egress": [], "ingress": []}
    chains: list[str] = []
    for i, e in enumerate(entries):
        comment = f'comment "{re.sub(r"[^A-Za-z0-9._:/-]", "_", e["pod"])[:100]}"'
        for direction, peer in (("egress", "daddr"), ("ingress", "saddr")):
            rules = e.get(direction)
            if rules is None:
                continue
            name = f"{direction[0]}{i}"
            maps[direction].append(f"{binding[e['pod']]} : jump {name}")
            body = []
            for r in rules:
                match = ""
                if r["peers"] is not None:
                    nets = list(ipaddress.collapse_addresses(ipaddress.IPv4Network(c, strict=False)
                                                             for c in r["peers"]))
                    if not nets:
                        continue  # no peer: the rule allows nothing
                    if nets != [ipaddress.IPv4Network("0.0.0.0/0")]:
                        match = f"ip {peer} {{ {', '.join(str(n) for n in nets)} }} "
                if r["ports"] is None:
                    body.append(f"{match}return {comment}")
                    continue
                for proto in _PORT_PROTOCOLS:
                    ranges = sorted({(lo, hi) for p, lo, hi in r["ports"] if p == proto})
                    if ranges:
                        items = ", ".join(f"{lo}-{hi}" if hi > lo else str(lo) for lo, hi in ranges)
                        body.append(f"{match}meta l4proto {proto.lower()} th dport {{ {items} }} return {comment}")
            # Refused, not dropped: a client learns at once (and probes need no long timeouts).
            body.append(f"reject with icmp type admin-prohibited {comment}")
            chains.append(f" chain {name} {{\n" + "".join(f"  {b}\n" for b in body) + " }")
    vmaps = "".join(f"  ip {'saddr' if d == 'egress' else 'daddr'} vmap {{ {', '.join(m)} }}\n"
                    for d, m in maps.items() if m)
    # A pod's traffic to its own node's addresses is delivered, not forwarded: its egress
    # chain applies there too (the node's own traffic to pods leaves by output: not policed).
    to_node = [" chain input {\n  type filter hook input priority filter - 5; policy accept;\n"
               f"  ct state established,related accept\n  ip saddr vmap {{ {', '.join(maps['egress'])} }}\n }}"
               ] if maps["egress"] else []
    lines += [
        f"table {POLICY_TABLE} {{",
        " chain forward {\n  type filter hook forward priority filter - 5; policy accept;\n"
        f"  ct state established,related accept\n{vmaps} }}",
        *to_node,
        *chains,
        "}",
    ]
    return "\n".join(lines) + "\n"


def policy_listing(nft: str | None = None) -> str | None:
    """The live ``ip gitorch-policy`` table as nft prints it, or None when there is none."""
    nft = nft or nft_binary()
    if nft is None:
        return None
    try:
        proc = subprocess.run([nft, "list", "table", *POLICY_TABLE.split()], capture_output=True,
                              timeout=15, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.decode(errors="replace") if proc.returncode == 0 else None


def program_policies(paths: Paths, entries: list[Json] | None, bind: dict[str, str] | None = None,
                     running: set[str] | None = None) -> Json:
    """Make the node's policy table match ``entries`` (None: the ones of the last sync) with
    each pod's chains on the address it holds, in one transaction; ``bind`` (pod -> IP) records
    addresses the supervisor is about to give pods, before their namespaces exist, so a new
    pod is policed from its first packet and a reused address never keeps its old pod's
    chains. With ``running`` (the pods the node is to run, "namespace/name"), a pod leaving
    the node keeps its entry of last time while it is still there (terminating), as Kubernetes
    keeps a terminating pod isolated. A no-op when the table built last (this boot) is the
    same and still lists as it did; one edited or removed by hand is rebuilt ("repaired").
    Returns {ok, changed, message, count, hash, repaired, programmed}: ok false with the table
    programmed when same-node pod traffic cannot be made to pass it (see bridge_netfilter)."""
    boot = (read_text("/proc/sys/kernel/random/boot_id") or "").strip()
    with flocked(paths.policy_lock):
        state = read_json(paths.policies, {})
        if not isinstance(state, dict) or state.get("bootId") != boot:
            state = {}
        held = read_json(paths.policy_bindings, {})
        bound: dict[str, str] = dict(held.get("bound") or {}) \
            if isinstance(held, dict) and held.get("bootId") == boot else {}
        if entries is None:
            entries = list(state.get("entries") or [])
        elif running is not None:
            entries = entries + leaving_entries(paths, state.get("entries") or [], entries, running)
        before = policy_binding(entries, bound)
        if bind:
            for pod, ip in bind.items():
                for other in [k for k, v in bound.items() if v == ip and k != pod]:
                    del bound[other]
                bound[pod] = ip
            if len(bound) > 65536:  # one address, one pod: bounded by the pod CIDR
                bound = dict(list(bound.items())[-65536:])
            atomic_write(paths.policy_bindings, json.dumps({"bootId": boot, "bound": bound}))
        binding = policy_binding(entries, bound)
        if bind is not None and binding == before:
            # No isolated pod, and no address in the table, among those bound: nothing to change.
            return {"ok": True, "changed": False, "message": "", "count": len(entries),
                    "hash": state.get("hash"), "repaired": "", "programmed": True}
        result = _program_policy_table(paths, state, entries, binding, boot)
    result["programmed"] = result["ok"]
    problem = bridge_netfilter() if result["ok"] and binding else ""
    if problem:  # the table is in place (traffic routed between nodes is policed), but not enough
        result.update(ok=False, message=f"node {os.uname().nodename}: pods on this node reach each other "
                                        f"past NetworkPolicy: {problem}")
    return result


def leaving_entries(paths: Paths, old: list[Json], new: list[Json], running: set[str]) -> list[Json]:
    """The entries of last time of pods no longer to run here but still on the node (status.json)."""
    status = read_json(paths.status, {})
    present = {f"{p.get('namespace') or 'default'}/{p.get('name')}"
               for p in (status.get("pods") or [] if isinstance(status, dict) else []) if isinstance(p, dict)}
    named = {e["pod"] for e in new}
    return [e for e in old if isinstance(e, dict) and e.get("pod") in present
            and e["pod"] not in running and e["pod"] not in named]


def _program_policy_table(paths: Paths, state: Json, entries: list[Json], binding: dict[str, str],
                          boot: str) -> Json:
    text = policy_ruleset(entries, binding)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    nft = nft_binary()
    repaired = ""
    if state.get("ok") and state.get("hash") == digest:
        if not binding:  # no isolated pod, as last time: no table to look at (the usual case)
            if state.get("entries") != entries:
                atomic_write(paths.policies, json.dumps({**state, "entries": entries, "count": len(entries)}))
            return {"ok": True, "changed": False, "message": "", "count": len(entries), "hash": digest,
                    "repaired": ""}
        live = policy_listing(nft)
        if live == state.get("listing"):
            if state.get("entries") != entries:
                atomic_write(paths.policies, json.dumps({**state, "entries": entries, "count": len(entries)}))
            return {"ok": True, "changed": False, "message": "", "count": len(entries), "hash": digest,
                    "repaired": ""}
        repaired = f"table {POLICY_TABLE} was missing" if live is None else \
            f"table {POLICY_TABLE} was edited by hand"
    ok, message, listing = False, "", None
    if nft is None:
        message = "nft not found (apt-get install nftables)"
    else:
        try:
            proc = subprocess.run([nft, "-f", "-"], input=text.encode(), capture_output=True, timeout=15, check=False)
            ok = proc.returncode == 0
            message = "" if ok else f"nft -f: {one_line(proc.stderr.decode(errors='replace'))[:500]}"
            listing = policy_listing(nft) if ok else None
        except (OSError, subprocess.TimeoutExpired) as exc:
            ok, message = False, f"nft: {exc}"
    # The entries are kept even when nft failed: the supervisor's next binding retries them.
    atomic_write(paths.policies, json.dumps({"ok": ok, "hash": digest if ok else None, "bootId": boot,
                                             "message": message, "count": len(entries), "listing": listing,
                                             "entries": entries, "at": time.time()}))
    return {"ok": ok, "changed": ok, "message": message, "count": len(entries), "hash": digest,
            "repaired": repaired if ok else ""}


def policies_drift(paths: Paths) -> Json:
    """The live policy table against the one programmed last: {checked, missing, extra, message}."""
    state = read_json(paths.policies, {})
    boot = (read_text("/proc/sys/kernel/random/boot_id") or "").strip()
    if not isinstance(state, dict) or state.get("bootId") != boot:
        return {"checked": False, "missing": [], "extra": [], "message": "no policy table programmed since boot"}
    if not state.get("ok"):
        return {"checked": True, "missing": [], "extra": [],
                "message": f"table {POLICY_TABLE} not programmed: {state.get('message')}"}
    recorded, live = state.get("listing"), policy_listing()
    want, have = listing_rules(recorded or ""), listing_rules(live or "")
    missing = list((Counter(want) - Counter(have)).elements())
    extra = list((Counter(have) - Counter(want)).elements())
    message = ""
    if live is None and recorded is not None:
        message = f"table {POLICY_TABLE} is missing"
    elif missing or extra:
        message = f"table {POLICY_TABLE}: {len(missing)} rule(s) missing, {len(extra)} not programmed by gitorch"
    elif live != recorded:
        message = f"table {POLICY_TABLE}: rules reordered by hand"
    return {"checked": True, "missing": missing[:50], "extra": extra[:50], "message": message}


def ip_binary() -> str:
    return shutil.which("ip", path=DEFAULT_PATH) or "ip"


def parse_announce(raw: Any) -> tuple[list[str], str] | None:
    """A sync's `announce`: {addresses: [IPv4], nodeAddress} -> (addresses, node address)."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("addresses"), list):
        raise RequestError("sync: announce must be {addresses: [IPv4 address], nodeAddress}")
    addresses = [_ip4(a, "sync: announce.addresses") for a in raw["addresses"]]
    node = str(raw.get("nodeAddress") or "")
    if node:
        _ip4(node, "sync: announce.nodeAddress")
    return sorted(set(addresses)), node


def _interface_with(address: str) -> str | None:
    """The interface holding `address` (the node's own), or None."""
    try:
        proc = subprocess.run([ip_binary(), "-j", "-4", "addr", "show"], capture_output=True, timeout=10, check=False)
        links = json.loads(proc.stdout or b"[]")
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None
    for link in links if isinstance(links, list) else []:
        for info in link.get("addr_info") or []:
            if info.get("local") == address:
                return str(link.get("ifname"))
    return None


def program_announce(paths: Paths, addresses: list[str], node_address: str) -> Json:
    """Announce exactly `addresses` (LoadBalancer addresses this node holds, as MetalLB's
    layer-2 mode does): each is added as a /32 to the interface holding the node's address, with
    a gratuitous ARP so the neighbours' caches point at this node at once; an address this agent
    added before and no longer holds is removed. Returns {ok, addresses, interface, message,
    failed}: `failed` lists the addresses this node could not take, so the controller moves them."""
    state = read_json(paths.announce, {})
    before = set(state.get("addresses") or []) if isinstance(state, dict) else set()
    iface = (state.get("interface") if isinstance(state, dict) else None) or None
    if node_address:
        iface = _interface_with(node_address) or iface
    if iface is None:
        if not addresses and not before:
            return {"ok": True, "addresses": [], "interface": None, "message": ""}
        return {"ok": False, "addresses": [], "interface": None, "failed": sorted(addresses),
                "message": f"no interface holds the node address {node_address or '(none sent)'}"}
    ip = ip_binary()
    problems = []
    failed = []
    for address in sorted(before - set(addresses)):
        run_quietly([ip, "addr", "del", f"{address}/32", "dev", iface], 10)
    try:
        shown = subprocess.run([ip, "-j", "-4", "addr", "show", "dev", iface], capture_output=True, timeout=10,
                               check=False)
        live = {i.get("local") for link in json.loads(shown.stdout or b"[]") for i in link.get("addr_info") or []}
    except (OSError, ValueError, subprocess.TimeoutExpired):
        live = set()
    for address in addresses:
        if address not in live:
            proc = subprocess.run([ip, "addr", "add", f"{address}/32", "dev", iface], capture_output=True,
                                  timeout=10, check=False)
            if proc.returncode != 0:
                problems.append(f"{address}: {one_line(proc.stderr.decode(errors='replace'))}")
                failed.append(address)
                continue
        # On every sync that names it (a sync comes only with a change or the resync): the node
        # may have kept a stale copy through a partition while another node announced it, and
        # the neighbours still send to whichever node answered last.
        arping = shutil.which("arping")
        if arping:  # iputils-arping: unsolicited ARP, so the neighbours learn the move at once
            in_background([arping, "-U", "-c", "1", "-I", iface, address], 5)
        else:
            problems.append("arping not found (apt-get install iputils-arping): neighbours learn the move late")
    atomic_write(paths.announce, json.dumps({"addresses": addresses, "interface": iface}))
    return {"ok": not problems, "addresses": addresses, "interface": iface, "message": "; ".join(problems),
            "failed": failed}


# ---------------------------------------------------------------------------------------
# The ingress proxy: HAProxy, run by the supervisor as a system pod, from the controller's
# rendered config (gitorch.reconcile.haproxy). Endpoint changes go through its runtime API
# (no reload, no dropped request); other changes are a graceful master-worker reload.
# ---------------------------------------------------------------------------------------

SYSTEM_NAMESPACE = "gitorch-system"
INGRESS_POD = "ingress"
INGRESS_MAX_CONFIG = 4 * 1024 * 1024
INGRESS_MAX_FILES = 512
INGRESS_MAX_FILE = 256 * 1024
_INGRESS_FILE = re.compile(r"^(crt-list\.txt|certs/[A-Za-z0-9_.-]{1,200}\.pem)$")
_SERVER = re.compile(r"^(\s+server s\d+) (\S+)( disabled)?$")


def ingress_dir(paths: Paths) -> str:
    return os.path.join(paths.root, "ingress")


def haproxy_binary() -> str | None:
    return shutil.which("haproxy", path=DEFAULT_PATH)


def parse_ingress(raw: Any) -> Json | None:
    """A sync's `ingress`: absent (keep what runs), {} (no proxy on this node) or
    {config, files: {name: text}}; bounded. The files hold private keys: never echoed."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise RequestError("sync: ingress must be an object: {config, files}")
    if not raw.get("config"):
        return {}
    config, files = raw.get("config"), raw.get("files", {})
    if not isinstance(config, str) or len(config) > INGRESS_MAX_CONFIG or "\0" in config:
        raise RequestError(f"sync: ingress.config must be text of at most {INGRESS_MAX_CONFIG} bytes")
    if not isinstance(files, dict) or len(files) > INGRESS_MAX_FILES:
        raise RequestError(f"sync: ingress.files must map at most {INGRESS_MAX_FILES} names to text")
    for name, text in files.items():
        if not isinstance(name, str) or not _INGRESS_FILE.match(name) or ".." in name:
            raise RequestError("sync: ingress.files: names are crt-list.txt or certs/NAME.pem")
        if not isinstance(text, str) or len(text) > INGRESS_MAX_FILE:
            raise RequestError(f"sync: ingress.files[{name}] must be text of at most {INGRESS_MAX_FILE} bytes")
    return {"config": config, "files": dict(files)}


def proxy_pod(paths: Paths) -> Json:
    """The system pod the supervisor runs HAProxy as (restarts with back-off, logs like any
    pod's: `gitorch logs ingress --node N`). Its hash changes only with the binary, so a new
    config never restarts it: the agent reloads it gracefully instead."""
    binary = haproxy_binary() or "haproxy"
    where = ingress_dir(paths)
    return {"name": INGRESS_POD, "namespace": SYSTEM_NAMESPACE, "hostNetwork": True, "restartPolicy": "Always",
            "hash": hashlib.sha256(f"{binary}:{where}".encode()).hexdigest()[:10],
            "terminationGracePeriodSeconds": 10,
            "containers": [{"name": "haproxy", "workingDir": where,
                            "command": [binary, "-W", "-db", "-S", "unix@master.sock", "-f", "haproxy.cfg"]}]}


def config_skeleton(config: str) -> str:
    """The config without its server addresses: equal skeletons differ only in endpoints."""
    return "\n".join(_SERVER.sub(r"\1", line) for line in config.splitlines())


def config_endpoints(config: str) -> dict[str, list[tuple[str, int]]]:
    """Per backend, the endpoints its enabled server lines name."""
    out: dict[str, list[tuple[str, int]]] = {}
    current = None
    for line in config.splitlines():
        if line.startswith("backend "):
            current = line.split()[1]
            out[current] = []
            continue
        m = _SERVER.match(line)
        if m and current is not None and not m.group(3):
            host, _, port = m.group(2).rpartition(":")
            out[current].append((host, int(port)))
    return out


def runtime_call(sock: str, commands: list[str], timeout: float = 5.0) -> str:
    """One runtime API exchange over HAProxy's admin socket (commands joined with ';')."""
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(sock)
        s.sendall((";".join(commands) + "\n").encode())
        s.shutdown(socket.SHUT_WR)  # the master CLI answers, then waits for more unless told there is none
        out = b""
        while len(out) < 16 * 1024 * 1024:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    return out.decode(errors="replace")


def live_slots(sock: str, backend: str) -> list[tuple[str, int] | None]:
    """A backend's server slots as the running HAProxy has them: (addr, port), or None for
    a slot in maintenance (configured `disabled` or set so)."""
    table: dict[int, tuple[str, int] | None] = {}
    for line in runtime_call(sock, [f"show servers state {backend}"]).splitlines():
        f = line.split()
        if len(f) < 19 or f[0].startswith("#") or f[1] != backend or not f[3].startswith("s"):
            continue
        admin = int(f[6])
        # Forced, inherited or resolution maintenance; a `disabled` slot made ready keeps 0x04 (CMAINT) alone.
        table[int(f[3][1:])] = None if admin & 0x23 else (f[4], int(f[18]))
    return [table.get(i) for i in range(1, max(table, default=0) + 1)]


def slot_commands(backend: str, current: list[tuple[str, int] | None],
                  wanted: list[tuple[str, int]]) -> list[str] | None:
    """Runtime commands turning slots into `wanted` (as gitorch.reconcile.haproxy.runtime_commands):
    new endpoints take free slots and are made ready before old ones go to maintenance, so a
    backend never empties; None when they do not fit (then reload)."""
    want = set(wanted)
    added = sorted(want - {ep for ep in current if ep})
    free = [i for i, ep in enumerate(current) if ep is None]
    if len(added) > len(free):
        return None
    commands = []
    for i, ep in zip(free, added, strict=False):
        commands += [f"set server {backend}/s{i + 1} addr {ep[0]} port {ep[1]}",
                     f"set server {backend}/s{i + 1} state ready"]
    for i, old in enumerate(current):
        if old is not None and old not in want:
            commands.append(f"set server {backend}/s{i + 1} state maint")
    return commands


_RUNTIME_ERRORS = ("No such", "Require", "nvalid", "nknown", "not found", "failed", "error")


def program_ingress(paths: Paths, spec: Json) -> Json:
    """Write the proxy's files (certificates 0600 in a 0700 folder) and bring the running
    HAProxy to `spec`: endpoint changes by runtime API, anything else by a graceful reload
    checked with `haproxy -c` first. Returns {ok, mode, commands, message}; never a file's content."""
    where = ingress_dir(paths)
    os.makedirs(os.path.join(where, "certs"), mode=0o700, exist_ok=True)
    os.chmod(where, 0o700)
    os.chmod(os.path.join(where, "certs"), 0o700)
    binary = haproxy_binary()
    if binary is None:
        return {"ok": False, "mode": "none", "commands": 0,
                "message": "haproxy is not installed on this node (apt-get install haproxy)"}
    files_changed = False  # certificates are read at start and reload only: a new one needs a reload
    for name, text in spec["files"].items():
        target = os.path.join(where, name)
        if read_text(target) != text:
            atomic_write(target, text, mode=0o600)
            files_changed = True
    for old in os.listdir(os.path.join(where, "certs")):
        if f"certs/{old}" not in spec["files"] and not old.startswith("."):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(where, "certs", old))
                files_changed = True
    cfg = os.path.join(where, "haproxy.cfg")
    before = read_text(cfg)
    new = spec["config"]
    if before == new and not files_changed:
        return {"ok": True, "mode": "unchanged", "commands": 0, "message": ""}
    candidate = cfg + ".new"
    atomic_write(candidate, new, mode=0o600)
    check = subprocess.run([binary, "-c", "-f", os.path.basename(candidate)], cwd=where, capture_output=True,
                           timeout=30, check=False)
    if check.returncode != 0:
        said = (check.stdout + check.stderr).decode(errors="replace").splitlines()
        alerts = [line.split(":", 2)[-1].strip() for line in said if "ALERT" in line] or said
        return {"ok": False, "mode": "refused", "commands": 0,
                "message": "haproxy -c refused the config: " + one_line("; ".join(alerts))[:500]}
    sock = os.path.join(where, "admin.sock")
    mode, count = "written", 0
    if before is not None and not files_changed and config_skeleton(before) == config_skeleton(new):
        try:
            commands: list[str] | None = []
            for backend, wanted in config_endpoints(new).items():
                change = slot_commands(backend, live_slots(sock, backend), wanted)
                if change is None:
                    commands = None
                    break
                assert commands is not None
                commands += change
            if commands is not None:
                reply = runtime_call(sock, commands) if commands else ""
                if not any(e in reply for e in _RUNTIME_ERRORS):
                    mode, count = "runtime", len(commands)
        except OSError:
            pass  # not running (starting, crashed): it reads the file when it starts
    os.replace(candidate, cfg)
    if mode == "written" and before is not None:
        try:
            runtime_call(os.path.join(where, "master.sock"), ["reload"])
            mode = "reload"
        except OSError:
            pass  # not running: the supervisor starts it with this config
    return {"ok": True, "mode": mode, "commands": count, "message": ""}


def stop_ingress(paths: Paths) -> None:
    """No proxy on this node any more: its files go (the pod is stopped by the supervisor)."""
    shutil.rmtree(ingress_dir(paths), ignore_errors=True)


def public_pods(pods: Any) -> list[Any]:
    """A status's pods without the system pods (the proxy), which are no workload's."""
    return [p for p in pods or [] if not (isinstance(p, dict) and p.get("namespace") == SYSTEM_NAMESPACE)]


def proxy_status(pods: Any) -> Json | None:
    p = next((p for p in pods or [] if isinstance(p, dict) and p.get("namespace") == SYSTEM_NAMESPACE
              and p.get("name") == INGRESS_POD), None)
    if p is None:
        return None
    return {"phase": p.get("phase"), "ready": p.get("ready"), "restarts": p.get("restarts"),
            "reason": p.get("reason"), "message": p.get("message")}


def table_digest(entries: list[Any]) -> str:
    """The digest of a service table as the controller sends it (its raw entries, by name):
    the controller computes the same one (gitorch.nodes.client.table_digest) to know which
    table a node holds, and so what a delta must start from."""
    ordered = sorted(entries, key=lambda e: str(e.get("name")) if isinstance(e, dict) else "")
    return hashlib.sha256(json.dumps(ordered, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def held_table(paths: Paths) -> tuple[list[Json], str | None]:
    """The service table this node was last sent (raw entries) and its digest."""
    held = read_json(paths.services_table, {})
    if not isinstance(held, dict) or not isinstance(held.get("entries"), list):
        return [], None
    return held["entries"], str(held.get("digest") or "") or None


def apply_services_delta(paths: Paths, delta: Any) -> tuple[list[Json] | None, str]:
    """The table a ``servicesDelta`` {base, digest, set: [entry], remove: [name]} makes of the
    one this node holds: (entries, "") or (None, why not) when the node does not hold ``base``
    (it lost its state, or another controller sent it something else): the controller then
    sends the whole table. The result must have ``digest``, or it is refused the same way."""
    if not isinstance(delta, dict):
        raise RequestError("sync: servicesDelta must be an object")
    base, want = delta.get("base"), delta.get("digest")
    put, drop = delta.get("set") or [], delta.get("remove") or []
    if not isinstance(put, list) or not isinstance(drop, list) or not all(isinstance(n, str) for n in drop):
        raise RequestError("sync: servicesDelta: set must be a list of entries, remove a list of names")
    if not all(isinstance(e, dict) and isinstance(e.get("name"), str) for e in put):
        raise RequestError("sync: servicesDelta: every entry of set needs a name")
    entries, digest = held_table(paths)
    if digest is None or digest != base:
        return None, f"this node holds service table {digest or '(none)'}, not the delta's base {base}"
    table = {str(e.get("name")): e for e in entries if isinstance(e, dict)}
    for name in drop:
        table.pop(name, None)
    for e in put:
        table[e["name"]] = e
    out = [table[n] for n in sorted(table)]
    if table_digest(out) != want:
        return None, f"the delta made service table {table_digest(out)}, not {want}"
    return out, ""


def services_fact(paths: Paths) -> str:
    """``nftables`` when the service table is (or can be) programmed, else why not."""
    if nft_binary() is None:
        return "unavailable: nft not found (apt-get install nftables)"
    state = read_json(paths.services, {})
    if isinstance(state, dict) and state.get("message") and not state.get("ok"):
        return f"unavailable: {state['message']}"
    return "nftables"


# ---------------------------------------------------------------------------------------
# Supervisor loop: the kubelet
# ---------------------------------------------------------------------------------------


class Supervisor:
    """Keeps this node's pods as desired.json says, and reports them in status.json."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self.redact = Redactor()
        self.backoff = Backoff.from_env()
        self.pods: dict[PodId, Pod] = {}
        self.pending: dict[PodId, Json] = {}  # replacements waiting for the old instance to stop
        self.generation = -1
        self.pending_ack: int | None = None
        self.desired_mark: tuple[int, ...] | None = None
        self.cgroups = Cgroups.detect(paths)
        self.checks: Json = {}
        self.exiting = False
        self.cgroup_trash: list[tuple[list[str], int]] = []
        self.network: NetworkSpec | None = None
        self.network_applied: NetworkSpec | None = None
        self.networked: dict[str, str] = {}  # pod key -> IP set up by this tick's batch
        self.last_ip: str | None = None  # the pod address given last (see pod_ip)
        self.dns: ClusterDNSSpec | None = None
        self.accounts: dict[str, int] = {}  # namespace/ServiceAccount -> its uid (and gid)
        self._last_state = ""
        self._last_status = ""
        self._last_rotate = 0.0
        self._last_facts = -FACTS_PUBLISH_SECONDS  # time.monotonic() of the last publish_facts
        self._facts_status = ""  # the status published last in facts.json
        self._last_index = 0.0
        self._last_storage_check = 0.0
        self._log_fd = -1
        self._lock_fd = -1
        self._wake_r = -1
        self._wake_w = -1
        self._error_times: dict[str, float] = {}
        self.metrics_every = DEFAULT_METRICS_INTERVAL
        self.next_metrics = 0.0
        self.node_cpu: tuple[float, int] | None = None  # (time, busy ticks) of the last sample
        self.log_index = LogIndexer()

    # -- lifecycle ---------------------------------------------------------------------

    def run(self) -> int:
        self._log_fd = os.open(self.paths.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        if not self._acquire_lock():
            self.log("another supervisor holds the lock; exiting")
            return 0
        atomic_write(self.paths.pidfile, json.dumps({
            "pid": os.getpid(), "version": AGENT_VERSION, "sha": own_sha(),
            "path": os.path.abspath(__file__), "startedAt": time.time()}))
        self._install_signals()
        os.chdir("/")
        self.checks = node_checks(self.paths)
        self.log(f"supervisor {AGENT_VERSION} ({own_sha()}) started, pid {os.getpid()}, "
                 f"cgroups {self.cgroups.version} {self.cgroups.writable}, volume mounts "
                 f"{self.checks.get('volumeMounts')}, backoff base {self.backoff.base:g}s")
        self.restore()
        while not self.exiting:
            try:
                self.tick()
            except Exception as exc:  # e.g. a full disk: keep supervising, say why
                self.log_error("tick", f"supervisor loop error: {type(exc).__name__}: {exc}")
            self.wait(self.next_wait(time.time()))
        self.shutdown()
        return 0

    def _acquire_lock(self) -> bool:
        self._lock_fd = os.open(self.paths.lock, os.O_RDWR | os.O_CREAT, 0o600)
        # Retry briefly: an agent checking liveness holds a shared lock for microseconds.
        deadline = time.monotonic() + 1.0
        while True:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.02)

    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w)

        def stop(_sig: int, _frame: Any) -> None:
            self.exiting = True

        def nothing(_sig: int, _frame: Any) -> None:
            pass  # the wakeup fd does the work

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        # Handlers, not SIG_IGN: ignored signals would be inherited by containers.
        for sig in (signal.SIGUSR1, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(sig, nothing)

    def wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"w")

    def next_wait(self, now: float) -> float:
        """Sleep until the next back-off or kill deadline, IDLE_SECONDS at most.

        Exits of our own children (SIGCHLD), probe verdicts and new generations (SIGUSR1
        from the agent) wake the loop at once; the idle pass re-checks desired.json and
        processes adopted from an earlier supervisor, which send us no SIGCHLD.
        """
        wait = min(IDLE_SECONDS, max(0.0, self.next_metrics - now))
        for pod in self.pods.values():
            if pod.stopping:
                return TICK_SECONDS
            if pod.fatal or pod.spec is None:
                continue
            if not pod.prepared:
                wait = min(wait, pod.prepare_retry - now)
                continue
            for ctr in pod.all_containers():
                if ctr.draining or ctr.kill_deadline is not None:
                    wait = min(wait, TICK_SECONDS)
            pending_init = next((c for c in pod.init_containers if not c.succeeded), None)
            startable = [pending_init] if pending_init else pod.containers
            for ctr in startable:
                if ctr.state == "waiting":
                    wait = min(wait, ctr.next_start - now)
        return max(0.01, wait)

    def wait(self, timeout: float) -> None:
        try:
            ready, _, _ = select.select([self._wake_r], [], [], timeout)
        except InterruptedError:
            return
        if ready:
            with contextlib.suppress(OSError):
                os.read(self._wake_r, 4096)

    def shutdown(self) -> None:
        """Leave every pod running: a new supervisor re-adopts them from state.json."""
        for pod in self.pods.values():
            for ctr in pod.all_containers():
                ctr.stop_probes(keep_ready=True)  # the next supervisor starts from it
        if not self.lock_still_ours():
            return  # the root is no longer ours to write
        self.persist(force=True)
        self.log("supervisor stopping; pods keep running")
        with contextlib.suppress(OSError):
            os.unlink(self.paths.pidfile)
        with contextlib.suppress(OSError):
            os.unlink(self.paths.facts)  # it says a supervisor runs: readers ask the verb instead

    def log(self, message: str) -> None:
        line = f"{iso(time.time())} {self.redact(message)}\n"
        if self._log_fd >= 0:
            with contextlib.suppress(OSError):
                os.write(self._log_fd, line.encode(errors="replace"))

    def log_error(self, key: str, message: str) -> None:
        """Log a recurring error at most once a minute per key."""
        now = time.monotonic()
        if now - self._error_times.get(key, -1e9) >= 60:
            self._error_times[key] = now
            self.log(message)

    # -- desired state -----------------------------------------------------------------

    def restore(self) -> None:
        state = read_json(self.paths.state, {})
        for rec in state.get("pods", []) if isinstance(state, dict) else []:
            try:
                pod = Pod.from_record(rec)
            except (KeyError, TypeError, ValueError) as exc:
                self.log(f"state.json: skipping unreadable pod record: {exc}")
                continue
            self.pods[pod.ident] = pod
            alive = [c.name for c in pod.all_containers()
                     if c.busy and c.pid is not None and process_alive(c.pid, c.proc_start)]
            self.log(f"re-adopting pod {pod.label} (hash {pod.hash}, dir {pod.key}); live containers: "
                     f"{', '.join(alive) or 'none'}")
        self.check_desired(force=True)

    def check_desired(self, force: bool = False) -> None:
        try:
            st = os.stat(self.paths.desired)
            mark: tuple[int, ...] = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
        except FileNotFoundError:
            mark = ()
        if mark == self.desired_mark and not force:
            return
        self.desired_mark = mark
        doc = read_json(self.paths.desired, None)
        if doc is None:
            if mark:
                self.log("desired.json unreadable; keeping the current pods")
                return
            doc = {"generation": 0, "pods": []}
        generation = int(doc.get("generation", 0))
        raw_pods = [with_secrets(self.paths, p) for p in doc.get("pods", []) if isinstance(p, dict)]
        try:
            self.network = NetworkSpec.parse(doc.get("network"))
        except RequestError as exc:
            self.log_error("network", f"desired.json: {exc}; pods get no pod network")
            self.network = None
        try:
            self.dns = ClusterDNSSpec.parse(doc.get("dns"))
        except RequestError as exc:
            self.log_error("dns", f"desired.json: {exc}; pods keep the node's resolv.conf")
            self.dns = None
        try:
            self.accounts = parse_accounts(doc.get("accounts"))
        except RequestError as exc:
            self.log_error("accounts", f"desired.json: {exc}")
        every = metrics_interval((doc.get("metrics") or {}).get("intervalSeconds"))
        if every != self.metrics_every:
            self.metrics_every = every
            self.next_metrics = 0.0  # sample at once, then at the new interval
        self.apply(raw_pods)
        if generation != self.generation:
            self.log(f"applied generation {generation}: {len(raw_pods)} pod(s)")
        self.generation = generation
        self.pending_ack = generation

    def apply(self, raw_pods: list[Json]) -> None:
        self.redact.update(secret_values(raw_pods))
        desired: dict[PodId, Json] = {}
        for raw in raw_pods:
            name, namespace = raw.get("name"), raw.get("namespace") or "default"
            if isinstance(name, str) and SAFE_NAME.match(name) and isinstance(namespace, str) \
                    and NAMESPACE.match(namespace):
                desired[(namespace, name)] = raw
        for ident, pod in list(self.pods.items()):
            if ident not in desired:
                self.pending.pop(ident, None)
                self.begin_stop(pod, "removed from the desired set")
                continue
            raw = desired[ident]
            new_hash = str(raw.get("hash") or "")
            if pod.stopping or new_hash != pod.hash:
                self.pending[ident] = raw
                self.begin_stop(pod, f"replaced by hash {new_hash}")
                continue
            self.pending.pop(ident, None)
            self.update_same_hash(pod, raw)
        for ident, raw in desired.items():
            if ident not in self.pods:
                self.pods[ident] = self.new_pod(raw)

    def new_pod(self, raw: Json) -> Pod:
        namespace, name = pod_id(raw)
        pod_hash = str(raw.get("hash") or "")
        try:
            spec = PodSpec.parse(raw)
        except SpecError as exc:
            pod = Pod(name, namespace, pod_hash, None, 0.0)
            pod.fatal = ["InvalidPodSpec", self.redact(str(exc))]
            self.log(f"pod {pod.label}: invalid spec: {exc}")
            return pod
        pod = Pod(name, namespace, pod_hash, spec, spec.grace)
        images = [c for c in spec.init_containers + spec.containers if c.image]
        if images:
            self.checks = node_checks(self.paths)
            if image_runtime(self.checks) is None:
                why = "; ".join(f"{n}: {info.get('message') or 'unavailable'}"
                                for n, info in sorted(self.checks.get("runtimes", {}).items()))
                message = (f"container {images[0].name} needs image {images[0].image} but this "
                           f"node has no container runtime (podman or docker) ({why})")
                pod.fatal = ["NoContainerRuntime", message]
                for ctr in pod.all_containers():
                    ctr.reason, ctr.message = "NoContainerRuntime", message
                self.log(f"pod {pod.label}: {message}")
        return pod

    def update_same_hash(self, pod: Pod, raw: Json) -> None:
        """Same hash: re-attach a re-adopted pod's spec, refresh files volumes in place."""
        try:
            spec = PodSpec.parse(raw)
        except SecretsMissing as exc:
            # Running containers keep what they have; an adopted pod waits for them.
            self.log_error(f"secrets:{pod.key}", f"pod {pod.label}: {exc}")
            return
        except SpecError as exc:
            if pod.spec is None and not pod.fatal:
                pod.fatal = ["InvalidPodSpec", self.redact(str(exc))]
            return
        if pod.spec is None:
            if not pod.attach(spec):
                self.pending[pod.ident] = raw
                self.begin_stop(pod, "containers differ from the re-adopted instance")
            return
        if spec != pod.spec:
            pod.spec = spec
            for ctr in pod.all_containers():
                ctr.spec = next((c for c in spec.init_containers + spec.containers
                                 if c.name == ctr.name), ctr.spec)
            if pod.prepared:
                for vol in spec.volumes:
                    if vol.kind == "files":
                        try:
                            write_files_volume(self.paths.volume_dir(pod.key, vol.name), vol)
                            owner = self.volume_owner(pod)
                            if owner is not None:
                                give_volume(self.paths.volume_dir(pod.key, vol.name), owner, recursive=True)
                        except OSError as exc:
                            pod.message = self.redact(f"updating volume {vol.name}: {exc}")

    def begin_stop(self, pod: Pod, why: str) -> None:
        if not pod.stopping:
            pod.stopping = True
            self.log(f"stopping pod {pod.label} (hash {pod.hash}): {why}")

    # -- the loop ----------------------------------------------------------------------

    def lock_still_ours(self) -> bool:
        """False once the lock file at the path is not the one we hold (root deleted or
        recreated): another supervisor could lock the new file, and two must never run."""
        try:
            return os.stat(self.paths.lock).st_ino == os.fstat(self._lock_fd).st_ino
        except OSError:
            return False

    def tick(self) -> None:
        if not self.lock_still_ours():
            self.log("lock file removed or replaced: exiting so no second supervisor runs")
            self.exiting = True
            return
        now = time.time()
        try:
            self.check_desired()
        except Exception as exc:
            self.log_error("desired", f"reading desired.json failed: {exc}")
        self.ensure_node_network()
        self.batch_pod_networks(now)
        measure = now - self._last_storage_check >= LOCAL_STORAGE_SECONDS
        if measure:
            self._last_storage_check = now
        for pod in list(self.pods.values()):
            try:
                if measure:
                    self.check_local_storage(pod)
                self.step_pod(pod, now)
                pod.internal_error = ""
            except Exception as exc:  # one bad pod must never take the supervisor down
                import traceback

                pod.internal_error = self.redact(f"{type(exc).__name__}: {exc}")
                self.log_error(f"pod:{pod.key}", f"pod {pod.label}: internal error: "
                               f"{pod.internal_error}\n{traceback.format_exc()}")
        for ident, pod in list(self.pods.items()):
            if pod.stopped:
                del self.pods[ident]
                if ident in self.pending:
                    self.pods[ident] = self.new_pod(self.pending.pop(ident))
                    self.pods[ident].ip = pod.ip  # a pod keeps its IP across replacements
        self.retry_cgroup_trash()
        if now - self._last_index >= LOG_INDEX_SECONDS:
            self._last_index = now
            self.index_logs()
        if now >= self.next_metrics:
            self.next_metrics = now + self.metrics_every
            try:
                self.sample_metrics(now)
            except Exception as exc:  # metrics must never stop supervising
                self.log_error("metrics", f"sampling metrics failed: {type(exc).__name__}: {exc}")
        if now - self._last_rotate > 2.0:
            self._last_rotate = now
            self.rotate_logs()
        self.persist()
        since = time.monotonic()  # not `now`: a wall clock set back must not pause publishing
        if since - self._last_facts >= FACTS_PUBLISH_SECONDS or self._facts_status != self._last_status:
            self._last_facts, self._facts_status = since, self._last_status
            try:
                publish_facts(self.paths, self.redact, self.cgroups)
            except Exception as exc:  # readers fall back to the `facts` verb
                self.log_error("facts", f"publishing facts failed: {type(exc).__name__}: {exc}")
        if self.pending_ack is not None:
            atomic_write(self.paths.ack, json.dumps({"generation": self.pending_ack,
                                                     "pid": os.getpid()}))
            self.pending_ack = None

    def step_pod(self, pod: Pod, now: float) -> None:
        if pod.stopping:
            self.step_stopping(pod, now)
            return
        if pod.evicting is not None:
            self.step_evicting(pod, now)
            return
        if pod.fatal or pod.spec is None:
            return
        if not pod.prepared:
            if now < pod.prepare_retry:
                return
            if not self.setup_pod_network(pod, now):
                return
            try:
                self.prepare(pod)
            except MountFailed as exc:  # the kubelet's FailedMount: ContainerCreating, tried again
                pod.prepare_retry = now + 5.0
                message = self.redact(str(exc))
                if pod.message != message:
                    self.log(f"pod {pod.label}: FailedMount: {message}")
                pod.message = message
                for ctr in pod.all_containers():
                    ctr.reason, ctr.message = "ContainerCreating", message
                return
            except OSError as exc:
                pod.prepare_retry = now + 5.0
                message = self.redact(f"volume setup failed: {exc}")
                pod.message = message
                for ctr in pod.all_containers():
                    ctr.reason, ctr.message = "VolumeSetupFailed", message
                return
            pod.prepared, pod.message = True, ""
        elif pod.netns and not pod_network_ok(pod.key, self.paths.instance_tag):
            # Gone after a node reboot or removed by hand: re-create it, and restart the
            # containers that still run in the old namespace.
            if now < pod.prepare_retry or not self.setup_pod_network(pod, now):
                return
            for ctr in pod.all_containers():
                if ctr.state == "running" and ctr.kill_deadline is None:
                    self.begin_kill(pod, ctr, now, "network", "pod network re-created")
        # Init containers one by one. A sidecar (restartPolicy Always) lets the next one start
        # once it has started (its startup probe and postStart hook done), then keeps running
        # beside the containers; it is stepped on every tick, restarts included.
        main_done = pod.spec.restart_policy != "Always" and bool(pod.containers) and all(
            c.state == "terminated" and not c.draining for c in pod.containers)
        for ctr in pod.init_containers:
            if ctr.spec is not None and ctr.spec.sidecar:
                if main_done:  # the pod's work is over (a Job's pod): its sidecars stop, last
                    self.stop_sidecar(pod, ctr, now)
                    continue
                self.step_container(pod, ctr, now)
                if not ctr.succeeded and ctr.state == "running" and ctr.startup_done \
                        and ctr.post_start is None:
                    ctr.succeeded = True  # for a sidecar: it has started once
                if not ctr.succeeded:
                    return
            elif not ctr.succeeded:
                self.step_container(pod, ctr, now)
                if not ctr.succeeded:
                    return
        for ctr in pod.containers:
            if ctr.reason == "PodInitializing":
                ctr.reason = "ContainerCreating"
            self.step_container(pod, ctr, now)

    def stop_sidecar(self, pod: Pod, ctr: Container, now: float) -> None:
        """Stop a sidecar whose pod's containers have all ended; it is not started again."""
        if ctr.state == "running" and ctr.kill_deadline is None:
            exited, rc = ctr.poll_exit()
            if exited:
                self.on_exit(pod, ctr, rc, now, stopping=True)
            else:
                self.begin_kill(pod, ctr, now, "stop", "the pod's containers have ended")
        if ctr.busy:
            self.step_container(pod, ctr, now, stopping=True)
        elif ctr.state == "waiting":
            ctr.state, ctr.reason, ctr.message = "terminated", "Completed", ""

    def prepare(self, pod: Pod) -> None:
        assert pod.spec is not None
        pod_dir = self.paths.pod_dir(pod.key)
        owner = self.volume_owner(pod)
        os.makedirs(self.paths.pods, mode=0o711, exist_ok=True)
        if owner is not None:
            # Its user must reach its volumes: through the agent's folder and the pod's (0711:
            # passed through, never listed); the volumes folder is its group's alone.
            for folder in (self.paths.root, self.paths.pods):
                os.chmod(folder, os.stat(folder).st_mode | 0o011)
        os.makedirs(pod_dir, mode=0o700, exist_ok=True)
        os.chmod(pod_dir, 0o711 if owner is not None else 0o700)
        os.makedirs(os.path.join(pod_dir, "logs"), mode=0o700, exist_ok=True)
        if owner is not None:
            volumes = os.path.join(pod_dir, "volumes")
            os.makedirs(volumes, mode=0o750, exist_ok=True)
            os.chown(volumes, 0, owner[1])
            os.chmod(volumes, 0o750)
        for vol in pod.spec.volumes:
            if vol.kind == "hostPath" and vol.host_path is not None:
                try:
                    check_host_path(vol.host_path, vol.host_path_type)
                except MountFailed as exc:
                    raise MountFailed(f'MountVolume.SetUp failed for volume "{vol.name}" : {exc}') from None
                if owner is not None and vol.host_path.startswith(CLAIM_ROOT + "/"):
                    give_volume(vol.host_path, owner, recursive=False)
            elif vol.kind == "emptyDir":
                folder = self.paths.volume_dir(pod.key, vol.name)
                os.makedirs(folder, exist_ok=True)
                if vol.memory and not os.path.ismount(folder):
                    mount_tmpfs(folder, vol.size_limit)
                if owner is not None:
                    give_volume(folder, owner, recursive=False)
                    # A subPath the kubelet would make is made here, the pod's too (not root's).
                    for m in (m for c in pod.spec.init_containers + pod.spec.containers for m in c.mounts):
                        sub = os.path.join(folder, m.sub_path or "")
                        if m.volume == vol.name and m.sub_path and not os.path.lexists(sub) \
                                and os.path.realpath(os.path.dirname(sub)).startswith(os.path.realpath(folder)):
                            os.makedirs(sub)
                            give_volume(sub, owner, recursive=False)
            else:
                write_files_volume(self.paths.volume_dir(pod.key, vol.name), vol)
                if owner is not None:
                    give_volume(self.paths.volume_dir(pod.key, vol.name), owner, recursive=True)

    def volume_owner(self, pod: Pod) -> tuple[int, int, bool] | None:
        """(uid, gid, setgid) owning the pod's volumes: the pod's identity, its fsGroup as the
        group (with setgid folders, as the kubelet does); None when it runs as the agent's user."""
        assert pod.spec is not None
        owner = pod.spec.volume_owner
        if owner is None:
            return None
        try:
            ident = resolve_identity(owner, pod.namespace, self.accounts)
        except StartError:
            ident = Identity(None, None, ())
        uid = ident.uid if ident.uid is not None else os.getuid()
        if owner.groups:
            return uid, owner.groups[0], True
        return uid, ident.gid if ident.gid is not None else os.getgid(), False

    def pod_resolv_conf(self, pod: Pod) -> str | None:
        """Write the pod's resolv.conf (see resolv_conf) and return its path, or None."""
        assert pod.spec is not None
        text = resolv_conf(pod.spec, pod.netns, self.dns)
        if text is None:
            return None
        path = os.path.join(self.paths.pod_dir(pod.key), "resolv.conf")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if read_text(path) != text:
            atomic_write(path, text, mode=0o644)
        return path

    def ensure_node_network(self) -> None:
        net = self.network
        if net is None or (net == self.network_applied and link_exists(BRIDGE)):
            return
        old = self.network_applied.routes if self.network_applied else ()
        try:
            node_network_up(net, old)
        except NetworkError as exc:
            self.log_error("node-network", f"node pod network: {exc}")
            return
        self.network_applied = net
        problem = bridge_netfilter()
        if problem:  # cross-node traffic is still policed; program_policies reports it too
            self.log_error("bridge-nf", f"NetworkPolicy does not see same-node pod traffic: {problem}")
        self.log(f"pod network {net.cidr} (gateway {net.gateway}), routes "
                 f"{', '.join(f'{c} via {v}' for c, v in net.routes) or 'none'}")

    def batch_pod_networks(self, now: float) -> None:
        """Set up the networks of all pods about to start in this tick at once (see
        pods_network_up); setup_pod_network then finds them done, and does alone, with
        its errors, what the batch left out."""
        self.networked = {}
        net = self.network
        if net is None or self.network_applied is None:
            return
        due: list[Pod] = []
        for pod in self.pods.values():
            # New pods only: one whose namespace vanished is re-made alone, by step_pod,
            # which also restarts the containers still in the old one.
            if not (pod.prepared or pod.stopping or pod.fatal or pod.spec is None
                    or now < pod.prepare_retry or pod.spec.host_network):
                due.append(pod)
        wanted: list[tuple[str, str]] = []
        names: dict[str, str] = {}
        for pod in due:
            ip = self.pod_ip(pod, net)
            if ip is not None:
                wanted.append((pod.key, ip))
                names[f"{pod.namespace}/{pod.name}"] = ip
        if not wanted:
            return
        try:
            self.bind_policies(names)
        except NetworkError as exc:  # each pod alone, failing with the message
            self.log_error("net-batch", f"pod networks in one batch: {exc}")
            return
        try:
            done = pods_network_up(wanted, self.paths.instance_tag, net)
        except OSError as exc:  # e.g. a stale namespace that would not go: each pod alone
            self.log_error("net-batch", f"pod networks in one batch: {exc}")
            return
        self.networked = {key: ip for key, ip in wanted if key in done}

    def pod_ip(self, pod: Pod, net: NetworkSpec) -> str | None:
        """The pod's address: the one it has if the CIDR holds it, else the next free one after
        the one given last (kept on the pod); None when the CIDR is full. An address is used
        again only once the CIDR has gone round, as the CNI host-local IPAM does: other nodes'
        NetworkPolicy rules may still name it as a peer the pod that had it was, until the
        controller's next pass."""
        if pod.ip is None or not net.holds(pod.ip):
            held = [p.ip for p in self.pods.values() if p is not pod and p.ip]
            if self.last_ip is None and held:  # a restarted supervisor: after the highest held
                self.last_ip = max(held, key=lambda a: tuple(int(b) for b in a.split(".")))
            ip = net.free_ip(held, self.last_ip)
            if ip is None:
                return None
            pod.ip = self.last_ip = ip
        return pod.ip

    def bind_policies(self, pods: dict[str, str]) -> None:
        """Put each pod's NetworkPolicy chains on the address it is about to get (see
        program_policies) before its network namespace exists: none of its packets, not even
        the first, passes unpoliced; a pod whose chains cannot be bound does not start."""
        try:
            result = program_policies(self.paths, None, pods)
        except (OSError, ValueError) as exc:
            raise NetworkError(f"NetworkPolicy table: {exc}") from exc
        if not result["programmed"]:
            raise NetworkError(f"NetworkPolicy table: {result['message']}")

    def setup_pod_network(self, pod: Pod, now: float) -> bool:
        """Give a pod its netns, veth and IP before it first starts; False to retry later."""
        assert pod.spec is not None
        if not pod.prepared:
            pod.netns = not pod.spec.host_network and self.network is not None
        if not pod.netns:
            return True
        net = self.network or self.network_applied
        try:
            if net is None or self.network_applied is None:
                raise NetworkError("the node's pod network is not set up yet")
            ip = self.pod_ip(pod, net)
            if ip is None:
                raise NetworkError(f"no free address left in {net.cidr}")
            if self.networked.pop(pod.key, None) != ip:
                self.bind_policies({f"{pod.namespace}/{pod.name}": ip})
                pod_network_up(pod.key, self.paths.instance_tag, ip, net)
        except NetworkError as exc:
            pod.prepare_retry = now + 5.0
            message = self.redact(f"pod network setup failed: {exc}")
            pod.message = message
            for ctr in pod.all_containers():
                if ctr.state == "waiting":
                    ctr.reason, ctr.message = "NetworkSetupFailed", message
            self.log_error(f"net:{pod.key}", f"pod {pod.label}: {message}")
            return False
        self.log(f"pod {pod.label}: network namespace {netns_name(pod.key)}, ip {pod.ip}")
        return True

    def step_stopping(self, pod: Pod, now: float) -> None:
        # Sidecars get their SIGTERM once the containers they serve have gone, as the kubelet does.
        serving = any(c.busy for c in pod.containers)
        for ctr in pod.all_containers():
            sidecar = ctr.init and ctr.spec is not None and ctr.spec.sidecar
            if serving and sidecar and ctr.kill_deadline is None and ctr.state == "running":
                continue
            if ctr.state == "running" and ctr.kill_deadline is None:
                exited, rc = ctr.poll_exit()
                if exited:
                    self.on_exit(pod, ctr, rc, now, stopping=True)
                else:
                    self.begin_kill(pod, ctr, now, "stop", "")
            if ctr.busy:
                self.step_container(pod, ctr, now, stopping=True)
        if any(c.busy for c in pod.all_containers()):
            return
        self.cleanup(pod)
        pod.stopped = True
        self.log(f"pod {pod.label} stopped")

    def step_evicting(self, pod: Pod, now: float) -> None:
        """The kubelet's eviction: every container killed at once (no grace period), then the pod
        is Failed with reason Evicted and never restarted; its controller makes a replacement."""
        for ctr in pod.all_containers():
            if ctr.state == "running" and ctr.kill_deadline is None:
                exited, rc = ctr.poll_exit()
                if exited:
                    self.on_exit(pod, ctr, rc, now, stopping=True)
                else:
                    self.begin_kill(pod, ctr, now, "evicted", "")
                    ctr.kill_deadline = now  # SIGKILL on the next step: an eviction has no grace
            if ctr.busy:
                self.step_container(pod, ctr, now, stopping=True)
        if any(c.busy for c in pod.all_containers()):
            return
        for ctr in pod.all_containers():
            ctr.stop_probes()
            if ctr.state != "terminated":
                ctr.state, ctr.reason, ctr.message = "terminated", "Evicted", ""
        pod.fatal, pod.evicting = ["Evicted", pod.evicting or ""], None

    def check_local_storage(self, pod: Pod) -> None:
        """An emptyDir on disk past its sizeLimit evicts its pod, as the kubelet's eviction
        manager does, in its words."""
        if pod.spec is None or not pod.prepared or pod.stopping or pod.fatal or pod.evicting is not None:
            return
        for vol in pod.spec.volumes:
            if vol.kind != "emptyDir" or vol.memory or not vol.size_limit:
                continue
            used = disk_usage(self.paths.volume_dir(pod.key, vol.name), vol.size_limit)
            if used > vol.size_limit:
                message = f'Usage of EmptyDir volume "{vol.name}" exceeds the limit "{vol.size_text}". '
                self.log(f"pod {pod.label}: Evicted: {message}")
                pod.evicting = message
                return

    def cleanup(self, pod: Pod) -> None:
        for ctr in pod.all_containers():
            ctr.stop_probes()
            if ctr.cgroups:
                Cgroups.kill_all(ctr.cgroups)
                if not Cgroups.remove(ctr.cgroups):
                    self.cgroup_trash.append((ctr.cgroups, 0))
        if pod.netns:
            try:
                pod_network_down(pod.key, self.paths.instance_tag)
            except NetworkError as exc:
                self.log(f"pod {pod.label}: removing its network: {exc}")
        # A memory emptyDir is a tmpfs: unmounted first, or its folder could not go.
        for key in dict.fromkeys((pod.key, pod_key(pod.namespace, pod.name))):
            volumes = os.path.join(self.paths.pod_dir(key), "volumes")
            with contextlib.suppress(OSError):
                for entry in os.scandir(volumes):
                    if os.path.ismount(entry.path):
                        run_quietly([shutil.which("umount") or "umount", "-l", "--", entry.path], 10)
        # emptyDir and files volumes and logs live in the pod dir; hostPath lives elsewhere.
        # Its secrets file belongs to sync, which removes it with the pod from the desired
        # set: a replacement (or the pod added back meanwhile) still needs it.
        for key in dict.fromkeys((pod.key, pod_key(pod.namespace, pod.name))):
            folder = self.paths.pod_dir(key)
            with contextlib.suppress(OSError):
                for entry in os.scandir(folder):
                    if entry.name == SECRETS_FILE:
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path, ignore_errors=True)
                    else:
                        os.unlink(entry.path)
            with contextlib.suppress(OSError):
                os.rmdir(folder)  # gone unless it still holds secrets

    def retry_cgroup_trash(self) -> None:
        keep = []
        for dirs, tries in self.cgroup_trash:
            Cgroups.kill_all(dirs)
            if not Cgroups.remove(dirs) and tries < 100:
                keep.append((dirs, tries + 1))
        self.cgroup_trash = keep

    # -- containers --------------------------------------------------------------------

    def step_container(self, pod: Pod, ctr: Container, now: float,
                       stopping: bool = False) -> None:
        if ctr.draining:
            if not ctr.group_alive():
                self.finish_exit(pod, ctr, now, stopping)
            elif ctr.kill_deadline is not None and now >= ctr.kill_deadline:
                self.send(ctr, signal.SIGKILL)
                ctr.kill_sent = True
                self.finish_exit(pod, ctr, now, stopping)
            return
        if ctr.state == "running":
            exited, rc = ctr.poll_exit()
            if exited:
                self.on_exit(pod, ctr, rc, now, stopping)
                return
            if ctr.kill_deadline is not None:
                if ctr.term_pending and (ctr.hook is None or not ctr.hook.is_alive()
                                         or now >= ctr.kill_deadline):
                    # A hook that used the whole grace period leaves the container the
                    # kubelet's minimum of 2 s between SIGTERM and SIGKILL.
                    ctr.kill_deadline = max(ctr.kill_deadline, now + 2.0)
                    self.terminate(pod, ctr)
                if not ctr.kill_sent and now >= ctr.kill_deadline:
                    self.send(ctr, signal.SIGKILL)
                    ctr.kill_sent = True
                return
            if ctr.post_start is not None:
                if ctr.post_start.is_alive():
                    return  # as the kubelet: not Running (nor probed, nor ready) until it ends
                ctr.post_start = None
                if ctr.post_start_error and not stopping:
                    self.begin_kill(pod, ctr, now, "postStart",
                                    f"FailedPostStartHook: {ctr.post_start_error}")
                    return
            if not stopping:
                self.ensure_probes(pod, ctr)
                self.check_probes(pod, ctr, now)
            return
        if ctr.state == "waiting" and not stopping and now >= ctr.next_start:
            self.start(pod, ctr, now)

    def start(self, pod: Pod, ctr: Container, now: float) -> None:
        spec = ctr.spec
        assert spec is not None and pod.spec is not None
        ident: Identity | None = None
        if spec.security is not None:
            try:
                ident = resolve_identity(spec.security, pod.namespace, self.accounts)
                check_non_root(spec.security, ident, f"{pod.name}_{pod.namespace}({pod.hash})", ctr.name)
            except (ConfigError, StartError) as exc:
                # As the kubelet: the container waits, and the next sync tries again.
                if (ctr.reason, ctr.message) != ("CreateContainerConfigError", str(exc)):
                    self.log(f"pod {pod.label} container {ctr.name}: {exc}")
                ctr.reason, ctr.message = "CreateContainerConfigError", str(exc)
                ctr.next_start = now + CONFIG_RETRY_SECONDS
                return
        log_path = self.paths.log_file(pod.key, ctr.name)
        os.makedirs(os.path.dirname(log_path), mode=0o700, exist_ok=True)
        ctr.exit_file = self.paths.exit_file(pod.key, ctr.name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(ctr.exit_file)  # the last instance's
        if ctr.ever_started and os.path.exists(log_path):
            # The previous instance's log becomes "previous" (kubectl logs --previous).
            self.log_index.previous(log_path)
        if ctr.ever_started:
            ctr.restart_count += 1
        ctr.ever_started = True
        ctr.kill_reason, ctr.kill_deadline, ctr.kill_sent = None, None, False
        ctr.term_pending, ctr.hook, ctr.post_start = False, None, None
        ctr.startup_done = spec.startup is None
        ctr.ready = ctr.adopted_ready = False
        ctr.env = build_env(self.paths, pod, spec, ident.uid if ident is not None else None)
        ctr.started_at = now
        try:
            dirs: list[str] = []
            limits, limits_message = "none", ""
            if spec.image is None and self.cgroups.usable:
                dirs, limits, limits_message = self.cgroups.create(
                    pod.key, ctr.name, spec.memory_bytes, spec.cpu_millis)
            elif spec.image is None and (spec.memory_bytes or spec.cpu_millis):
                limits = "unsupported"
                limits_message = f"limits not applied: {self.cgroups.message}"
            ctr.cgroups, ctr.limits = dirs, limits
            ctr.runtime_cgroups = []  # a new instance: podman makes it a new cgroup
            ctr.oom_base = Cgroups.oom_kills(dirs)
            # A restart reuses the cgroup: its CPU counter goes on from here.
            usage = cgroup_cpu_usec(dirs)
            ctr.cpu_sample = (now, usage) if usage is not None else None
            client_env = ctr.env
            if spec.image is not None:
                runtime = image_runtime(self.checks)
                if runtime is None:
                    raise StartError("no container runtime (podman or docker) on this node")
                ctr.runtime = runtime[0]
                ctr.runtime_name = f"gitorch-{pod.key}-{ctr.name}{self.paths.instance_tag}"
                if runtime[0] == "docker":
                    run_quietly([runtime[1], "rm", "-f", "--", ctr.runtime_name], 10)
                argv, client_env = image_argv(self.paths, pod, spec, runtime,
                                              ctr.runtime_name, ctr.env, self.pod_resolv_conf(pod), ident)
                argv = recording_exit(argv, ctr.exit_file)
                cwd, ctr.mount_ns = "/", False
                ctr.limits = "applied" if (spec.memory_bytes or spec.cpu_millis) else "none"
            else:
                ctr.runtime, ctr.runtime_name = "process", None
                bind = self.checks.get("volumeMounts") == "bind"
                prefix = setpriv_argv(spec.security, ident) \
                    if spec.security is not None and ident is not None else []
                argv, cwd, ctr.mount_ns = process_argv(self.paths, pod, spec, ctr.env, dirs, bind,
                                                       ctr.exit_file, self.pod_resolv_conf(pod), prefix)
                if pod.netns:
                    argv = in_pod_netns(argv, pod.key)
            fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                proc = subprocess.Popen(argv, env=client_env, cwd=cwd, stdin=subprocess.DEVNULL,
                                        stdout=fd, stderr=fd, start_new_session=True,
                                        close_fds=True)
            finally:
                os.close(fd)
        except (OSError, StartError, ValueError) as exc:
            # ValueError: what exec cannot pass (a NUL byte); specs refuse it, but a start that
            # raises must still end as this container's StartError (restarted with back-off,
            # by its policy), never as an error of every tick.
            message = self.redact(one_line(str(exc)))
            self.log(f"pod {pod.label} container {ctr.name}: start failed: {message}")
            ctr.pid, ctr.popen = None, None
            ctr.term = {"exitCode": 128, "signal": None, "reason": "StartError",
                        "message": message, "startedAt": iso(now), "finishedAt": iso(now)}
            ctr.state = "terminated"
            self.finish_exit(pod, ctr, now, stopping=False)
            return
        ctr.popen, ctr.pid = proc, proc.pid
        stat = proc_stat(proc.pid)
        ctr.proc_start = stat[2] if stat else None
        ctr.state, ctr.reason = "running", ""
        ctr.message = limits_message if ctr.limits == "unsupported" else ""
        self.log(f"pod {pod.label} container {ctr.name}: started pid {proc.pid}"
                 f" (restart {ctr.restart_count})")
        if spec.post_start is not None:
            ctr.post_start_error = ""
            ctr.post_start = threading.Thread(target=self.run_post_start,
                                              args=(pod, ctr, spec.post_start),
                                              name=f"poststart-{ctr.name}", daemon=True)
            ctr.post_start.start()

    def begin_kill(self, pod: Pod, ctr: Container, now: float, reason: str,
                   message: str) -> None:
        """SIGTERM the container's process group; SIGKILL it after the grace period."""
        ctr.kill_reason = reason
        ctr.kill_deadline = now + pod.grace
        ctr.kill_sent = False
        if message:
            ctr.message = self.redact(message)
            self.log(f"pod {pod.label} container {ctr.name}: {ctr.message}; killing")
        ctr.stop_probes()
        hook = ctr.spec.pre_stop if ctr.spec is not None else None
        if hook is not None and ctr.hook is None:
            # As the kubelet: the hook runs first, SIGTERM follows when it ends, and the grace
            # period (then SIGKILL) counts from the hook's start.
            ctr.term_pending = True
            ctr.hook = threading.Thread(target=self.run_pre_stop, args=(pod, ctr, hook),
                                        name=f"prestop-{ctr.name}", daemon=True)
            ctr.hook.start()
            return
        self.terminate(pod, ctr)

    def run_post_start(self, pod: Pod, ctr: Container, hook: ProbeSpec) -> None:
        ok, message = self.run_hook(pod, ctr, hook, POST_START_TIMEOUT)
        ctr.post_start_error = "" if ok else (self.redact(one_line(message)) or "the hook failed")
        self.wake()

    def run_pre_stop(self, pod: Pod, ctr: Container, hook: ProbeSpec) -> None:
        ok, message = self.run_hook(pod, ctr, hook, max(pod.grace, 1.0))
        if not ok:
            self.log(f"pod {pod.label} container {ctr.name}: FailedPreStopHook: "
                     f"{self.redact(one_line(message))}")
        self.wake()

    def run_hook(self, pod: Pod, ctr: Container, hook: ProbeSpec, timeout: float) -> tuple[bool, str]:
        try:
            if hook.kind == "sleep":
                time.sleep(min(float(hook.handler["seconds"]), timeout))
                ok, message = True, ""
            else:
                ok, message = self.probe_action(pod, ctr, dataclasses.replace(hook, timeout=timeout))()
        except Exception as exc:  # a hook bug must fail the hook, not the supervisor
            ok, message = False, f"{type(exc).__name__}: {exc}"
        return ok, message

    def terminate(self, pod: Pod, ctr: Container) -> None:
        ctr.term_pending = False
        self.send(ctr, signal.SIGTERM)
        if ctr.runtime != "process" and ctr.runtime_name:
            binary = shutil.which(ctr.runtime) or ctr.runtime
            in_background([binary, "stop", "-t", str(int(pod.grace)), "--", ctr.runtime_name],
                          pod.grace + 30)

    def send(self, ctr: Container, sig: int) -> None:
        if ctr.pid is None:
            return
        # Only signal the group while it demonstrably still holds our processes: a dead,
        # reaped group's id could in principle be reused.
        leader_ok = process_alive(ctr.pid, ctr.proc_start)
        if leader_ok or group_members(ctr.pid):
            try:
                os.killpg(ctr.pid, sig)
            except ProcessLookupError:
                pass
            except PermissionError as exc:
                self.log(f"container {ctr.name}: cannot signal group {ctr.pid}: {exc}")
        if sig == signal.SIGKILL:
            Cgroups.kill_all(ctr.cgroups)
            if ctr.runtime != "process" and ctr.runtime_name:
                binary = shutil.which(ctr.runtime) or ctr.runtime
                in_background([binary, "rm", "-f", "--", ctr.runtime_name], 60)

    def on_exit(self, pod: Pod, ctr: Container, rc: int | None, now: float,
                stopping: bool) -> None:
        """The container's main process ended: record how, then finish or drain its group."""
        ctr.popen = None
        ctr.stop_probes()
        code: int | None
        sig: int | None = None
        if rc is None and ctr.kill_sent:
            rc = -signal.SIGKILL  # we SIGKILLed its group, exit_recorder included
        if rc is None:
            code, reason = None, "Unknown"
        elif rc < 0:
            sig, code = -rc, 128 - rc
            reason = "Error"
        elif 128 < rc <= 128 + 64:
            # What exit_recorder reports for a container a signal ended (as sh, and the
            # kubelet, do): a container that exits 137 on its own reads the same.
            sig, code, reason = rc - 128, rc, "Error"
        else:
            code, reason = rc, "Completed" if rc == 0 else "Error"
        if sig == signal.SIGKILL and Cgroups.oom_kills(ctr.cgroups) > ctr.oom_base:
            reason = "OOMKilled"
        pull_error = self.pull_error(pod, ctr) if rc == 125 and ctr.runtime != "process" else None
        if pull_error is not None:
            reason = pull_error[0]
        if pull_error is not None:
            message = pull_error[1]
        elif ctr.kill_reason == "liveness":
            message = f"Container {ctr.name} failed liveness probe, will be restarted"
        elif ctr.kill_reason == "startup":
            message = f"Container {ctr.name} failed startup probe, will be restarted"
        elif rc is None:
            message = "exit code unknown: the process was re-adopted from an earlier supervisor"
        else:
            message = ""
        ctr.term = {"exitCode": code, "signal": sig, "reason": reason, "message": message,
                    "startedAt": iso(ctr.started_at), "finishedAt": iso(now)}
        ctr.state = "terminated"
        self.log(f"pod {pod.label} container {ctr.name}: exited ({reason}, code {code})")
        if ctr.kill_deadline is not None and not ctr.kill_sent and ctr.group_alive():
            # A graceful stop gives the rest of the group its grace period too.
            ctr.draining = True
            return
        # Like a container whose PID 1 died: nothing of it may survive.
        self.send(ctr, signal.SIGKILL)
        self.finish_exit(pod, ctr, now, stopping)

    def pull_error(self, pod: Pod, ctr: Container) -> tuple[str, str] | None:
        """(reason, message) when the runtime's own exit (125) came from the image: it could
        not be pulled (ErrImagePull), or is missing where imagePullPolicy is Never
        (ErrImageNeverPull), read from the runtime's last words in the container's log."""
        try:
            with open(self.paths.log_file(pod.key, ctr.name), "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 4096))
                tail = fh.read().decode(errors="replace")
        except OSError:
            return None
        lines = [line.strip() for line in tail.splitlines() if line.strip().startswith("Error")]
        if not lines:
            return None
        last = self.redact(one_line(lines[-1]))[:400]
        low = last.lower()
        never = ctr.spec is not None and ctr.spec.pull == "never"
        if never and ("image not known" in low or "no such image" in low):
            return "ErrImageNeverPull", f"image is not present on the node and imagePullPolicy is Never: {last}"
        if any(w in low for w in ("pull", "initializing source", "registry", "manifest unknown",
                                  "image not known", "no such image", "unauthorized")):
            return "ErrImagePull", last
        return None

    def finish_exit(self, pod: Pod, ctr: Container, now: float, stopping: bool) -> None:
        """Decide what follows a termination: back-off and restart, or stay terminated."""
        ctr.draining = False
        ctr.kill_reason, ctr.kill_deadline, ctr.kill_sent = None, None, False
        ctr.term_pending, ctr.hook, ctr.post_start = False, None, None
        term = ctr.term or {}
        code = term.get("exitCode")
        if stopping or pod.stopping or pod.spec is None:
            ctr.state = "terminated"
            return
        policy = pod.spec.restart_policy
        if ctr.init and ctr.spec is not None and ctr.spec.sidecar:
            restart = True  # a sidecar restarts whatever the pod's restartPolicy
        elif ctr.init:
            if code == 0:
                ctr.succeeded, ctr.state = True, "terminated"
                ctr.reason, ctr.message = "", ""
                return
            restart = policy != "Never"
        else:
            restart = policy == "Always" or (policy == "OnFailure" and code != 0)
        if not restart:
            ctr.state = "terminated"
            ctr.reason, ctr.message = str(term.get("reason") or ""), str(term.get("message") or "")
            if ctr.init:
                pod.fatal = ["InitContainerFailed",
                             f"init container {ctr.name} failed with exit code {code}"]
            return
        started = ctr.started_at or now
        if now - started >= self.backoff.reset_after:
            ctr.backoff_count = 0
        delay = self.backoff.delay(ctr.backoff_count)
        ctr.backoff_count += 1
        ctr.next_start = now + delay
        ctr.last_state = ctr.term
        ctr.state = "waiting"
        ctr.reason = "CrashLoopBackOff"
        ctr.message = (f"back-off {delay:g}s restarting failed container={ctr.name} "
                       f"pod={pod.name}")

    # -- probes ------------------------------------------------------------------------

    def ensure_probes(self, pod: Pod, ctr: Container) -> None:
        spec = ctr.spec
        if spec is None or ctr.pid is None:
            return
        if not ctr.env:
            ctr.env = build_env(self.paths, pod, spec)  # a re-adopted container
        wanted = [("startup", spec.startup)] if not ctr.startup_done else [
            ("liveness", spec.liveness), ("readiness", spec.readiness)]
        for which, probe in wanted:
            if probe is not None and which not in ctr.probes:
                worker = ProbeWorker(which, probe, self.probe_action(pod, ctr, probe),
                                     ctr.started_at or time.time(), self.wake)
                ctr.probes[which] = worker
                worker.start()

    def probe_action(self, pod: Pod, ctr: Container, probe: ProbeSpec) -> ProbeAction:
        handler, timeout = probe.handler, probe.timeout
        if pod.netns and pod.ip and not handler.get("host") and probe.kind != "exec":
            handler = {**handler, "host": pod.ip}  # as the kubelet does: probe the pod IP
        if probe.kind == "httpGet":
            return lambda: probe_http(handler, timeout)
        if probe.kind == "tcpSocket":
            return lambda: probe_tcp(handler, timeout)
        if probe.kind == "grpc":
            return lambda: probe_grpc(handler, timeout)
        command = [str(c) for c in handler["command"]]
        cwd = "/"
        sec = ctr.spec.security if ctr.spec is not None else None
        if sec is not None and ctr.runtime == "process":
            # As the container's own processes: in Kubernetes an exec probe runs inside it.
            with contextlib.suppress(StartError):
                command = [*setpriv_argv(sec, resolve_identity(sec, pod.namespace, self.accounts)),
                           *command]
        if ctr.runtime != "process" and ctr.runtime_name:
            argv = [shutil.which(ctr.runtime) or ctr.runtime, "exec", "--", ctr.runtime_name,
                    *command]
        elif ctr.mount_ns and ctr.pid is not None and shutil.which("nsenter"):
            # Run where the container sees its volumes; a bare -w takes the container's cwd
            # (entering a mount namespace would otherwise leave us in its /).
            argv = [str(shutil.which("nsenter")), "-t", str(ctr.pid), "-m", "-w",
                    *(["-n"] if pod.netns else []), "--", *command]
        else:
            argv = in_pod_netns(command, pod.key) if pod.netns else command
            cwd = (ctr.spec.working_dir if ctr.spec else None) or "/"
        env = dict(ctr.env)
        return lambda: probe_exec(argv, env, cwd, timeout)

    def check_probes(self, pod: Pod, ctr: Container, now: float) -> None:
        if not ctr.startup_done:
            worker = ctr.probes.get("startup")
            status, message = worker.result() if worker else (True, "")
            if status is False:
                self.begin_kill(pod, ctr, now, "startup", f"Startup probe failed: {message}")
                return
            if status is not True:
                ctr.ready = False
                return
            ctr.startup_done = True
            if worker:
                worker.stop()
                del ctr.probes["startup"]
            self.ensure_probes(pod, ctr)
        live = ctr.probes.get("liveness")
        if live is not None:
            status, message = live.result()
            if status is False:
                self.begin_kill(pod, ctr, now, "liveness", f"Liveness probe failed: {message}")
                return
        ready = ctr.probes.get("readiness")
        if ready is None:
            ctr.ready = True
            return
        status, message = ready.result()
        if status is None and ctr.adopted_ready:
            return  # no result of ours yet: keep the readiness the last supervisor saw
        ctr.adopted_ready = False
        ctr.ready = status is True
        if status is False:
            ctr.message = self.redact(f"Readiness probe failed: {message}")
        elif ctr.message.startswith("Readiness probe failed"):
            ctr.message = ""

    # -- state and status --------------------------------------------------------------

    def persist(self, force: bool = False) -> None:
        state = json.dumps({"version": AGENT_VERSION,
                            "pods": [p.record() for p in self.pods.values()]}, sort_keys=True)
        if force or state != self._last_state:
            # Holds no env or file values; its messages were masked when they were made.
            atomic_write(self.paths.state, state, sync=True)
            self._last_state = state
        doc = self.redact.doc({"observedGeneration": self.generation,
                               "supervisorPid": os.getpid(), "pods": self.pod_statuses()})
        status = json.dumps(doc, sort_keys=True)
        if force or status != self._last_status:
            doc["writtenAt"] = iso(time.time())
            atomic_write(self.paths.status, json.dumps(doc, sort_keys=True))
            self._last_status = status

    def pod_statuses(self) -> list[Json]:
        out = []
        for ident in sorted(self.pods):
            pod = self.pods[ident]
            containers = [self.container_status(c) for c in pod.containers]
            inits = [self.container_status(c) for c in pod.init_containers]
            phase = pod.phase()
            reason, message = (pod.fatal or ["", ""])[:2]
            message = message or pod.message or (f"internal error: {pod.internal_error}"
                                                 if pod.internal_error else "")
            refused = next((c for c in inits + containers if c["reason"] == "CreateContainerConfigError"), None)
            if not reason and refused is not None:  # what `kubectl get pods` shows as the pod's status
                reason, message = refused["reason"], refused["message"]
            pending = self.pending.get(ident)
            out.append({
                "name": pod.name,
                "namespace": pod.namespace,
                "hash": pod.hash,
                "desiredHash": str(pending.get("hash") or "") if pending else (
                    None if pod.stopping else pod.hash),
                "phase": phase,
                "reason": reason,
                "message": message,
                "ready": phase == "Running" and bool(containers)
                and all(c["ready"] for c in containers)
                and all(c["ready"] for c, ctr in zip(inits, pod.init_containers, strict=True)
                        if ctr.spec is not None and ctr.spec.sidecar),
                "restarts": sum(c.restart_count for c in pod.all_containers()),
                "startedAt": iso(pod.created_at),
                "podIP": pod.ip if pod.netns else None,
                "terminating": pod.stopping,
                "containers": containers,
                "initContainers": inits,
            })
        return out

    def container_status(self, ctr: Container) -> Json:
        term = ctr.term or {}
        last = ctr.last_state or {}
        running = ctr.state == "running"
        if ctr.state == "terminated":
            reason, message = term.get("reason", ""), term.get("message", "") or ctr.message
        else:
            reason, message = ctr.reason, ctr.message
        spec = ctr.spec
        return {
            "name": ctr.name,
            "state": ctr.state,
            "reason": reason,
            "message": message,
            "ready": running and ctr.ready and (not ctr.init or (ctr.spec is not None and ctr.spec.sidecar)),
            "started": running and ctr.startup_done,
            "restartCount": ctr.restart_count,
            "pid": ctr.pid if running else None,
            "startedAt": iso(ctr.started_at) if running else term.get("startedAt"),
            "finishedAt": term.get("finishedAt") if ctr.state == "terminated" else None,
            "exitCode": term.get("exitCode") if ctr.state == "terminated" else None,
            "signal": term.get("signal") if ctr.state == "terminated" else None,
            "lastExitCode": (term or last).get("exitCode"),
            "lastState": ctr.last_state,
            "limits": ctr.limits,
            "runtime": ctr.runtime,
            "image": spec.image if spec else None,
        }

    def sample_metrics(self, now: float) -> None:
        """metrics.json: each running container's CPU (millicores over the last interval, or
        since it started) and working set from its cgroups, and the node's from /proc."""
        pods = []
        for ident in sorted(self.pods):
            pod = self.pods[ident]
            if pod.stopping:
                continue
            containers = []
            for ctr in pod.containers:
                if ctr.state != "running":
                    continue
                dirs = ctr.cgroups
                if not dirs and ctr.runtime == "podman" and ctr.runtime_name:
                    # An image container's cgroup is podman's: looked up once it runs (each
                    # interval until found), then read like the agent's own.
                    if not ctr.runtime_cgroups:
                        ctr.runtime_cgroups = runtime_cgroup_dirs(ctr.runtime, ctr.runtime_name)
                    dirs = ctr.runtime_cgroups
                if not dirs:
                    continue
                usage = cgroup_cpu_usec(dirs)
                memory = cgroup_working_set(dirs)
                cpu = None
                base = ctr.cpu_sample
                # A window much shorter than the interval is noise (a first CFS period may run
                # past the quota): such a figure waits for the next sample.
                if usage is not None and base is not None and now - base[0] < self.metrics_every / 2:
                    usage = None
                if usage is not None:
                    cpu = rate_millis(base, (now, usage), 1e6)
                    ctr.cpu_sample = (now, usage)
                if cpu is None and memory is None:
                    continue
                entry: Json = {"name": ctr.name, "cpuMillis": cpu, "memoryBytes": memory}
                last = ctr.last_state or {}
                if last.get("reason") == "OOMKilled" and last.get("finishedAt"):
                    entry["lastOOMKilledAt"] = last["finishedAt"]  # for the VPA recommender's bump-up
                containers.append(entry)
            if containers:
                pods.append({"namespace": pod.namespace, "name": pod.name, "containers": containers})
        node: Json = {}
        ticks = node_cpu_ticks()
        if ticks is not None:
            hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
            node["cpuMillis"] = rate_millis(self.node_cpu, (now, ticks[0]), float(hz))
            self.node_cpu = (now, ticks[0])
        mem = meminfo()
        if "MemTotal" in mem and "MemAvailable" in mem:
            node["memoryBytes"] = mem["MemTotal"] - mem["MemAvailable"]
        atomic_write(self.paths.metrics, json.dumps({
            "timestamp": round(now, 3), "intervalSeconds": self.metrics_every,
            "cgroup": self.cgroups.version, "node": node, "pods": pods}, sort_keys=True))

    def rotate_logs(self) -> None:
        copytruncate(self.paths.log, LOG_MAX_BYTES)
        for pod in self.pods.values():
            for ctr in pod.all_containers():
                if ctr.state == "running":
                    self.log_index.rotate(self.paths.log_file(pod.key, ctr.name), LOG_MAX_BYTES)

    def index_logs(self) -> None:
        """Note the size and time of each live container's log that grew (see LogIndexer)."""
        seen: set[str] = set()
        for pod in self.pods.values():
            for ctr in pod.all_containers():
                if ctr.busy:
                    log = self.paths.log_file(pod.key, ctr.name)
                    seen.add(log)
                    try:
                        self.log_index.note(log)
                    except OSError as exc:  # a full disk, a pod folder being removed: times wait
                        self.log_error("log-index", f"noting log times of {log}: {exc}")
                        self.log_index.forget(log)
        self.log_index.keep_only(seen)


def cmd_supervise(paths: Paths, request: Json, redact: Redactor) -> int:
    return Supervisor(paths).run()


# ---------------------------------------------------------------------------------------
# Agent verbs talking to the supervisor: sync, status, logs, watch, stop-supervisor
# ---------------------------------------------------------------------------------------


def supervisor_info(paths: Paths) -> Json:
    if not lock_held(paths.lock):
        return {"running": False, "pid": None, "version": None, "sha": None}
    info = read_json(paths.pidfile, {})
    if not isinstance(info, dict):
        info = {}
    return {"running": True, "pid": info.get("pid"), "version": info.get("version"),
            "sha": info.get("sha")}


def start_supervisor(paths: Paths) -> int:
    log_fd = os.open(paths.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        # A new session and no inherited stdio: otherwise the SSH exec never returns.
        proc = subprocess.Popen(
            [sys.executable or "/usr/bin/python3", os.path.abspath(__file__), "supervise",
             "--root", paths.root],
            stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, start_new_session=True,
            close_fds=True, cwd="/")
    finally:
        os.close(log_fd)
    # Reap it when it exits: a long-lived `serve` agent would otherwise keep every
    # supervisor it started (and that later stopped) as a zombie.
    threading.Thread(target=proc.wait, name="reap-supervisor", daemon=True).start()
    return proc.pid


def stop_supervisor(paths: Paths, timeout: float = 10.0) -> int | None:
    """SIGTERM the supervisor (pods keep running); returns its pid if one was stopped."""
    info = supervisor_info(paths)
    pid = info.get("pid")
    if not info["running"]:
        return None
    if not isinstance(pid, int) or not is_supervisor_pid(pid, paths.root):
        raise AgentError(f"a supervisor holds {paths.lock} but its pid file does not name it")
    os.kill(pid, signal.SIGTERM)
    if _wait_unlocked(paths, timeout):
        return pid
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)
    if _wait_unlocked(paths, 5.0):
        return pid
    raise AgentError(f"supervisor pid {pid} did not exit after SIGKILL")


def _wait_unlocked(paths: Paths, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while lock_held(paths.lock):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def wait_ack(paths: Paths, generation: int, pid: int | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        ack = read_json(paths.ack, {})
        if (isinstance(ack, dict) and pid is not None and ack.get("pid") == pid
                and int(ack.get("generation", -1)) >= generation):
            return True
        if time.monotonic() > deadline or (pid is not None and not process_alive(pid, None)):
            return False
        time.sleep(0.01)


HOLDER_MAX = 256


def parse_fence(raw: Any) -> tuple[int, str, str] | None:
    """A sync's ``fence``: the controller's leadership term, who holds it, and which lease
    (one per state store: terms of different stores are not comparable), or None."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise RequestError("sync: fence must be an object {\"term\": N, \"holder\": \"...\"}")
    term, holder = raw.get("term"), raw.get("holder")
    if isinstance(term, bool) or not isinstance(term, int) or term < 0:
        raise RequestError(f"sync: fence.term must be a non-negative integer, not {term!r}")
    if not isinstance(holder, str) or not 0 < len(holder) <= HOLDER_MAX \
            or not holder.isprintable():
        raise RequestError(f"sync: fence.holder must be 1-{HOLDER_MAX} printable characters")
    lease = raw.get("lease", "")
    if not isinstance(lease, str) or len(lease) > HOLDER_MAX or not lease.isprintable():
        raise RequestError(f"sync: fence.lease must be at most {HOLDER_MAX} printable characters")
    return term, holder, lease


def read_fence(paths: Paths) -> tuple[int, str, str] | None:
    doc = read_json(paths.fence, None)
    if not isinstance(doc, dict):
        return None
    try:
        return parse_fence(doc)
    except RequestError:
        return None


def check_fence(paths: Paths, fence: tuple[int, str, str] | None) -> None:
    """Refuse a term older than the highest this node has seen of the same lease; remember a
    higher one, or the term of another lease (a new state store took the node over), on disk
    before the sync acts, so a restart or a racing request cannot forget it. The caller holds
    the agent lock. No fence: a one-shot command, accepted."""
    if fence is None:
        return
    term, holder, lease = fence
    seen = read_fence(paths)
    same = seen is not None and seen[2] == lease
    if seen is not None and same and term < seen[0]:
        raise StaleTerm(term, seen[0], seen[1])
    if seen is None or not same or term > seen[0]:
        atomic_write(paths.fence, json.dumps({"term": term, "holder": holder, "lease": lease,
                                              "at": time.time()}), sync=True)


def status_doc(paths: Paths, redact: Redactor) -> Json:
    desired = read_json(paths.desired, {})
    pods = desired.get("pods", []) if isinstance(desired, dict) else []
    redact.update(secret_values(with_secrets(paths, p) for p in pods if isinstance(p, dict)))
    status = read_json(paths.status, {})
    if not isinstance(status, dict):
        status = {}
    sup = supervisor_info(paths)
    fence = read_fence(paths)
    return {
        "generation": int(desired.get("generation", 0)) if isinstance(desired, dict) else 0,
        "observedGeneration": status.get("observedGeneration"),
        "stale": not sup["running"],
        "supervisor": sup,
        "fence": {"term": fence[0], "holder": fence[1], "lease": fence[2]} if fence else None,
        "pods": public_pods(status.get("pods")),
        "ingress": proxy_status(status.get("pods")),
        # The latest sample of the supervisor's metrics (None before its first one).
        "metrics": read_json(paths.metrics, None) if sup["running"] else None,
    }


def store_secrets(paths: Paths, pods: list[Json], gone: Iterable[PodId]) -> bool:
    """Write each pod's secret values into its own folder (sync holds the agent lock), and
    remove those of pods that left the desired set; True if any file changed."""
    changed = False
    # 0711: pods running as other users reach their own folders through it, never list it.
    os.makedirs(paths.pods, mode=0o711, exist_ok=True)
    os.chmod(paths.pods, 0o711)
    for pod in pods:
        _, values, places = split_secrets(pod)
        path = secrets_path(paths, pod)
        if values:
            text = json.dumps({"hash": str(pod.get("hash") or ""), "values": values}, sort_keys=True)
            if read_text(path) != text:
                folder = os.path.dirname(path)
                os.makedirs(folder, mode=0o700, exist_ok=True)
                os.chmod(folder, os.stat(folder).st_mode & 0o711)  # 0711 for a pod with its own user
                atomic_write(path, text, mode=0o600, sync=True)
                changed = True
        elif not places and os.path.exists(path):  # no secret any more (a kept pod has places)
            os.unlink(path)
            changed = True
    for namespace, name in gone:
        path = secrets_path(paths, {"namespace": namespace, "name": name})
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            changed = True
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(path))  # only if the supervisor has cleaned up already
    return changed


def parse_accounts(raw: Any) -> dict[str, int]:
    """`accounts` of sync: namespace/name -> the ServiceAccount's uid."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or len(raw) > 100_000:
        raise RequestError("sync: accounts must be an object of namespace/name -> uid")
    out = {}
    for key, uid in raw.items():
        ns, _, name = str(key).partition("/")
        if not NAMESPACE.match(ns) or not SAFE_NAME.match(name) or isinstance(uid, bool) \
                or not isinstance(uid, int) or not 1 <= uid <= MAX_ID:
            raise RequestError(f"sync: accounts: {str(key)[:80]!r} needs a namespace/name and a uid above 0")
        out[str(key)] = uid
    return out


def cmd_sync(paths: Paths, request: Json, redact: Redactor) -> int:
    pods = request.get("pods")
    if not isinstance(pods, list):
        raise RequestError("sync: request needs \"pods\": a list of pod specs")
    seen: set[PodId] = set()
    for i, pod in enumerate(pods):
        if not isinstance(pod, dict):
            raise RequestError(f"sync: pods[{i}] must be an object")
        name = safe_name(pod.get("name"), f"sync: pods[{i}].name", RequestError)
        namespace = safe_namespace(pod.get("namespace"), f"sync: pods[{i}].namespace", RequestError)
        if (namespace, name) in seen:
            raise RequestError(f"sync: pod {namespace}/{name} appears twice; a pod (namespace "
                               "and name) must be unique per node")
        seen.add((namespace, name))
    network = request.get("network")
    if network is not None:
        # refuse a broken block before it reaches the supervisor
        cluster_pod_cidrs(network, NetworkSpec.parse(network))
    dns = request.get("dns")
    if dns is not None:
        ClusterDNSSpec.parse(dns)
    accounts = request.get("accounts")
    if accounts is not None:
        parse_accounts(accounts)
    announce = parse_announce(request.get("announce"))
    ingress = parse_ingress(request.get("ingress"))
    raw_services = request.get("services")
    delta = request.get("servicesDelta") if raw_services is None else None
    services = parse_services(raw_services) if raw_services is not None else None
    service_cidr = request.get("serviceCIDR")
    if service_cidr is not None:
        import ipaddress

        try:
            service_cidr = str(ipaddress.IPv4Network(str(service_cidr)))
        except ValueError as exc:
            raise RequestError(f"sync: serviceCIDR: {exc}") from exc
    timeout = request.get("ackTimeoutSeconds", 2.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise RequestError("sync: ackTimeoutSeconds must be a number")
    metrics_conf = request.get("metrics")
    if metrics_conf is not None and (not isinstance(metrics_conf, dict) or set(metrics_conf) - {"intervalSeconds"}):
        raise RequestError("sync: metrics must be {\"intervalSeconds\": N}")
    fence = parse_fence(request.get("fence"))
    policies = parse_policies(request["policies"]) if request.get("policies") is not None else None
    with flocked(paths.agent_lock):
        check_fence(paths, fence)
        sup = supervisor_info(paths)
        if sup["running"] and sup.get("sha") not in (None, own_sha()):
            # An older agent file: upgrade in place, pods stay up. Stopped before anything is
            # written, so it never reads a desired.json of a layout it does not know.
            stop_supervisor(paths)
            sup = supervisor_info(paths)
        current = read_json(paths.desired, {})
        if not isinstance(current, dict):
            current = {}
        # `{"name": N, "keep": true}` keeps the spec this node already has for N: the
        # controller rolls an old revision out gradually without needing its old body.
        have = {pod_id(p): p for p in current.get("pods") or [] if isinstance(p, dict)}
        pods = [have[pod_id(p)] if p.get("keep") else p for p in pods
                if not p.get("keep") or pod_id(p) in have]
        pods = [p for p in pods if pod_id(p)[0] != SYSTEM_NAMESPACE]  # only the agent makes those
        proxied = None
        if ingress:  # the proxy's files first: the supervisor starts it with them
            try:
                proxied = program_ingress(paths, ingress)
            except (OSError, subprocess.SubprocessError) as exc:
                proxied = {"ok": False, "mode": "failed", "commands": 0, "message": one_line(str(exc))[:300]}
            pods.append(proxy_pod(paths))
        elif ingress is None and (SYSTEM_NAMESPACE, INGRESS_POD) in have:
            pods.append(have[(SYSTEM_NAMESPACE, INGRESS_POD)])  # not said: it keeps running
        pods = sorted(pods, key=lambda p: pod_id(p)[::-1])
        secrets_changed = store_secrets(paths, pods, set(have) - {pod_id(p) for p in pods})
        pods = [split_secrets(p)[0] for p in pods]
        generation = int(current.get("generation", 0))
        if accounts is None:
            accounts = current.get("accounts")
        changed = secrets_changed or json.dumps([pods, network, dns, metrics_conf, accounts], sort_keys=True) != \
            json.dumps([current.get("pods"), current.get("network"), current.get("dns"), current.get("metrics"),
                        current.get("accounts")],
            sort_keys=True)
        # The policy entries before the pods: the supervisor binds a new pod's chains to its
        # address from them when it makes the pod's network namespace.
        policed = program_policies(paths, policies, running={"/".join(pod_id(p)) for p in pods}) \
            if policies is not None else None
        if changed or not os.path.exists(paths.desired):
            generation += 1
            wanted: Json = {"generation": generation, "pods": pods}
            if network is not None:
                wanted["network"] = network
            if dns is not None:
                wanted["dns"] = dns
            if accounts is not None:
                wanted["accounts"] = accounts
            if metrics_conf is not None:
                wanted["metrics"] = metrics_conf
            atomic_write(paths.desired, json.dumps(wanted, sort_keys=True), sync=True)
        pid = sup.get("pid") if sup["running"] else None
        if not sup["running"]:
            pid = start_supervisor(paths)
        elif changed and isinstance(pid, int) and is_supervisor_pid(pid, paths.root):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGUSR1)  # re-read desired.json now, not at next poll
        proxy = None
        refused = ""
        if delta is not None:
            raw_services, refused = apply_services_delta(paths, delta)
            services = parse_services(raw_services) if raw_services is not None else None
        if refused:
            proxy = {"ok": False, "changed": False, "message": refused, "reason": "ServicesBaseMismatch",
                     "count": 0, "hash": None, "repaired": "", "tableDigest": held_table(paths)[1]}
        if services is not None and raw_services is not None:
            digest = table_digest(raw_services)
            if held_table(paths)[1] != digest:
                atomic_write(paths.services_table, json.dumps({"digest": digest, "entries": raw_services}))
            raw_net = network if network is not None else current.get("network")
            net = NetworkSpec.parse(raw_net)
            proxy = program_services(paths, services, net.cidr if net else None, service_cidr,
                                     cluster_pod_cidrs(raw_net, net))
            proxy["tableDigest"] = digest
        announced = program_announce(paths, *announce) if announce is not None else None
        if ingress == {}:
            running = os.path.isdir(ingress_dir(paths))
            if running:
                stop_ingress(paths)
            proxied = {"ok": True, "mode": "stopped" if running else "none", "commands": 0, "message": ""}
    acked = wait_ack(paths, generation, pid if isinstance(pid, int) else None, float(timeout))
    doc = status_doc(paths, redact)
    doc.update({"ok": True, "generation": generation, "changed": changed, "acked": acked})
    if proxy is not None:
        doc["services"] = proxy
    if announced is not None:
        doc["announce"] = announced
    if policed is not None:
        doc["policies"] = policed
    if proxied is not None:
        doc["ingressConfig"] = proxied
    emit(doc, redact)
    return 0


def cmd_status(paths: Paths, request: Json, redact: Redactor) -> int:
    """The node's status document. With ``since`` (the ``etag`` of an earlier answer) and
    nothing changed since, only ``{"unchanged": true, "etag": ...}``: a controller asking every
    node every pass then reads and parses a few bytes per quiet node instead of every pod."""
    doc = status_doc(paths, redact)
    doc["ok"] = True
    if request.get("verify"):
        # Drift checks: compare what runs with what was programmed, not just report it.
        doc["servicesDrift"] = services_drift(paths)
        doc["policiesDrift"] = policies_drift(paths)
    etag = hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:20]
    since = request.get("since")
    if isinstance(since, str) and since == etag:
        emit({"ok": True, "unchanged": True, "etag": etag})
        return 0
    doc["etag"] = etag
    emit(doc, redact)
    return 0


def cmd_stop_supervisor(paths: Paths, request: Json, redact: Redactor) -> int:
    with flocked(paths.agent_lock):
        pid = stop_supervisor(paths)
    emit({"ok": True, "stopped": pid is not None, "pid": pid})
    return 0


def read_tail(path: str, lines: int) -> tuple[int, bytes, int]:
    """(offset, bytes, mtime): the last ``lines`` lines of a file (all when lines < 0), where
    they start in it, and its mtime in ns after they were read (a bound on their times)."""
    with open(path, "rb") as fh:
        if lines < 0:
            data = fh.read()
            return 0, data, os.fstat(fh.fileno()).st_mtime_ns
        fh.seek(0, os.SEEK_END)
        pos = end = fh.tell()
        data = b""
        while pos > 0 and data.count(b"\n") <= lines:
            step = min(65536, pos)
            pos -= step
            fh.seek(pos)
            data = fh.read(step) + data
        mtime = os.fstat(fh.fileno()).st_mtime_ns
        if lines == 0:
            return end, b"", mtime
        parts = data.split(b"\n")
        trailing = data.endswith(b"\n")
        if trailing:
            parts = parts[:-1]
        kept = b"\n".join(parts[-lines:])
        kept += b"\n" if trailing and kept else b""
        return end - len(kept), kept, mtime


def log_key(paths: Paths, name: str, namespace: str | None) -> tuple[str, str]:
    """(namespace, folder key) of the pod whose logs are asked for. Without a namespace the
    name must be unambiguous on this node. Pods adopted from an older agent keep their
    folder (state.json says which); others are at pod_key."""
    state = read_json(paths.state, {})
    records = [r for r in (state.get("pods") or [] if isinstance(state, dict) else [])
               if isinstance(r, dict) and r.get("name") == name
               and (namespace is None or (r.get("namespace") or "default") == namespace)]
    found = {str(r.get("namespace") or "default"): str(r.get("key") or name) for r in records}
    if namespace is None and len(found) > 1:
        raise AgentError(f"pod {name} exists in namespaces {', '.join(sorted(found))} on this "
                         "node: name one with \"namespace\"")
    if found:
        ns, key = next(iter(sorted(found.items())))
        return ns, key
    ns = namespace or "default"
    key = pod_key(ns, name)
    if namespace is None and not os.path.isdir(paths.pod_dir(key)) \
            and os.path.isdir(paths.pod_dir(name)):
        key = name
    return ns, key


def cmd_logs(paths: Paths, request: Json, redact: Redactor) -> int:
    pod = safe_name(request.get("pod"), "logs: pod", RequestError)
    namespace = request.get("namespace")
    if namespace is not None:
        namespace = safe_namespace(namespace, "logs: namespace", RequestError)
    container = request.get("container")
    tail = request.get("tail", -1)
    if tail is None:
        tail = -1
    if isinstance(tail, bool) or not isinstance(tail, int):
        raise RequestError("logs: tail must be an integer")
    previous, follow = bool(request.get("previous")), bool(request.get("follow"))
    stamps = bool(request.get("timestamps"))
    since = request.get("since")  # unix seconds: only the lines written then or later
    if since is not None and (isinstance(since, bool) or not isinstance(since, (int, float))):
        raise RequestError("logs: since must be a number of seconds since the epoch")
    since_ns = int(since * 1e9) if since is not None else None
    namespace, key = log_key(paths, pod, namespace)
    log_dir = os.path.join(paths.pod_dir(key), "logs")
    if not os.path.isdir(log_dir):
        raise AgentError(f"pod {pod} not found on this node")
    if container is None:
        names = sorted({re.sub(r"\.log(\.1)?$", "", n) for n in os.listdir(log_dir)
                        if re.search(r"\.log(\.1)?$", n)})
        if len(names) != 1:
            raise AgentError(f"pod {pod} has containers {', '.join(names) or '(none started)'}:"
                             " name one with \"container\"")
        container = names[0]
    container = safe_name(container, "logs: container", RequestError)
    path = paths.log_file(key, container, previous)
    if not os.path.exists(path):
        what = "previous terminated container" if previous else "container"
        raise AgentError(f"{what} {container} in pod {pod} has no log on this node")
    if not follow:
        start, data, mtime = read_tail(path, tail if since_ns is None else -1)
        index = read_log_index(path) if stamps or since_ns is not None else []
        if since_ns is not None:
            start, data = select_lines(data, start, tail, since_ns, index, mtime)
        answer: Json = {"ok": True, "pod": pod, "namespace": namespace, "container": container,
                        "previous": previous}
        if since_ns is not None:
            answer["since"] = True
        if stamps:
            data, left_out = stamp_lines(data, start, index, mtime)
            answer.update(timestamps=True, leftOut=left_out)
        emit({**answer, "log": data.decode(errors="replace")})
        return 0
    follow_log(path, tail, stamps, since_ns)
    return 0


def stdin_closed() -> threading.Event:
    """An event set once stdin reaches its end: the controller (its SSH channel) went away."""
    closed = threading.Event()

    def watch_stdin() -> None:
        # os.read, not sys.stdin: a buffered read would hold stdin's lock, and the interpreter
        # aborts (SIGABRT) at exit when the main thread ends first (its stdout went away).
        with contextlib.suppress(OSError, ValueError):
            while os.read(sys.stdin.fileno(), 4096):
                pass
        closed.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    return closed


def follow_log(path: str, tail: int, stamps: bool = False, since_ns: int | None = None) -> None:
    """Stream a log as raw text until stdin closes or the log (its pod) disappears. With
    ``stamps`` each line is prefixed with its time: from the log's index for the lines already
    there, the time they were read for the lines that follow (within the 0.2 s poll)."""
    out: IO[bytes] = sys.stdout.buffer
    closed = stdin_closed()
    fh = open(path, "rb")  # noqa: SIM115 - reopened on rotation below
    pending = b""  # with stamps: a line whose end has not been written yet

    def send(chunk: bytes, flush_partial: bool = False) -> None:
        nonlocal pending
        if not stamps:
            out.write(chunk)
        else:
            pending += chunk
            cut = len(pending) if flush_partial or len(pending) > 65536 else pending.rfind(b"\n") + 1
            if cut:
                out.write(stamp_lines(pending[:cut], 0, [], time.time_ns(), budget=1 << 62)[0])
                pending = pending[cut:]
        out.flush()

    try:
        start, data, mtime = read_tail(path, tail if since_ns is None else -1)
        end = start + len(data)
        index = read_log_index(path) if stamps or since_ns is not None else []
        if since_ns is not None:
            start, data = select_lines(data, start, tail, since_ns, index, mtime)
        if stamps:
            cut = data.rfind(b"\n") + 1  # a partial last line waits for its end, as any other
            out.write(stamp_lines(data[:cut], start, index, mtime)[0])
            pending = data[cut:]
        else:
            out.write(data)
        out.flush()
        fh.seek(end)
        ino = os.fstat(fh.fileno()).st_ino
        while not closed.is_set():
            chunk = fh.read(65536)
            if chunk:
                send(chunk)
                continue
            try:
                st = os.stat(path)
            except FileNotFoundError:
                if not os.path.isdir(os.path.dirname(path)):
                    return  # the pod is gone
                closed.wait(0.2)  # between a restart's rename and the new file
                continue
            if st.st_ino != ino:  # the container restarted: follow its new log
                send(b"", flush_partial=True)
                fh.close()
                fh = open(path, "rb")  # noqa: SIM115
                ino = st.st_ino
            elif st.st_size < fh.tell():  # truncated by size rotation
                send(b"", flush_partial=True)
                fh.seek(0)
            closed.wait(0.2)
    except BrokenPipeError:
        pass
    finally:
        fh.close()


WATCH_POLL_SECONDS = 0.05
WATCH_HEARTBEAT_SECONDS = 10.0


def endpoint_view(status: Any) -> list[Json]:
    """What Services and the cluster DNS depend on in status.json, per pod, sorted; with the
    restart count and reason too, which the controller records (a quiet controller passes
    only when woken). Messages are left out: probes rewrite them all the time."""
    pods = status.get("pods") if isinstance(status, dict) else None
    if not isinstance(pods, list):  # edited by hand: no pods, rather than a dead stream
        pods = []
    pods = public_pods(pods)
    rows = [{"name": p.get("name"), "namespace": p.get("namespace"), "phase": p.get("phase"),
             "ready": bool(p.get("ready")), "podIP": p.get("podIP"),
             "terminating": bool(p.get("terminating")), "restarts": p.get("restarts"),
             "reason": p.get("reason")}
            for p in pods or [] if isinstance(p, dict)]
    return sorted(rows, key=lambda r: (str(r["namespace"]), str(r["name"])))


def cmd_watch(paths: Paths, request: Json, redact: Redactor) -> int:
    """Stream pod status changes that matter to endpoints (and restarts), plus heartbeats, until stdin
    closes. The supervisor replaces status.json (rename) when its content changes, so a
    stat every WATCH_POLL_SECONDS finds a change cheaply; the digest skips rewrites that
    only touch other fields (messages, restart counts)."""
    closed = stdin_closed()
    seen: tuple[int, int, int] | None = None
    digest: str | None = None
    beat = time.monotonic()
    try:
        while True:
            try:
                st = os.stat(paths.status)
                key: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
                written: float | None = st.st_mtime_ns / 1e9
            except OSError:
                key, written = None, None
            if key != seen or digest is None:
                seen = key
                pods = endpoint_view(read_json(paths.status, {}))
                new = hashlib.sha256(json.dumps(pods, sort_keys=True).encode()).hexdigest()[:16]
                if new != digest:
                    digest = new
                    emit({"ok": True, "event": "status", "digest": digest, "writtenAt": written,
                          "pods": pods})
                    beat = time.monotonic()
            if time.monotonic() - beat >= WATCH_HEARTBEAT_SECONDS:
                emit({"ok": True, "event": "heartbeat", "digest": digest})
                beat = time.monotonic()
            if closed.wait(WATCH_POLL_SECONDS):
                return 0
    except BrokenPipeError:
        # The reader went away; keep the interpreter's final flush from complaining.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def cmd_serve(paths: Paths, request: Json, redact: Redactor) -> int:
    """Answer one JSON request per stdin line (`{"verb": ..., ...}`), one JSON line each,
    until stdin closes: the controller keeps this running over one SSH channel per node,
    so a request costs a round trip instead of a Python start-up."""
    for line in sys.stdin:
        if not line.strip():
            continue
        each = Redactor()
        try:
            req = _parse_request(line)
            verb = req.pop("verb", None)
            if verb not in VERBS or verb in ("serve", "supervise", "watch"):
                raise RequestError(f"serve: unknown verb {verb!r}")
            if verb == "logs" and req.get("follow"):
                raise RequestError("serve: logs with follow needs its own session")
            VERBS[str(verb)](paths, req, each)
        except AgentError as exc:
            emit(exc.answer(), each)
        except RequestError as exc:
            emit({"ok": False, "error": one_line(str(exc))}, each)
        except Exception as exc:  # one bad request must not end the session
            emit({"ok": False, "error": one_line(f"internal error: {type(exc).__name__}: {exc}")}, each)
    return 0


# Where the controller provisions PersistentVolumeClaims' directories; only these are reclaimed.
CLAIMS_ROOT = "/var/lib/gitorch/volumes"


def cmd_reclaim(paths: Paths, request: Json, redact: Redactor) -> int:
    """Remove the directories of claims gone from Git with reclaimPolicy Delete. Only paths
    below CLAIMS_ROOT, never through a symlink; a path a desired pod still mounts, or any
    while a pod is still stopping, is left for the next call ("busy")."""
    wanted = request.get("paths")
    if not isinstance(wanted, list) or len(wanted) > 1000:
        emit({"ok": False, "error": "reclaim: paths must be a list of at most 1000 paths"})
        return 0
    desired = read_json(paths.desired, {})
    mounted = {str(v.get("hostPath")) for p in (desired.get("pods") or []) if isinstance(p, dict)
               for v in (p.get("volumes") or []) if isinstance(v, dict) and v.get("hostPath")}
    state = read_json(paths.state, {})
    stopping = any(isinstance(p, dict) and p.get("stopping") for p in state.get("pods") or [])
    removed: list[str] = []
    busy: list[str] = []
    refused: list[str] = []
    for raw in wanted:
        path = os.path.normpath(str(raw))
        inside = path.startswith(CLAIMS_ROOT + "/") and "\0" not in path
        if not inside or os.path.realpath(path) != path:
            refused.append(str(raw)[:200])
        elif path in mounted or stopping:
            busy.append(path)
        else:
            shutil.rmtree(path, ignore_errors=True)
            (busy if os.path.lexists(path) else removed).append(path)
    emit({"ok": True, "removed": removed, "busy": busy, "refused": refused}, redact)
    return 0


VERBS: dict[str, Callable[[Paths, Json, Redactor], int]] = {
    "reclaim": cmd_reclaim,
    "serve": cmd_serve,
    "facts": cmd_facts,
    "sync": cmd_sync,
    "status": cmd_status,
    "logs": cmd_logs,
    "stop-supervisor": cmd_stop_supervisor,
    "supervise": cmd_supervise,
    "watch": cmd_watch,
}


if __name__ == "__main__":
    sys.exit(main())
