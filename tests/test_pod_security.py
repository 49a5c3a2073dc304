"""Pod Security Standards at validation, on real manifests: the corpus's microservices-demo (which
sets every restricted field but seccompProfile) and kubernetes/examples' Cassandra (which adds
IPC_LOCK), in namespaces labelled baseline or restricted, with Kubernetes' check IDs and messages
(pod-security-admission's policy/check_*.go); and the ServiceAccount references beside them."""

from __future__ import annotations

from pathlib import Path

import pytest

from gitorch.model.diagnostics import Severity
from gitorch.source import desired, podsecurity
from gitorch.source.git import open_repository
from tests.gitrepo import GitRepo

CORPUS = Path(__file__).parent / "data" / "corpus"
DEMO = (CORPUS / "microservices-demo" / "kubernetes-manifests.yaml").read_text()
CASSANDRA = (CORPUS / "kubernetes-examples" / "databases" / "cassandra" / "cassandra-statefulset.yaml").read_text()


def namespace(level: str | None) -> str:
    labels = f"\n  labels: {{{podsecurity.ENFORCE_LABEL}: {level}}}" if level else ""
    return f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default{labels}\n"


def errors(repo: GitRepo, files: dict[str, str]) -> list[str]:
    repo.commit("case", files)
    state = desired.load(open_repository(repo.path), None)
    return [d.format() for d in state.diagnostics if d.severity is Severity.ERROR]


def pss(found: list[str]) -> list[str]:
    return [e for e in found if "PodSecurity" in e]


def test_microservices_demo_passes_baseline_and_fails_restricted_only_for_seccomp(repo: GitRepo) -> None:
    assert pss(errors(repo, {"ns.yaml": namespace("baseline"), "demo.yaml": DEMO})) == []
    found = pss(errors(repo, {"ns.yaml": namespace("restricted"), "demo.yaml": DEMO}))
    assert len(found) == 12, found  # every Deployment, each once
    frontend = next(e for e in found if e.startswith("demo.yaml:38:"))
    assert frontend == (
        'demo.yaml:38:7: /spec/template/spec: violates PodSecurity "restricted:latest": seccompProfile (pod or '
        'container "server" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost") '
        "(hint: check seccompProfile_restricted of the restricted Pod Security Standard, which namespace 'default' "
        "enforces (pod-security.kubernetes.io/enforce=restricted))"
    )
    seccomp = "        runAsUser: 1000\n        seccompProfile: {type: RuntimeDefault}\n"
    fixed = DEMO.replace("        runAsUser: 1000\n", seccomp)
    assert pss(errors(repo, {"ns.yaml": namespace("restricted"), "demo.yaml": fixed})) == []


def test_cassandra_adds_a_capability_baseline_refuses(repo: GitRepo) -> None:
    cassandra = CASSANDRA.split("\n---\n")[0]
    assert pss(errors(repo, {"ns.yaml": namespace(None), "c.yaml": cassandra})) == []
    found = pss(errors(repo, {"ns.yaml": namespace("baseline"), "c.yaml": cassandra}))
    assert len(found) == 1 and (
        'violates PodSecurity "baseline:latest": non-default capabilities (container "cassandra" must not include '
        '"IPC_LOCK" in securityContext.capabilities.add) (hint: check capabilities_baseline of the baseline'
    ) in found[0], found


PRIVILEGED = """\
apiVersion: v1
kind: Pod
metadata: {name: root}
spec:
  hostNetwork: true
  securityContext: {runAsUser: 0}
  containers:
    - name: shell
      command: [sleep, "600"]
      ports: [{containerPort: 80, hostPort: 80}]
      securityContext: {privileged: true, capabilities: {add: [SYS_ADMIN]}}
  volumes:
    - {name: host, hostPath: {path: /}}
"""


PRIVILEGED_SPEC = {  # PRIVILEGED's spec, for the checks' own order
    "hostNetwork": True, "securityContext": {"runAsUser": 0},
    "containers": [{"name": "shell", "command": ["sleep", "600"], "ports": [{"containerPort": 80, "hostPort": 80}],
                    "securityContext": {"privileged": True, "capabilities": {"add": ["SYS_ADMIN"]}}}],
    "volumes": [{"name": "host", "hostPath": {"path": "/"}}],
}


@pytest.mark.parametrize(
    ("level", "checks"),
    [
        ("privileged", []),
        # Kubernetes' order: baseline's check IDs sorted, then restricted's (runAsUser: gitorch's addition to baseline).
        ("baseline", ["capabilities_baseline", "hostNamespaces", "hostPathVolumes", "hostPorts", "privileged",
                      "runAsUser"]),
        # restrictedVolumes overrides hostPathVolumes (and capabilities_restricted capabilities_baseline).
        ("restricted", ["hostNamespaces", "hostPorts", "privileged", "allowPrivilegeEscalation",
                        "capabilities_restricted", "restrictedVolumes", "runAsNonRoot", "runAsUser",
                        "seccompProfile_restricted"]),
    ],
)
def test_a_privileged_pod_fails_each_check_by_name(repo: GitRepo, level: str, checks: list[str]) -> None:
    found = pss(errors(repo, {"ns.yaml": namespace(level), "pod.yaml": PRIVILEGED}))
    assert sorted(e.split("(hint: check ")[1].split(" ")[0] for e in found) == sorted(checks), found
    assert [v.check for v in podsecurity.check_pod(level, PRIVILEGED_SPEC)] == checks
    details = " | ".join(found)
    if level != "privileged":
        assert 'privileged (container "shell" must not set securityContext.privileged=true)' in details
        assert "host namespaces (hostNetwork=true)" in details
        assert 'hostPort (container "shell" uses hostPort 80)' in details
        assert 'runAsUser=0 (pod must not set runAsUser=0)' in details
    if level == "baseline":
        assert 'hostPath volumes (volume "host")' in details
    if level == "restricted":
        assert 'restricted volume types (volume "host" uses restricted volume type "hostPath")' in details
        assert ('unrestricted capabilities (container "shell" must set securityContext.capabilities.drop=["ALL"]; '
                'container "shell" must not include "SYS_ADMIN" in securityContext.capabilities.add)') in details


def test_host_namespaces_and_restricted_volumes_in_kubernetes_words() -> None:
    pod = {"hostIPC": True, "hostPID": True, "hostNetwork": True, "containers": [{"name": "c"}],
           "volumes": [{"name": "b", "nfs": {"server": "x"}}, {"name": "a", "hostPath": {"path": "/"}},
                       {"name": "c", "hostPath": {"path": "/srv"}}, {"name": "ok", "emptyDir": {}}]}
    found = {v.check: v.detail for v in podsecurity.check_pod("restricted", pod)}
    assert found["hostNamespaces"] == "hostNetwork=true, hostPID=true, hostIPC=true"
    assert found["restrictedVolumes"] == 'volumes "b", "a", "c" use restricted volume types "hostPath", "nfs"'
    assert "hostPathVolumes" not in found
    assert {v.check: v.detail for v in podsecurity.check_pod("baseline", pod)}["hostPathVolumes"] == 'volumes "a", "c"'


def label_diagnostics(repo: GitRepo, labels: dict[str, str]) -> list[str]:
    body = "".join(f"\n    {k}: {v}" for k, v in labels.items())
    repo.commit("case", {"ns.yaml": f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n  labels:{body}\n"})
    state = desired.load(open_repository(repo.path), None)
    return [f"{d.severity.name} {d.format()}" for d in state.diagnostics]


def test_version_and_audit_labels_are_never_silently_ignored(repo: GitRepo) -> None:
    enforce, version = podsecurity.ENFORCE_LABEL, podsecurity.version_label(podsecurity.ENFORCE_LABEL)
    assert label_diagnostics(repo, {enforce: "baseline", version: "latest"}) == []
    found = label_diagnostics(repo, {enforce: "baseline", version: "v1.24"})
    assert len(found) == 1 and found[0].startswith("WARNING ns.yaml:7:") and \
        "pod-security.kubernetes.io~1enforce-version: warning: version v1.24 is checked as latest" in found[0], found
    found = label_diagnostics(repo, {enforce: "baseline", f"{podsecurity.WARN_LABEL}-version": "'1.24'"})
    assert len(found) == 1 and found[0].startswith("ERROR ") and \
        "invalid version '1.24': must be \"latest\" or \"v1.x\"" in found[0], found
    found = label_diagnostics(repo, {podsecurity.AUDIT_LABEL: "restricted"})
    assert len(found) == 1 and found[0].startswith("WARNING ") and "no effect: gitorch keeps no audit log" in found[0]
    found = label_diagnostics(repo, {podsecurity.AUDIT_LABEL: "strict"})
    assert len(found) == 1 and found[0].startswith("ERROR ") and "unknown level 'strict'" in found[0], found


def test_an_unknown_level_is_an_error(repo: GitRepo) -> None:
    found = errors(repo, {"ns.yaml": namespace("strict")})
    assert found == ["ns.yaml:5:48: /metadata/labels/pod-security.kubernetes.io~1enforce: unknown level 'strict' "
                     "(hint: one of: privileged, baseline, restricted)"]


POD = """\
apiVersion: v1
kind: Pod
metadata: {name: app}
spec:
  serviceAccountName: %s
  containers:
    - {name: app, command: [sleep, "600"]%s}
"""


def test_service_account_references_and_tokens(repo: GitRepo) -> None:
    sa = "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: web}\n"
    assert errors(repo, {"sa.yaml": sa, "pod.yaml": POD % ("web", "")}) == []
    assert errors(repo, {"pod.yaml": POD % ("default", "")}) == []  # every namespace has one
    assert errors(repo, {"sa.yaml": sa, "pod.yaml": POD % ("wbe", "")}) == [
        "pod.yaml:5:23: /spec/serviceAccountName: ServiceAccount default/wbe does not exist (hint: did you mean 'web'?)"
    ]
    found = errors(repo, {"sa.yaml": sa + "automountServiceAccountToken: true\n", "pod.yaml": POD % ("web", "")})
    assert len(found) == 1 and "there is no token to mount" in found[0], found
    escalate = ", securityContext: {privileged: true, allowPrivilegeEscalation: false}"
    found = errors(repo, {"sa.yaml": sa, "pod.yaml": POD % ("web", escalate)})
    assert len(found) == 1 and "cannot set `allowPrivilegeEscalation` to false and `privileged` to true" in found[0]
    assert "/spec/containers/0/securityContext" in found[0]


def test_labelling_a_namespace_rechecks_its_unchanged_pods(repo: GitRepo) -> None:
    """Rules' results are kept with unchanged files (the source cache); a pod's depend on its
    Namespace's label, so labelling the Namespace alone must check the pod again."""
    assert pss(errors(repo, {"ns.yaml": namespace(None), "pod.yaml": PRIVILEGED})) == []
    found = pss(errors(repo, {"ns.yaml": namespace("baseline")}))
    assert any("check privileged of the baseline" in e for e in found), found
    assert pss(errors(repo, {"ns.yaml": namespace("privileged")})) == []


def test_the_warn_label_gives_the_same_checks_as_warnings(repo: GitRepo) -> None:
    ns = ("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n  labels:\n"
          f"    {podsecurity.ENFORCE_LABEL}: baseline\n    {podsecurity.WARN_LABEL}: restricted\n")
    repo.commit("case", {"ns.yaml": ns, "demo.yaml": DEMO})
    state = desired.load(open_repository(repo.path), None)
    assert not [d for d in state.diagnostics if d.severity is Severity.ERROR and "PodSecurity" in d.message]
    warned = [d.format() for d in state.diagnostics if d.severity is Severity.WARNING and "PodSecurity" in d.message]
    assert len(warned) == 12 and 'would violate PodSecurity "restricted:latest": seccompProfile' in warned[0], warned


def test_a_pod_asking_for_a_token_is_refused(repo: GitRepo) -> None:
    pod = POD.replace("  serviceAccountName: %s\n", "  automountServiceAccountToken: true\n") % ""
    found = errors(repo, {"pod.yaml": pod})
    assert len(found) == 1 and found[0].startswith("pod.yaml:5:") and "there is no token to mount" in found[0], found
    assert "/spec/automountServiceAccountToken" in found[0]
    assert errors(repo, {"pod.yaml": pod.replace(": true", ": false")}) == []  # what gitorch does anyway


def test_unknown_capabilities_are_errors_with_the_valid_names(repo: GitRepo) -> None:
    caps = ", securityContext: {capabilities: {add: [NET_ADMN, NET_RAW], drop: [ALL, SYS_TIMEZONE]}}"
    found = errors(repo, {"pod.yaml": POD % ("default", caps)})
    assert [e.split(" (hint")[0] for e in found] == [
        "pod.yaml:7:83: /spec/containers/0/securityContext/capabilities/add/0: unknown capability 'NET_ADMN'",
        "pod.yaml:7:115: /spec/containers/0/securityContext/capabilities/drop/1: unknown capability 'SYS_TIMEZONE'",
    ], found
    assert "(hint: did you mean 'NET_ADMIN'?; one of: ALL, CHOWN, DAC_OVERRIDE," in found[0], found
    assert "CHECKPOINT_RESTORE)" in found[1]


def test_validation_knows_the_capabilities_the_agent_knows() -> None:
    from gitorch.nodes import agent

    assert podsecurity.CAPABILITIES == agent.CAPABILITIES
