"""`vmtl bench`: the load generator, the statistics breakdown, the independent-models repository, and a
whole sweep against the real tritonserver (every configuration, CSV/JSON/PNG written).

Nothing here asserts a speed: only that what is measured is what was asked and is reported consistently.
"""

from __future__ import annotations

import csv
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from vmtl.bench import perf_analyzer
from vmtl.bench.independent import single_model, write_independent_repository
from vmtl.bench.load import (
    COMPOSING_COLUMNS,
    CSV_COLUMNS,
    LoadError,
    Measurement,
    breakdown,
    run_load,
    settled,
)
from vmtl.bench.peak import manifest_flops, matmul_peak
from vmtl.cli import main
from vmtl.contract import load_configs, read_manifest, validate_repository
from vmtl.tasks import TaskGraph

CONFIGS = "triton-ensemble,triton-trunk,triton-independent,ort-shared,ort-trunk,ort-independent,torch"


# ------------------------------------------------------------------------------------------ load


def test_run_load_keeps_exactly_concurrency_requests_in_flight() -> None:
    lock = threading.Lock()
    state = {"now": 0, "max": 0}

    def call() -> None:
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.01)
        with lock:
            state["now"] -= 1

    m = run_load("fake", call, 3, requests=30, warmup=3)
    assert state["max"] == 3
    assert len(m.latencies_s) == 30 and m.errors == 0 and m.concurrency == 3
    assert all(t >= 0.009 for t in m.latencies_s)
    assert m.throughput == pytest.approx(30 / m.window_s)
    assert m.latency_us(50) <= m.latency_us(90) <= m.latency_us(99)


def test_run_load_counts_failures_and_refuses_when_all_fail() -> None:
    n = {"calls": 0}

    def flaky() -> None:
        n["calls"] += 1
        if n["calls"] % 2:
            raise RuntimeError("server said no")

    m = run_load("flaky", flaky, 1, requests=10)
    assert m.errors == 5 and len(m.latencies_s) == 5 and "server said no" in (m.first_error or "")

    def broken() -> None:
        raise ValueError("wrong shape")

    with pytest.raises(LoadError, match=r"all 4 requests failed.*wrong shape"):
        run_load("broken", broken, 2, requests=4)
    with pytest.raises(ValueError, match="concurrency"):
        run_load("x", lambda: None, 0, requests=1)


def _stats(name: str, count: int, execs: int, **us: int) -> dict:
    stages = {s: {"count": count, "ns": us.get(s, 0) * 1000 * count} for s in us}
    stages["success"] = {"count": count, "ns": us.get("success", 0) * 1000 * count}
    return {name: {"name": name, "execution_count": execs, "inference_stats": stages}}


def test_settled_waits_for_the_counts_to_stop_moving() -> None:
    counts = iter([3, 4, 5, 5, 5])  # the last requests are counted a moment late

    def stats() -> dict:
        return {"m": {"inference_stats": {"success": {"count": next(counts)}}}}

    assert settled(stats, pause_s=0)["m"]["inference_stats"]["success"]["count"] == 5
    moving = iter(range(100))
    snap = settled(
        lambda: {"m": {"inference_stats": {"success": {"count": next(moving)}}}}, pause_s=0, tries=3
    )
    assert snap["m"]["inference_stats"]["success"]["count"] == 3  # gives up after `tries` re-reads


def test_breakdown_and_ensemble_columns_sum_the_composing_models() -> None:
    before = {
        **_stats("vmtl_clip", 10, 10, success=100),
        **_stats("backbone", 10, 10, queue=50, compute_infer=60),
    }
    after = {
        **_stats("vmtl_clip", 14, 14, success=100),
        **_stats("backbone", 14, 12, queue=50, compute_infer=60),
        **_stats("head_a", 8, 4, queue=10, compute_infer=5, compute_input=1, compute_output=2),
        **_stats("idle", 0, 0),
    }
    rows = breakdown(before, after)
    assert set(rows) == {"vmtl_clip", "backbone", "head_a"}  # idle ran nothing in the window
    assert (
        rows["backbone"].requests == 4
        and rows["backbone"].executions == 2
        and rows["backbone"].avg_batch == 2
    )
    assert rows["head_a"].queue_us == pytest.approx(10)
    m = Measurement("ens", 2, np.full(4, 0.0002), 1.0, model="vmtl_clip", server=rows)
    cols = m.server_columns()
    # head_a ran twice per ensemble request: it counts twice
    assert cols["queue"] == pytest.approx(50 + 2 * 10)
    assert cols["compute_infer"] == pytest.approx(60 + 2 * 5)
    assert cols["total"] == pytest.approx(100)
    row = m.row()
    assert list(row) == list(CSV_COLUMNS)
    assert row["Network+Server Send/Recv"] == 200 - 100 and row["Requests"] == 4
    assert {r["Model"] for r in m.composing_rows()} == {"vmtl_clip", "backbone", "head_a"}
    assert Measurement("ort", 1, np.full(3, 0.01), 1.0).row()["Server Queue"] == ""


def test_matmul_peak_and_manifest_flops() -> None:
    peak = matmul_peak(n=128, seconds=0.05)
    assert set(peak.gflops) == {"onnxruntime", "numpy"} and peak.best > 0
    assert peak.best_runtime in peak.gflops
    assert manifest_flops({"flops": {"trunk": 10, "heads": {"a": 1}}}) == (10, {"a": 1})
    assert manifest_flops({}) is None


# ------------------------------------------------------------------------------------ repositories


@pytest.fixture(scope="module")
def exported(tiny_checkpoint: Path, tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model per head, so that the sweep's composing-model rows show which heads ran."""
    out = tmp_path_factory.mktemp("bench") / "repo"
    argv = [
        "export",
        str(tiny_checkpoint),
        "--out",
        str(out),
        "--data",
        str(tiny_data),
        "--heads",
        "separate",
    ]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def exported_fused(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cpu default: every head in one fused step."""
    out = tmp_path_factory.mktemp("bench-fused") / "repo"
    assert main(["export", str(tiny_checkpoint), "--out", str(out), "--quiet"]) == 0
    return out


def test_independent_repository_wires_one_trunk_per_task(exported: Path, tmp_path: Path) -> None:
    graph = TaskGraph.from_dict(read_manifest(exported)["graph"])
    tasks = ["motion", "tags", "segments"]
    originals = {p: p.read_bytes() for p in exported.rglob("config.pbtxt")}
    out = write_independent_repository(exported, tmp_path / "ind", graph, tasks)
    validate_repository(out)
    configs = load_configs(out)
    for task in tasks:
        ens = configs[single_model(task)]
        assert [o.name for o in ens.output] == [task]
        steps = [s.model_name for s in ens.ensemble_scheduling.step]
        assert steps[0] == f"{single_model(task)}_backbone"
        assert sorted(steps[1:]) == sorted(f"head_{n}" for n in graph.closure([task]))
        assert configs[f"{single_model(task)}_backbone"].name == f"{single_model(task)}_backbone"
    assert "single_box" not in configs
    # The source repository is untouched (its configs are copied, not hard-linked and rewritten).
    assert {p: p.read_bytes() for p in exported.rglob("config.pbtxt")} == originals


def test_bench_rejects_bad_arguments(
    exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", str(tmp_path), "--no-plot"]) == 2
    assert "not a vmtl model repository" in capsys.readouterr().err
    assert main(["bench", str(exported), "--tasks", "motion,nope", "--no-plot"]) == 2
    assert "unknown task(s) ['nope']" in capsys.readouterr().err
    assert main(["bench", str(exported), "--configs", "triton-ensemble,fast", "--no-plot"]) == 2
    assert "unknown configuration(s) ['fast']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", str(exported), "--concurrency", "0,2"])


def test_bench_sweep_against_the_real_server(
    exported: Path, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    tasks = "motion,tags,segments"
    argv = [
        "bench",
        str(exported),
        "--tasks",
        tasks,
        "--concurrency",
        "1,2",
        "--requests",
        "4",
        "--warmup",
        "1",
        "--perf-analyzer",
        "off",  # tested on its own below
    ]
    assert main([*argv, "--configs", CONFIGS, "--checkpoint", str(tiny_checkpoint), "--out", str(out)]) == 0
    report = capsys.readouterr().out
    assert "targets:" in report and "matmul peak" in report

    with open(out / "bench.csv") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        rows = list(reader)
    configs = {r["Configuration"] for r in rows}
    assert len(configs) == 7 and len(rows) == 14
    assert {r["Concurrency"] for r in rows} == {"1", "2"}
    for r in rows:
        assert r["Requests"] == "4" and r["Errors"] == "0" and float(r["Inferences/Second"]) > 0
        assert int(r["p50 latency"]) <= int(r["p99 latency"])
        served_alone = r["Configuration"] in ("triton vmtl_clip, 3 tasks", "triton backbone alone")
        assert (r["Server Compute Infer"] != "") == served_alone

    with open(out / "bench_composing.csv") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == COMPOSING_COLUMNS
        comp = list(reader)
    ens = {
        r["Model"]: r
        for r in comp
        if r["Configuration"] == "triton vmtl_clip, 3 tasks" and r["Concurrency"] == "1"
    }
    # The ensemble ran the trunk once per clip and only the asked heads and their auxiliaries
    # (object for tags, motion for segments).
    assert set(ens) == {"vmtl_clip", "backbone", "head_motion", "head_object", "head_tags", "head_segments"}
    assert all(r["Requests"] == "4" for r in ens.values())
    ind = {
        r["Model"]: r
        for r in comp
        if r["Configuration"] == "triton 3 independent models" and r["Concurrency"] == "1"
    }
    for t in tasks.split(","):
        assert ind[f"single_{t}_backbone"]["Requests"] == "4"  # one trunk pass per task and clip
    assert ind["head_motion"]["Requests"] == "8"  # motion's own model and segments' auxiliary

    data = json.loads((out / "bench.json").read_text())
    flops = read_manifest(exported)["metadata"]["flops"]["trunk"]
    assert data["efficiency"]["trunk_flops_per_clip"] == flops
    assert {t["target"].split(" ")[0] for t in data["targets"]} >= {"ensemble", "dynamic", "trunk"}
    assert not data["skipped"] and not data["errors"]
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_serves_the_repository_itself_without_the_independent_baseline(
    exported: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    argv = ["bench", str(exported), "--configs", "triton-ensemble", "--concurrency", "1", "--requests", "2"]
    argv += ["--perf-analyzer", "off"]
    assert main([*argv, "--no-plot", "--no-peak", "--quiet", "--out", str(out)]) == 0
    with open(out / "bench_composing.csv") as f:
        models = {r["Model"] for r in csv.DictReader(f)}
    assert "vmtl_clip" in models and "backbone" in models
    assert not any(m.startswith("single_") for m in models)
    assert not (out / "bench.png").exists()
    assert json.loads((out / "bench.json").read_text())["efficiency"] is None


def test_bench_on_fused_heads_with_the_independent_baseline(exported_fused: Path, tmp_path: Path) -> None:
    """The fused heads model serves the ensemble and the K single-task models; each request's vmtl_tasks
    parameter runs only its task's heads (one heads execution per request, not K). Triton's perf_analyzer
    measures every Triton configuration too, its CSV kept, its throughput set beside vmtl's."""
    pa = perf_analyzer.find() or perf_analyzer.install()
    assert pa is not None
    out = tmp_path / "out"
    argv = ["bench", str(exported_fused), "--tasks", "motion,tags", "--concurrency", "1,2", "--requests", "3"]
    argv += ["--configs", "triton-ensemble,triton-trunk,triton-independent", "--warmup", "1"]
    argv += ["--perf-analyzer", "on", "--pa-interval-ms", "300"]
    assert main([*argv, "--no-plot", "--no-peak", "--quiet", "--out", str(out)]) == 0
    with open(out / "bench_composing.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["Concurrency"] == "1"]
    ens = {r["Model"]: r for r in rows if r["Configuration"] == "triton vmtl_clip, 2 tasks"}
    assert set(ens) == {"vmtl_clip", "backbone", "heads"}
    assert ens["heads"]["Requests"] == "3"
    ind = {r["Model"]: r for r in rows if r["Configuration"] == "triton 2 independent models"}
    assert ind["single_motion_backbone"]["Requests"] == "3" and ind["heads"]["Requests"] == "6"

    data = json.loads((out / "bench.json").read_text())
    measured = {(r["config"], r["concurrency"]) for r in data["perf_analyzer"]}
    labels = {"triton vmtl_clip, 2 tasks", "triton backbone alone", "triton 2 independent models"}
    assert measured == {(c, n) for c in labels for n in (1, 2)}
    for row in data["perf_analyzer"]:
        assert row["throughput"] > 0 and 0 < row["p50_us"] <= row["p99_us"]
        for file in row["csv"]:  # perf_analyzer's own CSV, as it wrote it
            assert perf_analyzer.read_csv(Path(file))[0]["Concurrency"] == row["concurrency"]
    assert {Path(f).name for r in data["perf_analyzer"] for f in r["csv"]} >= {
        "vmtl_clip_c1.csv",
        "backbone_c2.csv",
        "single_motion_c1.csv",
        "single_tags_c2.csv",
    }
    checks = {(r["config"], r["concurrency"]): r for r in data["cross_check"]}
    assert set(checks) == measured and all(r["ratio"] > 0 for r in checks.values())
    # vmtl's side of the cross-check was measured again right after each perf_analyzer point
    assert all(r["back_to_back"] for r in checks.values())
    sweep = {(r["Configuration"], r["Concurrency"]): r["Inferences/Second"] for r in data["rows"]}
    assert {k: r["vmtl"] for k, r in checks.items()} != {k: round(sweep[k], 2) for k in checks}
    assert any(t["target"].startswith("vmtl's load generator and perf_analyzer") for t in data["targets"])
