"""`vmtl deploy k8s`: the rendered manifests validate against the Kubernetes API schemas.

Every object is checked with kubernetes-validate (strict: unknown fields fail) against an older and the
newest Kubernetes release it ships schemas for. No cluster runs them here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from vmtl.cli import main
from vmtl.deploy.k8s import (
    APP_NAME,
    QUEUE_METRIC,
    K8sOptions,
    ServedRepository,
    adapter_rules,
    read_repository,
    render,
    write_manifests,
)
from vmtl.export.repository import write_repository

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is not installed (pip install -e '.[dev]')"
)
from test_repository import make_toy_models, toy_graph  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VERSIONS = ("1.27.0", kubernetes_validate.latest_version())


def _validate(obj: dict[str, Any]) -> None:
    for version in VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real repository written by vmtl's writer (native flavour) inside a directory holding flavours."""
    root = tmp_path_factory.mktemp("k8s")
    graph = toy_graph()
    trunk, heads = make_toy_models(root / "onnx", graph)
    return write_repository(root / "repo" / "native", graph, trunk, heads, max_batch_size=8, flavour="native")


@pytest.fixture(scope="module")
def served(repo: Path) -> ServedRepository:
    return read_repository(repo.parent)  # picks native/


def test_read_repository_names_the_models(served: ServedRepository) -> None:
    assert served.flavour == "native"
    assert served.trunk == "backbone"
    assert served.tasks == ("a", "b", "c")
    assert set(served.models) == {
        "backbone",
        "video_decode",
        "vmtl_clip",
        "vmtl_video",
        "head_a",
        "head_b",
        "head_c",
    }
    assert served.python_models == ("video_decode",)


def test_read_repository_refuses_a_directory_without_manifest(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"vmtl\.json|does not exist"):
        read_repository(tmp_path)


OPTIONS = {
    "pvc": K8sOptions(replicas=2),
    "pvc-created": K8sOptions(
        namespace="serving", pvc_size="20Gi", pvc_subpath="repos/native", storage_class="standard"
    ),
    "s3": K8sOptions(model_repository="s3://bucket/vmtl/native", credentials_secret="s3-creds", replicas=3),
    "gcs": K8sOptions(model_repository="gs://bucket/vmtl/native", credentials_secret="gcs-key", gpus=2),
    "cpu-only": K8sOptions(gpus=0, max_replicas=2),
}


@pytest.mark.parametrize("case", list(OPTIONS))
def test_every_rendered_object_validates(served: ServedRepository, case: str) -> None:
    objects = render(served, OPTIONS[case])
    expected = {"deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml", "prometheus-adapter.yaml"}
    assert expected <= set(objects)
    assert ("pvc.yaml" in objects) == (case == "pvc-created")
    for obj in objects.values():
        _validate(obj)
    # a stream's upload chunks and stop request come on a second connection: same pod as the stream
    assert objects["service.yaml"]["spec"]["sessionAffinity"] == "ClientIP"


def test_deployment_probes_gpu_and_repository(served: ServedRepository) -> None:
    opts = OPTIONS["pvc-created"]
    dep = render(served, opts)["deployment.yaml"]
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "nvcr.io/nvidia/tritonserver:24.10-py3"
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "--model-repository=/models" in container["args"]
    assert "--metrics-config=summary_latencies=true" in container["args"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/models")
    assert mount["readOnly"] and mount["subPath"] == "repos/native"
    claim = next(v for v in pod["volumes"] if "persistentVolumeClaim" in v)["persistentVolumeClaim"]
    assert claim == {"claimName": opts.pvc, "readOnly": True}
    assert dep["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == APP_NAME
    assert dep["spec"]["template"]["metadata"]["annotations"]["vmtl.io/tasks"] == "a,b,c"
    assert pod["terminationGracePeriodSeconds"] > opts.exit_timeout_s


def test_object_store_repositories_are_read_by_triton(served: ServedRepository) -> None:
    s3 = render(served, OPTIONS["s3"])["deployment.yaml"]["spec"]["template"]["spec"]
    assert "--model-repository=s3://bucket/vmtl/native" in s3["containers"][0]["args"]
    assert s3["containers"][0]["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert not any("persistentVolumeClaim" in v for v in s3["volumes"])
    gcs = render(served, OPTIONS["gcs"])["deployment.yaml"]["spec"]["template"]["spec"]
    env = {e["name"]: e["value"] for e in gcs["containers"][0]["env"]}
    assert env["GOOGLE_APPLICATION_CREDENTIALS"].endswith("/key.json")
    assert any(v.get("secret", {}).get("secretName") == "gcs-key" for v in gcs["volumes"])


def test_hpa_scales_on_queue_time_from_prometheus_adapter(served: ServedRepository) -> None:
    objects = render(served, K8sOptions(replicas=2, max_replicas=6, queue_target_us=15000))
    hpa = objects["hpa.yaml"]["spec"]
    assert hpa["minReplicas"] == 2 and hpa["maxReplicas"] == 6
    (metric,) = hpa["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == QUEUE_METRIC
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "15000"}
    config = yaml.safe_load(objects["prometheus-adapter.yaml"]["data"]["config.yaml"])
    assert config == adapter_rules("backbone")
    (rule,) = config["rules"]
    assert rule["name"]["as"] == QUEUE_METRIC
    assert "nv_inference_queue_duration_us" in rule["metricsQuery"]
    assert "nv_inference_request_success" in rule["metricsQuery"]
    assert objects["pdb.yaml"]["spec"] == {
        "selector": {"matchLabels": objects["deployment.yaml"]["spec"]["selector"]["matchLabels"]},
        "minAvailable": 1,
    }
    single = render(served, K8sOptions(replicas=1))["pdb.yaml"]["spec"]
    assert single.get("maxUnavailable") == 1 and "minAvailable" not in single


@pytest.mark.parametrize(
    "opts",
    [
        K8sOptions(name="Bad_Name"),
        K8sOptions(replicas=0),
        K8sOptions(replicas=3, max_replicas=2),
        K8sOptions(model_repository="http://example.com/repo"),
        K8sOptions(pvc_subpath="../escape"),
    ],
)
def test_bad_options_are_refused(served: ServedRepository, opts: K8sOptions) -> None:
    with pytest.raises(ValueError):
        render(served, opts)


def test_cli_writes_a_kustomization(repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "manifests"
    argv = ["deploy", "k8s", str(repo), "--out", str(out), "--image", "registry.example/vmtl-triton:0.1"]
    assert main([*argv, "--replicas", "2", "--namespace", "serving"]) == 0
    kustomization = yaml.safe_load((out / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    for name in kustomization["resources"]:
        obj = yaml.safe_load((out / name).read_text())
        _validate(obj)
    dep = yaml.safe_load((out / "deployment.yaml").read_text())
    assert dep["metadata"]["namespace"] == "serving" and dep["spec"]["replicas"] == 2
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/vmtl-triton:0.1"
    assert "warning" not in capsys.readouterr().err  # native flavour, an image with vmtl in it


def test_cli_warns_about_the_stock_image_and_fails_cleanly(repo: Path, tmp_path: Path, capsys) -> None:
    assert main(["deploy", "k8s", str(repo), "--out", str(tmp_path / "a")]) == 0
    assert "video_decode" in capsys.readouterr().err
    assert main(["deploy", "k8s", str(tmp_path), "--out", str(tmp_path / "b")]) == 2
    assert "no vmtl.json" in capsys.readouterr().err


def test_example_manifests_are_current(tmp_path: Path) -> None:
    """deploy/k8s/example/ is what `vmtl deploy k8s` writes for the demo's task graph (see its README)."""
    spec = yaml.safe_load((ROOT / "vmtl" / "configs" / "demo.yaml").read_text())
    tasks = tuple(t["name"] for t in spec["tasks"])
    trunks = ["backbone", *(f"backbone_{t['name']}" for t in spec.get("trunks", [])[1:])]
    served = ServedRepository(
        flavour="native",
        models=tuple(
            sorted([*trunks, "video_decode", "vmtl_clip", "vmtl_video", *(f"head_{t}" for t in tasks)])
        ),
        tasks=tasks,
        trunk="backbone",
        python_models=("video_decode",),
    )
    opts = K8sOptions(image="registry.example/vmtl-triton:0.1.0", replicas=2, pvc_size="20Gi")
    write_manifests(render(served, opts), tmp_path)
    example = ROOT / "deploy" / "k8s" / "example"
    written = sorted(p.name for p in tmp_path.iterdir())
    assert sorted(p.name for p in example.glob("*.yaml")) == written
    for name in written:
        assert (example / name).read_text() == (tmp_path / name).read_text(), (
            f"deploy/k8s/example/{name} is stale: regenerate it (see deploy/k8s/README.md)"
        )


def test_dashboard_cli(tmp_path: Path) -> None:
    out = tmp_path / "dash.json"
    assert main(["deploy", "grafana", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["uid"] == "vmtl-triton"
