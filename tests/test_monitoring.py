"""deploy/prometheus and the Grafana dashboard, checked with the real promtool and a real Prometheus.

Static: ``promtool check config`` / ``check rules`` / ``test rules`` on the files, and every dashboard
query names a series the rules record. Live (marked ``triton``): a Prometheus on a free loopback port
scrapes a real tritonserver serving a toy repository every second while vmtl's client sends requests;
the recorded series, every dashboard query and the prometheus-adapter rule's query are read back through
Prometheus's HTTP API. Tests skip where promtool/prometheus are missing (Debian: ``apt-get install
prometheus``; ``.ci/run`` installs it).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from tritonclient.utils import InferenceServerException

from vmtl.deploy.grafana import dashboard, dashboard_json
from vmtl.deploy.k8s import adapter_rules
from vmtl.server.launcher import free_port

ROOT = Path(__file__).resolve().parents[1]
PROM = ROOT / "deploy" / "prometheus"
RULES = PROM / "rules" / "vmtl.rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "vmtl-dashboard.json"
_INSTALL = "(Debian: apt-get install prometheus; .ci/run installs it)"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed {_INSTALL}")
    return path


def _promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_tool("promtool"), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def _recorded() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}


_PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
}


def series_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (not functions, keywords, labels or numbers)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        name, rest = match.group(), text[match.end() :].lstrip()
        if rest.startswith("(") or name in _PROMQL_WORDS:
            continue
        names.add(name)
    return names


def _queries() -> list[tuple[str, str]]:
    """(panel title, expr) of every dashboard query, the template variable's included."""
    board = dashboard()
    out = [(p["title"], t["expr"]) for p in board["panels"] for t in p["targets"]]
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            inner = re.fullmatch(r"label_values\((.+), *\w+\)", var["query"])
            assert inner, var["query"]
            out.append((f"variable {var['name']}", inner.group(1)))
    return out


# -------------------------------------------------------------------------------------------- static


def test_rules_pass_promtool_check() -> None:
    result = _promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_unit_tests_pass() -> None:
    """Recorded values and alerts on synthetic Triton counters (vmtl.rules.test.yml)."""
    result = _promtool("test", "rules", "vmtl.rules.test.yml", cwd=RULES.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_scrape_config_passes_promtool_check() -> None:
    result = _promtool("check", "config", str(PROM / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_scrape_config_passes_promtool_check(tmp_path: Path) -> None:
    """prometheus-k8s.yml as it is; where this promtool lacks Kubernetes discovery (Debian builds it
    without), everything else in it: its discovery swapped for a static target."""
    path = PROM / "prometheus-k8s.yml"
    result = _promtool("check", "config", str(path))
    if "field kubernetes_sd_configs not found" in result.stdout + result.stderr:
        config = yaml.safe_load(path.read_text())
        (job,) = config["scrape_configs"]
        assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
        job["static_configs"] = [{"targets": ["127.0.0.1:8002"]}]
        del job["kubernetes_sd_configs"]
        config["rule_files"] = [str(PROM / r) for r in config["rule_files"]]
        copy = tmp_path / "prometheus-k8s.yml"
        copy.write_text(yaml.safe_dump(config))
        result = _promtool("check", "config", str(copy))
    assert result.returncode == 0, result.stdout + result.stderr
    labels = {
        r.get("target_label")
        for r in yaml.safe_load(path.read_text())["scrape_configs"][0]["relabel_configs"]
    }
    assert {"namespace", "pod"} <= labels  # what prometheus-adapter maps to Kubernetes resources


def test_dashboard_file_is_current() -> None:
    assert DASHBOARD.read_text() == dashboard_json(), "regenerate: vmtl deploy grafana --out " + str(
        DASHBOARD.relative_to(ROOT)
    )


def test_dashboard_queries_read_recorded_series() -> None:
    recorded = _recorded()
    board = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24 and panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs))
    titles = " ".join(p["title"] for p in board["panels"]).lower()
    for topic in ("throughput", "latency percentiles", "queue time", "per-task load"):
        assert topic in titles
    for title, expr in _queries():
        names = series_names(expr)
        assert names, (title, expr)
        assert names <= recorded, f"{title}: {expr} reads series no rule records: {names - recorded}"


def test_series_names_parser() -> None:
    expr = 'sum by (task) (rate(a:b_c{model=~"x|y"}[1m])) / on (m) group_left up > 0'
    assert series_names(expr) == {"a:b_c", "up"}


# -------------------------------------------------------------------------------------------- live


class Prometheus:
    """A prometheus process on a loopback port with a temporary storage directory."""

    def __init__(self, config: Path, root: Path) -> None:
        self.port = free_port()
        self.log = root / "prometheus.log"
        cmd = [
            _tool("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={root / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=1h",
        ]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"prometheus exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"prometheus not ready after 60 s:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]

    def wait_for(self, expr: str, timeout: float = 60.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result or time.monotonic() > deadline:
                return result
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _test_config(metrics_target: str, root: Path) -> Path:
    """deploy/prometheus/prometheus.yml, scraping ``metrics_target`` every second."""
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(PROM / r) for r in config["rule_files"]]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [metrics_target]}]
    path = root / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def _traffic(url: str, video: Path, stop: threading.Event, errors: list[BaseException]) -> None:
    """Until ``stop``: vmtl's client sends clips (batches of 1, 2, 4) and a video; a bad video now and
    then (a failure for the ratio and the alert rules)."""
    import tritonclient.grpc as grpc
    from test_repository import FRAMES, SIZE

    from vmtl.client import VmtlClient

    rng = np.random.default_rng(0)
    bad = grpc.InferInput("video_bytes", [1, 1], "BYTES")
    bad.set_data_from_numpy(np.array([[b"not a video"]], dtype=object))
    try:
        with VmtlClient(url, timeout=60) as client:
            raw = grpc.InferenceServerClient(url)
            round_ = 0
            while not stop.is_set():
                for batch in (1, 2, 4):
                    client.infer_clip(rng.integers(0, 256, (batch, FRAMES, SIZE, SIZE, 3), dtype=np.uint8))
                client.analyze(video)
                if round_ % 5 == 0:
                    with contextlib.suppress(InferenceServerException):
                        raw.infer("vmtl_video", [bad])
                round_ += 1
                stop.wait(0.3)
            raw.close()
    except BaseException as exc:
        errors.append(exc)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, start_triton, tiny_video: Path) -> Iterator[Prometheus]:
    """Prometheus scraping a real Triton every second while vmtl's client keeps sending requests."""
    _tool("prometheus")
    pytest.importorskip("tritonclient.grpc")
    from test_repository import make_toy_models, toy_graph

    from vmtl.export.repository import write_repository

    root = tmp_path_factory.mktemp("monitoring")
    graph = toy_graph()
    trunk, heads = make_toy_models(root / "onnx", graph)
    repo = write_repository(root / "repo", graph, trunk, heads, max_batch_size=8)
    with start_triton(repo, root / "tritonserver.log") as server:
        target = server.metrics_url.removeprefix("http://").removesuffix("/metrics")
        prom = Prometheus(_test_config(target, root), root)
        stop, errors = threading.Event(), []
        load = threading.Thread(
            target=_traffic, args=(server.grpc_url, tiny_video, stop, errors), daemon=True
        )
        try:
            assert prom.wait_for('up{job="vmtl-triton"} == 1'), "Prometheus never scraped the server"
            load.start()
            yield prom
        finally:
            stop.set()
            if load.is_alive():
                load.join(60)
            prom.stop()
        assert not errors, errors


@pytest.mark.triton
def test_live_scrape_records_the_series(live: Prometheus) -> None:
    rps = live.wait_for('model:nv_inference_request_success:rate1m{model="backbone"} > 0')
    assert rps, "no backbone request rate recorded"
    failed = live.wait_for('model:nv_inference_failure_ratio:rate1m{model="vmtl_video"} > 0')
    assert failed and 0 < float(failed[0]["value"][1]) <= 1
    for name in (
        "model:nv_inference_queue_us_per_request:mean1m",
        "model:nv_inference_compute_us_per_request:mean1m",
    ):
        result = live.wait_for(f'{name}{{model="backbone"}}')
        assert result and math.isfinite(float(result[0]["value"][1])), name
    quantiles = live.wait_for('model_quantile:nv_inference_request_summary_us:max{model="vmtl_clip"}')
    assert {r["metric"]["quantile"] for r in quantiles} >= {"0.5", "0.9", "0.99"}
    tasks = live.wait_for("task:vmtl_head_requests:rate1m > 0")
    assert {r["metric"]["task"] for r in tasks} == {"a", "b", "c"}


@pytest.mark.triton
def test_live_every_rule_evaluates_without_error(live: Prometheus) -> None:
    live.wait_for("model:nv_inference_batch_size:mean1m")
    groups = live.api("rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == len(_recorded()) + 4  # 4 alerts
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad
    firing = [a["labels"]["alertname"] for a in live.api("alerts")["alerts"]]
    assert "VmtlTritonDown" not in firing and "VmtlTritonAbsent" not in firing


@pytest.mark.triton
def test_live_every_dashboard_query_returns_series(live: Prometheus) -> None:
    """Each panel's query, with the model variable at All, returns data (the toy repository is written
    with the cpu default, fused heads, so the per-task counters exist too)."""
    live.wait_for("model:nv_inference_batch_size:mean1m")
    for title, expr in _queries():
        expr = expr.replace("$model", ".*")
        assert live.wait_for(expr, timeout=30), f"{title}: {expr} returned nothing"


@pytest.mark.triton
def test_live_prometheus_adapter_query(live: Prometheus) -> None:
    """The HPA metric's query, as prometheus-adapter expands it per pod (here: per scraped instance)."""
    (rule,) = adapter_rules("backbone")["rules"]
    query = (
        rule["metricsQuery"]
        .replace("<<.GroupBy>>", "instance")
        .replace("<<.LabelMatchers>>", 'job="vmtl-triton"')
    )
    result = live.wait_for(query)
    assert len(result) == 1
    value = float(result[0]["value"][1])
    assert math.isfinite(value) and value >= 0
