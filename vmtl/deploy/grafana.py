"""Build the Grafana dashboard of vmtl's Triton servers from the series the Prometheus rules record.

Every query reads a series recorded by ``deploy/prometheus/rules/vmtl.rules.yml`` (per model: requests
and failures per second, mean queue/compute/end-to-end time per request, Triton's latency quantiles,
batch size, pending requests; per task: head load and compute). ``deploy/grafana/vmtl-dashboard.json``
is this module's output (``vmtl deploy grafana --out FILE`` writes it; a test checks the copy is current).
Import it in Grafana and pick the Prometheus data source that scrapes the servers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DASHBOARD_UID", "Panel", "Query", "dashboard", "dashboard_json", "panels", "write_dashboard"]

DASHBOARD_UID = "vmtl-triton"
_DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
_MODEL = 'model=~"$model"'


@dataclass(frozen=True)
class Query:
    """One PromQL query of a panel and its legend."""

    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    """A time-series (or stat) panel: title, unit, queries, and what it tells the operator."""

    title: str
    unit: str
    queries: tuple[Query, ...]
    description: str
    kind: str = "timeseries"
    width: int = 12


def panels() -> list[Panel]:
    """The dashboard's panels, top to bottom, left to right."""
    ms = "ms"
    return [
        Panel(
            "Servers up",
            "short",
            (Query('job:up:sum{job="vmtl-triton"}', "servers up"),),
            "Triton servers Prometheus scrapes successfully.",
            kind="stat",
            width=6,
        ),
        Panel(
            "Requests in the queue",
            "short",
            (Query(f"model:nv_inference_pending_request_count:sum{{{_MODEL}}}", "{{model}}"),),
            "Requests waiting for an execution now, per model (Triton's pending request count).",
            width=18,
        ),
        Panel(
            "Throughput (requests/s)",
            "reqps",
            (
                Query(f"model:nv_inference_request_success:rate1m{{{_MODEL}}}", "{{model}}"),
                Query(f"model:nv_inference_count:rate1m{{{_MODEL}}}", "{{model}} inferences"),
            ),
            "Successful requests per second per model, and inferences (batch items) per second.",
        ),
        Panel(
            "Failures",
            "reqps",
            (
                Query(
                    f"model_reason:nv_inference_request_failure:rate1m{{{_MODEL}}} > 0",
                    "{{model}} {{reason}}",
                ),
                Query(f"model:nv_inference_failure_ratio:rate1m{{{_MODEL}}}", "{{model}} failed share"),
            ),
            "Failed requests per second by Triton's reason (REJECTED, CANCELED, BACKEND, OTHER) and "
            "the failed share of all requests.",
        ),
        Panel(
            "Request latency percentiles",
            ms,
            (
                Query(
                    f'model_quantile:nv_inference_request_summary_us:max{{{_MODEL},quantile=~"0.5|0.9|0.99"}}'
                    " / 1000",
                    "{{model}} p{{quantile}}",
                ),
                Query(
                    f"model:nv_inference_request_us_per_request:mean1m{{{_MODEL}}} / 1000", "{{model}} mean"
                ),
            ),
            "Time inside the server per request: Triton's summary quantiles (the worst server's) and "
            "the 1-minute mean.",
        ),
        Panel(
            "Queue time per request",
            ms,
            (
                Query(f"model:nv_inference_queue_us_per_request:mean1m{{{_MODEL}}} / 1000", "{{model}} mean"),
                Query(
                    f'model_quantile:nv_inference_queue_summary_us:max{{{_MODEL},quantile="0.99"}} / 1000',
                    "{{model}} p99",
                ),
            ),
            "Time a request waits in the model's scheduler queue (the autoscaler's signal; the "
            "VmtlQueueTimeOverBudget alert fires over 50 ms).",
        ),
        Panel(
            "Compute time per request",
            ms,
            (Query(f"model:nv_inference_compute_us_per_request:mean1m{{{_MODEL}}} / 1000", "{{model}}"),),
            "Mean compute time (input + infer + output) per request, per model.",
        ),
        Panel(
            "Batch size",
            "short",
            (Query(f"model:nv_inference_batch_size:mean1m{{{_MODEL}}}", "{{model}}"),),
            "Mean inferences per execution: what dynamic batching achieves.",
        ),
        Panel(
            "Per-task load (requests/s)",
            "reqps",
            (
                Query("task:vmtl_head_requests:rate1m", "{{task}}"),
                Query("sum by (task) (model_task:vmtl_head_executions:rate1m)", "{{task}} (fused heads)"),
            ),
            "Requests per second each task's head serves: head_<task> models' requests, or the "
            "per-task executions a fused heads model counts.",
        ),
        Panel(
            "Per-task compute per execution",
            "µs",
            (Query("model_task:vmtl_head_compute_us_per_execution:mean1m", "{{model}} {{task}}"),),
            "Mean microseconds a fused heads model spends on each task per execution.",
        ),
    ]


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    targets = [
        {
            "datasource": _DATASOURCE,
            "expr": q.expr,
            "legendFormat": q.legend,
            "refId": chr(ord("A") + i),
        }
        for i, q in enumerate(panel.queries)
    ]
    out: dict[str, Any] = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": _DATASOURCE,
        "gridPos": {"h": 8, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "targets": targets,
    }
    if panel.kind == "timeseries":
        out["options"] = {
            "legend": {"displayMode": "list", "placement": "bottom"},
            "tooltip": {"mode": "multi"},
        }
    return out


def dashboard() -> dict[str, Any]:
    """The dashboard as Grafana's JSON model (import it, or provision it from a file)."""
    items, x, y = [], 0, 0
    for i, panel in enumerate(panels(), start=1):
        if x + panel.width > 24:
            x, y = 0, y + 8
        items.append(_panel_json(panel, i, x, y))
        x += panel.width
    return {
        "uid": DASHBOARD_UID,
        "title": "vmtl on Triton",
        "description": "Throughput, latency, queue time and per-task load of vmtl's Triton servers, from the "
        "series deploy/prometheus/rules/vmtl.rules.yml records.",
        "tags": ["vmtl", "triton"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                },
                {
                    "name": "model",
                    "label": "Model",
                    "type": "query",
                    "datasource": _DATASOURCE,
                    "query": "label_values(model:nv_inference_request_success:rate1m, model)",
                    "definition": "label_values(model:nv_inference_request_success:rate1m, model)",
                    "refresh": 2,
                    "multi": True,
                    "includeAll": True,
                    "current": {"text": "All", "value": "$__all"},
                },
            ]
        },
        "panels": items,
    }


def dashboard_json() -> str:
    """The dashboard as the text of ``deploy/grafana/vmtl-dashboard.json``."""
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def write_dashboard(path: Path) -> Path:
    """Write the dashboard JSON to ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dashboard_json(), encoding="utf-8")
    return path
