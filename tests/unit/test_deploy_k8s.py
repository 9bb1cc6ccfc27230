"""Kubernetes manifests (deploy/k8s): rendering, strict schema validation, cross-object lint, and the
deployment decisions the manifests encode (GPU placement, autoscaling, load balancing, weights).

Everything runs offline: overlays are rendered by deploy/check.py's small kustomize (cross-checked
against `kubectl kustomize` where kubectl is installed), validated by kubernetes-validate in strict
mode for Kubernetes 1.29 and 1.37, and KEDA's custom resources against check.py's KEDA schemas
(KEDA's CRDs are not among kubernetes-validate's schemas).
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy import check

MODEL_SERVICES = ("encoder", "generator", "annotator", "search")
GPU_SERVICES = ("encoder", "generator", "search")


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {overlay: check.render_overlay(overlay) for overlay in check.OVERLAYS}


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def container(docs: list[dict[str, Any]], name: str, kind: str = "Deployment") -> dict[str, Any]:
    return find(docs, kind, name)["spec"]["template"]["spec"]["containers"][0]


def env_value(c: dict[str, Any], name: str) -> str | None:
    return next((e.get("value") for e in c.get("env") or [] if e["name"] == name), None)


# ---- rendering ---------------------------------------------------------------------------------


def test_every_overlay_renders_the_whole_suite(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay, docs in rendered.items():
        deployments = {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
        assert deployments == {"gateway", "studio", *MODEL_SERVICES}, overlay
        assert {d["metadata"]["name"] for d in docs if d["kind"] == "StatefulSet"} == {"redis"}, overlay
        assert find(docs, "Job", "sfhq-weights")
        namespaced = [d for d in docs if d["kind"] != "Namespace"]
        assert {d["metadata"].get("namespace") for d in namespaced} == {"sfhq"}, overlay
        assert find(docs, "Namespace", "sfhq")


@pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) not installed"
)
@pytest.mark.parametrize("overlay", check.OVERLAYS)
def test_renderer_matches_kubectl_kustomize(overlay: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Our small kustomize must produce exactly what the real one does, object for object."""
    out = subprocess.run(
        ["kubectl", "kustomize", str(check.K8S_DIR / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    reference = [d for d in yaml.safe_load_all(out) if d]

    def key(d: dict[str, Any]) -> tuple[str, str, str]:
        return d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]

    ours = {key(d): d for d in rendered[overlay]}
    theirs = {key(d): d for d in reference}
    assert set(ours) == set(theirs)
    for k, doc in ours.items():
        assert doc == theirs[k], f"{overlay}: {k} differs from kubectl kustomize"


def test_strategic_merge_follows_kustomize_semantics() -> None:
    target = {
        "spec": {
            "containers": [
                {
                    "name": "a",
                    "image": "x",
                    "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                },
                {"name": "b", "image": "y"},
            ],
            "tolerations": [{"key": "t1"}],
            "keep": 1,
            "drop": 2,
        }
    }
    patch = {
        "spec": {
            "containers": [
                {"name": "a", "env": [{"name": "N", "value": "n"}, {"name": "B", "value": "22"}]},
                {"name": "b", "$patch": "delete"},
            ],
            "tolerations": [{"key": "t2"}],
            "drop": None,
        }
    }
    merged = check.strategic_merge(target, patch)
    assert [c["name"] for c in merged["spec"]["containers"]] == ["a"]
    # patch items first (merged with their namesakes), then the untouched ones, as kustomize does
    assert merged["spec"]["containers"][0]["env"] == [
        {"name": "N", "value": "n"},
        {"name": "B", "value": "22"},
        {"name": "A", "value": "1"},
    ]
    assert merged["spec"]["containers"][0]["image"] == "x"
    assert merged["spec"]["tolerations"] == [{"key": "t2"}]  # no merge key: replaced
    assert merged["spec"]["keep"] == 1 and "drop" not in merged["spec"]
    # custom resources have no merge keys at all: lists are replaced
    crd = check.strategic_merge(
        {"triggers": [{"name": "x"}, {"name": "y"}]}, {"triggers": [{"name": "x", "a": 1}]}, builtin=False
    )
    assert crd == {"triggers": [{"name": "x", "a": 1}]}


def test_images_and_namespace_transformers(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "objects.yaml").write_text(
        yaml.safe_dump_all(
            [
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "old"}},
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "metadata": {"name": "j"},
                    "spec": {
                        "template": {
                            "spec": {
                                "containers": [
                                    {"name": "a", "image": "app:1"},
                                    {"name": "b", "image": "reg:5000/other@sha256:ab"},
                                ],
                                "restartPolicy": "Never",
                            }
                        }
                    },
                },
            ]
        )
    )
    (tmp_path / "base" / "kustomization.yaml").write_text("resources: [objects.yaml]\n")
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "namespace": "new",
                "resources": ["base"],
                "images": [
                    {"name": "app", "newName": "r.io/app", "newTag": "2"},
                    {"name": "reg:5000/other", "digest": "sha256:cd"},
                ],
            }
        )
    )
    docs = check.render_kustomization(tmp_path)
    assert find(docs, "Namespace", "new")  # kustomize renames the Namespace object itself
    job = find(docs, "Job", "j")
    assert job["metadata"]["namespace"] == "new"
    images = [c["image"] for c in job["spec"]["template"]["spec"]["containers"]]
    assert images == ["r.io/app:2", "reg:5000/other@sha256:cd"]


@pytest.mark.parametrize(
    "kustomization, message",
    [
        ({"resources": ["x.yaml"], "commonLabels": {"a": "b"}}, "commonLabels"),
        ({"resources": ["x.yaml"], "patches": [{"path": "p.yaml", "target": {"kind": "Job"}}]}, "target"),
        ({"resources": ["missing.yaml"]}, "does not exist"),
        (
            {
                "resources": ["x.yaml"],
                "patches": [{"patch": "kind: Job\napiVersion: batch/v1\nmetadata: {name: nope}\n"}],
            },
            "matches 0 objects",
        ),
        ({"resources": ["x.yaml", "x.yaml"]}, "defined twice"),
    ],
)
def test_renderer_refuses_what_it_does_not_implement(
    tmp_path: Path, kustomization: dict[str, Any], message: str
) -> None:
    (tmp_path / "x.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n")
    (tmp_path / "p.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: b}\n")
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    with pytest.raises(check.KustomizeError, match=message):
        check.render_kustomization(tmp_path)


# ---- schemas -----------------------------------------------------------------------------------


def test_all_rendered_manifests_pass_strict_validation(rendered: dict[str, list[dict[str, Any]]]) -> None:
    everything = [d for docs in rendered.values() for d in docs]
    template = check.load_yaml_documents(check.SECRET_TEMPLATE)
    assert check.validate_documents(everything + template) == []


def test_strict_validation_rejects_unknown_fields_and_unknown_kinds(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    deployment = copy.deepcopy(find(rendered["cpu"], "Deployment", "encoder"))
    deployment["spec"]["template"]["spec"]["containers"][0]["resource"] = {}  # typo for `resources`
    scaled = copy.deepcopy(find(rendered["cpu"], "ScaledObject", "encoder"))
    scaled["spec"]["minReplicas"] = 0  # HPA's spelling, not KEDA's
    trigger_without_mode = copy.deepcopy(find(rendered["cpu"], "ScaledObject", "generator"))
    del trigger_without_mode["spec"]["triggers"][0]["metadata"]["streamLength"]
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    problems = check.validate_documents([deployment, scaled, trigger_without_mode, unknown])
    assert any("Deployment" in p and "resource" in p for p in problems), problems
    assert any("ScaledObject" in p and "minReplicas" in p for p in problems), problems
    assert any("ScaledObject" in p and "one of" in p for p in problems), problems
    assert any("Widget" in p for p in problems), problems


# ---- cross-object lint -------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", check.OVERLAYS)
def test_lint_is_clean(overlay: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    assert check.lint_manifests(rendered[overlay]) == []


def test_lint_catches_broken_references_and_unsafe_settings(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = copy.deepcopy(rendered["cpu"])
    docs.remove(find(docs, "PodDisruptionBudget", "encoder"))
    find(docs, "Service", "search")["spec"]["selector"] = {"app.kubernetes.io/name": "serach"}
    find(docs, "ScaledObject", "generator")["spec"]["scaleTargetRef"]["name"] = "generater"
    gateway = container(docs, "gateway")
    gateway["env"].insert(0, {"name": "EARLY", "value": "$(REDIS_URL)"})  # defined later: not expanded
    del gateway["resources"]["limits"]
    gateway["securityContext"]["readOnlyRootFilesystem"] = False
    container(docs, "annotator")["readinessProbe"]["grpc"]["port"] = 50050
    find(docs, "TriggerAuthentication", "sfhq-redis")["spec"]["secretTargetRef"][0]["key"] = "PASSWORD"
    find(docs, "Deployment", "encoder")["spec"]["replicas"] = 3
    problems = "\n".join(check.lint_manifests(docs))
    for expected in (
        "Deployment encoder: no PodDisruptionBudget",
        "Service/sfhq/search: selector",
        "scales 'generater'",
        "$(REDIS_URL), which is not defined before it",
        "resources.limits lacks",
        "readOnlyRootFilesystem",
        "readinessProbe probes port 50050, the grpc port is 50053",
        "sfhq-secrets/PASSWORD",
        "sets replicas although",
    ):
        assert expected in problems, f"{expected!r} not reported in:\n{problems}"


# ---- what the manifests decide -----------------------------------------------------------------


def test_gpu_overlay_puts_model_services_on_gpus(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["gpu"]
    for name in GPU_SERVICES:
        pod = find(docs, "Deployment", name)["spec"]["template"]["spec"]
        c = pod["containers"][0]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert c["image"].endswith(":0.1.0-cuda")
        assert env_value(c, "SFHQ_DEVICE") == "cuda"
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        # the GPU patch must not lose what the base set
        assert env_value(c, "SFHQ_PORT") and env_value(c, "REDIS_URL")
        assert {m["mountPath"] for m in c["volumeMounts"]} == {"/weights", "/tmp"}
    for name in ("gateway", "annotator"):
        c = container(docs, name)
        assert "nvidia.com/gpu" not in c["resources"]["limits"] and c["image"].endswith(":0.1.0-cpu")
    assert env_value(container(docs, "annotator"), "SFHQ_PARSER_BACKEND") == "onnx"
    for overlay in ("cpu", "cpu-hpa"):
        text = yaml.safe_dump_all(rendered[overlay])
        assert "nvidia.com/gpu" not in text and "cuda" not in text


def test_autoscaling_keda_and_hpa_fallback(rendered: dict[str, list[dict[str, Any]]]) -> None:
    from services.common.queue import RESULTS_STREAM, stage_stream
    from services.common.stages import SERVICE_STAGES

    for overlay in ("cpu", "gpu"):
        scaled = {d["metadata"]["name"]: d["spec"] for d in rendered[overlay] if d["kind"] == "ScaledObject"}
        assert set(scaled) == {"gateway", *MODEL_SERVICES}
        assert not [d for d in rendered[overlay] if d["kind"] == "HorizontalPodAutoscaler"]
        for name in MODEL_SERVICES:
            streams = {t["metadata"]["stream"] for t in scaled[name]["triggers"]}
            # exactly the streams the service's workers consume (the queue contract)
            assert streams == {stage_stream(stage) for stage in SERVICE_STAGES[name]}, (overlay, name)
            # scaled on XLEN: unfinished work, see test_deploy_autoscaling.py for why not lag
            assert all("streamLength" in t["metadata"] for t in scaled[name]["triggers"])
            assert all(t["authenticationRef"]["name"] == "sfhq-redis" for t in scaled[name]["triggers"])
        # idle model services scale to zero, except search, which serves queries and holds the index
        assert [n for n in MODEL_SERVICES if scaled[n]["minReplicaCount"] == 0] == [
            "encoder",
            "generator",
            "annotator",
        ]
        assert scaled["search"]["minReplicaCount"] >= 1 and scaled["gateway"]["minReplicaCount"] >= 2
        assert RESULTS_STREAM in {t["metadata"].get("stream") for t in scaled["gateway"]["triggers"]}
    hpas = {
        d["metadata"]["name"]: d["spec"]
        for d in rendered["cpu-hpa"]
        if d["kind"] == "HorizontalPodAutoscaler"
    }
    assert set(hpas) == {"gateway", *MODEL_SERVICES}
    assert not [d for d in rendered["cpu-hpa"] if d["apiVersion"].startswith("keda.sh/")]
    assert all(spec["minReplicas"] >= 1 for spec in hpas.values())


def test_grpc_load_balancing_uses_headless_services(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Plain ClusterIP Services pin an HTTP/2 connection to one pod: in-cluster gRPC targets are
    dns:/// names of headless Services, so clients can round-robin over every ready pod."""
    docs = rendered["cpu"]
    config = find(docs, "ConfigMap", "sfhq-config")["data"]
    for name in ("gateway", *MODEL_SERVICES):
        target = config[f"SFHQ_{name.upper()}_ADDR"]
        assert target.startswith("dns:///"), target
        host, port = target.removeprefix("dns:///").rsplit(":", 1)
        service = find(docs, "Service", host)
        assert service["spec"].get("clusterIP") == "None", f"{host} is not headless"
        assert int(port) in {p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc"}
        assert service["spec"]["selector"] == {"app.kubernetes.io/name": name}
    # Redis is reached by KEDA from its own namespace: the address must be fully qualified
    host = config["REDIS_ADDRESS"].split(":")[0]
    assert host == "redis.sfhq.svc.cluster.local"


def test_weights_job_fills_the_shared_volume_that_services_mount_read_only(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["cpu"]
    claim = find(docs, "PersistentVolumeClaim", "sfhq-weights")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    job = find(docs, "Job", "sfhq-weights")
    c = job["spec"]["template"]["spec"]["containers"][0]
    script = c["args"][-1]
    for name in ("stylegan2-ffhq-config-f", "e4e-ffhq-encode", "bisenet-face-parsing", "clip-vit-l-14-336"):
        assert name in script
    assert "sfhq weights verify" in script and c["args"][:2] == ["sh", "-ec"]  # -e: any failure fails the Job
    assert {m["mountPath"]: m.get("readOnly", False) for m in c["volumeMounts"]}["/weights"] is False
    assert job["spec"]["ttlSecondsAfterFinished"] > 0  # so a later apply reruns it instead of failing
    for name in MODEL_SERVICES:
        deployment = find(docs, "Deployment", name)["spec"]["template"]["spec"]
        mounts = {m["mountPath"]: m for m in deployment["containers"][0]["volumeMounts"]}
        assert mounts["/weights"]["readOnly"] is True
        volume = next(v for v in deployment["volumes"] if v["name"] == mounts["/weights"]["name"])
        assert volume["persistentVolumeClaim"] == {"claimName": "sfhq-weights", "readOnly": True}


def test_redis_is_persistent_password_protected_and_fenced(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["cpu"]
    redis = find(docs, "StatefulSet", "redis")
    c = redis["spec"]["template"]["spec"]["containers"][0]
    args = c["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert "@sha256:" in c["image"]
    policy = find(docs, "NetworkPolicy", "redis")["spec"]
    sources = policy["ingress"][0]["from"]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}} in sources
    # external Redis: the component is optional and nothing else depends on the StatefulSet
    assert "../../components/redis" in (check.K8S_DIR / "overlays" / "cpu" / "kustomization.yaml").read_text()


def test_secret_template_is_not_deployed(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for docs in rendered.values():
        assert not [d for d in docs if d["kind"] == "Secret"], "secrets must be created out of band"
    keys = check.secret_template_keys()["sfhq-secrets"]
    assert {"REDIS_PASSWORD", "SFHQ_AUTH_TOKENS", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= keys


def test_shared_gpu_overlay_runs_three_models_in_one_gpu_process(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """overlays/gpu-shared: e4e, CLIP and BiSeNet share one GPU process; every stage is consumed by
    exactly one Deployment, and each Deployment scales on exactly the streams it consumes."""
    from services.common.queue import stage_stream
    from services.common.stages import SERVICE_STAGES
    from services.launch import service_names

    docs = rendered["gpu-shared"]
    shared = container(docs, "encoder")
    assert service_names(shared["args"][2]) == ["encoder", "search", "annotator"]
    assert env_value(shared, "SFHQ_PORT") is None  # several services: each on its default port
    assert shared["resources"]["limits"]["nvidia.com/gpu"] == 1 and env_value(shared, "SFHQ_DEVICE") == "cuda"
    assert {50051, 50053, 50054} <= {p["containerPort"] for p in shared["ports"]}
    stages = {
        name: (env_value(container(docs, name), "SFHQ_STAGES") or ",".join(SERVICE_STAGES[name])).split(",")
        for name in MODEL_SERVICES
    }
    assert stages == {
        "encoder": ["encode", "embed", "annotate"],
        "generator": ["diffuse", "sample", "synthesize"],
        "annotator": ["align"],
        "search": ["curate"],
    }
    consumed = sorted(stage for names in stages.values() for stage in names)
    assert consumed == sorted(stage for names in SERVICE_STAGES.values() for stage in names)
    gpus = {
        name for name in MODEL_SERVICES if "nvidia.com/gpu" in container(docs, name)["resources"]["limits"]
    }
    assert gpus == {"encoder", "generator"}  # two GPUs for four model services
    scaled = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "ScaledObject"}
    for name in MODEL_SERVICES:
        assert {t["metadata"]["stream"] for t in scaled[name]["triggers"]} == {
            stage_stream(s) for s in stages[name]
        }
    assert scaled["search"]["maxReplicaCount"] == 1  # the index has one writer
