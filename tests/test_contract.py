"""The repository contract: the vmtl.json manifest round trip, legacy manifests, and readers that use it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from test_repository import toy_graph

from vmtl.cli import main as vmtl_main
from vmtl.contract import (
    FORMAT_VERSION,
    MANIFEST,
    TRITON_VERSION,
    BackboneVariant,
    ExportRecord,
    Manifest,
    ModelNames,
    RepositoryError,
    read_manifest,
)


def _every_field() -> Manifest:
    """A manifest with every field (and every export record field) set to a value that is not its default."""
    graph = toy_graph()
    record = ExportRecord(
        exporter="vmtl export",
        checkpoint="runs/b",
        backbone_checkpoint="runs/a",
        exported="2024-01-02T03:04:05+00:00",
        tasks=["a", "b", "c"],
        trunk_sha256="f" * 64,
        trunk_parts_sha256={"backbone": "1", "adapters": "2"},
        opset=18,
        precision={"backbone": "int8", "head_a": "fp32"},
        parity={"backbone": {"max_abs": 1e-5, "batch1": 1e-5, "batch2": 9e-6}},
        parity_tolerance=1e-4,
        parity_inputs="random uint8 clips",
        versions={"torch": "2.4", "onnx": "1.16", "onnxruntime": "1.19"},
        flops={"per": "clip", "trunk": 123, "heads": {"a": 1, "b": 2, "c": 3}},
        heads_only_export=True,
        optimization={"level": "extended (offline)", "onnxruntime": "1.19"},
        int8={"candidate": "int8", "passed": True, "tasks": []},
        tensorrt={"tensorrt_version": "10.3", "gate": {"passed": True}},
        flavours={"cpu": "../cpu", "native": "../native"},
        variants=[
            BackboneVariant("openvino", "bf16", "openvino/model.xml", 161.0, 615.0, 3.45, {"passed": True}),
            BackboneVariant("ort", "fp32", "model.onnx", 556.0, 2487.0, 1.0),
        ],
        refused=[BackboneVariant("openvino", "int8", reason="accuracy gate", gate={"passed": False})],
        measured_on={"cpu": "AMD EPYC", "flags": ["avx512_bf16"], "bf16": True},
        extra={"note": "kept although this version does not know it"},
    )
    return Manifest(
        graph=graph,
        flavour="native",
        max_batch_size=4,
        models=ModelNames(
            backbone="trunk",
            video_decode="decode",
            heads={n: f"h_{n}" for n in graph.names},
            clip_ensemble="clip",
            video_ensemble="video",
            fused_heads="all_heads",
            trunks={"video": "trunk", "image": "image_trunk"},
        ),
        entries=["backbone", "head_a", MANIFEST],
        metadata=record,
        triton_version="2.52.0",
        vmtl_version="9.9.9",
        created="2024-01-02T03:04:05+00:00",
        format_version=FORMAT_VERSION,
        extra={"site": "lab"},
    )


def _defaults(cls: type) -> dict[str, object]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def test_every_manifest_field_round_trips(tmp_path: Path) -> None:
    manifest = _every_field()
    # The sample covers every field: a field added to the schema without being written and read back
    # fails here until the sample sets it.
    for obj in (manifest, manifest.metadata, manifest.models):
        defaults = _defaults(type(obj))
        unset = [n for n, d in defaults.items() if getattr(obj, n) == d and n != "format_version"]
        assert not unset, f"{type(obj).__name__}: set {unset} in the sample"
    manifest.write(tmp_path)
    back = Manifest.read(tmp_path)
    assert back == manifest
    for f in dataclasses.fields(Manifest):
        assert getattr(back, f.name) == getattr(manifest, f.name), f.name
    for f in dataclasses.fields(ExportRecord):
        assert getattr(back.metadata, f.name) == getattr(manifest.metadata, f.name), f.name
    data = json.loads((tmp_path / MANIFEST).read_text())
    assert data["triton_version"] == "2.52.0" and data["format_version"] == FORMAT_VERSION
    assert data["metadata"]["flavours"] == {"cpu": "../cpu", "native": "../native"}
    assert data["metadata"]["note"] == manifest.metadata.extra["note"] and data["site"] == "lab"
    assert read_manifest(tmp_path) == data
    assert data["metadata"]["variants"][0] == {
        "runtime": "openvino",
        "precision": "bf16",
        "file": "openvino/model.xml",
        "ms_b1": 161.0,
        "ms_b4": 615.0,
        "speedup": 3.45,
        "gate": {"passed": True},
    }
    assert back.metadata.variants is not None and isinstance(back.metadata.variants[0], BackboneVariant)


def test_unset_record_fields_are_not_written(tmp_path: Path) -> None:
    Manifest(graph=toy_graph(), metadata=ExportRecord(trunk_sha256="abc")).write(tmp_path)
    data = json.loads((tmp_path / MANIFEST).read_text())
    assert data["metadata"] == {"trunk_sha256": "abc"}
    assert data["triton_version"] == TRITON_VERSION


def test_a_format_1_manifest_reads_with_its_legacy_fields(tmp_path: Path) -> None:
    legacy = {
        "format": "vmtl-model-repository",
        "format_version": 1,
        "flavor": "native",
        "max_batch_size": 2,
        "graph": toy_graph().to_dict(),
        "flavours": {"native": "../gpu"},  # once looked up at the top level
        "checkpoint": "runs/x",
        "metadata": {"trunk_sha256": "abc"},
        "entries": ["backbone", MANIFEST],
        "something_new": [1, 2],
    }
    (tmp_path / MANIFEST).write_text(json.dumps(legacy))
    m = Manifest.read(tmp_path)
    assert m.flavour == "native" and m.max_batch_size == 2 and m.format_version == 1
    assert m.triton_version is None  # not recorded: readers fall back to the bundled server's
    assert m.metadata.flavours == {"native": "../gpu"} and m.metadata.checkpoint == "runs/x"
    assert m.metadata.trunk_sha256 == "abc"
    assert m.models.head("c") == "head_c" and m.extra == {"something_new": [1, 2]}
    assert m.to_dict()["something_new"] == [1, 2]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "other"}, "not a vmtl repository manifest"),
        ({"format_version": FORMAT_VERSION + 1}, "upgrade vmtl"),
        ({"graph": {"tasks": "nope"}}, "cannot read the task graph"),
        ({"metadata": {"opset": "eighteen"}}, r"metadata\.opset must be int"),
        ({"max_batch_size": 0}, "max_batch_size must be >= 1"),
        ({"flavour": "gpu"}, "flavour must be one of"),
    ],
)
def test_a_bad_manifest_names_the_field(tmp_path: Path, change: dict, message: str) -> None:
    data = {**_every_field().to_dict(), **change}
    (tmp_path / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(RepositoryError, match=message):
        Manifest.read(tmp_path)


def test_a_missing_manifest_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match=r"not a vmtl model repository \(no vmtl.json\); write one"):
        Manifest.read(tmp_path)
    with pytest.raises(RepositoryError, match="does not exist"):
        Manifest.read(tmp_path / "missing")


# --------------------------------------------------------------------------------------------------
# vmtl serve --native reads the declared flavour and Triton version through the manifest


def _python_model(repo: Path, name: str = "m") -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "1" / "model.py").write_text("class TritonPythonModel:\n    pass\n")
    (repo / name / "config.pbtxt").write_text(f'name: "{name}"\nbackend: "python"\n')


def test_serve_native_finds_the_flavour_the_manifest_declares(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cpu, gpu = tmp_path / "cpu", tmp_path / "gpu"  # not ../native: only the declaration can find it
    for repo, flavour in ((cpu, "cpu"), (gpu, "native")):
        _python_model(repo)
        record = ExportRecord(flavours={"cpu": "../cpu", "native": "../gpu"})
        Manifest(graph=toy_graph(), flavour=flavour, metadata=record, triton_version="2.52.0").write(repo)
    assert vmtl_main(["serve", str(cpu), "--native"]) == 0
    out = capsys.readouterr().out
    assert f"{gpu.resolve()}:/models:ro" in out and "does not say it is the `native` flavour" not in out
    assert "nvcr.io/nvidia/tritonserver:24.11-py3" in out  # the manifest's triton_version 2.52


def test_serve_native_without_a_declaration_falls_back_as_before(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cpu = tmp_path / "cpu"
    _python_model(cpu)
    Manifest(graph=toy_graph(), flavour="cpu").write(cpu)
    assert vmtl_main(["serve", str(cpu), "--native"]) == 0
    out = capsys.readouterr().out
    assert "does not say it is the `native` flavour" in out and f"{cpu.resolve()}:/models:ro" in out
    assert "nvcr.io/nvidia/tritonserver:24.10-py3" in out  # the bundled server's release
