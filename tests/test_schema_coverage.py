"""Nothing accepted and ignored: every property of every schema is read by the code that gives
it effect *for that kind*, or listed in gitorch.source.no_effect.NO_EFFECT with its reason, and
`validate` warns where a manifest sets a listed one.

EFFECTS below says, per field location (a kind's schema or a defs.json definition, and a path
inside it; the longest prefix wins, `*.` matches every owner), which functions give the fields
there their effect; the test checks that one of those functions reads the field's name (a string
literal in its source). So `minReadySeconds` read by the Deployment controller does not cover a
DaemonSet's: the DaemonSet's functions must read it too. Only leaves are checked; an object
counts through its children.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import textwrap
from functools import cache

from gitorch.model.diagnostics import Severity
from gitorch.source.git import SourceFile
from gitorch.source.no_effect import NO_EFFECT, REQUIRED, Prop, reason_for, schema_properties
from gitorch.source.validation import SCHEMA_DIR, _check_file
from tests.gitrepo import GitRepo

P = "gitorch.reconcile.planning:"
S = "gitorch.reconcile.podspecs:"
A = "gitorch.nodes.agent:"
X = "gitorch.source.crosschecks:"
SCH = "gitorch.reconcile.scheduler:"
SEL = ("gitorch.model.selectors:matches", "gitorch.model.selectors:expression_matches")
META = ("gitorch.model.objects:Object", "gitorch.source.validation:_check_document_body",
        "gitorch.dns.records:pod_labels", SCH + "pod_info_from_template")
# Where each field takes effect: location prefix -> functions ("module:qualname").
EFFECTS: dict[str, tuple[str, ...]] = {
    # Every kind: apiVersion and kind choose the schema, status is refused (owned by the cluster).
    "*.apiVersion": ("gitorch.source.validation:_check_document_body",),
    "*.kind": ("gitorch.source.validation:_check_document_body",),
    "*.status": ("gitorch.source.validation:_translate",),
    "objectMeta": META,
    "objectMetaDNSLabel": META,
    "clusterObjectMeta": META,
    "templateMetadata": (*META, S + "pod_spec"),
    "claimTemplateMetadata": (P + "_statefulset",),
    "workloadSelector": (X + "_check_workload", *SEL),
    "labelSelector": SEL,
    "labelSelectorRequirement": SEL,
    "nodeSelectorRequirement": (SCH + "_node_term_matches", *SEL),
    "nodeFieldSelectorRequirement": (SCH + "_node_term_matches", "gitorch.model.selectors:expression_matches"),
    "nodeSelectorTerm": (SCH + "_node_term_matches",),
    # Workloads
    "deployment.spec": (P + "_deployment", P + "_paused_deployment", P + "_rollout_status", P + "_Pass.replicas",
                        "gitorch.reconcile.controller:Controller.save"),
    "replicaset.spec": (P + "_replicaset", "gitorch.reconcile.controller:Controller.save"),
    "statefulset.spec": (P + "_statefulset", P + "_Pass.replicas", "gitorch.reconcile.controller:Controller.save",
                         "gitorch.dns.records:zone_data"),
    "daemonset.spec": (P + "_daemonset", "gitorch.reconcile.controller:Controller.save"),
    "job": (P + "_job",),
    "jobSpec": (P + "_job", P + "_finished_job"),
    "cronjob": (P + "_cronjob",),
    "cronjob/jobSpec": (P + "_job",),  # a run is a Job: _cronjob hands it to _job
    "cronjob.metadata": META,
    "*.spec.template.spec.restartPolicy": (S + "pod_spec",),
    "jobSpec.template.spec.restartPolicy": (S + "pod_spec",),
    "pod": (P + "_pod",),
    "podTemplateSpec": META,
    "podSpec": (S + "pod_spec", A + "PodSpec.parse"),
    "podSpec.nodeSelector": (SCH + "pod_info_from_template",),
    "podSpec.tolerations": (SCH + "tolerates",),
    "podSpec.affinity": (SCH + "_Cluster._static", SCH + "_Cluster._shape"),
    "podSpec.topologySpreadConstraints": (SCH + "_Cluster._shape",),
    "podDNSConfig": (A + "PodSpec.parse",),
    "toleration": (SCH + "tolerates", P + "toleration_seconds"),
    "affinity": (SCH + "_Cluster._static", SCH + "_Cluster._shape"),
    "nodeAffinity": (SCH + "_Cluster._static", SCH + "_Cluster._shape"),
    "podAffinity": (SCH + "_Cluster._shape",),
    "podAffinityTerm": (SCH + "_Cluster._shape",),
    "topologySpreadConstraint": (SCH + "_Cluster._shape",),
    "requiredDuringSchedulingIgnoredDuringExecution": (SCH + "_Cluster._static",),
    "container": (S + "_container", A + "ContainerSpec.parse"),
    "container.resources": ("gitorch.model.admission:pod_usage", SCH + "_container_requests", S + "_resources"),
    "container.securityContext": (S + "_security",),
    "containerPort": (S + "_container",),
    # The scheduler keeps two pods off one node port; the port itself is forwarded (DNAT) by the
    # service table's host-port entries.
    "containerPort.hostPort": ("gitorch.reconcile.services:host_ports",),
    "resourceRequirements": (SCH + "_container_requests", S + "_resources"),
    "resourceList": (SCH + "_container_requests", S + "_resources"),
    "envVar": (S + "_env",),
    "envVar.valueFrom.configMapKeyRef.optional": (X + "_check_workload",),
    "envVar.valueFrom.secretKeyRef.optional": (X + "_check_workload",),
    "envFromSource": (S + "_env",),
    "envFromSource.configMapRef.optional": (X + "_check_workload",),
    "envFromSource.secretRef.optional": (X + "_check_workload",),
    "volumeMount": (S + "_mount", A + "ContainerSpec.parse"),
    "volume": (S + "_volumes", A + "VolumeSpec.parse"),
    "volume.persistentVolumeClaim.readOnly": (S + "pod_spec",),
    "volume.configMap.optional": (X + "_check_workload",),
    "volume.secret.optional": (X + "_check_workload",),
    "keyToPath": (S + "_volumes",),
    "probe": (S + "_probe", A + "ProbeSpec.parse"),
    "httpGet": (A + "ProbeSpec.parse", A + "probe_http"),
    "exec": (A + "ProbeSpec.parse",),
    "lifecycleHandler": (S + "_lifecycle", A + "_hook", A + "ProbeSpec.parse"),
    "securityContext": (S + "_security", A + "SecuritySpec.parse"),
    "podSecurityContext": (S + "_security", S + "_volume_owner"),
    "capabilities": (S + "_security", A + "SecuritySpec.parse"),
    "seccompProfile": (S + "_security",),
}
EFFECTS.update({
    # Config and storage
    "configmap": ("gitorch.reconcile.podspecs:_config_values",),
    "secret": ("gitorch.reconcile.podspecs:_config_values", X + "_check_ingresses", X + "cross_check"),
    "persistentvolume.spec.hostPath.type": (S + "_volumes",),  # sent with the claim's volume
    "persistentvolume.spec": ("gitorch.model.volumes:static_bindings", "gitorch.model.volumes:volume_path",
                              "gitorch.model.volumes:volume_node", P + "_Volumes.pin"),
    "persistentVolumeClaimSpec": ("gitorch.model.volumes:static_bindings", "gitorch.model.volumes:claim_class",
                                  P + "_Volumes.pin"),
    "statefulset/persistentVolumeClaimSpec": (P + "_statefulset", X + "_claim_bounds"),
    "storageclass": ("gitorch.model.volumes:provisioned", P + "_Volumes.statuses"),
    # Services and traffic
    "service.spec": ("gitorch.reconcile.services:service_table", "gitorch.reconcile.services:proxied",
                     "gitorch.reconcile.services:target_port", "gitorch.dns.records:zone_data",
                     "gitorch.dns.records:PodIndex.selected", "gitorch.reconcile.allocations:_cluster_ips",
                     "gitorch.reconcile.allocations:_node_ports", "gitorch.reconcile.allocations:_lb_ips"),
    "ingress.spec": ("gitorch.model.routes:routes", "gitorch.model.routes:_backend",
                     "gitorch.model.routes:default_backend", "gitorch.model.routes:serving_problem",
                     "gitorch.reconcile.ingress:_certificates"),
    "ingressclass.spec": ("gitorch.model.routes:ingress_classes",),
    "networkpolicy.spec": ("gitorch.reconcile.policies:policy_types", "gitorch.reconcile.policies:policy_table",
                           "gitorch.reconcile.policies:_Compiler.rules",
                           "gitorch.reconcile.policies:_Compiler.peer_pods",
                           "gitorch.reconcile.policies:ip_block", "gitorch.reconcile.policies:_port_range"),
    # Policy and access
    "poddisruptionbudget.spec": (P + "_budget",),
    "limitrange.spec": ("gitorch.model.admission:limit_items", X + "_claim_bounds"),
    "resourcequota.spec": ("gitorch.model.admission:quota",),
    "role": ("gitorch.source.grants:_rules",),
    "clusterrole": ("gitorch.source.grants:_rules",),
    "policyRule": ("gitorch.source.grants:_rules",),
    "rolebinding": ("gitorch.source.grants:grants",),
    "clusterrolebinding": ("gitorch.source.grants:grants",),
    "roleRef": ("gitorch.source.grants:grants",),
    "rbacSubject": ("gitorch.source.grants:grants",),
    "serviceaccount": (S + "pod_spec",),
    "namespace": ("gitorch.model.objects:Object",),
    # Autoscaling
    "horizontalpodautoscaler.spec": ("gitorch.reconcile.autoscaling:parse_spec",
                                     "gitorch.reconcile.autoscaling:_rules", X + "_check_autoscaler"),
    "verticalpodautoscaler.spec": ("gitorch.reconcile.recommending:_target_of",
                                   "gitorch.reconcile.recommending:policies", X + "_check_vertical"),
    # Nodes and the cluster
    "node.spec": ("gitorch.reconcile.controller:node_info", "gitorch.nodes.endpoints:endpoints",
                  "gitorch.reconcile.controller:standby_fields", "gitorch.reconcile.controller:Controller.observe",
                  "gitorch.reconcile.allocations:_pod_cidrs"),
    "cluster.spec.autoscaling": ("gitorch.reconcile.nodescaling:settings",),
    "cluster.spec.dns": ("gitorch.dns.records:zone_data", "gitorch.dns.cluster:settings_for", S + "cluster_dns"),
    "cluster.spec.domain": ("gitorch.dns.records:zone_data", S + "cluster_dns"),
    "cluster.spec.drift": ("gitorch.reconcile.drift:cluster_mode", "gitorch.reconcile.drift:cluster_schedule"),
    "cluster.spec.git": ("gitorch.source.grants:openpgp_keys", "gitorch.source.grants:verifies_commits"),
    "cluster.spec.ingress": ("gitorch.reconcile.ingress:ingress_nodes", "gitorch.reconcile.ingress:proxy_service"),
    "cluster.spec.loadBalancer": ("gitorch.reconcile.allocations:pools",),
    "cluster.spec.notifications": ("gitorch.server.notifications:targets",),
    "cluster.spec.podCIDR": ("gitorch.reconcile.networking:cluster_pod_cidr",),
    "cluster.spec.serviceCIDR": ("gitorch.reconcile.services:service_cidr",),
    "cluster.spec.secrets": (X + "_plaintext_secrets",),
    "cluster.spec.ssh": ("gitorch.nodes.endpoints:ssh_defaults",),
})


@cache
def _strings(ref: str) -> frozenset[str]:
    """The string literals in one function's (or class's) source, `module:qualname`."""
    module, _, qualname = ref.partition(":")
    target: object = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    target = inspect.unwrap(target)  # type: ignore[arg-type]
    tree = ast.parse(textwrap.dedent(inspect.getsource(target)))  # type: ignore[arg-type]
    return frozenset(n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str))


def _effect(schema: str, location: str) -> tuple[str, tuple[str, ...]] | None:
    """The EFFECTS entry for a field of a kind: the longest prefix of its location, the kind's
    own (`cronjob/jobSpec`) before the shared one, and `*.` entries for any kind's own fields
    (not a shared definition's: `roleRef.kind` is not `*.kind`)."""
    kind = schema.removesuffix(".json")
    parts = location.split(".")
    for n in range(len(parts), 0, -1):
        here = ".".join(parts[:n])
        keys = [f"{kind}/{here}", here]
        if parts[0] == kind:
            keys.append(".".join(("*", *parts[1:n])))
        for key in keys:
            if key in EFFECTS:
                return key, EFFECTS[key]
    return None


def _leaves() -> list[Prop]:
    props = list(schema_properties(SCHEMA_DIR))
    paths: dict[str, set[tuple[str, ...]]] = {}
    for p in props:
        paths.setdefault(p.schema, set()).add(p.path)
    prefixes = {(s, q[:i]) for s, qs in paths.items() for q in qs for i in range(1, len(q))}
    return [p for p in props if (p.schema, p.path) not in prefixes]


def _field_name(p: Prop) -> str:
    return next(k for k in reversed(p.path) if k not in ("[]", "*"))


def test_every_schema_property_has_effect_or_is_listed() -> None:
    problems = set()
    for p in _leaves():
        if reason_for(p.schema, p.location) or p.fixed:  # a `const` is Kubernetes' one value: the schema is its effect
            continue
        found = _effect(p.schema, p.location)
        if found is None:
            problems.add(f"{p.location}: no EFFECTS entry says which code gives it effect")
            continue
        key, refs = found
        name = _field_name(p)
        if not any(name in _strings(ref) for ref in refs):
            problems.add(f"{p.location}: {name!r} is read by none of EFFECTS[{key!r}]")
    assert not problems, "accepted and ignored (give it effect, refuse it, or list it in NO_EFFECT):\n" + "\n".join(
        sorted(problems)
    )


def test_effects_table_names_real_functions_and_fields() -> None:
    locations = {p.location for p in schema_properties(SCHEMA_DIR)}
    unknown = []
    for key, refs in EFFECTS.items():
        prefix = key.split("/", 1)[-1]
        if prefix.startswith("*."):
            prefix = prefix[2:]
            found = any(loc.split(".", 1)[-1] == prefix or loc.split(".", 1)[-1].startswith(prefix + ".")
                        for loc in locations)
        else:
            found = any(loc == prefix or loc.startswith(prefix + ".") for loc in locations)
        if not found:
            unknown.append(key)
        for ref in refs:
            assert _strings(ref), ref  # imports and resolves
    assert not unknown, f"EFFECTS names fields no schema has: {unknown}"


def test_a_field_read_by_another_kinds_code_is_not_covered() -> None:
    """The check is per kind: a DaemonSet's minReadySeconds is not covered by the Deployment
    controller reading a Deployment's."""
    assert "minReadySeconds" in _strings("gitorch.reconcile.planning:_deployment")
    assert _effect("daemonset.json", "daemonset.spec.minReadySeconds") == ("daemonset.spec", EFFECTS["daemonset.spec"])
    # A shared definition read differently by one kind: a CronJob's runs are Jobs without the TTL.
    assert _effect("cronjob.json", "jobSpec.completions") == ("cronjob/jobSpec", EFFECTS["cronjob/jobSpec"])
    assert reason_for("cronjob.json", "jobSpec.ttlSecondsAfterFinished") and not reason_for(
        "job.json", "jobSpec.ttlSecondsAfterFinished")
    assert "gitorch.reconcile.planning:_deployment" not in EFFECTS["daemonset.spec"]


def test_walker_resolves_refs_into_defs() -> None:
    props = list(schema_properties(SCHEMA_DIR))
    paths = {(p.schema, p.path): p.location for p in props}
    # deployment.json -> podTemplateSpec -> podSpec -> container (all in defs.json)
    pull = ("spec", "template", "spec", "containers", "[]", "imagePullPolicy")
    assert paths[("deployment.json", pull)] == "container.imagePullPolicy"
    # cronjob.json -> jobSpec ($ref) -> ttlSecondsAfterFinished
    ttl = ("spec", "jobTemplate", "spec", "ttlSecondsAfterFinished")
    assert paths[("cronjob.json", ttl)] == "jobSpec.ttlSecondsAfterFinished"
    assert len({p.schema for p in props}) == len(list(SCHEMA_DIR.glob("*.json"))) - 1  # all but defs.json


def test_no_effect_table_is_honest() -> None:
    fields = {(p.schema.removesuffix(".json"), p.location) for p in schema_properties(SCHEMA_DIR)}
    locations = {loc for _, loc in fields}
    for key in NO_EFFECT:
        kind, _, location = key.rpartition("/")
        known = ((kind, location) in fields) if kind else (location in locations)
        assert known, f"NO_EFFECT names {key}, which no schema has"
    assert REQUIRED.issubset(NO_EFFECT)
    for location, reason in NO_EFFECT.items():
        assert "no effect" in reason and len(reason) > 25, location


_DOC = b"""\
apiVersion: batch/v1
kind: Job
metadata:
  name: once
spec:
  ttlSecondsAfterFinished: 60
  template:
    spec:
      restartPolicy: Never
      subdomain: workers
      containers:
        - name: a
          image: busybox
          imagePullPolicy: Always
        - name: b
          image: busybox
          imagePullPolicy: IfNotPresent
          volumeMounts:
            - name: scratch
              mountPath: /x
              subPath: data
      volumes:
        - name: scratch
          emptyDir: {}
"""


def test_validate_warns_once_per_no_effect_field_with_line_and_reason() -> None:
    result = _check_file(SourceFile("jobs/once.yaml", "blob-no-effect", _DOC), None)
    warnings = [d for d in result.diagnostics if d.severity is Severity.WARNING]
    errors = [d for d in result.diagnostics if d.severity is Severity.ERROR]
    assert not errors, [d.format() for d in errors]
    got = sorted((d.line, d.pointer) for d in warnings)
    # ttlSecondsAfterFinished, imagePullPolicy and subPath have an effect: no warning for them.
    assert got == [(10, "/spec/template/spec/subdomain")]
    pull = warnings[0]
    assert pull.hint == NO_EFFECT["podSpec.subdomain"]
    assert pull.format().startswith("jobs/once.yaml:10:")
    assert "warning: field has no effect" in pull.format()


def test_required_no_effect_fields_do_not_warn() -> None:
    doc = b"""\
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: data
spec:
  accessModes: [ReadWriteOnce]
  resources:
    requests:
      storage: 1Gi
"""
    result = _check_file(SourceFile("data.yaml", "blob-pvc", doc), None)
    assert not result.diagnostics, [d.format() for d in result.diagnostics]


def test_the_readme_lists_every_no_effect_field_with_its_reason() -> None:
    from pathlib import Path

    from gitorch.source.no_effect import markdown

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    begin, end = "<!-- no-effect:begin -->\n", "<!-- no-effect:end -->"
    listed = readme[readme.index(begin) + len(begin) : readme.index(end)]
    assert listed == markdown(), "README's no-effect table is stale: paste gitorch.source.no_effect.markdown()"
    for location in NO_EFFECT:
        assert f"`{location.split('/', 1)[-1]}`" in listed, location


def test_per_kind_no_effect_fields_warn_with_the_tables_reasons(repo: GitRepo) -> None:
    from gitorch.source import desired
    from gitorch.source.git import open_repository

    pod = """\
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: default}
spec:
  containers: [{name: c, command: [sleep, "1"], volumeMounts: [{name: a, mountPath: /a}, {name: b, mountPath: /b}]}]
  volumes:
    - {name: a, emptyDir: {sizeLimit: 1Gi}}
    - {name: b, emptyDir: {medium: Memory, sizeLimit: 1Gi}}
"""
    cron = """\
apiVersion: batch/v1
kind: CronJob
metadata: {name: c, namespace: default}
spec:
  schedule: "* * * * *"
  jobTemplate:
    spec:
      ttlSecondsAfterFinished: 30
      template:
        spec:
          restartPolicy: Never
          containers: [{name: c, command: [sleep, "1"]}]
"""
    repo.commit("x", {"pod.yaml": pod, "cron.yaml": cron, "job.yaml": _DOC.decode()})
    state = desired.load(open_repository(repo.path), None)
    warned = sorted((d.path, d.pointer, d.hint) for d in state.diagnostics if d.severity is Severity.WARNING)
    assert warned == [
        ("cron.yaml", "/spec/jobTemplate/spec/ttlSecondsAfterFinished",
         NO_EFFECT["cronjob/jobSpec.ttlSecondsAfterFinished"]),
        ("job.yaml", "/spec/template/spec/subdomain", NO_EFFECT["podSpec.subdomain"]),  # a Job's TTL works
    ], warned  # an emptyDir's sizeLimit has an effect in memory (a tmpfs) and on disk (eviction): no warning
