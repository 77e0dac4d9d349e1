"""Backbone runtimes x precisions: `vmtl export --precision`, the gate per variant, the choice per machine.

On a CPU without bf16 (this project's CI machines are AVX2-only AMD EPYCs) bf16 cannot be gated and is
refused; the bf16 choice of the host is tested by forcing the capability check (``VMTL_CPU_FLAGS``).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from vmtl.cli import main
from vmtl.contract import (
    BACKBONE,
    PARAM_VARIANTS,
    Manifest,
    RepositoryError,
    config_params,
    load_configs,
    validate_repository,
)
from vmtl.export import precision as precision_mod
from vmtl.export.onnx import UsageError, export_checkpoint
from vmtl.export.quantize import compare_metrics, evaluate_pipeline, load_gate_data
from vmtl.models.multitask import MultiTaskModel
from vmtl.runtime import LocalModel, OrtPipeline, ort_session
from vmtl.runtime_openvino import (
    ENV_CPU_FLAGS,
    ENV_PRECISION,
    ENV_RUNTIME,
    CpuCaps,
    OvSession,
    choose_variant,
    cpu_capabilities,
    host_backbone,
    openvino_unavailable,
)

pytestmark = pytest.mark.skipif(openvino_unavailable() is not None, reason=str(openvino_unavailable()))

AVX2 = CpuCaps("test CPU", frozenset({"avx2"}))
BF16 = CpuCaps("test CPU", frozenset({"avx2", "avx512_bf16", "avx512_vnni"}))
VARIANTS = [
    {"runtime": "openvino", "precision": "bf16", "file": "openvino/model.xml"},
    {"runtime": "openvino", "precision": "int8", "file": "openvino/model_int8.xml"},
    {"runtime": "openvino", "precision": "fp32", "file": "openvino/model.xml"},
    {"runtime": "ort", "precision": "fp32", "file": "model.onnx"},
]


@dataclass
class Exported:
    repo: Path
    manifest: Manifest
    params: dict[str, str]


@pytest.fixture(scope="module")
def exported(tiny_checkpoint: Path, tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """The tiny checkpoint exported with every precision on both runtimes."""
    repo = tmp_path_factory.mktemp("precision") / "repo"
    export_checkpoint(
        tiny_checkpoint,
        repo,
        data_root=tiny_data,
        precisions=("fp32", "bf16", "int8"),
        runtimes=("ort", "openvino"),
    )
    params = config_params(load_configs(repo)[BACKBONE])
    return Exported(repo, Manifest.read(repo), params)


def _backbone_dir(repo: Path) -> Path:
    return repo / BACKBONE / "1"


# --------------------------------------------------------------------------------------------------
# Export


def test_vmtl_json_says_what_was_accepted_and_what_was_refused(exported: Exported) -> None:
    meta = exported.manifest.metadata
    assert meta.variants and meta.refused is not None and meta.measured_on
    accepted = {(v.runtime, v.precision) for v in meta.variants}
    assert {("ort", "fp32"), ("openvino", "fp32")} <= accepted
    latencies = [v.ms_b1 for v in meta.variants]
    assert all(x is not None and x > 0 for x in latencies) and latencies == sorted(latencies)  # fastest first
    for v in meta.variants:
        assert (_backbone_dir(exported.repo) / v.file).is_file(), v
        assert v.gate and v.gate["passed"]
    refused = {(v.runtime, v.precision): v for v in meta.refused}
    assert "no bf16 CPU kernels" in (refused["ort", "bf16"].reason or "")
    if not cpu_capabilities().bf16:
        assert "not gated" in (refused["openvino", "bf16"].reason or "")
    # every variant considered is either accepted or refused, once
    considered = accepted | set(refused)
    assert considered == {(r, p) for r in ("ort", "openvino") for p in ("fp32", "bf16", "int8")}
    assert not accepted & set(refused)
    # the config lists the same variants in the same order, and the repository validates with their files
    listed = json.loads(exported.params[PARAM_VARIANTS])
    assert [(v["runtime"], v["precision"], v["file"]) for v in listed] == [
        (v.runtime, v.precision, v.file) for v in meta.variants
    ]
    validate_repository(exported.repo)


def test_every_accepted_variant_answers_like_fp32_within_the_gate(
    exported: Exported, tiny_checkpoint: Path, tiny_data: Path
) -> None:
    model = LocalModel.load(exported.repo)
    graph = model.graph
    tokens = MultiTaskModel.load_checkpoint(tiny_checkpoint / "model.safetensors").temporal_tokens
    clipsets = load_gate_data(tiny_data, graph, tokens)
    heads = {n: ort_session(f) for n, f in model.heads.items()}
    reference = evaluate_pipeline(
        OrtPipeline.from_sessions(graph, ort_session(model.trunk), heads), graph, clipsets
    )
    clip = next(iter(clipsets.values())).frames[:2]
    want = OrtPipeline.from_sessions(graph, ort_session(model.trunk), heads).trunk_outputs(clip)
    for v in exported.manifest.metadata.variants or []:
        hosted = host_backbone(
            _backbone_dir(exported.repo),
            exported.params,
            environ={ENV_RUNTIME: v.runtime, ENV_PRECISION: v.precision},
        )
        assert (hosted.runtime, hosted.precision) == (v.runtime, v.precision)
        pipe = OrtPipeline.from_sessions(graph, hosted.session, heads)
        gate = compare_metrics(graph, reference, evaluate_pipeline(pipe, graph, clipsets), name=v.precision)
        assert gate.passed, f"{v.runtime} {v.precision}:\n{gate.table()}"
        got = pipe.trunk_outputs(clip)
        worst = max(float(np.abs(got[k] - want[k]).max() / np.abs(want[k]).max()) for k in want)
        assert worst < (1e-4 if v.precision == "fp32" else 0.2), (v, worst)


def test_a_refused_precision_leaves_the_repository_serving_what_passed(
    tiny_checkpoint: Path, tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = precision_mod.compare_metrics

    def strict_for_int8(*args, **kwargs):  # the int8 candidates fail the gate
        result = real(*args, **kwargs)
        if kwargs.get("name", "").endswith("int8"):
            result.tasks[0].candidate, result.tasks[0].ok = -1.0, False
        return result

    monkeypatch.setattr(precision_mod, "compare_metrics", strict_for_int8)
    repo = tmp_path / "repo"
    report = export_checkpoint(
        tiny_checkpoint, repo, data_root=tiny_data, precisions=("fp32", "int8"), runtimes=("ort", "openvino")
    )
    assert report.precisions is not None
    assert "REFUSED: accuracy gate" in report.summary()
    meta = Manifest.read(repo).metadata
    assert {(v.runtime, v.precision) for v in meta.variants or []} == {("ort", "fp32"), ("openvino", "fp32")}
    refused = {(v.runtime, v.precision): v for v in meta.refused or []}
    assert set(refused) == {("ort", "int8"), ("openvino", "int8")}
    assert all(v.gate and v.gate["passed"] is False and v.gate["tasks"] for v in refused.values())
    backbone = _backbone_dir(repo)
    assert (
        not (backbone / "model_int8.onnx").exists()
        and not (backbone / "openvino" / "model_int8.xml").exists()
    )
    validate_repository(repo)
    params = config_params(load_configs(repo)[BACKBONE])
    hosted = host_backbone(backbone, params, caps=AVX2, environ={})
    assert hosted.precision == "fp32"
    with pytest.raises(ValueError, match="no accepted backbone variant matches int8"):
        host_backbone(backbone, params, caps=AVX2, environ={ENV_PRECISION: "int8"})


def test_precision_needs_data_and_the_cpu_flavour(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--precision needs --data"):
        export_checkpoint(tiny_checkpoint, tmp_path / "a", precisions=("fp32", "bf16"))
    assert main(["export", str(tiny_checkpoint), "--out", str(tmp_path / "b"), "--precision", "fp64"]) == 2


# --------------------------------------------------------------------------------------------------
# The choice per machine


def test_the_host_runs_bf16_where_the_cpu_has_it_and_falls_back_where_not() -> None:
    chosen, why = choose_variant(VARIANTS, BF16)
    assert (chosen["runtime"], chosen["precision"]) == ("openvino", "bf16")
    chosen, why = choose_variant(VARIANTS, AVX2)
    assert (chosen["runtime"], chosen["precision"]) == ("openvino", "int8")
    assert "skipped openvino/bf16 (not native on this CPU)" in why
    chosen, _ = choose_variant(VARIANTS, AVX2, installed=("ort",))
    assert (chosen["runtime"], chosen["precision"]) == ("ort", "fp32")
    # explicit settings win; an explicit bf16 on a CPU without it is an error, not a silent f32 run
    chosen, why = choose_variant(VARIANTS, BF16, runtime="ort")
    assert chosen["runtime"] == "ort" and why.startswith("explicit")
    assert choose_variant(VARIANTS, BF16, precision="fp32")[0]["runtime"] == "openvino"
    with pytest.raises(ValueError, match="no native bf16"):
        choose_variant(VARIANTS, AVX2, precision="bf16")
    with pytest.raises(ValueError, match="must be auto or one of"):
        choose_variant(VARIANTS, AVX2, precision="fp16")


def test_forced_cpu_flags_drive_the_capability_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_CPU_FLAGS, "amx_bf16,amx_int8")
    caps = cpu_capabilities()
    assert caps.bf16 and caps.vnni and "forced" in caps.model
    monkeypatch.setenv(ENV_CPU_FLAGS, "avx2")
    assert not cpu_capabilities().bf16


def test_the_same_repository_serves_bf16_or_fp32_by_cpu(exported: Exported, tmp_path: Path) -> None:
    """A repository exported on a bf16 machine (its config listing bf16 first) on this machine: forced bf16
    flags choose bf16 (OpenVINO compiles it, running f32 here); the real flags fall back, with no edit."""
    repo = tmp_path / "repo"
    shutil.copytree(exported.repo, repo)
    params = dict(exported.params)
    listed = json.loads(params[PARAM_VARIANTS])
    ov_fp32 = next(v for v in listed if (v["runtime"], v["precision"]) == ("openvino", "fp32"))
    params[PARAM_VARIANTS] = json.dumps([{**ov_fp32, "precision": "bf16"}, *listed])
    backbone = _backbone_dir(repo)
    hosted = host_backbone(backbone, params, caps=BF16, environ={})
    assert (hosted.runtime, hosted.precision) == ("openvino", "bf16")
    assert isinstance(hosted.session, OvSession)
    assert hosted.runs_as == ("bf16" if cpu_capabilities().bf16 else "f32")
    fallback = host_backbone(backbone, params, caps=AVX2, environ={})
    assert fallback.precision != "bf16" and "skipped openvino/bf16" in fallback.why
    forced = host_backbone(backbone, params, caps=AVX2, environ={ENV_RUNTIME: "ort", ENV_PRECISION: "fp32"})
    assert (forced.runtime, forced.precision) == ("ort", "fp32")


def test_ov_session_answers_like_ort_with_the_same_errors(exported: Exported) -> None:
    model = LocalModel.load(exported.repo)
    ov = OvSession(_backbone_dir(exported.repo) / "openvino" / "model.xml", precision="fp32", threads=1)
    ort = ort_session(model.trunk)
    assert [i.name for i in ov.get_inputs()] == ["video"]
    assert {o.name for o in ov.get_outputs()} == {o.name for o in ort.get_outputs()}
    rng = np.random.default_rng(0)
    t, s = model.graph.preprocess.num_frames, model.graph.preprocess.size
    for batch in (1, 3):
        video = rng.integers(0, 256, (batch, t, s, s, 3), dtype=np.uint8)
        names = [o.name for o in ort.get_outputs()]
        for a, b in zip(ort.run(names, {"video": video}), ov.run(names, {"video": video}), strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="no output"):
        ov.run(["nope"], {"video": video})


def test_validation_names_a_missing_variant_file(exported: Exported, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(exported.repo, repo)
    listed = json.loads(exported.params[PARAM_VARIANTS])
    victim = next(v for v in listed if v["runtime"] == "openvino")
    (_backbone_dir(repo) / victim["file"]).unlink()
    with pytest.raises(RepositoryError, match="missing model file"):
        validate_repository(repo)


def test_local_engine_and_bench_baseline_run_the_hosts_choice(
    exported: Exported, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vmtl.runtime_openvino import host_pipeline, local_pipeline, planned_choices

    model = LocalModel.load(exported.repo)
    monkeypatch.setenv(ENV_RUNTIME, "openvino")
    monkeypatch.setenv(ENV_PRECISION, "fp32")
    pipe, hosted = local_pipeline(model, ["motion"], threads=1)
    assert hosted is not None and (hosted.runtime, hosted.precision) == ("openvino", "fp32")
    pre = model.graph.preprocess
    clip = np.zeros((1, pre.num_frames, pre.size, pre.size, 3), np.uint8)
    want = model.pipeline(["motion"], threads=1).run(clip, ["motion"])["motion"]
    np.testing.assert_allclose(pipe.run(clip, ["motion"])["motion"], want, rtol=1e-4, atol=1e-4)
    assert host_pipeline(model)[1].runtime == "openvino"
    assert planned_choices(exported.repo)[BACKBONE].startswith("openvino fp32")
