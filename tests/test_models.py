"""vmtl.models: trunk + adapters, heads, DLMs, stages, reports, HF checkpoints, ONNX parity, losses."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from vmtl.export.taps import TapFeatures
from vmtl.export.wrappers import export_modules, export_onnx, export_spec
from vmtl.models import (
    CheckpointError,
    ModelConfig,
    ModelConfigError,
    MultiTaskModel,
    build_loss,
)
from vmtl.models.backbone import pool_matrix
from vmtl.models.losses import generalized_box_iou, token_targets, track_loss
from vmtl.tasks import TaskGraph, postprocess

T, S = 4, 32
SPEC = {
    "name": "unit",
    "preprocess": {"num_frames": T, "size": S},
    "tasks": [
        {"name": "act", "kind": "classify", "labels": ["run", "walk", "jump"]},
        {"name": "attr", "kind": "tag", "labels": ["red", "big"], "auxiliaries": ["act"]},
        {"name": "loc", "kind": "localize", "labels": ["run", "walk"], "auxiliaries": ["act", "attr"]},
        {"name": "ident", "kind": "embed", "dim": 16},
        {"name": "count", "kind": "regress", "dim": 2, "scale": [2.0], "offset": [1.0]},
        {"name": "box", "kind": "track", "auxiliaries": ["act"]},
    ],
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread is faster, and immune to a busy machine; restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def graph() -> TaskGraph:
    return TaskGraph.from_dict(SPEC)


def make(graph: TaskGraph, seed: int = 0, **cfg: object) -> MultiTaskModel:
    torch.manual_seed(seed)
    return MultiTaskModel(graph, ModelConfig(**cfg))  # type: ignore[arg-type]


def video(batch: int = 2, seed: int = 0, frames: int = T, size: int = S) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, frames, size, size, 3), generator=g, dtype=torch.uint8)


def perturb_dlms(model: MultiTaskModel, seed: int = 1) -> None:
    """Give the zero-initialised DLM output layers weights, as stage-2 training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for h in model.heads.values():
            for d in h.dlms.values():
                d.fc2.weight.copy_(torch.randn(d.fc2.weight.shape, generator=g) * 0.5)


# -- shapes -----------------------------------------------------------------------------------------------


def test_shapes_every_kind(graph: TaskGraph) -> None:
    m = make(graph).eval()
    tp = T // 2
    with torch.no_grad():
        res = m.run(video())
    shapes = {n: tuple(o.shape) for n, o in res.outputs.items()}
    assert shapes == {
        "act": (2, 3),
        "attr": (2, 2),
        "loc": (2, tp, 3),
        "ident": (2, 16),
        "count": (2, 2),
        "box": (2, tp, 4),
    }
    for n in graph.names:
        assert tuple(res.features[n].shape) == (2, *m.feature_shape(n))
        assert tuple(res.reprs[n].shape) == (2, *m.repr_shape(n))
        assert tuple(res.outputs[n].shape[1:]) == m.output_shape(n)
    assert m.feature_shape("act") == (tp * 2 * 2, 128)  # feature_grid 2
    assert m.feature_shape("box") == (tp * 4 * 4, 128)  # track_grid 4 (= the full 4x4 patch grid here)
    box = res.outputs["box"]
    assert bool(((box >= 0) & (box <= 1)).all())
    assert torch.allclose(res.outputs["ident"].norm(dim=-1), torch.ones(2), atol=1e-5)
    # Outputs feed tasks.py's post-processing unchanged.
    assert postprocess(graph.task("act"), res.outputs["act"][0].numpy()).top[0].label in (
        "run",
        "walk",
        "jump",
    )
    # forward returns only what was asked, and runs the auxiliaries it needs (DLMs on by default).
    assert m.required_tasks(["loc"]) == ["act", "attr", "loc"]
    with torch.no_grad():
        out = m(video(), ["loc"])
    assert list(out) == ["loc"]
    assert torch.allclose(out["loc"], res.outputs["loc"], atol=1e-5)


def test_uint8_input_required(graph: TaskGraph) -> None:
    m = make(graph)
    with pytest.raises(TypeError, match="uint8"):
        m(video().float())
    with pytest.raises(ValueError, match=r"\[B, 4, 32, 32, 3\]"):
        m(video().permute(0, 1, 4, 2, 3))
    with pytest.raises(KeyError, match="nope"):
        m(video(), ["nope"])


def test_pool_matrix_is_average() -> None:
    w = pool_matrix(4, 2)
    x = torch.arange(16.0).reshape(4, 4)
    assert torch.allclose(
        w @ x.reshape(-1),
        torch.tensor([x[:2, :2].mean(), x[:2, 2:].mean(), x[2:, :2].mean(), x[2:, 2:].mean()]),
    )
    assert torch.allclose(pool_matrix(14, 4).sum(1), torch.ones(16))  # uneven bins still average


# -- adapters, frozen trunk, stages -----------------------------------------------------------------------


def test_stage1_step_keeps_trunk_frozen(graph: TaskGraph) -> None:
    m = make(graph)
    m.set_stage(1)
    m.train()
    assert m.required_tasks(["attr"]) == ["attr"]  # DLMs off: no auxiliary heads needed
    before = {k: v.detach().clone() for k, v in m.state_dict().items()}
    opt = torch.optim.AdamW(m.trainable_parameters(), lr=1e-2)
    loss = build_loss(graph.task("attr"))(
        m(video(), ["attr"])["attr"], torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    )
    loss.backward()
    opt.step()
    for p in m.trunk.backbone_parameters():
        assert p.grad is None and not p.requires_grad
    after = m.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert not any(k.startswith("trunk.") and ".adapter." not in k and "task_norms" not in k for k in changed)
    assert any(".adapter.up_weight" in k for k in changed)  # zero-init up-projection gets gradient first
    assert any(".extract.attr." in k for k in changed)
    assert any(k.startswith("heads.attr.") and ".dlms." not in k for k in changed)
    assert not any(".dlms." in k for k in changed)
    assert not any(k.startswith("heads.act.") for k in changed)
    # Frozen VideoMAE stays in eval mode (dropout off) while the model trains.
    assert not m.trunk.blocks[0].layer.training and m.trunk.blocks[0].adapter.training


def test_stage_switching(graph: TaskGraph) -> None:
    m = make(graph)
    backbone = {id(p) for p in m.trunk.backbone_parameters()}
    dlm = {id(p) for p in m.dlm_parameters()}
    trainable = lambda: {id(p) for p in m.trainable_parameters()}  # noqa: E731
    assert not trainable() & backbone  # fresh model: trunk frozen, DLMs on
    m.set_stage(0)
    assert backbone <= trainable() and not trainable() & dlm
    assert all(not h.dlm_enabled for h in m.heads.values())
    m.set_stage(1)
    assert not trainable() & backbone and not trainable() & dlm and trainable()
    m.set_stage(2)
    assert trainable() == dlm
    assert all(h.dlm_enabled for h in m.heads.values())
    assert m.required_tasks(["loc"]) == ["act", "attr", "loc"]
    m.train()
    assert not m.heads["loc"].blocks[0].training and m.heads["loc"].dlms["act"].training
    # A stage-2 step changes only DLM weights.
    perturb_dlms(m)
    before = {k: v.detach().clone() for k, v in m.state_dict().items()}
    opt = torch.optim.SGD(m.trainable_parameters(), lr=0.1)
    build_loss(graph.task("loc"))(m(video(), ["loc"])["loc"], torch.tensor([[0, 1], [2, 0]])).backward()
    opt.step()
    changed = {k for k, v in m.state_dict().items() if not torch.equal(before[k], v)}
    assert changed and all(k.startswith("heads.loc.dlms.") for k in changed)
    with pytest.raises(ValueError, match="stage must be"):
        m.set_stage(3)
    m.pretrained = True
    with pytest.raises(ValueError, match="pretrained"):
        m.set_stage(0)
    m.set_stage(0, force=True)


def test_adapters_disabled_and_lite(graph: TaskGraph) -> None:
    none = make(graph, adapter="none")
    assert none.parameter_report()["adapters"] == 0
    with torch.no_grad():
        f = none.trunk(video())
    # Same trunk tokens for every task (only the per-task LayerNorms could differ; untrained they do not).
    assert torch.allclose(f["act"], f["attr"])
    lite = make(graph, adapter="lite")
    a = lite.trunk.blocks[0].adapter
    assert a.up_weight is None and a.gate is not None
    # Lite starts as identity too (gate 0): same features as without adapters for the same seed.
    with torch.no_grad():
        fl = make(graph, adapter="lite").trunk(video())
        fn = make(graph, adapter="none").trunk(video())
    assert torch.allclose(fl["act"], fn["act"], atol=1e-6)


# -- DLM --------------------------------------------------------------------------------------------------


def test_dlm_on_off(graph: TaskGraph) -> None:
    m = make(graph).eval()
    head = m.heads["attr"]
    feats = torch.randn(2, *m.feature_shape("attr"))
    r1, r2 = torch.randn(2, *m.repr_shape("act")), torch.randn(2, *m.repr_shape("act"))
    with torch.no_grad():
        # Untrained DLM (zero last projection) == DLMs off: stage 2 starts from the stage-1 function.
        assert torch.equal(head(feats, [r1])[0], head(feats, [r2])[0])
        assert torch.allclose(head(feats, [r1])[0], head(feats, None, use_dlm=False)[0], atol=1e-6)
        perturb_dlms(m)
        assert not torch.allclose(head(feats, [r1])[0], head(feats, [r2])[0], atol=1e-4)
        with pytest.raises(ValueError, match="auxiliary"):
            head(feats, [])
    plain = make(graph, dlm=False).eval()
    assert plain.heads["attr"].aux_names == () and not plain.has_dlms()
    assert plain.required_tasks(["loc"]) == ["loc"]
    with torch.no_grad():
        h = plain.heads["attr"]
        assert torch.equal(h(feats, [r1])[0], h(feats, [r2])[0])
    assert export_spec(plain)["heads"]["loc"]["inputs"] == [
        {"name": "features", "dtype": "float32", "shape": [8, 128]}
    ]


def test_dlm_switches(graph: TaskGraph) -> None:
    s = make(graph, dlm_combine="sum")
    assert s.heads["loc"].num_prompt_tokens == 8 and make(graph).heads["loc"].num_prompt_tokens == 16
    t = make(graph, dlm_layer="trunk")  # reuse a frozen trunk block: head width = trunk width
    dlm = t.heads["attr"].dlms["act"]
    assert t.cfg.head_dim == 128 and dlm.frozen_layer
    assert all(not p.requires_grad for p in dlm.layer.parameters())
    rep = t.parameter_report()
    assert rep["dlm_frozen"] > 0 and rep["dlms_total"] == sum(p.numel() for p in t.dlm_parameters())
    t.set_stage(2)
    assert {id(p) for p in t.trainable_parameters()} == {id(p) for p in t.dlm_parameters()}
    with torch.no_grad():
        assert t(video(), ["loc"])["loc"].shape == (2, 2, 3)
    with pytest.raises(ModelConfigError, match="head_dim"):
        make(graph, dlm_layer="trunk", head_dim=64)


# -- reports ----------------------------------------------------------------------------------------------


def test_parameter_report_by_hand(graph: TaskGraph) -> None:
    m = make(graph)
    rep = m.parameter_report()
    d, r, n_layers, n_tasks, n_taps = 128, 32, 3, len(graph.names), 2
    hf = sum(
        p.numel() for n, p in m.trunk.named_parameters() if ".adapter." not in n and "task_norms" not in n
    )
    assert rep["trunk"] == hf
    assert rep["adapters"] == n_layers * (d * r + r + r * d + d)
    assert rep["task_specific"] == n_taps * n_tasks * 2 * r + n_tasks * 2 * d
    assert rep["heads_total"] == sum(rep["heads"].values())
    for name, h in m.heads.items():
        assert rep["heads"][name] == sum(
            p.numel() for n, p in h.named_parameters() if not n.startswith("dlms.")
        )
    assert set(rep["dlms"]) == {"attr", "loc", "box"}
    assert rep["dlms"]["loc"] == 2 * rep["dlms"]["attr"]
    assert rep["total"] == sum(p.numel() for p in m.parameters())
    assert (
        rep["total"]
        == rep["trunk"] + rep["adapters"] + rep["task_specific"] + rep["heads_total"] + rep["dlms_total"]
    )
    assert math.isclose(rep["adapter_share"], (rep["adapters"] + rep["task_specific"]) / rep["trunk"])
    lite = make(graph, adapter="lite").parameter_report()
    assert lite["adapters"] == n_layers * (d * r + r + d + 1)


def test_flops_heads_under_trunk(graph: TaskGraph) -> None:
    f = make(graph).flops_report()
    assert f["trunk"] > 0 and all(v > 0 for v in f["heads"].values())
    assert 0 < f["trunk_adapters"] < f["trunk"]
    assert f["heads_total"] < f["trunk"]
    assert set(f["dlms"]) == {"attr", "loc", "box"} and all(
        0 < f["dlms"][n] < f["heads"][n] for n in f["dlms"]
    )


# -- HF checkpoints ---------------------------------------------------------------------------------------


def _write_hf(
    path: Path,
    *,
    cls: str = "VideoMAEModel",
    frames: int = T,
    size: int = S,
    mean_pooling: bool = True,
    mean: tuple[float, ...] = (0.5, 0.4, 0.3),
    std: tuple[float, ...] = (0.2, 0.25, 0.3),
) -> torch.nn.Module:
    import transformers

    cfg = transformers.VideoMAEConfig(
        image_size=size,
        patch_size=8,
        num_frames=frames,
        tubelet_size=2,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        use_mean_pooling=mean_pooling,
        num_labels=3,
    )
    torch.manual_seed(3)
    model = getattr(transformers, cls)(cfg).eval()
    model.save_pretrained(str(path))
    (path / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": list(mean), "image_std": list(std)})
    )
    return model


@pytest.mark.parametrize(
    ("cls", "mean_pooling"),
    [
        ("VideoMAEModel", True),
        ("VideoMAEModel", False),
        ("VideoMAEForVideoClassification", True),
        ("VideoMAEForPreTraining", True),
    ],
)
def test_hf_checkpoint_identity(graph: TaskGraph, tmp_path: Path, cls: str, mean_pooling: bool) -> None:
    hf = _write_hf(tmp_path, cls=cls, mean_pooling=mean_pooling)
    hf_model = getattr(hf, "videomae", hf)
    with pytest.warns(
        UserWarning, match="the trunk uses the checkpoint's"
    ):  # mean/std differ from the graph's
        m = MultiTaskModel(graph, ModelConfig(checkpoint=str(tmp_path)))
    assert m.cfg.backbone == "hf" and m.cfg.hidden_size == 64 and m.cfg.num_layers == 2 and m.pretrained
    assert m.cfg.mean == (0.5, 0.4, 0.3) and m.cfg.final_norm == (not mean_pooling)
    v = video()
    pixels = v.permute(0, 1, 4, 2, 3).float() / 255.0
    pixels = (pixels - torch.tensor(m.cfg.mean).view(1, 1, 3, 1, 1)) / torch.tensor(m.cfg.std).view(
        1, 1, 3, 1, 1
    )
    with torch.no_grad():
        ref = hf_model(pixels, output_hidden_states=True)
        ours = m.trunk.last_hidden_state(v)
        feats = m.trunk(v)
    assert torch.allclose(ours, ref.last_hidden_state, atol=1e-5)
    # Task features: per-task LN of the mean of the tapped blocks (here both blocks), pooled 4x4 -> 2x2.
    taps = (ref.hidden_states[1] + ref.hidden_states[2]) / 2
    norm = m.trunk.task_norms["act"]
    expect = m.trunk.pool(
        "act", torch.nn.functional.layer_norm(taps, (64,), norm.weight, norm.bias, norm.eps)
    )
    assert torch.allclose(feats["act"], expect, atol=1e-5)
    if cls == "VideoMAEForVideoClassification":  # task norms start from the checkpoint's fc_norm
        assert torch.equal(norm.weight, hf.fc_norm.weight)
    with pytest.raises(ValueError, match="pretrained"):
        m.set_stage(0)


def test_bad_checkpoints(graph: TaskGraph, tmp_path: Path) -> None:
    def build(p: Path) -> MultiTaskModel:
        return MultiTaskModel(graph, ModelConfig(checkpoint=str(p)))

    with pytest.raises(CheckpointError, match=r"not found.*save_pretrained"):
        build(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        build(empty)
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 64}))
    with pytest.raises(CheckpointError, match="model_type is 'bert', expected 'videomae'"):
        build(bert)
    noweights = tmp_path / "noweights"
    _write_hf(noweights)
    (noweights / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no weights file; expected one of model\.safetensors"):
        build(noweights)
    frames = tmp_path / "frames"
    _write_hf(frames, frames=8)
    with pytest.raises(
        CheckpointError, match=r"num_frames=8, image_size=32.*num_frames=4, size=32.*num_frames: 8"
    ):
        build(frames)
    corrupt = tmp_path / "corrupt"
    _write_hf(corrupt)
    (corrupt / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read the weights"):
        build(corrupt)
    wrong = tmp_path / "wrong"
    _write_hf(wrong)
    from safetensors.torch import load_file, save_file

    sd = load_file(str(wrong / "model.safetensors"))
    save_file({k: v for k, v in sd.items() if "encoder.layer.1." not in k}, str(wrong / "model.safetensors"))
    with pytest.raises(CheckpointError, match="lack"):
        build(wrong)


# -- checkpoints and export -------------------------------------------------------------------------------


def test_save_load_checkpoint_lite(graph: TaskGraph, tmp_path: Path) -> None:
    m = make(graph, adapter="lite", tap_layers=(-1,)).eval()
    perturb_dlms(m)
    with torch.no_grad():
        for b in m.trunk.blocks:
            b.adapter.gate.fill_(0.5)  # type: ignore[union-attr]
        ref = m(video())
    path = m.save_checkpoint(tmp_path / "model.safetensors", {"step": "7"})
    m2 = MultiTaskModel.load_checkpoint(path).eval()
    assert m2.cfg == m.cfg and m2.graph.to_dict() == graph.to_dict()
    with torch.no_grad():
        out = m2(video())
    for n in graph.names:
        assert torch.allclose(out[n], ref[n], atol=1e-6)
    assert ModelConfig.from_dict(json.loads(json.dumps(m.cfg.to_dict()))) == m.cfg
    with pytest.raises(ModelConfigError, match="unknown ModelConfig keys"):
        ModelConfig.from_dict({"nope": 1})
    with pytest.raises(CheckpointError, match="not a vmtl checkpoint"):
        from safetensors.torch import save_file

        save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
        MultiTaskModel.load_checkpoint(tmp_path / "other.safetensors")


def test_onnx_parity_trunk_and_dlm_head(graph: TaskGraph, tmp_path: Path) -> None:
    import onnxruntime as ort

    m = make(graph)
    perturb_dlms(m)
    with torch.no_grad():  # non-identity adapters so the adapter path is exercised
        for b in m.trunk.blocks:
            b.adapter.up_weight.normal_(0, 0.05)  # type: ignore[union-attr]
    trunk, heads = export_modules(m)
    so = ort.SessionOptions()
    so.log_severity_level = 3

    path = export_onnx(trunk, tmp_path / "trunk.onnx")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["video"] and sess.get_inputs()[0].type == "tensor(uint8)"
    # feat_<task> per task, then trunk_taps (what heads of tasks added later read; vmtl.export.taps)
    assert [o.name for o in sess.get_outputs()] == [*(f"feat_{n}" for n in graph.names), "trunk_taps"]
    assert [o.shape for o in sess.get_outputs()][:-1] == [["batch", *m.feature_shape(n)] for n in graph.names]
    (v,) = trunk.example_inputs(batch=3, seed=5)  # batch 3 != export batch 2: dynamic axis
    got = sess.run(None, {"video": v.numpy()})
    with torch.no_grad():
        want = trunk(v)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w.numpy(), atol=1e-4, rtol=0)
    with torch.no_grad():  # every task's features, recomputed from trunk_taps alone
        for n, w in zip(graph.names, want, strict=False):
            np.testing.assert_allclose(
                TapFeatures(m.trunk, n)(want[-1]).numpy(), w.numpy(), atol=1e-5, rtol=0
            )

    head = heads["loc"]  # two auxiliaries -> two DLMs
    assert head.input_names == ["features", "repr_act", "repr_attr"]
    path = export_onnx(head, tmp_path / "head_loc.onnx")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == head.input_names
    assert [o.name for o in sess.get_outputs()] == ["output", "repr"]
    assert [o.shape for o in sess.get_outputs()] == [["batch", 2, 3], ["batch", *m.repr_shape("loc")]]
    inputs = head.example_inputs(batch=3, seed=6)
    got = sess.run(None, {n: x.numpy() for n, x in zip(head.input_names, inputs, strict=True)})
    with torch.no_grad():
        want = head(*inputs)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w.numpy(), atol=1e-4, rtol=0)
    # The export copies do not disturb the model.
    assert any(p.requires_grad for p in m.parameters())


def test_onnx_parity_eager_lite_trunk(graph: TaskGraph, tmp_path: Path) -> None:
    import onnxruntime as ort

    m = make(graph, attn_implementation="eager", adapter="lite", tap_layers=(-1,), feature_grid=0)
    with torch.no_grad():
        for b in m.trunk.blocks:
            b.adapter.gate.fill_(1.0)  # type: ignore[union-attr]
    trunk, _ = export_modules(m)
    sess = ort.InferenceSession(
        str(export_onnx(trunk, tmp_path / "trunk.onnx")), providers=["CPUExecutionProvider"]
    )
    (v,) = trunk.example_inputs(batch=1, seed=2)
    with torch.no_grad():
        want = trunk(v)
    *feats, taps = sess.run(None, {"video": v.numpy()})
    for g, w in zip(feats, want[:-1], strict=True):
        assert g.shape == (1, T // 2 * 16, 128)  # feature_grid 0: the full 4x4 patch grid
        np.testing.assert_allclose(g, w.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(taps, want[-1].numpy(), atol=1e-4, rtol=0)  # trunk_taps


# -- losses -----------------------------------------------------------------------------------------------


def test_losses_every_kind(graph: TaskGraph) -> None:
    m = make(graph)
    out = m(video(batch=4))
    targets = {
        "act": torch.tensor([0, 1, 2, 1]),
        "attr": torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]]),
        "loc": torch.tensor([[0, 1], [2, 0], [1, -100], [0, 0]]),
        "ident": torch.tensor([0, 1, 0, 2]),
        "count": torch.tensor([[3.0, 1.0], [5.0, 1.0], [1.0, 1.0], [7.0, 3.0]]),
        "box": torch.tensor([[[0.1, 0.1, 0.5, 0.5]] * 2] * 4),
    }
    total = 0.0
    for n in graph.names:
        loss = build_loss(graph.task(n), num_identities=3)(out[n], targets[n])
        assert loss.ndim == 0 and torch.isfinite(loss), n
        total = total + loss
    total.backward()  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="num_identities"):
        build_loss(graph.task("ident"))
    sup = build_loss(graph.task("ident"), embed_loss="supcon")(out["ident"].detach(), targets["ident"])
    assert torch.isfinite(sup)


def test_box_losses_and_token_targets() -> None:
    b = torch.tensor([[0.1, 0.2, 0.6, 0.7]])
    assert torch.allclose(generalized_box_iou(b, b), torch.ones(1))
    assert torch.allclose(generalized_box_iou(b, b[:, [2, 3, 0, 1]]), torch.ones(1))  # corner order-free
    far = torch.tensor([[0.8, 0.8, 0.9, 0.9]])
    assert generalized_box_iou(b, far).item() < 0
    pred = torch.tensor([[[0.1, 0.2, 0.6, 0.7], [0.0, 0.0, 1.0, 1.0]]])
    target = torch.tensor([[[0.1, 0.2, 0.6, 0.7], [float("nan")] * 4]])
    assert track_loss(pred, target).item() == pytest.approx(0.0, abs=1e-6)  # NaN rows = absent
    assert track_loss(pred, target, torch.tensor([[False, False]])).item() == 0.0
    bounds = torch.tensor([[0.0, 1.0], [1.0, 2.0], [2.0, 3.0], [3.0, 4.0]])
    assert token_targets([(0.9, 2.6, 1)], bounds).tolist() == [0, 2, 2, 0]
