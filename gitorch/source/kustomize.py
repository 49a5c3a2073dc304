"""Kustomize: a folder with a `kustomization.yaml` is built as `kustomize build` builds it.

Most GitOps repositories are a base and overlays, and Flux and Argo CD both build them; so
does gitorch, natively (`kubectl kustomize` is the reference the tests compare with), from the
files of the commit being loaded, so that every diagnostic still names the file and line of
the resource, patch or kustomization it comes from.

What a kustomization may say: `resources` (files, and folders holding a kustomization),
`bases`, `components`, `namespace`, `namePrefix` and `nameSuffix` (references to renamed
ConfigMaps, Secrets, PersistentVolumeClaims and Services rewritten), `commonLabels` and
`labels` (selectors and templates included as kustomize does), `commonAnnotations`,
`images`, `replicas`, `configMapGenerator` and `secretGenerator` (literals, files, env files;
content-hash name suffixes as kustomize computes them, references updated),
`generatorOptions`, and `patches`, `patchesStrategicMerge` and `patchesJson6902` (strategic
merge with Kubernetes' list merge keys, and RFC 6902 through `jsonpatch`). Anything else
(remote resources, helmCharts, replacements, vars, transformer plugins) is an error naming
the field: never ignored.

Which folders are built: every kustomization folder that no other kustomization of the
commit uses as a resource or component (its files are read through it, not on their own).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import posixpath
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import jsonpatch

from gitorch.model.diagnostics import Diagnostic, escape_token
from gitorch.source.manifests import Document, Origin, parse_documents

FILE_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED = frozenset({
    "apiVersion", "kind", "metadata", "resources", "bases", "components", "namespace", "namePrefix", "nameSuffix",
    "commonLabels", "labels", "commonAnnotations", "images", "replicas", "configMapGenerator", "secretGenerator",
    "generatorOptions", "patches", "patchesStrategicMerge", "patchesJson6902",
})
# Kinds that are not namespaced (the namespace transformer leaves them alone).
CLUSTER_KINDS = frozenset({
    "Namespace", "Node", "Cluster", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass",
    "CustomResourceDefinition", "IngressClass", "PriorityClass", "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration", "APIService",
})
# Strategic merge: the key that identifies a list's items, by the list's field name.
MERGE_KEYS = {
    "containers": "name", "initContainers": "name", "ephemeralContainers": "name", "env": "name",
    "volumes": "name", "volumeMounts": "mountPath", "ports": "containerPort", "imagePullSecrets": "name",
    "volumeDevices": "devicePath", "hostAliases": "ip", "topologySpreadConstraints": "topologyKey",
}
_TEMPLATE_KINDS = frozenset({"Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job"})


@dataclass
class _Res:
    """One resource being built: its body (a plain copy) and the document it came from."""

    body: dict[str, Any]
    source: Document
    original: tuple[str, str] = ("", "")  # (kind, name) as first written or generated
    aliases: set[str] = field(default_factory=set)  # every name it had: what references may still say
    generated: bool = False
    hashed: bool = False
    patched: list[_Patch | Origin] = field(default_factory=list)  # in the order applied


@dataclass(frozen=True)
class _Patch:
    """A strategic merge patch as applied to a resource, and where it is written: a document of
    a patch file (`ptr` ""), or a kustomization's inline patch string (`whole`, at `ptr`)."""

    doc: Document
    ptr: str
    body: Any
    whole: bool = False


@dataclass
class Build:
    """What building a commit's kustomizations made: documents to validate like any file's,
    problems, and the files that were read through a kustomization."""

    documents: list[Document] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    consumed: set[str] = field(default_factory=set)


class _Error(Exception):
    def __init__(self, diagnostic: Diagnostic) -> None:
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic


def kustomization_dirs(paths: set[str]) -> dict[str, str]:
    """Folder -> its kustomization file, for every folder of `paths` that has one."""
    out: dict[str, str] = {}
    for p in sorted(paths):
        folder, name = posixpath.split(p)
        if name in FILE_NAMES and folder not in out:
            out[folder] = p
    return out


def build_all(files: Mapping[str, bytes | Callable[[], bytes]]) -> Build:
    """Build every top kustomization among `files` (path -> content)."""
    result = Build()
    dirs = kustomization_dirs(set(files))
    if not dirs:
        return result
    reader = _Reader(files, dirs)
    used: set[str] = set()
    for folder in dirs:
        k = reader.kustomization(folder)
        if k is None:
            continue
        for entry in [*_strings(k[0].body.get("resources")), *_strings(k[0].body.get("bases")),
                      *_strings(k[0].body.get("components"))]:
            target = posixpath.normpath(posixpath.join(folder, entry))
            if target in dirs:
                used.add(target)
    for folder in dirs:
        if folder in used:
            continue
        try:
            built = reader.build(folder, ())
        except _Error as exc:
            result.diagnostics.append(exc.diagnostic)
            continue
        except Exception as exc:  # a bug must be this kustomization's error, never the commit's crash
            result.diagnostics.append(Diagnostic(
                dirs[folder], 0, 0, "", f"internal error building this kustomization: {type(exc).__name__}: {exc}",
                "please report it"))
            continue
        _hash_and_rename(built, final=True)
        for i, r in enumerate(built):
            result.documents.append(replace(r.source, body=r.body, index=r.source.index if not r.generated else i,
                                            origins=_origins(r)))
    result.diagnostics.extend(reader.diagnostics)
    result.consumed = reader.consumed | {p for p in files if any(_under(p, d) for d in dirs)}
    return result


def _under(path: str, folder: str) -> bool:
    return folder == "" or path.startswith(folder + "/")


def _strings(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


class _Reader:
    def __init__(self, files: Mapping[str, bytes | Callable[[], bytes]], dirs: dict[str, str]) -> None:
        self.files = files
        self.dirs = dirs
        self.consumed: set[str] = set()
        self.diagnostics: list[Diagnostic] = []
        self._parsed: dict[str, list[Document]] = {}

    # -- files --------------------------------------------------------------------------

    def read(self, path: str) -> bytes:
        data = self.files[path]
        try:
            return data() if callable(data) else data
        except ValueError as exc:  # over the file size limit
            raise _Error(Diagnostic(path, 0, 0, "", str(exc), "split it into several files")) from exc

    def documents(self, path: str) -> list[Document]:
        if path not in self._parsed:
            docs, diags = parse_documents(path, self.read(path))
            self.diagnostics.extend(diags)
            self._parsed[path] = [d for d in docs if d.body is not None]
            self.consumed.add(path)
        return self._parsed[path]

    def kustomization(self, folder: str) -> tuple[Document, str] | None:
        path = self.dirs[folder]
        docs = self.documents(path)
        if len(docs) != 1 or not isinstance(docs[0].body, dict):
            self.diagnostics.append(Diagnostic(path, 1, 1, "", "a kustomization must be one YAML mapping"))
            return None
        return docs[0], path

    # -- building -----------------------------------------------------------------------

    def build(self, folder: str, stack: tuple[str, ...]) -> list[_Res]:
        found = self.kustomization(folder)
        if found is None:
            return []
        kdoc, kpath = found
        k = _fields(kdoc.body)

        def error(ptr: str, message: str, hint: str = "", key: bool = False) -> _Error:
            p = kdoc.position(ptr, key=key)
            return _Error(Diagnostic(kpath, p.line, p.column, ptr, message, hint))

        if folder in stack:
            raise error("", f"kustomization cycle: {' -> '.join((*stack, folder))}")
        for name in k:
            if name not in SUPPORTED:
                raise error(f"/{name}", f"kustomization field {name!r} is not supported by gitorch",
                            "build it into plain manifests, or use the fields gitorch supports (see README)", key=True)
        resources: list[_Res] = []
        for field_name in ("resources", "bases"):
            for i, entry in enumerate(_strings(k.get(field_name))):
                resources.extend(self._resource(folder, entry, f"/{field_name}/{i}", error, (*stack, folder)))
        options: Mapping[str, Any] = k["generatorOptions"] if isinstance(k.get("generatorOptions"), dict) else {}
        for field_name, kind in (("configMapGenerator", "ConfigMap"), ("secretGenerator", "Secret")):
            for i, gen in enumerate(k.get(field_name) or []):
                made = self._generate(folder, kind, gen, options, f"/{field_name}/{i}", kdoc, error)
                _place_generated(resources, made, gen, error, f"/{field_name}/{i}")
        for i, entry in enumerate(_strings(k.get("components"))):
            target = posixpath.normpath(posixpath.join(folder, entry))
            if target not in self.dirs:
                raise error(f"/components/{i}", f"component {entry!r} is not a folder with a kustomization")
            resources = self._component(target, resources, (*stack, folder))
        return self._transform(folder, k, kdoc, resources, error)

    def _resource(self, folder: str, entry: str, ptr: str, error: Callable[..., _Error],
                  stack: tuple[str, ...]) -> list[_Res]:
        if "://" in entry or entry.startswith(("github.com/", "git@")):
            raise error(ptr, f"remote resource {entry!r}: gitorch builds only what is in the repository",
                        "vendor it into the repository")
        target = posixpath.normpath(posixpath.join(folder, entry))
        if target in self.dirs:
            return self.build(target, stack)
        if target not in self.files:
            if any(_under(p, target) for p in self.files):
                raise error(ptr, f"folder {entry!r} has no kustomization.yaml", "add one, or list its files")
            raise error(ptr, f"resource {entry!r} not found", f"no file {target} in this commit")
        out = []
        for doc in self.documents(target):
            if isinstance(doc.body, dict):
                body = _plain(doc.body)
                out.append(_Res(body, doc, (str(body.get("kind")), _name(body))))
        return out

    def _component(self, folder: str, resources: list[_Res], stack: tuple[str, ...]) -> list[_Res]:
        found = self.kustomization(folder)
        if found is None:
            return resources
        kdoc, kpath = found
        k = _fields(kdoc.body)

        def error(ptr: str, message: str, hint: str = "") -> _Error:
            p = kdoc.position(ptr)
            return _Error(Diagnostic(kpath, p.line, p.column, ptr, message, hint))

        extra: list[_Res] = []
        for i, entry in enumerate(_strings(k.get("resources"))):
            extra.extend(self._resource(folder, entry, f"/resources/{i}", error, stack))
        options: Mapping[str, Any] = k["generatorOptions"] if isinstance(k.get("generatorOptions"), dict) else {}
        combined = [*resources, *extra]
        for field_name, kind in (("configMapGenerator", "ConfigMap"), ("secretGenerator", "Secret")):
            for i, gen in enumerate(k.get(field_name) or []):
                made = self._generate(folder, kind, gen, options, f"/{field_name}/{i}", kdoc, error)
                _place_generated(combined, made, gen, error, f"/{field_name}/{i}")
        return self._transform(folder, k, kdoc, combined, error)

    # -- generators -----------------------------------------------------------------------

    def _generate(self, folder: str, kind: str, gen: Any, options: Mapping[str, Any], ptr: str,
                  kdoc: Document, error: Callable[..., _Error]) -> _Res:
        if not isinstance(gen, dict) or not isinstance(gen.get("name"), str):
            raise error(ptr, f"a {kind} generator needs a name")
        if gen.get("behavior", "create") not in ("create", "merge", "replace"):
            raise error(f"{ptr}/behavior", "a generator's behavior is create, merge or replace")
        data: dict[str, str] = {}
        for i, literal in enumerate(gen.get("literals") or []):
            key, sep, value = str(literal).partition("=")
            if not sep:
                raise error(f"{ptr}/literals/{i}", f"literal {literal!r} is not KEY=VALUE")
            data[key] = _unquote(value)
        for i, entry in enumerate(gen.get("files") or []):
            key, sep, rel = str(entry).partition("=")
            rel = rel if sep else key
            key = key if sep else posixpath.basename(rel)
            path = posixpath.normpath(posixpath.join(folder, rel))
            if path not in self.files:
                raise error(f"{ptr}/files/{i}", f"file {rel!r} not found")
            self.consumed.add(path)
            data[key] = self.read(path).decode("utf-8", "replace")
        for i, rel in enumerate(gen.get("envs") or ([gen["env"]] if gen.get("env") else [])):
            path = posixpath.normpath(posixpath.join(folder, str(rel)))
            if path not in self.files:
                raise error(f"{ptr}/envs/{i}", f"env file {rel!r} not found")
            self.consumed.add(path)
            for line in self.read(path).decode("utf-8", "replace").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    key, _, value = line.partition("=")
                    data[key.strip()] = value
        meta: dict[str, Any] = {"name": gen["name"]}
        if gen.get("namespace"):
            meta["namespace"] = gen["namespace"]
        labels = {**(options.get("labels") or {}), **((gen.get("options") or {}).get("labels") or {})}
        annotations = {**(options.get("annotations") or {}), **((gen.get("options") or {}).get("annotations") or {})}
        if labels:
            meta["labels"] = labels
        if annotations:
            meta["annotations"] = annotations
        body: dict[str, Any] = {"apiVersion": "v1", "kind": kind, "metadata": meta}
        if kind == "Secret":
            body["type"] = gen.get("type", "Opaque")
            body["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
        else:
            body["data"] = data
        disabled = (gen.get("options") or {}).get("disableNameSuffixHash", options.get("disableNameSuffixHash"))
        source = replace(kdoc, body=None)
        res = _Res(body, source, (kind, gen["name"]), generated=True, hashed=not disabled)
        return res

    # -- transformers ---------------------------------------------------------------------

    def _transform(self, folder: str, k: Mapping[str, Any], kdoc: Document, resources: list[_Res],
                   error: Callable[..., _Error]) -> list[_Res]:
        for i, rel in enumerate(_strings(k.get("patchesStrategicMerge"))):
            for patch in self._patch_bodies(folder, rel, f"/patchesStrategicMerge/{i}", error):
                _apply_smp(resources, patch, None, error, f"/patchesStrategicMerge/{i}")
        for i, p in enumerate(k.get("patches") or []):
            ptr = f"/patches/{i}"
            if not isinstance(p, dict):
                raise error(ptr, "a patch needs `path` or `patch`")
            bodies = (self._patch_bodies(folder, str(p["path"]), f"{ptr}/path", error) if p.get("path")
                      else _inline(p.get("patch"), kdoc, ptr, error))
            target = p.get("target") if isinstance(p.get("target"), dict) else None
            for patch in bodies:
                if isinstance(patch.body, list):
                    _apply_json6902(resources, patch, target, error, ptr)
                else:
                    _apply_smp(resources, patch, target, error, ptr)
        if k.get("namespace"):
            ns = str(k["namespace"])
            for r in resources:
                if r.body.get("kind") not in CLUSTER_KINDS:
                    r.body.setdefault("metadata", {})["namespace"] = ns
                if r.body.get("kind") in ("RoleBinding", "ClusterRoleBinding"):
                    for s in r.body.get("subjects") or []:
                        if isinstance(s, dict) and s.get("kind") == "ServiceAccount":
                            s["namespace"] = ns
        prefix, suffix = str(k.get("namePrefix") or ""), str(k.get("nameSuffix") or "")
        if prefix or suffix:
            for r in resources:
                if r.body.get("kind") in ("Namespace", "CustomResourceDefinition"):
                    continue
                meta = r.body.setdefault("metadata", {})
                meta["name"] = f"{prefix}{meta.get('name', '')}{suffix}"
        labels: list[tuple[dict[str, str], bool, bool]] = []
        if isinstance(k.get("commonLabels"), dict):
            labels.append(({str(a): str(b) for a, b in k["commonLabels"].items()}, True, True))
        for entry in k.get("labels") or []:
            if isinstance(entry, dict) and isinstance(entry.get("pairs"), dict):
                selectors = bool(entry.get("includeSelectors"))
                labels.append(({str(a): str(b) for a, b in entry["pairs"].items()}, selectors,
                               selectors or bool(entry.get("includeTemplates"))))
        for pairs, selectors, templates in labels:
            for r in resources:
                _label(r.body, pairs, selectors, templates)
        if isinstance(k.get("commonAnnotations"), dict):
            notes = {str(a): str(b) for a, b in k["commonAnnotations"].items()}
            for r in resources:
                r.body.setdefault("metadata", {}).setdefault("annotations", {}).update(notes)
                tmpl = _template(r.body)
                if tmpl is not None:
                    tmpl.setdefault("metadata", {}).setdefault("annotations", {}).update(notes)
        for i, p in enumerate(k.get("patchesJson6902") or []):
            ptr = f"/patchesJson6902/{i}"
            if not isinstance(p, dict) or not isinstance(p.get("target"), dict):
                raise error(ptr, "a patchesJson6902 entry needs a target and a path or patch")
            bodies = (self._patch_bodies(folder, str(p["path"]), f"{ptr}/path", error) if p.get("path")
                      else _inline(p.get("patch"), kdoc, ptr, error))
            for patch in bodies:
                if not isinstance(patch.body, list):
                    raise error(ptr, "a JSON 6902 patch is a list of operations")
                _apply_json6902(resources, patch, p["target"], error, ptr)
        for count in k.get("replicas") or []:
            if not isinstance(count, dict):
                continue
            for r in resources:
                named = count.get("name") == _name(r.body) or count.get("name") in r.aliases
                if named and r.body.get("kind") in ("Deployment", "ReplicaSet", "StatefulSet"):
                    r.body.setdefault("spec", {})["replicas"] = int(count.get("count", 0))
        for img in k.get("images") or []:
            if isinstance(img, dict) and img.get("name"):
                for r in resources:
                    _retag(r.body, img)
        _hash_and_rename(resources, final=False)
        return resources

    def _patch_bodies(self, folder: str, rel: str, ptr: str, error: Callable[..., _Error]) -> list[_Patch]:
        path = posixpath.normpath(posixpath.join(folder, rel))
        if path not in self.files:
            raise error(ptr, f"patch file {rel!r} not found")
        return [_Patch(d, "", d.body) for d in self.documents(path)]


# -- helpers ---------------------------------------------------------------------------------


_CANON = {f.lower(): f for f in SUPPORTED}


def _fields(kustomization: Mapping[str, Any]) -> dict[str, Any]:
    """A kustomization's fields as kustomize reads them: as Go's JSON decoder does, whatever
    their case (its own inlinePatch example says patchesJSON6902)."""
    return {(n if n in SUPPORTED or _CANON.get(n.lower()) in kustomization else _CANON.get(n.lower(), n)): v
            for n, v in kustomization.items()}


def _place_generated(resources: list[_Res], made: _Res, gen: Mapping[str, Any], error: Callable[..., _Error],
                     ptr: str) -> None:
    """A generator's object: a new one (`behavior: create`), or merged into (`merge`) or put in
    place of (`replace`) the data of the one a base generated under that name."""
    behavior = gen.get("behavior", "create")
    if behavior == "create":
        resources.append(made)
        return
    kind, name = made.original
    target = next((r for r in resources if r.body.get("kind") == kind
                   and (name == _name(r.body) or name in r.aliases or name == r.original[1])), None)
    if target is None:
        raise error(f"{ptr}/behavior", f"no {kind} named {name!r} in the resources to {behavior}")
    data = made.body.get("data") or {}
    target.body["data"] = {**(target.body.get("data") or {}), **data} if behavior == "merge" else data
    meta = target.body.setdefault("metadata", {})
    for field_name in ("labels", "annotations"):
        extra = (made.body.get("metadata") or {}).get(field_name)
        if extra:
            meta.setdefault(field_name, {}).update(extra)


def _plain(value: Any) -> Any:
    """A deep, writable copy (parsed documents are shared and read-only)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _name(body: Mapping[str, Any]) -> str:
    meta = body.get("metadata")
    return str(meta.get("name", "")) if isinstance(meta, dict) else ""


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def _inline(text: Any, kdoc: Document, ptr: str, error: Callable[..., _Error]) -> list[_Patch]:
    if not isinstance(text, str):
        raise error(ptr, "a patch needs `path` or `patch`")
    docs, diags = parse_documents("<inline patch>", text)
    if diags:
        raise error(f"{ptr}/patch", f"the inline patch does not parse: {diags[0].message}")
    return [_Patch(kdoc, f"{ptr}/patch", _plain(d.body), whole=True) for d in docs if d.body is not None]


def _template(body: dict[str, Any]) -> dict[str, Any] | None:
    spec = body.get("spec")
    if not isinstance(spec, dict):
        return None
    if body.get("kind") == "CronJob":
        job = ((spec.get("jobTemplate") or {}).get("spec")) or {}
        tmpl = job.get("template")
        return tmpl if isinstance(tmpl, dict) else None
    tmpl = spec.get("template")
    return tmpl if body.get("kind") in _TEMPLATE_KINDS and isinstance(tmpl, dict) else None


def _label(body: dict[str, Any], pairs: dict[str, str], selectors: bool, templates: bool) -> None:
    body.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
    kind = body.get("kind")
    spec = body.get("spec")
    if not isinstance(spec, dict):
        return
    if selectors and kind == "Service":
        spec.setdefault("selector", {}).update(pairs)
    if selectors and kind in ("Deployment", "ReplicaSet", "StatefulSet", "DaemonSet"):
        spec.setdefault("selector", {}).setdefault("matchLabels", {}).update(pairs)
    tmpl = _template(body)
    if templates and tmpl is not None:
        tmpl.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)


def _retag(body: dict[str, Any], img: Mapping[str, Any]) -> None:
    tmpl = _template(body)
    pod = (tmpl or {}).get("spec") if tmpl is not None else (body.get("spec") if body.get("kind") == "Pod" else None)
    if not isinstance(pod, dict):
        return
    for group in ("containers", "initContainers"):
        for c in pod.get(group) or []:
            image = c.get("image") if isinstance(c, dict) else None
            if not isinstance(image, str):
                continue
            name, tag, digest = _split_image(image)
            if name != img["name"]:
                continue
            name = str(img.get("newName") or name)
            if img.get("digest"):
                c["image"] = f"{name}@{img['digest']}"
            elif img.get("newTag") is not None:
                c["image"] = f"{name}:{img['newTag']}"
            else:
                c["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def _split_image(image: str) -> tuple[str, str, str]:
    name, _, digest = image.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = ""
    if colon > slash:
        name, tag = name[:colon], name[colon + 1:]
    return name, tag, digest


def _matches(body: Mapping[str, Any], target: Mapping[str, Any] | None, aliases: set[str] | None = None) -> bool:
    """Whether a patch's target selects the resource; its name may be one it had before this
    kustomization renamed it (as kustomize resolves targets by original name too)."""
    if target is None:
        return True
    if aliases and target.get("name") is not None and any(re.fullmatch(str(target["name"]), a) for a in aliases):
        meta = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
        assert isinstance(meta, dict)
        return _matches({**body, "metadata": {**meta, "name": str(target["name"])}}, target)
    meta = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
    assert isinstance(meta, dict)
    api = str(body.get("apiVersion") or "")
    group, _, version = api.rpartition("/")
    checks = [("kind", str(body.get("kind") or "")), ("name", str(meta.get("name") or "")),
              ("namespace", str(meta.get("namespace") or "")), ("group", group), ("version", version)]
    for key, value in checks:
        want = target.get(key)
        if want is not None and not re.fullmatch(str(want), value):
            return False
    selectors = (("labelSelector", meta.get("labels") or {}), ("annotationSelector", meta.get("annotations") or {}))
    for key, have in selectors:
        want = target.get(key)
        if want and not _selector_matches(str(want), have):
            return False
    return True


def _selector_matches(selector: str, labels: Mapping[str, Any]) -> bool:
    for term in (t.strip() for t in selector.split(",") if t.strip()):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if str(labels.get(k.strip())) == v.strip():
                return False
        elif "=" in term:
            k, v = term.split("=", 1)
            if str(labels.get(k.strip().rstrip("="))) != v.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _apply_smp(resources: list[_Res], written: _Patch, target: Mapping[str, Any] | None,
               error: Callable[..., _Error], ptr: str) -> None:
    patch = written.body
    if not isinstance(patch, dict):
        raise error(ptr, "a strategic merge patch is a mapping")
    if target is None:
        kind, name = patch.get("kind"), _name(patch)
        chosen = [r for r in resources
                  if r.body.get("kind") == kind and (name == _name(r.body) or name in r.aliases)]
        if not chosen:
            raise error(ptr, f"the patch's target {kind}/{name} is not among the resources")
    else:
        chosen = [r for r in resources if _matches(r.body, target, r.aliases | {r.original[1]})]
    for r in chosen:
        if patch.get("$patch") == "delete":
            resources.remove(r)
            continue
        body = {k: v for k, v in patch.items() if target is None or k not in ("metadata",)} if target else patch
        if target is not None:
            meta = patch.get("metadata") if isinstance(patch.get("metadata"), dict) else {}
            assert isinstance(meta, dict)
            rest = {k: v for k, v in meta.items() if k not in ("name", "namespace")}
            if rest:
                body = {**body, "metadata": rest}
        r.body = _merge(r.body, copy.deepcopy(body), "")
        r.patched.append(replace(written, body=body))


def _merge(base: Any, patch: Any, field_name: str) -> Any:
    """Kubernetes' strategic merge (the part manifests use): maps merge, `null` deletes, lists
    with a merge key merge by it (`$patch: delete` removes an item), other lists are replaced."""
    if isinstance(patch, dict) and isinstance(base, dict):
        if patch.get("$patch") == "replace":
            return {k: v for k, v in patch.items() if k != "$patch"}
        out = dict(base)
        for k, v in patch.items():
            if k.startswith("$setElementOrder") or k == "$patch":
                continue
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = _merge(out[k], v, k)
            else:
                out[k] = _strip(v)
        return out
    if isinstance(patch, list) and isinstance(base, list) and field_name in MERGE_KEYS:
        # As kustomize merges (kyaml, elements prepended): the patch's items first, in its order
        # (merged with the base's item of the same key), then the base's other items.
        key = MERGE_KEYS[field_name]
        first: list[Any] = []
        rest = list(base)
        loose: list[Any] = []
        for item in patch:
            if not isinstance(item, dict) or key not in item:
                loose.append(item)
                continue
            at = next((i for i, b in enumerate(rest) if isinstance(b, dict) and b.get(key) == item[key]), None)
            old = rest.pop(at) if at is not None else None
            if item.get("$patch") == "delete":
                continue
            first.append(_strip(item) if old is None else _merge(old, item, ""))
        return first + rest + loose
    return _strip(patch)


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _apply_json6902(resources: list[_Res], written: _Patch, target: Mapping[str, Any] | None,
                    error: Callable[..., _Error], ptr: str) -> None:
    ops = written.body
    chosen = [r for r in resources if _matches(r.body, target, r.aliases | {r.original[1]})]
    if not chosen:
        raise error(ptr, f"no resource matches the patch's target {json.dumps(target)}")
    for r in chosen:
        try:
            for i, op in enumerate(ops):  # one at a time: where each value lands ("-": the list's end)
                at = op.get("path") if isinstance(op, dict) and "value" in op else None
                if isinstance(at, str) and at.endswith("/-"):
                    there = jsonpatch.JsonPointer(at[:-2]).resolve(r.body)
                    at = f"{at[:-2]}/{len(there)}" if isinstance(there, list) else None
                r.body = jsonpatch.apply_patch(r.body, [op])
                if isinstance(at, str) and op.get("op") in ("add", "replace"):
                    r.patched.append(Origin(at, written.doc, written.ptr if written.whole
                                            else f"{written.ptr}/{i}/value", written.whole))
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError, KeyError,
                AttributeError) as exc:
            raise error(ptr, f"JSON 6902 patch on {r.body.get('kind')}/{_name(r.body)}: {exc}") from exc


def _origins(r: _Res) -> tuple[Origin, ...]:
    """Where the parts of a built resource that patches set (or a merge moved) are written,
    most specific first, the latest patch before earlier ones and before the resource's own."""
    if not r.patched:
        return ()
    found: list[tuple[int, int, Origin]] = []
    for n, p in enumerate(r.patched, start=1):
        if isinstance(p, Origin):
            found.append((p.at.count("/"), n, p))
            continue
        for at, ptr, owned in _correspond(p.body, r.body, "", "", ""):
            if not p.whole:
                found.append((at.count("/"), n, Origin(at, p.doc, p.ptr + ptr)))
            elif owned:
                found.append((at.count("/"), n, Origin(at, p.doc, p.ptr, whole=True)))
    # Items a merge moved: where the resource has them (a generated one was written nowhere).
    if not r.generated and any(isinstance(p, _Patch) for p in r.patched):
        found.extend((at.count("/"), 0, Origin(at, r.source, ptr))
                     for at, ptr, _ in _correspond(r.source.body, r.body, "", "", "") if at != ptr)
    found.sort(key=lambda f: (-f[0], -f[1]))
    return tuple(o for _, _, o in found)


def _correspond(patch: Any, result: Any, pp: str, rp: str, field_name: str) -> Iterator[tuple[str, str, bool]]:
    """(pointer in the result, pointer in the patch, whether the patch gave the whole value) of
    each part of `patch` that is in `result`: maps by key, merged lists by their items' merge key."""
    if isinstance(patch, dict) and isinstance(result, dict):
        yield rp, pp, False
        for k, v in patch.items():
            if not k.startswith("$") and v is not None and k in result:
                t = escape_token(k)
                yield from _correspond(v, result[k], f"{pp}/{t}", f"{rp}/{t}", k)
    elif isinstance(patch, list) and isinstance(result, list):
        key = MERGE_KEYS.get(field_name)
        if key is None:
            if _strip(patch) == result:
                yield rp, pp, True
            return
        yield rp, pp, False
        for i, item in enumerate(patch):
            if not isinstance(item, dict) or key not in item or item.get("$patch") == "delete":
                continue
            j = next((j for j, b in enumerate(result) if isinstance(b, dict) and b.get(key) == item[key]), None)
            if j is not None:
                yield from _correspond(item, result[j], f"{pp}/{i}", f"{rp}/{j}", "")
    elif not isinstance(patch, (dict, list)) and patch == result:
        yield rp, pp, True


def content_hash(body: Mapping[str, Any]) -> str:
    """kustomize's name suffix for a generated ConfigMap or Secret (api/hasher HashRNode):
    SHA-256 of a JSON encoding, as Go's encoding/json writes it, of the kind, the data (and
    binaryData, or a Secret's type and stringData), in 10 characters with the vowel-like ones
    swapped. The name it encodes is always "": kustomize looks `metadata/name` up as one
    field name, which no object has, so the suffix depends on the content only."""

    def value(key: str) -> Any:
        found = body.get(key)
        if isinstance(found, dict):
            return found
        return "" if found is None or isinstance(found, list) else str(found)

    kind = body.get("kind")
    doc: dict[str, Any] = {"kind": kind, "name": "", "data": value("data")}
    extra = "stringData" if kind == "Secret" else "binaryData"
    if kind == "Secret":
        doc["type"] = value("type")
    if isinstance(body.get(extra), dict):
        doc[extra] = body[extra]
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


_REFERENCES: dict[str, list[tuple[str, ...]]] = {
    "ConfigMap": [("configMapRef", "name"), ("configMapKeyRef", "name"), ("configMap", "name")],
    "Secret": [("secretRef", "name"), ("secretKeyRef", "name"), ("secret", "secretName"), ("imagePullSecrets", "name")],
    "PersistentVolumeClaim": [("persistentVolumeClaim", "claimName")],
}


def _hash_and_rename(resources: list[_Res], *, final: bool) -> None:
    """Every reference to an object renamed in this kustomization (prefix, suffix) follows it,
    as kustomize's name reference transformer does for the kinds gitorch has; at the end of the
    top kustomization (`final`), generated objects first get their content-hash suffix."""
    for r in resources:
        if final and r.generated and r.hashed:
            r.body["metadata"]["name"] = f"{_name(r.body)}-{content_hash(r.body)}"
            r.hashed = False  # once
    renamed: dict[tuple[str, str], str] = {}
    for r in resources:
        r.aliases.add(r.original[1])
        for old in r.aliases:
            if old and old != _name(r.body):
                renamed[(r.original[0], old)] = _name(r.body)
    if not renamed:
        return
    for r in resources:
        for kind, fields in _REFERENCES.items():
            for container, key in fields:
                for holder in _find(r.body, container):
                    if isinstance(holder, dict) and (kind, str(holder.get(key))) in renamed:
                        holder[key] = renamed[(kind, str(holder[key]))]
                    elif isinstance(holder, list):  # imagePullSecrets: a list of {name}
                        for item in holder:
                            if isinstance(item, dict) and (kind, str(item.get(key))) in renamed:
                                item[key] = renamed[(kind, str(item[key]))]
        for holder in _find(r.body, "spec"):  # a pod spec's ServiceAccount (at any template depth)
            if isinstance(holder, dict) and ("ServiceAccount", str(holder.get("serviceAccountName"))) in renamed:
                holder["serviceAccountName"] = renamed[("ServiceAccount", str(holder["serviceAccountName"]))]
        spec = r.body.get("spec")
        service = ("Service", str(spec.get("serviceName"))) if isinstance(spec, dict) else None
        if r.body.get("kind") == "StatefulSet" and isinstance(spec, dict) and service in renamed:
            spec["serviceName"] = renamed[service]
    for r in resources:
        r.aliases.add(_name(r.body))  # an outer kustomization renames from here too


def _find(value: Any, key: str) -> Iterator[Any]:
    if isinstance(value, dict):
        for k, v in value.items():
            if k == key:
                yield v
            yield from _find(v, key)
    elif isinstance(value, list):
        for v in value:
            yield from _find(v, key)
