"""Render the Kubernetes manifests that serve a vmtl model repository in NVIDIA's Triton container.

For the repository's ``native`` flavour (ONNX Runtime / TensorRT on a GPU) in
``nvcr.io/nvidia/tritonserver:24.10-py3`` (Triton 2.51, the release vmtl serves with), or an image built
``FROM`` it with vmtl installed (``deploy/k8s/Dockerfile``: the ``video_decode`` python-backend model
imports :mod:`vmtl.video`). :func:`render` returns plain objects, one file each:

- ``deployment.yaml``: tritonserver with startup/readiness probes on ``/v2/health/ready``, liveness on
  ``/v2/health/live``, ``nvidia.com/gpu`` limits, a memory-backed ``/dev/shm`` for the python backend,
  and the repository from a PersistentVolumeClaim (mounted read-only) or an object store URL that
  Triton reads itself (``s3://``, ``gs://``, ``as://``; credentials from a Secret);
- ``service.yaml``: HTTP 8000, gRPC 8001, metrics 8002;
- ``hpa.yaml``: an ``autoscaling/v2`` HorizontalPodAutoscaler on the per-pod queue time per request of the
  trunk model (a Pods metric served by prometheus-adapter);
- ``pdb.yaml``: a PodDisruptionBudget;
- ``prometheus-adapter.yaml``: a ConfigMap holding the prometheus-adapter rule that derives that metric
  from ``nv_inference_queue_duration_us`` / ``nv_inference_request_success``;
- ``pvc.yaml`` when asked to create the claim, and ``kustomization.yaml`` listing them all
  (``kubectl apply -k DIR``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vmtl.contract import MANIFEST, Manifest

__all__ = [
    "APP_NAME",
    "GRPC_PORT",
    "HTTP_PORT",
    "METRICS_PORT",
    "QUEUE_METRIC",
    "TRITON_IMAGE",
    "K8sOptions",
    "ServedRepository",
    "adapter_rules",
    "read_repository",
    "render",
    "write_manifests",
]

#: NVIDIA's container of Triton 2.51 (the release in nvidia-pytriton 0.7.0, which `vmtl serve` runs).
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
#: Pod label (app.kubernetes.io/name) deploy/prometheus/prometheus-k8s.yml discovers.
APP_NAME = "vmtl-triton"
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
#: The custom metric prometheus-adapter serves and the HorizontalPodAutoscaler reads (microseconds).
QUEUE_METRIC = "vmtl_queue_us_per_request"
MODELS_MOUNT = "/models"
GCS_CREDENTIALS_DIR = "/var/secrets/gcs"
_OBJECT_STORES = ("s3://", "gs://", "as://")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class ServedRepository:
    """What the manifests need of a model repository: its flavour, models and tasks."""

    flavour: str
    models: tuple[str, ...]
    tasks: tuple[str, ...]
    trunk: str
    python_models: tuple[str, ...]


def read_repository(repo: Path) -> ServedRepository:
    """The served models of REPO's ``native`` flavour (REPO itself, or REPO/native/ when REPO holds both).

    Raises ValueError (:class:`vmtl.contract.RepositoryError`) when REPO has no valid vmtl.json.
    """
    if not (repo / MANIFEST).is_file() and (repo / "native" / MANIFEST).is_file():
        repo = repo / "native"
    manifest = Manifest.read(repo)
    models = manifest.models
    heads = list(dict.fromkeys(models.head(task) for task in manifest.tasks))
    trunks = [models.trunk(t, manifest.graph) for t in manifest.graph.trunk_names]
    names = [*trunks, models.video_decode, models.clip_ensemble, models.video_ensemble, *heads]
    python = [models.video_decode]
    if manifest.flavour != "native":  # the cpu flavour hosts ONNX Runtime in python-backend models
        python += [*trunks, *heads]
    return ServedRepository(
        flavour=manifest.flavour,
        models=tuple(sorted(names)),
        tasks=tuple(manifest.tasks),
        trunk=models.backbone,
        python_models=tuple(sorted(python)),
    )


@dataclass(frozen=True)
class K8sOptions:
    """How to run it: names, image, replicas, where the repository lives, resources and autoscaling.

    ``model_repository`` is ``"pvc"`` (the claim ``pvc`` mounted read-only at /models, at ``pvc_subpath``
    inside it; ``pvc_size`` also renders the claim) or an object store URL Triton reads itself
    (``s3://bucket/path``, ``gs://bucket/path``, ``as://account/container/path``) with credentials from
    the Secret ``credentials_secret`` (S3/Azure: its keys become environment variables such as
    AWS_ACCESS_KEY_ID; GCS: its ``key.json`` is mounted and GOOGLE_APPLICATION_CREDENTIALS points to it).
    The autoscaler keeps the trunk's mean queue time per request near ``queue_target_us`` with
    ``replicas`` .. ``max_replicas`` pods.
    """

    name: str = "vmtl"
    namespace: str | None = None
    image: str = TRITON_IMAGE
    replicas: int = 1
    max_replicas: int | None = None
    model_repository: str = "pvc"
    pvc: str = "vmtl-model-repository"
    pvc_subpath: str = ""
    pvc_size: str | None = None
    storage_class: str | None = None
    credentials_secret: str | None = None
    gpus: int = 1
    cpu: str = "4"
    memory: str = "16Gi"
    shm_size: str = "1Gi"
    queue_target_us: int = 20000
    adapter_namespace: str = "monitoring"
    exit_timeout_s: int = 30

    def check(self) -> None:
        """Raise ValueError on options no cluster would accept."""
        for label, value in (("name", self.name), ("namespace", self.namespace), ("pvc", self.pvc)):
            if value is not None and (len(value) > 63 or not _NAME.match(value)):
                raise ValueError(f"{label} {value!r} is not a DNS-1123 label (lower case, digits, '-')")
        if self.replicas < 1 or (self.max_replicas is not None and self.max_replicas < self.replicas):
            raise ValueError("need 1 <= replicas <= max_replicas")
        if self.gpus < 0 or self.queue_target_us <= 0:
            raise ValueError("gpus must be >= 0 and queue_target_us > 0")
        if self.model_repository != "pvc" and not self.model_repository.startswith(_OBJECT_STORES):
            raise ValueError(
                f"model repository {self.model_repository!r}: give 'pvc' or an s3://, gs:// or as:// URL"
            )
        if self.pvc_subpath.startswith("/") or ".." in Path(self.pvc_subpath).parts:
            raise ValueError(f"pvc subpath {self.pvc_subpath!r} must be relative, without '..'")

    @property
    def upper(self) -> int:
        return self.max_replicas if self.max_replicas is not None else max(4, self.replicas)


def _labels(opts: K8sOptions) -> dict[str, str]:
    return {"app.kubernetes.io/name": APP_NAME, "app.kubernetes.io/instance": opts.name}


def _meta(opts: K8sOptions, name: str, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {**_labels(opts), "app.kubernetes.io/part-of": "vmtl"}}
    if opts.namespace:
        meta["namespace"] = opts.namespace
    meta.update(extra)
    return meta


def _tritonserver_args(opts: K8sOptions) -> list[str]:
    source = MODELS_MOUNT if opts.model_repository == "pvc" else opts.model_repository
    return [
        "tritonserver",
        f"--model-repository={source}",
        "--model-control-mode=none",
        "--strict-readiness=true",
        f"--http-port={HTTP_PORT}",
        f"--grpc-port={GRPC_PORT}",
        f"--metrics-port={METRICS_PORT}",
        "--allow-metrics=true",
        "--metrics-config=summary_latencies=true",
        f"--exit-timeout-secs={opts.exit_timeout_s}",
    ]


def _storage(opts: K8sOptions) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """(volumes, volume mounts, env/envFrom) for the repository's source."""
    volumes: list[dict[str, Any]] = [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": opts.shm_size}}
    ]
    mounts: list[dict[str, Any]] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    env: dict[str, Any] = {}
    if opts.model_repository == "pvc":
        volumes.append(
            {"name": "model-repository", "persistentVolumeClaim": {"claimName": opts.pvc, "readOnly": True}}
        )
        mount = {"name": "model-repository", "mountPath": MODELS_MOUNT, "readOnly": True}
        if opts.pvc_subpath:
            mount["subPath"] = opts.pvc_subpath
        mounts.append(mount)
    elif opts.credentials_secret:
        if opts.model_repository.startswith("gs://"):
            volumes.append({"name": "gcs-credentials", "secret": {"secretName": opts.credentials_secret}})
            mounts.append({"name": "gcs-credentials", "mountPath": GCS_CREDENTIALS_DIR, "readOnly": True})
            env["env"] = [
                {"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": f"{GCS_CREDENTIALS_DIR}/key.json"}
            ]
        else:
            env["envFrom"] = [{"secretRef": {"name": opts.credentials_secret}}]
    return volumes, mounts, env


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def _deployment(opts: K8sOptions, served: ServedRepository) -> dict[str, Any]:
    volumes, mounts, env = _storage(opts)
    resources: dict[str, Any] = {
        "requests": {"cpu": opts.cpu, "memory": opts.memory},
        "limits": {"memory": opts.memory},
    }
    if opts.gpus:
        resources["requests"]["nvidia.com/gpu"] = str(opts.gpus)
        resources["limits"]["nvidia.com/gpu"] = str(opts.gpus)
    container: dict[str, Any] = {
        "name": "tritonserver",
        "image": opts.image,
        "imagePullPolicy": "IfNotPresent",
        "args": _tritonserver_args(opts),
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        # Loading (TensorRT engines, python stubs) may take minutes: the startup probe allows 10, and
        # holds the liveness probe back until the models are ready.
        "startupProbe": _probe("/v2/health/ready", 10, 60),
        "readinessProbe": _probe("/v2/health/ready", 5, 3),
        "livenessProbe": _probe("/v2/health/live", 10, 3),
        "resources": resources,
        "volumeMounts": mounts,
        "securityContext": {"allowPrivilegeEscalation": False},
        **env,
    }
    pod_annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(METRICS_PORT),
        "prometheus.io/path": "/metrics",
        "vmtl.io/models": ",".join(served.models),
        "vmtl.io/tasks": ",".join(served.tasks),
    }
    spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": opts.exit_timeout_s + 15,
        "containers": [container],
        "volumes": volumes,
    }
    if opts.gpus:
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(opts, opts.name),
        "spec": {
            "replicas": opts.replicas,
            "selector": {"matchLabels": _labels(opts)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": _labels(opts), "annotations": pod_annotations},
                "spec": spec,
            },
        },
    }


def _service(opts: K8sOptions) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(opts, opts.name),
        "spec": {
            "type": "ClusterIP",
            # One client's connections reach one pod: a stream's upload chunks and stop request open a
            # second gRPC connection to the decoder that holds the stream (vmtl/client/stream.py).
            "sessionAffinity": "ClientIP",
            "selector": _labels(opts),
            "ports": [
                {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
                {
                    "name": "grpc",
                    "port": GRPC_PORT,
                    "targetPort": "grpc",
                    "protocol": "TCP",
                    "appProtocol": "kubernetes.io/h2c",
                },
                {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"},
            ],
        },
    }


def _hpa(opts: K8sOptions) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(opts, opts.name),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": opts.name},
            "minReplicas": opts.replicas,
            "maxReplicas": opts.upper,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": QUEUE_METRIC},
                        "target": {"type": "AverageValue", "averageValue": str(opts.queue_target_us)},
                    },
                }
            ],
            "behavior": {
                "scaleUp": {
                    "stabilizationWindowSeconds": 60,
                    "policies": [{"type": "Pods", "value": 2, "periodSeconds": 60}],
                },
                "scaleDown": {
                    "stabilizationWindowSeconds": 300,
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 120}],
                },
            },
        },
    }


def _pdb(opts: K8sOptions) -> dict[str, Any]:
    # With two or more pods keep one serving through voluntary disruptions (node drains); a single pod
    # may be moved (minAvailable: 1 would block every drain of its node).
    budget = {"minAvailable": 1} if opts.replicas >= 2 else {"maxUnavailable": 1}
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(opts, opts.name),
        "spec": {"selector": {"matchLabels": _labels(opts)}, **budget},
    }


def adapter_rules(trunk: str = "backbone", window: str = "2m") -> dict[str, Any]:
    """prometheus-adapter's rule for :data:`QUEUE_METRIC`: per pod, the trunk model's queue microseconds
    per successful request over ``window`` (0 while idle)."""
    model = f'model="{trunk}"'
    query = (
        f"sum by (<<.GroupBy>>) (rate(nv_inference_queue_duration_us{{<<.LabelMatchers>>,{model}}}[{window}]))"
        f"\n  / clamp_min(sum by (<<.GroupBy>>) "
        f"(rate(nv_inference_request_success{{<<.LabelMatchers>>,{model}}}[{window}])), 1e-9)\n"
    )
    return {
        "rules": [
            {
                "seriesQuery": f'nv_inference_queue_duration_us{{namespace!="",pod!="",{model}}}',
                "resources": {
                    "overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
                },
                "name": {"matches": "^nv_inference_queue_duration_us$", "as": QUEUE_METRIC},
                "metricsQuery": query,
            }
        ]
    }


def _adapter_config(opts: K8sOptions, served: ServedRepository) -> dict[str, Any]:
    meta = _meta(opts, f"{opts.name}-prometheus-adapter")
    meta["namespace"] = opts.adapter_namespace
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "data": {"config.yaml": _yaml(adapter_rules(served.trunk))},
    }


def _pvc(opts: K8sOptions) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "accessModes": ["ReadOnlyMany"] if opts.upper > 1 else ["ReadWriteOnce"],
        "resources": {"requests": {"storage": opts.pvc_size}},
    }
    if opts.storage_class:
        spec["storageClassName"] = opts.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta(opts, opts.pvc),
        "spec": spec,
    }


def render(served: ServedRepository, opts: K8sOptions) -> dict[str, dict[str, Any]]:
    """file name -> Kubernetes object, for serving ``served`` as ``opts`` says."""
    opts.check()
    objects = {
        "deployment.yaml": _deployment(opts, served),
        "service.yaml": _service(opts),
        "hpa.yaml": _hpa(opts),
        "pdb.yaml": _pdb(opts),
        "prometheus-adapter.yaml": _adapter_config(opts, served),
    }
    if opts.model_repository == "pvc" and opts.pvc_size:
        objects["pvc.yaml"] = _pvc(opts)
    return objects


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the adapter's config) as literal blocks, readable in the written files."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _yaml(obj: Any) -> str:
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=200)


def write_manifests(objects: dict[str, dict[str, Any]], out: Path) -> list[Path]:
    """Write each object to OUT/<file> and a kustomization.yaml listing them; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for filename, obj in objects.items():
        path = out / filename
        path.write_text(_yaml(obj), encoding="utf-8")
        paths.append(path)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": list(objects),
    }
    path = out / "kustomization.yaml"
    path.write_text(_yaml(kustomization), encoding="utf-8")
    return [*paths, path]
