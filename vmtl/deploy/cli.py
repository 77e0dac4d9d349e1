"""`vmtl deploy`: write deployment files for a model repository (Kubernetes manifests, Grafana dashboard).

``vmtl deploy k8s REPO --image IMAGE --replicas N --out DIR`` renders the manifests of
:mod:`vmtl.deploy.k8s` for REPO's ``native`` flavour; ``vmtl deploy grafana --out FILE`` writes the
dashboard of :mod:`vmtl.deploy.grafana`. Nothing here talks to a cluster.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vmtl.deploy.grafana import write_dashboard
from vmtl.deploy.k8s import TRITON_IMAGE, K8sOptions, read_repository, render, write_manifests


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="target", metavar="TARGET", required=True)
    k8s = sub.add_parser(
        "k8s",
        help="Kubernetes manifests: Deployment, Service, HPA on queue time, PDB, prometheus-adapter rule",
        description="Render Kubernetes manifests that serve REPO's native flavour in NVIDIA's Triton "
        "container (apply with `kubectl apply -k OUT`).",
    )
    k8s.add_argument("repo", metavar="REPO", type=Path, help="model repository (or a directory with native/)")
    k8s.add_argument("--out", type=Path, required=True, help="directory to write the YAML files to")
    k8s.add_argument(
        "--image",
        default=TRITON_IMAGE,
        help="container image: NVIDIA's Triton or one built FROM it with vmtl installed "
        "(deploy/k8s/Dockerfile; needed by the video ensemble's python-backend decoder) "
        "(default: %(default)s)",
    )
    k8s.add_argument(
        "--replicas", type=int, default=1, help="pods, and the autoscaler's minimum (default: 1)"
    )
    k8s.add_argument(
        "--max-replicas", type=int, default=None, help="autoscaler's maximum (default: max(4, replicas))"
    )
    k8s.add_argument("--name", default="vmtl", help="name of the objects (default: %(default)s)")
    k8s.add_argument("--namespace", default=None, help="namespace of the objects (default: none set)")
    k8s.add_argument(
        "--model-repository",
        default="pvc",
        metavar="SOURCE",
        help="'pvc' (the claim --pvc, mounted read-only) or an object store URL Triton reads itself: "
        "s3://bucket/path, gs://bucket/path, as://account/container/path (default: pvc)",
    )
    k8s.add_argument("--pvc", default="vmtl-model-repository", help="claim holding the repository")
    k8s.add_argument("--pvc-subpath", default="", help="the repository's directory inside the claim")
    k8s.add_argument("--pvc-size", default=None, help="also render the claim, of this size (e.g. 20Gi)")
    k8s.add_argument("--storage-class", default=None, help="storage class of the rendered claim")
    k8s.add_argument(
        "--credentials-secret",
        default=None,
        help="Secret with the object store's credentials (S3/Azure: environment variables such as "
        "AWS_ACCESS_KEY_ID; GCS: key.json)",
    )
    k8s.add_argument("--gpus", type=int, default=1, help="nvidia.com/gpu per pod (default: 1)")
    k8s.add_argument("--cpu", default="4", help="CPU request per pod (default: %(default)s)")
    k8s.add_argument(
        "--memory", default="16Gi", help="memory request and limit per pod (default: %(default)s)"
    )
    k8s.add_argument(
        "--queue-target-us",
        type=int,
        default=20000,
        help="autoscaler target: the trunk's mean queue time per request, microseconds (default: 20000)",
    )
    k8s.add_argument(
        "--adapter-namespace",
        default="monitoring",
        help="prometheus-adapter's namespace (default: monitoring)",
    )
    grafana = sub.add_parser("grafana", help="the Grafana dashboard JSON", description="Write the dashboard.")
    grafana.add_argument("--out", type=Path, required=True, help="JSON file to write")


def run(args: argparse.Namespace) -> int:
    if args.target == "grafana":
        print(f"vmtl deploy: wrote {write_dashboard(args.out)}")
        return 0
    try:
        served = read_repository(args.repo)
        opts = K8sOptions(
            name=args.name,
            namespace=args.namespace,
            image=args.image,
            replicas=args.replicas,
            max_replicas=args.max_replicas,
            model_repository=args.model_repository,
            pvc=args.pvc,
            pvc_subpath=args.pvc_subpath,
            pvc_size=args.pvc_size,
            storage_class=args.storage_class,
            credentials_secret=args.credentials_secret,
            gpus=args.gpus,
            cpu=args.cpu,
            memory=args.memory,
            queue_target_us=args.queue_target_us,
            adapter_namespace=args.adapter_namespace,
        )
        objects = render(served, opts)
    except (OSError, ValueError) as exc:
        print(f"vmtl deploy: {exc}", file=sys.stderr)
        return 2
    if served.flavour != "native":
        print(
            f"vmtl deploy: warning: {args.repo} is the {served.flavour!r} flavour; NVIDIA's container serves "
            "the `native` one on its GPU (export with `--flavour native` or `both`)",
            file=sys.stderr,
        )
    if served.python_models and opts.image == TRITON_IMAGE:
        print(
            f"vmtl deploy: warning: python-backend models ({', '.join(served.python_models)}) import vmtl: "
            f"{TRITON_IMAGE} lacks it; build deploy/k8s/Dockerfile and pass --image",
            file=sys.stderr,
        )
    for path in write_manifests(objects, args.out):
        print(f"vmtl deploy: wrote {path}")
    return 0
