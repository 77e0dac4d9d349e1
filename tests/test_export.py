"""`vmtl export` on the tiny trained checkpoint: parity, offline optimisation, int8 gate, --only-heads, CLI."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from vmtl.cli import main
from vmtl.contract import (
    BACKBONE,
    CLIP_ENSEMBLE,
    HEADS_MODEL,
    TAPS_OUTPUT,
    VIDEO_ENSEMBLE,
    Manifest,
    head_model,
    load_configs,
    read_manifest,
    validate_repository,
)
from vmtl.export import onnx as export_mod
from vmtl.export.onnx import ExportError, ParityError, export_checkpoint, trunk_fingerprint
from vmtl.export.quantize import GateRefused, GateResult, compare_metrics
from vmtl.export.repository import THROUGHPUT_QUEUE_DELAY_US
from vmtl.export.tensorrt import (
    TensorRTError,
    check_engine_info,
    current_engine_info,
    fp16_onnx,
    tensorrt_unavailable,
)
from vmtl.models.multitask import MultiTaskModel
from vmtl.runtime import LocalModel, OrtPipeline, ort_session
from vmtl.tasks import TaskGraph

TOL = 1e-4


@dataclass
class Exported:
    report: export_mod.ExportReport
    out: Path
    model: MultiTaskModel


@pytest.fixture(scope="module")
def exported(tiny_checkpoint: Path, tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """Both flavours of the tiny checkpoint, parity on real held-out clips; one model per head in both
    (the fused heads' export is tested on its own below)."""
    out = tmp_path_factory.mktemp("export") / "repo"
    report = export_checkpoint(tiny_checkpoint, out, flavour="both", data_root=tiny_data, heads="separate")
    model = MultiTaskModel.load_checkpoint(tiny_checkpoint / "model.safetensors").eval()
    return Exported(report, out, model)


def _models(graph: TaskGraph) -> list[str]:
    return [BACKBONE, *(head_model(n) for n in graph.names)]


def _files(repo: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(repo)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in repo.rglob("*")
        if p.is_file()
    }


# --------------------------------------------------------------------------------------------------
# Full export, parity, optimisation


def test_parity_for_trunk_and_every_head_in_both_flavours(exported: Exported) -> None:
    report, graph = exported.report, exported.model.graph
    assert set(report.repositories) == {"cpu", "native"}
    assert "held-out clips" in report.parity_inputs
    for flavour, repo in report.repositories.items():
        assert repo == exported.out / flavour
        rows = {m.name: m for m in report.models if m.flavour == flavour}
        assert list(rows) == _models(graph)
        meta = read_manifest(repo)["metadata"]
        assert set(meta["parity"]) == set(rows)
        for name, row in rows.items():
            assert row.precision == "fp32" and row.bytes > 0
            assert row.parity is not None and 0 <= row.parity["max_abs"] < TOL
            assert row.parity["max_abs"] == max(row.parity["batch1"], row.parity["batch2"])
            assert meta["parity"][name]["max_abs"] == row.parity["max_abs"]
            side = json.loads((repo / name / "parity.json").read_text())
            assert side["model"] == name and side["max_abs"] < TOL and side["tolerance"] == TOL
        assert meta["trunk_sha256"] == trunk_fingerprint(exported.model)["sha256"] == report.trunk_sha256
        assert meta["flavours"] == {"cpu": "../cpu", "native": "../native"}
        flops = exported.model.flops_report(batch=1)
        assert meta["flops"]["trunk"] == flops["trunk"] > 0
        assert meta["flops"]["heads"] == flops["heads"] and set(flops["heads"]) == set(graph.names)
    assert 0 < report.max_parity_error < TOL
    text = report.summary()
    assert "backbone" in text and "head_identity" in text and "parity: worst" in text


def test_repositories_validate_and_use_the_right_platforms(exported: Exported) -> None:
    for flavour in ("cpu", "native"):
        repo = exported.out / flavour
        validate_repository(repo)
        configs = load_configs(repo)
        assert {CLIP_ENSEMBLE, VIDEO_ENSEMBLE, BACKBONE} <= set(configs)
        backbone = configs[BACKBONE]
        if flavour == "cpu":
            assert backbone.backend == "python"
        else:
            assert backbone.platform == "onnxruntime_onnx"
        assert read_manifest(repo)["flavour"] == flavour


def test_cpu_flavour_ships_the_optimised_graph_and_it_loads_without_the_optimiser(exported: Exported) -> None:
    cpu = onnx.load(str(exported.out / "cpu" / BACKBONE / "1" / "model.onnx"))
    native = onnx.load(str(exported.out / "native" / BACKBONE / "1" / "model.onnx"))
    assert len(cpu.graph.node) < len(native.graph.node)  # fused by ORT's offline optimisation
    assert any(n.domain == "com.microsoft" for n in cpu.graph.node)
    assert "onnxruntime" in read_manifest(exported.out / "cpu")["metadata"]["optimization"]
    # A batch size the parity check did not use, fresh session with every optimisation off.
    model = exported.model
    video = np.random.default_rng(7).integers(0, 256, (3, 4, 32, 32, 3), dtype=np.uint8)
    heads = {n: exported.out / "cpu" / head_model(n) / "1" / "model.onnx" for n in model.graph.names}
    pipe = OrtPipeline(
        model.graph, exported.out / "cpu" / BACKBONE / "1" / "model.onnx", heads, optimization="off"
    )
    got = pipe.run(video)
    with torch.no_grad():
        want = model(torch.from_numpy(video))
    for name in model.graph.names:
        np.testing.assert_allclose(got[name], want[name].numpy(), atol=TOL, rtol=0)


def test_a_broken_export_fails_the_parity_check_and_names_the_model(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = export_mod.export_onnx

    def perturbed(module, path, **kw):  # same signature as export_onnx
        if Path(path).name != "head_tags.onnx":
            return real(module, path, **kw)
        params = [p for p in module.parameters() if p.dim() == 2]
        saved = [p.detach().clone() for p in params]
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in params:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
        try:
            return real(module, path, **kw)
        finally:
            with torch.no_grad():
                for p, s in zip(params, saved, strict=True):
                    p.copy_(s)

    monkeypatch.setattr(export_mod, "export_onnx", perturbed)
    out = tmp_path / "repo"
    with pytest.raises(
        ParityError,
        match=r"parity check failed for head_tags .*max-abs [0-9.e-]+ at batch 1 \(tolerance 0\.0001\)",
    ):
        export_checkpoint(tiny_checkpoint, out)
    assert not out.exists()


# --------------------------------------------------------------------------------------------------
# int8


def _onnx_ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_int8_export_passes_the_gate_or_reports_consistent_numbers(
    tiny_checkpoint: Path, tiny_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "repo"
    # The gate's fp32 reference must be exactly the metrics training measured (same clips, same model).
    trained = json.loads((tiny_checkpoint / "metrics.json").read_text())["stage2"]
    try:
        report = export_checkpoint(tiny_checkpoint, out, int8=True, data_root=tiny_data)
    except GateRefused as exc:  # legitimate on 2 held-out clips per task; then the numbers must add up
        gate = exc.gate
        assert not gate.passed and str(exc).count(": ") >= len(gate.failures)
        assert not out.exists()
    else:
        gate = report.int8
        assert gate is not None and gate.passed
        backbone = out / BACKBONE / "1" / "model.onnx"
        assert _onnx_ops(backbone) & {"DynamicQuantizeMatMul", "MatMulInteger", "MatMulIntegerToFloat"}
        rows = {m.name: m for m in report.models}
        assert rows[BACKBONE].precision == "int8" and rows[head_model("count")].precision == "fp32"
        meta = read_manifest(out)["metadata"]
        assert meta["int8"]["passed"] and meta["precision"][BACKBONE] == "int8"
        assert json.loads((out / BACKBONE / "parity.json").read_text())["precision"] == "int8"
        assert 0 < gate.details["feature_max_abs_vs_fp32"] < 0.1
        validate_repository(out)
    assert gate.clips == 16
    for row in gate.tasks:
        assert row.reference == pytest.approx(trained[row.task][row.metric], abs=1e-6)
        if row.metric == "MAE":
            assert row.change == pytest.approx((row.candidate - row.reference) / row.reference)
        else:
            assert row.change == pytest.approx(row.candidate - row.reference)


def _add_to_output(path: Path, value: float) -> None:
    """Make a head graph's `output` = original + value (a deliberately broken "quantisation")."""
    model = onnx.load(str(path))
    for node in model.graph.node:
        node.output[:] = ["output_before_offset" if o == "output" else o for o in node.output]
    model.graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32), "offset_value"))
    model.graph.node.append(helper.make_node("Add", ["output_before_offset", "offset_value"], ["output"]))
    onnx.save(model, str(path))


def test_int8_gate_refuses_a_bad_quantisation_and_leaves_the_repository_alone(
    exported: Exported,
    tiny_checkpoint: Path,
    tiny_data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "repo"
    shutil.copytree(exported.out / "cpu", out, copy_function=shutil.copy2)
    before = _files(out)
    real = export_mod.quantize_model

    def bad(src: Path, dst: Path, **kw: object) -> Path:
        path = real(src, dst, **kw)
        if Path(dst).name == "head_count.onnx":
            _add_to_output(path, 100.0)
        return path

    monkeypatch.setattr(export_mod, "quantize_model", bad)
    with pytest.raises(GateRefused) as info:
        export_checkpoint(tiny_checkpoint, out, int8=True, int8_heads=True, data_root=tiny_data)
    message = str(info.value)
    assert "int8 quantisation refused by the accuracy gate" in message
    assert "count: MAE" in message and "relative; limit +1% relative" in message
    assert "Nothing was written" in message
    assert "Settings tried: QInt8 per-channel (count failed); QInt8 per-tensor (count failed)" in message
    failing = {t.task for t in info.value.gate.failures}
    assert "count" in failing
    count = next(t for t in info.value.gate.tasks if t.task == "count")
    assert count.candidate > count.reference + 100  # raw + 100, times the task's scale 2.0
    assert _files(out) == before


def test_gate_rules() -> None:
    graph = TaskGraph.from_dict(
        {
            "tasks": [
                {"name": "a", "kind": "classify", "labels": ["x", "y"]},
                {"name": "r", "kind": "regress", "dim": 1},
            ]
        }
    )

    def gate(top1: float, mae: float) -> GateResult:
        return compare_metrics(
            graph, {"a": {"top1": 0.80}, "r": {"MAE": 2.0}}, {"a": {"top1": top1}, "r": {"MAE": mae}}
        )

    assert gate(0.79, 2.02).passed  # one point, 1 % relative: still accepted
    assert [t.task for t in gate(0.78, 2.0).failures] == ["a"]
    assert [t.task for t in gate(0.80, 2.03).failures] == ["r"]
    assert gate(0.90, 1.0).passed  # improvements are fine
    assert [t.task for t in gate(0.80, float("nan")).failures] == ["r"]


# --------------------------------------------------------------------------------------------------
# --only-heads


def _retrain_heads(src: Path, dst: Path) -> Path:
    """A second checkpoint from the first: stage 2 (DLMs only) run again, so the trunk is untouched."""
    from vmtl.training.config import load_config
    from vmtl.training.trainer import Trainer

    shutil.copytree(src, dst)
    state = json.loads((dst / "trainer_state.json").read_text())
    state["completed"] = [s for s in state["completed"] if s != 2]
    (dst / "trainer_state.json").write_text(json.dumps(state))
    Trainer(load_config(dst / "config.yaml"), dst, resume=True, progress=False, log=lambda _m: None).run()
    return dst


def test_only_heads_keeps_the_backbone_and_refuses_another_trunk(
    exported: Exported, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(exported.out, repo, copy_function=shutil.copy2)
    ckpt2 = _retrain_heads(tiny_checkpoint, tmp_path / "ckpt2")
    model2 = MultiTaskModel.load_checkpoint(ckpt2 / "model.safetensors").eval()
    assert trunk_fingerprint(model2)["sha256"] == exported.report.trunk_sha256
    before = {f: _files(repo / f) for f in ("cpu", "native")}

    argv = ["export", str(ckpt2), "--out", str(repo), "--only-heads", "--quiet", "--max-queue-size", "3"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for flavour in ("cpu", "native"):  # --max-queue-size reaches every dynamic batcher
        cfgs = load_configs(repo / flavour)
        bounded = {m for m, c in cfgs.items() if c.dynamic_batching.default_queue_policy.max_queue_size == 3}
        assert bounded == {BACKBONE, *(head_model(n) for n in exported.model.graph.names)}
    assert "kept (backbone unchanged)" in printed and "[--only-heads]" in printed
    for flavour in ("cpu", "native"):
        after = _files(repo / flavour)
        old = before[flavour]
        backbone = f"{BACKBONE}/1/model.onnx"
        assert after[backbone] == old[backbone]  # same bytes, same mtime
        assert after[f"{BACKBONE}/parity.json"][0] == old[f"{BACKBONE}/parity.json"][0]
        tags = f"{head_model('tags')}/1/model.onnx"
        assert after[tags][0] != old[tags][0]  # its DLM was retrained
        for ensemble in (CLIP_ENSEMBLE, VIDEO_ENSEMBLE):
            assert after[f"{ensemble}/config.pbtxt"][1] > old[f"{ensemble}/config.pbtxt"][1]  # rewritten
        validate_repository(repo / flavour)
        meta = read_manifest(repo / flavour)["metadata"]
        assert meta["heads_only_export"] and meta["checkpoint"] == str(ckpt2)
        assert meta["backbone_checkpoint"] == str(tiny_checkpoint)
        assert set(meta["parity"]) == set(_models(model2.graph))
    # The updated repository computes the new checkpoint's outputs.
    cpu = repo / "cpu"
    heads = {n: cpu / head_model(n) / "1" / "model.onnx" for n in model2.graph.names}
    video = np.random.default_rng(3).integers(0, 256, (2, 4, 32, 32, 3), dtype=np.uint8)
    got = OrtPipeline(model2.graph, cpu / BACKBONE / "1" / "model.onnx", heads).run(video)
    with torch.no_grad():
        want = model2(torch.from_numpy(video))
    for name in model2.graph.names:
        np.testing.assert_allclose(got[name], want[name].numpy(), atol=TOL, rtol=0)

    # A checkpoint whose adapters differ is refused, and nothing changes.
    model3 = MultiTaskModel.load_checkpoint(ckpt2 / "model.safetensors")
    with torch.no_grad():
        model3.trunk.adapter_parameters()[0].add_(0.01)
    ckpt3 = tmp_path / "ckpt3"
    ckpt3.mkdir()
    model3.save_checkpoint(ckpt3 / "model.safetensors")
    snapshot = _files(repo)
    with pytest.raises(
        ExportError, match=r"--only-heads refused.*differing: VMT-Adapter weights.*full export"
    ):
        export_checkpoint(ckpt3, repo, only_heads=True)
    assert _files(repo) == snapshot


# --------------------------------------------------------------------------------------------------
# TensorRT


@pytest.mark.skipif(tensorrt_unavailable() is not None, reason=str(tensorrt_unavailable()))
def test_tensorrt_engine_for_the_native_backbone(
    tiny_checkpoint: Path, tiny_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "repo"
    report = export_checkpoint(tiny_checkpoint, out, trt=True, data_root=tiny_data)
    assert report.tensorrt is not None and report.tensorrt["gate"]["passed"]
    assert (out / BACKBONE / "1" / "model.plan").is_file()
    assert load_configs(out)[BACKBONE].platform == "tensorrt_plan"
    info = check_engine_info(out / BACKBONE)
    assert info["gpu_name"] == current_engine_info()["gpu_name"] != "unknown"
    assert read_manifest(out)["metadata"]["precision"][BACKBONE] == "fp16-trt"


@pytest.mark.skipif(tensorrt_unavailable() is None, reason="a GPU with TensorRT is available")
def test_trt_without_a_gpu_exits_with_a_clear_message(
    tiny_checkpoint: Path, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["export", str(tiny_checkpoint), "--out", str(tmp_path / "r"), "--trt", "--data", str(tiny_data)]
    assert main(argv) == 2
    assert "--trt builds a TensorRT engine and needs an NVIDIA GPU" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_engine_info_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    info = {"tensorrt_version": "10.5.0", "gpu_name": "NVIDIA H100 80GB HBM3"}
    (tmp_path / "tensorrt.json").write_text(json.dumps(info))
    assert check_engine_info(tmp_path, current=dict(info))["gpu_name"] == info["gpu_name"]
    with pytest.raises(
        TensorRTError, match=r"built with TensorRT 10\.5\.0, this machine has 10\.3\.0.*'NVIDIA A10'"
    ):
        check_engine_info(tmp_path, current={"tensorrt_version": "10.3.0", "gpu_name": "NVIDIA A10"})
    with pytest.raises(TensorRTError, match=r"no tensorrt\.json"):
        check_engine_info(tmp_path / "missing")


def test_fp16_graph_for_tensorrt_keeps_layernorm_in_fp32(exported: Exported, tmp_path: Path) -> None:
    src = exported.out / "native" / BACKBONE / "1" / "model.onnx"
    dst = fp16_onnx(src, tmp_path / "fp16.onnx")
    model = onnx.load(str(dst))
    ln = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    assert ln and all(i.type.tensor_type.elem_type == onnx.TensorProto.UINT8 for i in model.graph.input)
    casts_to_fp32 = {n.output[0] for n in model.graph.node if n.op_type == "Cast"}
    assert all(n.input[0] in casts_to_fp32 for n in ln)  # fed through a Cast back to fp32
    video = np.random.default_rng(0).integers(0, 256, (2, 4, 32, 32, 3), dtype=np.uint8)
    want = ort_session(src).run(None, {"video": video})
    got = ort_session(dst).run(None, {"video": video})
    for w, g in zip(want, got, strict=True):
        assert g.dtype == np.float32 and np.abs(w - g).max() < 0.05


# --------------------------------------------------------------------------------------------------
# CLI errors


def test_cli_errors(tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    assert f"checkpoint {tmp_path / 'nope'} does not exist" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "is not a vmtl checkpoint directory: no model.safetensors" in capsys.readouterr().err
    assert main(["export", str(tiny_checkpoint), "--out", str(tmp_path / "r"), "--int8"]) == 2
    assert "--int8 needs --data DIR" in capsys.readouterr().err
    assert main(["export", str(tiny_checkpoint), "--out", str(tmp_path / "r"), "--only-heads"]) == 2
    assert "holds none" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_int8_falls_back_to_the_next_setting_the_gate_accepts(
    tiny_checkpoint: Path, tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = export_mod.quantize_model
    seen: list[tuple[str, bool]] = []

    def per_channel_breaks_count(src: Path, dst: Path, **kw: object) -> Path:
        path = real(src, dst, **kw)
        seen.append((str(kw["weight_type"]), bool(kw["per_channel"])))
        if Path(dst).name == "head_count.onnx" and kw["per_channel"]:
            _add_to_output(path, 100.0)
        return path

    monkeypatch.setattr(export_mod, "quantize_model", per_channel_breaks_count)
    out = tmp_path / "repo"
    report = export_checkpoint(tiny_checkpoint, out, int8=True, int8_heads=True, data_root=tiny_data)
    assert report.int8 is not None and report.int8.passed
    assert set(seen) == {("qint8", True), ("qint8", False)}  # stopped at the first accepted
    meta = read_manifest(out)["metadata"]["int8"]["details"]
    assert "QInt8 per-tensor" in meta["settings"]
    assert [t["setting"] for t in meta["tried"]] == ["QInt8 per-channel", "QInt8 per-tensor"]
    assert meta["tried"][0]["failed"] == ["count"] and meta["tried"][1]["passed"]


def test_fused_heads_export_parity_reports_and_only_heads(
    exported: Exported, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """The cpu default: every head's optimised graph inside the fused heads model, its parity record beside
    them; --only-heads keeps the layout and the backbone; the repository computes the checkpoint's outputs."""
    repo = tmp_path / "fused"
    report = export_checkpoint(tiny_checkpoint, repo)
    graph = exported.model.graph
    configs = load_configs(repo)
    assert HEADS_MODEL in configs and not any(head_model(n) in configs for n in graph.names)
    rows = {m.name: m for m in report.models}
    assert list(rows) == _models(graph)
    for name in graph.names:
        row = rows[head_model(name)]
        assert row.file == f"{HEADS_MODEL}/1/{head_model(name)}.onnx" and row.bytes > 0
        side = json.loads((repo / HEADS_MODEL / f"{head_model(name)}.parity.json").read_text())
        assert side["model"] == head_model(name) and side["max_abs"] < TOL
    assert Manifest.read(repo).models.fused_heads == HEADS_MODEL
    backbone = (repo / BACKBONE / "1" / "model.onnx").read_bytes()
    assert main(["export", str(tiny_checkpoint), "--out", str(repo), "--only-heads", "--quiet"]) == 0
    assert Manifest.read(repo).models.layout == "fused"
    assert (repo / BACKBONE / "1" / "model.onnx").read_bytes() == backbone
    video = np.random.default_rng(5).integers(0, 256, (2, 4, 32, 32, 3), dtype=np.uint8)
    got = LocalModel.load(repo).pipeline().run(video)
    with torch.no_grad():
        want = exported.model(torch.from_numpy(video))
    for name in graph.names:
        np.testing.assert_allclose(got[name], want[name].numpy(), atol=TOL, rtol=0)
    with pytest.raises(export_mod.UsageError, match="--heads fused is for the cpu flavour"):
        export_checkpoint(tiny_checkpoint, tmp_path / "n", flavour="native", heads="fused")


def test_batcher_delay_presets(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """--latency (the default): the backbone's batcher never waits; --throughput: it waits for company;
    --queue-delay-us: as given. The heads never wait."""
    for flag, want in (
        (["--throughput"], THROUGHPUT_QUEUE_DELAY_US),
        (["--queue-delay-us", "700"], 700),
        ([], 0),
    ):
        out = tmp_path / f"r{want}"
        assert main(["export", str(tiny_checkpoint), "--out", str(out), "--quiet", *flag]) == 0
        configs = load_configs(out)
        assert configs[BACKBONE].dynamic_batching.max_queue_delay_microseconds == want
        assert configs[HEADS_MODEL].dynamic_batching.max_queue_delay_microseconds == 0
    with pytest.raises(SystemExit):
        main(["export", str(tiny_checkpoint), "--out", str(tmp_path / "x"), "--latency", "--throughput"])


def test_trunk_taps_parity_is_relative_to_their_scale() -> None:
    """The trunk's raw hidden states (trunk_taps) reach far beyond 1: float32 rounding of a value near 1000
    is ~1e-4, not a mismatch; every other output is held to the plain max-abs."""
    want = np.array([[1000.0, -3.0]], np.float32)
    got = want + np.array([[1.2e-4, 0.0]], np.float32)
    assert export_mod._parity_error(TAPS_OUTPUT, want, got) < 1e-6
    assert export_mod._parity_error("feat_motion", want, got) > 1e-4
    small = np.array([[0.5]], np.float32)
    assert export_mod._parity_error(TAPS_OUTPUT, small, small + 2e-4) > 1e-4  # scale below 1: plain max-abs
