"""Hints suggest what the user meant: a Kubernetes kind or field gitorch lacks is named as such,
never as a misspelling of a nearest neighbour; a typo of a supported field still gets one."""

from __future__ import annotations

import pytest

from gitorch.model.diagnostics import Severity
from gitorch.source import desired
from gitorch.source.git import open_repository
from gitorch.source.manifests import parse_documents
from gitorch.source.validation import _kubernetes
from tests.gitrepo import GitRepo


def errors(repo: GitRepo, files: dict[str, str]) -> list[str]:
    repo.commit("case", files)
    state = desired.load(open_repository(repo.path), None)
    return [d.format() for d in state.diagnostics if d.severity is Severity.ERROR]


KINDS = [
    "PriorityClass",
    "ReplicationController",
    "Endpoints",
]


@pytest.mark.parametrize("kind", KINDS)
def test_a_kubernetes_kind_gitorch_lacks_is_named_not_guessed(repo: GitRepo, kind: str) -> None:
    got = errors(repo, {"x.yaml": f"apiVersion: v1\nkind: {kind}\nmetadata: {{name: x}}\n"})
    assert len(got) == 1 and got[0].startswith(f"x.yaml:2:7: /kind: gitorch does not support {kind} yet"), got
    assert "did you mean" not in got[0]


def test_a_misspelt_kind_still_gets_a_suggestion(repo: GitRepo) -> None:
    got = errors(repo, {"x.yaml": "apiVersion: v1\nkind: Servce\nmetadata: {name: x}\n"})
    assert got == ["x.yaml:2:7: /kind: unknown kind 'Servce' (hint: did you mean 'Service'?)"]


def deployment(pod: str = "", container: str = "", volume: str = "") -> str:
    return f"""\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
{pod}      containers:
        - name: web
          command: [sleep, "600"]
{container}      volumes:
        - name: data
          emptyDir: {{}}
{volume}"""


@pytest.mark.parametrize(
    ("files", "where", "field"),
    [
        (
            {"d.yaml": deployment(pod="      securityContext: {sysctls: []}\n")},
            "d.yaml:9:25: /spec/template/spec/securityContext",
            "sysctls",
        ),
        (
            {"d.yaml": deployment(container="          lifecycle: {stopSignal: SIGINT}\n")},
            "d.yaml:12:23: /spec/template/spec/containers/0/lifecycle",
            "stopSignal",
        ),
        (
            {"d.yaml": deployment(container="          securityContext: {procMount: Unmasked}\n")},
            "d.yaml:12:29: /spec/template/spec/containers/0/securityContext",
            "procMount",
        ),
        (
            {"d.yaml": deployment(volume="          nfs: {server: x, path: /}\n")},
            "d.yaml:15:11: /spec/template/spec/volumes/0",
            "nfs",
        ),
        (
            {
                "s.yaml": "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  selector: {app: web}\n"
                "  ports: [{port: 80}]\n  externalIPs: [10.0.0.8]\n"
            },
            "s.yaml:7:3: /spec",
            "externalIPs",
        ),
    ],
)
def test_a_kubernetes_field_gitorch_lacks_is_not_supported_not_a_typo(
    repo: GitRepo, files: dict[str, str], where: str, field: str
) -> None:
    got = errors(repo, files)
    want = f"{where}/{field}: field {field!r} is not supported by gitorch (hint: gitorch does not implement it yet"
    assert any(g.startswith(want) for g in got), got
    assert not any("did you mean" in g for g in got), got


def test_a_grpc_probe_is_accepted_and_a_second_handler_is_named(repo: GitRepo) -> None:
    assert errors(repo, {"d.yaml": deployment(container="          readinessProbe: {grpc: {port: 8080}}\n")}) == []
    got = errors(repo, {"d.yaml": deployment(
        container="          readinessProbe: {grpc: {port: 8080}, tcpSocket: {port: 8080}}\n")})
    assert len(got) == 1 and "exactly one handler: httpGet, tcpSocket, exec or grpc" in got[0], got


def test_a_probe_without_a_handler_still_says_so(repo: GitRepo) -> None:
    got = errors(repo, {"d.yaml": deployment(container="          readinessProbe: {periodSeconds: 3}\n")})
    assert len(got) == 1 and "missing required field" in got[0], got


def test_a_typo_of_a_supported_field_gets_did_you_mean(repo: GitRepo) -> None:
    got = errors(repo, {"d.yaml": deployment(container="          imagePullPolice: Always\n")})
    assert got == [
        "d.yaml:12:11: /spec/template/spec/containers/0/imagePullPolice: unknown field 'imagePullPolice': "
        "gitorch does not support it (hint: did you mean 'imagePullPolicy'?)"
    ]


def test_kubernetes_field_table_walks_kinds_and_lists() -> None:
    k8s = _kubernetes()
    container = k8s.fields("Deployment", ["spec", "template", "spec", "containers", 0])
    assert container is not None and "securityContext" in container and "imagePullPolicy" in container
    probe = k8s.fields(
        "CronJob", ["spec", "jobTemplate", "spec", "template", "spec", "initContainers", 1, "startupProbe"]
    )
    assert probe is not None and "grpc" in probe
    assert k8s.fields("Deployment", ["spec", "nosuch"]) is None
    assert k8s.fields("Node", []) is None  # gitorch's own kinds have no Kubernetes fields here


@pytest.mark.parametrize(
    ("data", "line", "column"),
    [(b"\xff\xfe\x00a: 1", 1, 1), (b"a: 1\nb: 2\nc: caf\xe9\n", 3, 7)],
)
def test_not_utf8_is_reported_at_the_bytes_line(data: bytes, line: int, column: int) -> None:
    _, diags = parse_documents("bin.yaml", data)
    assert [(d.line, d.column) for d in diags] == [(line, column)] and "not UTF-8" in diags[0].message


def test_generate_name_is_refused_once_with_what_to_do(repo: GitRepo) -> None:
    job = ("apiVersion: batch/v1\nkind: Job\nmetadata:\n  generateName: upgrade-\nspec:\n  template:\n    spec:\n"
           "      restartPolicy: Never\n      containers:\n        - {name: a, command: [sleep, '1']}\n")
    got = errors(repo, {"job.yaml": job})
    assert got == [
        "job.yaml:4:3: /metadata/generateName: generateName is not supported: an object in Git needs a name of "
        "its own (hint: set metadata.name (a generated one would be a new object on every pass); for a task that "
        "runs again on each change, use a Job)"
    ]


def test_lifecycle_hooks_and_sidecar_init_containers_are_accepted(repo: GitRepo) -> None:
    """Hooks and sidecars run (tests/test_agent.py); restartPolicy on a container that is not
    an init container is refused, saying where it belongs."""
    hooks = "          lifecycle: {postStart: {exec: {command: [x]}}, preStop: {sleep: {seconds: 5}}}\n"
    assert errors(repo, {"d.yaml": deployment(container=hooks)}) == []
    two = "          lifecycle: {preStop: {sleep: {seconds: 5}, exec: {command: [x]}}}\n"
    got = errors(repo, {"d.yaml": deployment(container=two)})
    assert len(got) == 1 and "exactly one handler: exec, httpGet or sleep" in got[0], got
    sidecar = "      initContainers:\n        - {name: proxy, command: [sleep, '9'], restartPolicy: Always}\n"
    assert errors(repo, {"d.yaml": deployment(pod=sidecar)}) == []
    got = errors(repo, {"d.yaml": deployment(container="          restartPolicy: Always\n")})
    assert len(got) == 1 and "/containers/0/restartPolicy" in got[0], got
    assert "restartPolicy is for initContainers" in got[0]
    never = "      initContainers:\n        - {name: proxy, command: [sleep, '9'], restartPolicy: Never}\n"
    assert len(errors(repo, {"d.yaml": deployment(pod=never)})) == 1


@pytest.mark.parametrize(
    ("kind", "fix"),
    [
        ("ReplicationController", "use a Deployment"),
    ],
)
def test_a_kind_gitorch_lacks_says_what_to_use_instead(repo: GitRepo, kind: str, fix: str) -> None:
    got = errors(repo, {"x.yaml": f"apiVersion: v1\nkind: {kind}\nmetadata: {{name: x}}\n"})
    assert len(got) == 1 and f"gitorch does not support {kind} yet (hint: " in got[0] and fix in got[0], got
