"""Decode, sample and resize video clips with PyAV (numpy + PyAV only; no torch, no onnxruntime).

Public API: :func:`probe`, :func:`read_clip`, :func:`sliding_windows`, :func:`window_stream`,
:func:`window_spans`, :func:`parse_sampling`, :class:`VideoInfo`, :class:`Clip`, :class:`Sampling`,
:class:`WindowStream` and :class:`VideoError`.

How a clip is read
------------------
1. **Index.** The video stream is demuxed once *without decoding* (cheap: ~20 ms for a 60 s 720p file).
   The packets give every frame's presentation timestamp (pts) and the keyframes. Sampling uses these
   timestamps, never the header's frame count or duration, which containers often get wrong. The
   streaming decoder (:func:`window_stream`) indexes as it goes instead: a second demuxer reads only as
   far as the next window needs (every packet after one with decode timestamp d shows at or after d, so
   once the last packet read has d past the window's end, the window's frames are all indexed), which
   selects the same frames as the whole index; files whose packets lack decode timestamps are indexed
   whole first.
2. **Select.** Target frames are chosen on the time axis ``[start, end)``; time 0 is the first frame's
   presentation time.

   * ``uniform`` (TSN-style, test mode): the range is cut into T equal segments and the frame shown at
     each segment's centre is taken (the last frame whose pts is <= the centre, kept inside the range).
   * dense ``TxIxN`` (MMAction2 ``SampleFrames`` with clip_len=T, frame_interval=I, num_clips=N): the
     frames in the range are cut into N equal segments; clip j takes T frames every I frames centred on
     segment j's centre (shifted to stay inside the range; clamped, i.e. repeated, when the range is
     shorter than the clip). The N clips are concatenated, so ``num_frames`` must equal T*N.

   With fewer frames than requested, frames repeat (nearest); timestamps stay those of the frames shown.
3. **Decode.** Targets are decoded in presentation order. Before each target the reader either keeps
   decoding forward or seeks (``container.seek`` to the keyframe at or before the target, then decodes
   forward to it). **Rule:** seek when the keyframe before the next target lies at least
   ``SEEK_MIN_SKIP`` (16) frames beyond the decoder's current position, i.e. the jump crosses a GOP
   boundary and skips enough frames to pay for flushing the decoder; otherwise decode forward. So a
   one-GOP clip (bigbuckbunny) or dense targets decode sequentially, while targets spread over a long
   clip with a 2 s GOP seek. Once the first ``VALIDATE_FRAMES`` (16) decoded frames have matched the
   index, two savings switch on: packets that are not targets are sent with ``skip_frame="NONREF"``
   (h264/hevc/mpeg-1/2/4: only frames nothing references are dropped, so targets stay bit-exact), and
   when a seek (or nothing) follows a target the decoder is drained right after the target's packet
   instead of being fed the rest of the GOP. The decoder uses threads (``thread_type="AUTO"``).
4. **Verify, else fall back.** Every decoded frame must carry a pts from the index, in order (exactly
   consecutive while validating, increasing afterwards). If that fails in frames decoded after a seek
   (it landed past its keyframe, or timestamps change after seeking, as in MPEG-PS), seeking is
   switched off for the file and it is decoded forward from the start instead. If it fails otherwise
   (a target that never decodes, a decode error, a corrupt packet or frame, a frame without pts,
   timestamps out of order: containers that stamp decode order, packed B-frames, pts-less raw
   streams), the reader switches to **ordinal mode**: one sequential pass decodes everything and
   records what actually decodes, targets are chosen again on that list, and a second sequential pass
   collects them, each frame identified by the decode-order number of its packet (carried through the
   decoder as the packet's ``opaque``). Frames from a decode error up to the next keyframe are left out
   (they reference a broken picture; error concealment would show other frames' content). Frames are
   never taken from the wrong place silently. In ordinal mode timestamps are the decoded frames' pts,
   sorted into output order when the container stamped decode order (decoders emit presentation
   order), or ``k / fps`` when pts are missing.
5. **Resize.** PyAV's reformat (``VideoReformatter.reformat``, what ``frame.reformat`` calls, reusing
   one swscale context; bilinear, straight to rgb24) scales the shorter side to S (the longer side to
   S plus an even margin, so the crop is centred exactly); the centre S x S is sliced out. ``Clip.crop`` gives that square in source pixels, so a normalised
   box ``(bx, by)`` inside the crop maps to ``x = x0 + bx * side``, ``y = y0 + by * side``.
   Rotation side data and non-square sample aspect ratios are ignored (decoded pixel grid).

Every bad input (missing path, empty, truncated, corrupt, random bytes, still images, audio-only,
non-media) raises :class:`VideoError`, whose message starts with the input (its path, or ``<N bytes>``)
and names the cause. Bad arguments (sizes, windows, sampling specs) raise ``ValueError``.
"""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Union

import av
import av.error
import numpy as np
from av.video.reformatter import VideoReformatter

from vmtl.upload_buffer import UploadBuffer, UploadError

__all__ = [
    "Clip",
    "Sampling",
    "VideoError",
    "VideoInfo",
    "WindowStream",
    "parse_sampling",
    "probe",
    "read_clip",
    "sliding_windows",
    "window_spans",
    "window_stream",
]

Source = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, UploadBuffer]

#: Seek when the keyframe before the next target is at least this many frames past the decoder position.
SEEK_MIN_SKIP = 16
#: Decoded frames that must match the packet index exactly before non-reference frames may be skipped.
VALIDATE_FRAMES = 16
#: Packets indexed past the last window asked for: the decoder may emit a few frames beyond its target.
INDEX_LOOKAHEAD = 64
#: Codecs whose ``skip_frame="NONREF"`` only drops frames no other frame references.
_SKIP_CODECS = frozenset({"h264", "hevc", "mpeg1video", "mpeg2video", "mpeg4"})
_IMAGE_FORMATS = frozenset({"image2", "image2pipe"})
_AV_ERRORS: tuple[type[BaseException], ...] = (
    av.error.FFmpegError,
    OSError,
    EOFError,
    RuntimeError,
    UnicodeError,
)
_EPS = 1e-6  # seconds; far below any frame period
_INTERPOLATION = "BILINEAR"


class VideoError(Exception):
    """A source that cannot be decoded as video; the message names the input and the cause."""


class _Fallback(Exception):
    """Internal: the packet index cannot be trusted; re-read the video sequentially."""


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` finds.

    ``width``/``height`` come from the first decoded frame; ``duration`` (seconds) and ``fps`` are
    measured from the timestamps of the packets actually present (header values only for streams
    without timestamps); ``header_frames`` is the container's own frame count (None when absent), which
    may disagree with what decodes; ``codec`` is the decoder name (e.g. ``"h264"``).
    """

    width: int
    height: int
    fps: float
    duration: float
    header_frames: int | None
    codec: str


@dataclass
class Clip:
    """Sampled frames of one window of a video."""

    frames: np.ndarray  # uint8 [T, S, S, 3], RGB
    timestamps: np.ndarray  # float64 [T], presentation time (s) of each frame
    source_size: tuple[int, int]  # (width, height) of the decoded source
    crop: tuple[float, float, float]  # (x0, y0, side) of the square shown, in source pixels
    start: float  # window start (s)
    end: float  # window end (s), clamped to the video's duration


@dataclass(frozen=True)
class Sampling:
    """A parsed sampling spec: ``uniform``, or dense ``TxIxN`` (clip_len x frame_interval x num_clips)."""

    kind: str  # "uniform" | "dense"
    clip_len: int = 0
    frame_interval: int = 0
    num_clips: int = 0

    @property
    def num_frames(self) -> int | None:
        """Frames this spec yields (T*N for dense); None for uniform (any count)."""
        return self.clip_len * self.num_clips if self.kind == "dense" else None

    def __str__(self) -> str:
        if self.kind == "uniform":
            return "uniform"
        return f"{self.clip_len}x{self.frame_interval}x{self.num_clips}"


_DENSE_RE = re.compile(r"(\d+)x(\d+)x(\d+)")


def parse_sampling(spec: str | Sampling) -> Sampling:
    """Parse ``"uniform"`` or MMAction2-style dense ``"TxIxN"`` (e.g. ``"16x4x1"``); ValueError if bad."""
    if isinstance(spec, Sampling):
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"sampling spec {spec!r}: expected a string, 'uniform' or 'TxIxN'")
    text = spec.strip().lower()
    if text == "uniform":
        return Sampling("uniform")
    m = _DENSE_RE.fullmatch(text)
    if m is None:
        raise ValueError(
            f"bad sampling spec {spec!r}: expected 'uniform' or dense 'TxIxN' "
            "(clip_len x frame_interval x num_clips, e.g. '16x4x1')"
        )
    t, i, n = (int(g) for g in m.groups())
    if min(t, i, n) < 1:
        raise ValueError(f"bad sampling spec {spec!r}: clip_len, frame_interval and num_clips must be >= 1")
    return Sampling("dense", t, i, n)


# --------------------------------------------------------------------------------------------- inputs


def _describe(source: Source) -> str:
    if isinstance(source, UploadBuffer):
        return f"<upload of {source.total} bytes>"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{memoryview(source).nbytes} bytes>"
    return os.fspath(source)


@contextmanager
def _wrap(name: str) -> Iterator[None]:
    """Turn any decoding library error into a VideoError naming the input."""
    try:
        yield
    except VideoError:
        raise
    except UploadError as e:
        raise VideoError(f"{name}: {e}") from e
    except _AV_ERRORS as e:
        raise VideoError(f"{name}: {_cause(e)}") from e


def _cause(e: BaseException) -> str:
    if isinstance(e, av.error.FFmpegError) and e.strerror:
        return f"cannot decode ({e.strerror})"
    return f"cannot decode ({type(e).__name__}: {e})"


def _open(source: Source, name: str) -> Any:
    """Open ``source`` with PyAV, checking the cheap failure cases first."""
    if isinstance(source, UploadBuffer):
        fileobj: Any = source.reader()  # reads wait for bytes still on their way
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise VideoError(f"{name}: empty input (0 bytes)")
        fileobj = io.BytesIO(data)
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise VideoError(f"{name}: no such file")
        if os.path.isdir(path):
            raise VideoError(f"{name}: is a directory, not a video file")
        if os.path.getsize(path) == 0:
            raise VideoError(f"{name}: empty file (0 bytes)")
        fileobj = path
    else:
        raise TypeError(f"video source must be a path or bytes, not {type(source).__name__}")
    try:
        return av.open(fileobj, mode="r", metadata_errors="ignore")
    except _AV_ERRORS as e:
        cause = e.strerror if isinstance(e, av.error.FFmpegError) and e.strerror else str(e)
        raise VideoError(f"{name}: not a readable media file ({cause})") from e


# ffmpeg renders text files (ANSI art, subtitles) as "video" by path extension; they are not videos.
_TEXT_FORMATS = frozenset({"tty", "ass", "srt", "webvtt", "subviewer", "microdvd"})


def _video_stream(container: Any, name: str) -> Any:
    fmt = container.format.name
    if fmt in _IMAGE_FORMATS or fmt.endswith("_pipe"):
        raise VideoError(f"{name}: a still image ({fmt.removesuffix('_pipe')}), not a video")
    if fmt in _TEXT_FORMATS:
        raise VideoError(f"{name}: a text file ({fmt} demuxer), not a video")
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            stream.thread_type = "AUTO"
            return stream
    kinds = sorted({s.type for s in container.streams}) or ["none"]
    raise VideoError(f"{name}: no video stream (streams found: {', '.join(kinds)})")


# ------------------------------------------------------------------------------------------ sampling


def _window_range(times: np.ndarray, start: float, end: float) -> tuple[int, int]:
    """Indices [lo, hi] of the frames whose presentation time lies in [start, end)."""
    lo = int(np.searchsorted(times, start, side="left"))
    hi = int(np.searchsorted(times, end, side="left")) - 1
    if lo > hi:  # no frame starts inside the window: take the frame shown at its start
        lo = hi = max(int(np.searchsorted(times, start, side="right")) - 1, 0)
    return lo, hi


def _select(times: np.ndarray, start: float, end: float, spec: Sampling, num_frames: int) -> np.ndarray:
    """Indices into ``times`` of the frames to sample (may repeat), in presentation order."""
    lo, hi = _window_range(times, start, end)
    if spec.kind == "uniform":
        centres = start + (np.arange(num_frames) + 0.5) * ((end - start) / num_frames)
        idx = np.searchsorted(times, centres + _EPS, side="right") - 1
        return np.clip(idx, lo, hi).astype(np.int64)
    n = hi - lo + 1
    t, step, clips = spec.clip_len, spec.frame_interval, spec.num_clips
    span = (t - 1) * step + 1
    out = []
    for j in range(clips):
        centre = (j + 0.5) * n / clips
        first = math.floor(centre - (span - 1) / 2)
        first = min(max(first, 0), max(n - span, 0))
        out.append(np.minimum(first + np.arange(t) * step, n - 1))
    return (lo + np.concatenate(out)).astype(np.int64)


def _square(reformatter: Any, frame: Any, size: int) -> tuple[np.ndarray, tuple[int, int], tuple[float, ...]]:
    """Resize the shorter side to ``size`` and centre-crop; return (rgb, (W, H), (x0, y0, side))."""
    w, h = frame.width, frame.height
    # the long side rounds to size + an even margin, so the crop sits exactly in the middle
    if w <= h:
        rw, rh = size, size + 2 * round((h * size / w - size) / 2)
    else:
        rw, rh = size + 2 * round((w * size / h - size) / 2), size
    rgb = reformatter.reformat(
        frame, width=rw, height=rh, format="rgb24", interpolation=_INTERPOLATION
    ).to_ndarray()
    x, y = (rw - size) // 2, (rh - size) // 2
    crop = (x * w / rw, y * h / rh, float(min(w, h)))
    return np.ascontiguousarray(rgb[y : y + size, x : x + size]), (w, h), crop


# -------------------------------------------------------------------------------------------- reader


class _Reader:
    """One open video: its packet index, a decoder position, and a cache of converted frames."""

    def __init__(self, source: Source, *, strategy: str = "auto", incremental: bool = False) -> None:
        self.name = _describe(source)
        self.source = source
        self.strategy = strategy  # "auto" | "seek" (before every target) | "sequential"
        self.container = _open(source, self.name)
        self._ix_container: Any = None
        try:
            self.stream = _video_stream(self.container, self.name)
            if incremental:  # a demuxer of its own runs ahead of the decoder, only as far as asked
                self._ix_container = _open(source, self.name)
                self._index_begin(self._ix_container.streams[self.stream.index])
            else:
                self._index_begin(self.stream)
                self.index_until(math.inf)
        except BaseException:
            self.close()
            raise
        self.reformatter = VideoReformatter()
        self.cache: dict[int, tuple[np.ndarray, float, tuple[int, int], tuple[float, ...]]] = {}
        self.size = 0
        # pts-mode decoder state
        self.packets: Iterator[Any] | None = None  # None: demuxer must seek before decoding
        self.next_pos = 0
        self.landing = -1  # keyframe position just seeked to; -1 once the first frame came out
        self.floor = 0
        self.seekable = True  # cleared when a seek fails or lands past its keyframe
        self.seeked = False
        self.validated = 0
        # ordinal-mode state (set by _scan): frames keyed by the decode-order number of their packet
        self.frames_iter: Iterator[tuple[Any, int]] | None = None
        self.seen: set[int] = set()
        self.time_of: dict[int, float] = {}
        self.pts_of_seq: dict[int, int | None] = {}
        self.by_ordinal = False

    # -- index ---------------------------------------------------------------------------------------

    def _index_begin(self, stream: Any) -> None:
        """Read the header's facts and start the packet index over ``stream``'s demuxer."""
        self.codec = self.stream.codec_context.name
        self.header_frames = int(self.stream.frames) or None
        rate = self.stream.average_rate or self.stream.guessed_rate or self.stream.base_rate
        self.header_fps = float(rate) if rate else 0.0
        self.tb = Fraction(self.stream.time_base) if self.stream.time_base else None
        if self.stream.duration and self.tb is not None:
            self.header_duration = float(self.stream.duration * self.tb)
        elif stream.container.duration:
            self.header_duration = float(stream.container.duration) / av.time_base
        else:
            self.header_duration = (self.header_frames or 0) / self.header_fps if self.header_fps else 0.0
        self._ix_packets = stream.container.demux(stream)
        self._ix_pts: list[int | None] = []
        self._ix_keys: list[bool] = []
        self._ix_durs: list[int] = []
        self._ix_min: int | None = None  # smallest pts so far (time 0)
        self._ix_dts: int | None = None  # the last packet's dts: later packets show at or after it
        self._ix_blind = False  # a packet without dts: nothing is known covered until the end
        self._ix_ready = -math.inf  # the last time index_until finished (lookahead included)
        self.index_done = False
        self.committed = False  # set once a window was handed out: time 0 may no longer move
        self.n_packets = 0
        self.mode = "pts"
        self.times = np.zeros(0)
        self.keys = np.zeros(0, np.int64)
        self.duration, self.fps = math.inf, self.header_fps

    def covered(self) -> float:
        """Seconds before which every frame is in the index (inf once the index is complete)."""
        if self.index_done:
            return math.inf
        if self._ix_blind or self._ix_dts is None or self._ix_min is None or self.tb is None:
            return -math.inf
        return float((self._ix_dts - self._ix_min) * self.tb)

    def index_until(self, t: float) -> None:
        """Demux until every frame shown before ``t`` seconds is indexed, plus at least
        ``INDEX_LOOKAHEAD`` packets (frames the decoder may emit past a target; a quarter of those
        indexed when more, so a long file is re-sorted O(log n) times), or to the end of the file. Only
        what is needed is read, so the first windows of a file still arriving are served before its end."""
        if self.index_done or t <= self._ix_ready:
            return
        extra = 0
        # read a quarter of what is indexed beyond the lookahead: O(log n) re-sorts over a long file
        ahead = max(INDEX_LOOKAHEAD, len(self._ix_pts) // 4)
        while True:
            try:
                pkt = next(self._ix_packets)
            except StopIteration:
                break
            except _AV_ERRORS:
                break  # truncated or corrupt tail: keep the packets read so far
            if pkt.size == 0 or pkt.is_discard:
                continue
            self._ix_pts.append(pkt.pts)
            self._ix_keys.append(bool(pkt.is_keyframe))
            self._ix_durs.append(int(pkt.duration or 0))
            if pkt.pts is not None and (self._ix_min is None or pkt.pts < self._ix_min):
                self._ix_min = pkt.pts
            if pkt.dts is None:
                self._ix_blind = True
            elif self._ix_dts is None or pkt.dts > self._ix_dts:
                self._ix_dts = pkt.dts
            if t < math.inf and self.covered() >= t:
                extra += 1
                if extra > ahead:
                    self._ix_ready = t
                    self._rebuild()
                    return
        self.index_done = True
        if self._ix_container is not None:
            self._ix_container.close()
            self._ix_container = None
        self._rebuild()  # the exact duration, now that the end is known

    def _rebuild(self) -> None:
        """Sorted frame times, keyframes and positions from the packets indexed so far."""
        pts, keys, durs = self._ix_pts, self._ix_keys, self._ix_durs
        self.n_packets = len(pts)
        valid = (
            self.tb is not None
            and len(pts) > 0
            and all(p is not None for p in pts)
            and len(set(pts)) == len(pts)
        )
        if not valid and not self.index_done:
            if self.committed:
                raise VideoError(
                    f"{self.name}: frame timestamps turn invalid (missing or repeated) after "
                    f"{self.covered():.2f} s; windows before that were sent"
                )
            self.index_until(math.inf)  # decide the mode on the whole file
            return
        self.mode = "pts" if valid else "ordinal"
        if not valid:
            self.times = np.zeros(0)
            self.keys = np.zeros(0, np.int64)
            self.duration = self.n_packets / self.header_fps if self.header_fps else 0.0
            self.fps = self.header_fps
            return
        order = np.argsort(np.asarray(pts, np.int64), kind="stable")
        spts = np.asarray(pts, np.int64)[order]
        is_key = np.asarray(keys, bool)[order]
        self.keys = spts
        self.pos_of = {int(p): i for i, p in enumerate(spts)}
        tb = self.tb
        assert tb is not None
        self.times = (spts - spts[0]).astype(np.float64) * tb.numerator / tb.denominator
        last_dur = durs[int(order[-1])] * float(tb)
        self.duration, self.fps = self._measure(self.times, last_dur)
        if not self.index_done:
            self.duration = math.inf  # known at the end of the index
        # keyframe position at or before each position (-1: none; decode from the start)
        kpos = np.where(is_key, np.arange(len(spts)), -1)
        self.kf_before = np.maximum.accumulate(kpos)

    def _measure(self, times: np.ndarray, last_dur: float = 0.0) -> tuple[float, float]:
        """(duration, fps) measured from frame times."""
        n = len(times)
        span = float(times[-1] - times[0]) if n else 0.0
        fps = (n - 1) / span if n > 1 and span > 0 else self.header_fps
        if last_dur <= 0:
            diffs = np.diff(times)
            diffs = diffs[diffs > 0]
            last_dur = float(np.median(diffs)) if len(diffs) else 1.0 / (fps or 25.0)
        return float(times[-1]) + last_dur if n else 0.0, fps

    # -- lifecycle -----------------------------------------------------------------------------------

    def close(self) -> None:
        self.container.close()
        if self._ix_container is not None:
            self._ix_container.close()
            self._ix_container = None

    def __enter__(self) -> _Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _reopen(self) -> None:
        self.container.close()
        self.container = _open(self.source, self.name)
        self.stream = _video_stream(self.container, self.name)

    # -- public operations ---------------------------------------------------------------------------

    def first_frame(self) -> Any:
        """Decode the first frame from a fresh container."""
        self._reopen()
        for frame, _ in self._decode_all():
            return frame
        raise VideoError(f"{self.name}: no decodable video frames ({self.n_packets} packets, none decoded)")

    def clip(
        self,
        spec: Sampling,
        num_frames: int,
        size: int,
        start: float | None,
        end: float | None,
        *,
        final: bool = True,
    ) -> Clip:
        """Sample one window; falls back to ordinal mode (once) if the packet index proves wrong.

        ``final``: no further window follows, so the decoder may stop right after the last target.
        """
        if size != self.size:
            self.cache.clear()
            self.size = size
        while True:
            if self.mode == "ordinal" and not len(self.times):
                self._scan()
            s = 0.0 if start is None else float(start)
            if s >= self.duration - _EPS:
                raise VideoError(
                    f"{self.name}: window starts at {s:.3f} s, at or after the end of the video "
                    f"({self.duration:.3f} s of frames)"
                )
            e = self.duration if end is None else min(float(end), self.duration)
            sel = _select(self.times, s, e, spec, num_frames)
            keys = self.keys[sel]
            try:
                got = self._fetch(sorted({int(k) for k in keys}), final)
            except _Fallback as why:
                if self.mode == "ordinal":
                    raise VideoError(f"{self.name}: {why}") from why
                self.mode = "ordinal"
                self.times = np.zeros(0)
                self.cache.clear()
                continue
            frames = np.stack([got[int(k)][0] for k in keys])
            first = got[int(keys[0])]
            return Clip(
                frames=frames,
                timestamps=self.times[sel].astype(np.float64),
                source_size=first[2],
                crop=(float(first[3][0]), float(first[3][1]), float(first[3][2])),
                start=s,
                end=float(e),
            )

    def evict_before(self, t: float) -> None:
        """Drop cached frames shown before ``t`` (sliding windows move forward)."""
        for k in [k for k, v in self.cache.items() if v[1] < t - _EPS]:
            del self.cache[k]

    # -- decoding ------------------------------------------------------------------------------------

    def _fetch(
        self, keys: list[int], final: bool
    ) -> dict[int, tuple[np.ndarray, float, tuple[int, int], tuple]]:
        need = [k for k in keys if k not in self.cache]
        if need:
            if self.mode == "pts":
                self._fetch_pts([self.pos_of[k] for k in need], final)
            else:
                self._fetch_ordinal(need)
        return {k: self.cache[k] for k in keys}

    def _store(self, key: int, t: float, frame: Any) -> None:
        rgb, src, crop = _square(self.reformatter, frame, self.size)
        self.cache[key] = (rgb, t, src, crop)

    def _should_seek(self, target: int, pos: int) -> bool:
        """The seek rule (module docstring), for a decoder whose next output is position ``pos``."""
        if target < pos:
            return True  # behind the decoder: seek back (or restart)
        if not self.seekable:
            return False
        kf = max(int(self.kf_before[target]), 0)
        return self.strategy == "seek" or (self.strategy == "auto" and kf - pos >= SEEK_MIN_SKIP)

    def _fetch_pts(self, positions: list[int], final: bool) -> None:
        wanted = set(positions)
        todo = [p for p in positions if int(self.keys[p]) not in self.cache]
        for i, target in enumerate(todo):
            if int(self.keys[target]) in self.cache:
                continue
            if self.packets is None:  # demuxer at the end of the index pass, or drained
                self._seek(0 if self.strategy == "sequential" else max(int(self.kf_before[target]), 0))
            elif self._should_seek(target, self.next_pos):
                self._seek(max(int(self.kf_before[target]), 0))
            nxt = todo[i + 1] if i + 1 < len(todo) else None
            while True:
                # When a seek (or nothing) follows this target, stop feeding packets once the target's
                # own packet is in and drain the decoder: frames after it in decode order never decode.
                drain = self.validated >= VALIDATE_FRAMES and (
                    final if nxt is None else self._should_seek(nxt, target + 1)
                )
                try:
                    self._decode_to(target, wanted, drain)
                    break
                except _Fallback:
                    if not self.seeked:
                        raise  # trouble decoding from the very start: the index is wrong
                    # trouble after a seek (landed elsewhere, timestamps changed): this demuxer's seeks
                    # are unreliable; decode from the start instead before doubting the index
                    self.seekable = False
                    self._seek(0)

    def _decode_to(self, target: int, wanted: set[int], drain: bool) -> None:
        """Feed packets until the target frame is out (then drain the decoder if ``drain``)."""
        tkey = int(self.keys[target])
        cc = self.stream.codec_context
        trusted = self.codec in _SKIP_CODECS and self.strategy != "sequential"
        trusted = trusted and self.validated >= VALIDATE_FRAMES
        while tkey not in self.cache:
            pkt = next(self.packets, None) if self.packets is not None else None
            if pkt is None:
                raise _Fallback(f"stream ended before frame {target}")
            if trusted:
                want = pkt.pts is not None and self.pos_of.get(pkt.pts, -1) in wanted
                mode = "DEFAULT" if want else "NONREF"
                if cc.skip_frame != mode:
                    cc.skip_frame = mode
            if pkt.size and pkt.is_corrupt:
                raise _Fallback("corrupt packet")
            try:
                frames = pkt.decode() if pkt.size else cc.decode(None)
            except _AV_ERRORS as e:
                raise _Fallback(f"decode error: {e}") from e
            for frame in frames:
                self._accept(frame, wanted, target)
            if drain and pkt.pts == tkey:
                self.packets = None
                try:
                    frames = cc.decode(None)
                except _AV_ERRORS as e:
                    raise _Fallback(f"drain failed: {e}") from e
                for frame in frames:
                    self._accept(frame, wanted, target)
                if tkey not in self.cache:
                    raise _Fallback(f"frame {target} did not decode")

    def _seek(self, kf: int) -> None:
        """Position the demuxer at keyframe position ``kf``; without reliable seeking, at the start."""
        if self.seekable:
            try:
                self.container.seek(int(self.keys[kf]), stream=self.stream, backward=True, any_frame=False)
            except _AV_ERRORS:
                self.seekable = False
        if not self.seekable:
            self._reopen()
            kf = 0
        self.seeked = self.seekable  # this run of frames began with a real seek
        self.packets = self._packets()
        self.next_pos = kf
        self.landing = kf
        self.floor = kf  # frames before it (open-GOP leading pictures) may lack references

    def _packets(self) -> Iterator[Any]:
        """Demuxed packets; a demux error ends the stream (an empty packet flushes the decoder)."""
        it = self.container.demux(self.stream)
        while True:
            try:
                pkt = next(it)
            except StopIteration:
                return
            except _AV_ERRORS:
                yield _FLUSH
                return
            yield pkt

    def _accept(self, frame: Any, wanted: set[int], target: int) -> None:
        pos = self.pos_of.get(frame.pts, -1) if frame.pts is not None else -1
        if pos < 0:
            raise _Fallback("decoded frame has no pts from the index")
        if frame.is_corrupt:
            raise _Fallback("decoder flagged a frame corrupt")
        if self.landing >= 0:  # first frame after a seek: at (or before) the keyframe sought
            if pos > self.landing:
                raise _Fallback("seek landed past its keyframe")
            self.landing = -1
        elif self.validated < VALIDATE_FRAMES:
            if pos != self.next_pos:
                raise _Fallback("decoded frames do not follow the packet index")
        elif pos < self.next_pos:
            raise _Fallback("decoded timestamps go backwards")
        if pos > target and int(self.keys[target]) not in self.cache:
            raise _Fallback(f"frame {target} did not decode")
        self.validated += 1
        self.next_pos = pos + 1
        key = int(self.keys[pos])
        if pos in wanted and pos >= self.floor and key not in self.cache:
            self._store(key, float(self.times[pos]), frame)

    # -- ordinal mode --------------------------------------------------------------------------------

    def _decode_all(self, log: dict[str, list[int]] | None = None) -> Iterator[tuple[Any, int]]:
        """Every frame the decoder outputs from a fresh container, with the decode-order number
        (``seq``) of the packet that produced it (-1 if unknown), carried through the decoder as the
        packet's ``opaque``. Broken packets are skipped; ``log`` collects the seqs of keyframe packets
        (``"keys"``) and of packets that failed or were flagged corrupt (``"errors"``).
        """
        cc = self.stream.codec_context
        cc.skip_frame = "DEFAULT"
        if hasattr(cc, "copy_opaque"):  # older PyAV: no tags, frames are then keyed by output order
            cc.copy_opaque = True
        it = self.container.demux(self.stream)
        seq = out = 0
        while True:
            try:
                pkt = next(it)
            except StopIteration:
                return
            except _AV_ERRORS:
                pkt = _FLUSH  # unreadable tail: flush what was sent
            if pkt.size:
                pkt.opaque = (seq,)  # a fresh object per packet (PyAV keys opaque values by id)
                if log is not None and pkt.is_keyframe:
                    log["keys"].append(seq)
                if log is not None and pkt.is_corrupt:
                    log["errors"].append(seq)
                    log["outputs"].append(out)
                seq += 1
            try:
                frames = pkt.decode() if pkt.size else cc.decode(None)
            except _AV_ERRORS:
                if log is not None:
                    log["errors"].append(seq - 1)
                    log["outputs"].append(out)
                continue
            for frame in frames:
                out += 1
                tag = getattr(frame, "opaque", None)
                yield frame, (tag[0] if isinstance(tag, tuple) else -1)
            if pkt is _FLUSH:
                return

    def _scan(self) -> None:
        """One sequential pass recording what actually decodes; frames are keyed by packet seq.

        A frame is a candidate unless it is flagged corrupt, cannot be traced to its packet, or comes
        from a damaged packet: one from a little before a decode error (frame threads report errors
        late) up to the next keyframe packet, whose pictures reference the broken one (the decoder's
        error concealment would show other frames' content there).
        """
        self._reopen()
        log: dict[str, list[int]] = {"keys": [], "errors": [], "outputs": []}
        seqs: list[int] = []
        pts: list[int | None] = []
        corrupt: list[bool] = []
        for frame, seq in self._decode_all(log):
            seqs.append(seq)
            pts.append(frame.pts)
            corrupt.append(bool(frame.is_corrupt))
        margin = max(int(self.stream.codec_context.thread_count or 1), 1)
        keys = np.asarray(sorted(log["keys"]), np.int64)
        seq_arr = np.asarray(seqs, np.int64)
        clean = (seq_arr >= 0) & ~np.asarray(corrupt, bool)
        self.by_ordinal = bool(seqs) and not np.any(seq_arr >= 0)
        if self.by_ordinal:  # no packet tags: key by output order; after an error trust nothing more
            seq_arr = np.arange(len(seqs), dtype=np.int64)
            clean = ~np.asarray(corrupt, bool)
            if log["outputs"]:
                clean[max(log["outputs"][0] - margin, 0) :] = False
        for e in [] if self.by_ordinal else log["errors"]:
            nxt = keys[keys > e]
            stop = int(nxt[0]) if len(nxt) else np.iinfo(np.int64).max
            clean &= ~((seq_arr >= e - margin) & (seq_arr < stop))
        cand = np.flatnonzero(clean)  # output order
        if len(cand) == 0:
            raise VideoError(
                f"{self.name}: no decodable video frames"
                + (f" ({len(seqs)} decoded, all damaged)" if seqs else f" ({self.n_packets} packets)")
            )
        tb = self.tb
        if tb is not None and all(p is not None for p in pts):
            stamps = np.asarray(pts, np.int64)
            if np.any(np.diff(stamps[cand]) <= 0):
                # decoders emit presentation order; this container stamped decode order: sort the stamps
                stamps = np.sort(stamps)
            times = (stamps - stamps.min()).astype(np.float64) * tb.numerator / tb.denominator
        else:
            times = np.arange(len(pts), dtype=np.float64) / (self.header_fps or 25.0)
        self.times = times[cand]
        self.keys = seq_arr[cand]
        self.time_of = {int(seq_arr[i]): float(times[i]) for i in cand}
        self.pts_of_seq = {int(seq_arr[i]): pts[i] for i in cand}
        self.duration, self.fps = self._measure(self.times)
        self.frames_iter = None
        self.seen = set()
        self.cache.clear()

    def _fetch_ordinal(self, seqs: list[int]) -> None:
        wanted = set(seqs)
        if self.frames_iter is None or wanted & self.seen:
            self._reopen()
            self.frames_iter = self._decode_all()
            self.seen = set()
        missing = set(wanted)
        for frame, tag in self.frames_iter:
            seq = len(self.seen) if self.by_ordinal else tag
            self.seen.add(seq)
            if seq in missing:
                if frame.pts != self.pts_of_seq[seq]:
                    raise VideoError(f"{self.name}: decoding is not repeatable (packet {seq} changed)")
                self._store(seq, self.time_of[seq], frame)
                missing.discard(seq)
                if not missing:
                    return
        raise VideoError(f"{self.name}: decoding is not repeatable (packet {min(missing)} vanished)")


class _FlushPacket:
    size = 0
    pts = None
    is_corrupt = False


_FLUSH: Any = _FlushPacket()


# ---------------------------------------------------------------------------------------- public API


def _check(num_frames: int, size: int, sampling: str | Sampling) -> Sampling:
    spec = parse_sampling(sampling)
    if not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    if spec.kind == "dense" and spec.num_frames != num_frames:
        raise ValueError(
            f"sampling '{spec}' yields {spec.clip_len}x{spec.num_clips}={spec.num_frames} frames, "
            f"but num_frames={num_frames}"
        )
    return spec


def _seconds(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    return v


def probe(source: Source) -> VideoInfo:
    """Describe a video: size of the decoded frames, measured fps and duration, header frame count."""
    name = _describe(source)
    with _wrap(name), _Reader(source) as reader:
        frame = reader.first_frame()
        return VideoInfo(
            width=int(frame.width),
            height=int(frame.height),
            fps=float(reader.fps),
            duration=float(reader.duration),
            header_frames=reader.header_frames,
            codec=reader.codec,
        )


def read_clip(
    source: Source,
    num_frames: int,
    size: int,
    *,
    sampling: str | Sampling = "uniform",
    start: float | None = None,
    end: float | None = None,
) -> Clip:
    """Sample ``num_frames`` RGB frames of ``size`` x ``size`` from ``[start, end)`` seconds of a video.

    ``source`` is a path or the encoded bytes of a file. ``sampling`` is ``"uniform"`` or dense
    ``"TxIxN"`` (see the module docstring). ``end`` is clamped to the video's duration; a window that
    starts after the last frame raises VideoError.
    """
    spec = _check(num_frames, size, sampling)
    s, e = _seconds("start", start), _seconds("end", end)
    if s is not None and e is not None and e <= s:
        raise ValueError(f"end ({e}) must be greater than start ({s})")
    name = _describe(source)
    with _wrap(name), _Reader(source) as reader:
        return reader.clip(spec, int(num_frames), int(size), s, e)


def sliding_windows(
    source: Source,
    num_frames: int,
    size: int,
    *,
    window: float,
    stride: float | None = None,
    sampling: str | Sampling = "uniform",
) -> Iterator[Clip]:
    """Clips of consecutive windows ``[k*stride, k*stride + window)`` covering the whole video.

    ``stride`` defaults to ``window`` (no overlap). Windows stop after the first one that reaches the
    end; that last window is clamped to the duration (so it may be shorter). A video shorter than one
    window gives one clip. The source is opened and indexed on the call (unreadable input raises
    VideoError there); frames are decoded lazily as windows are consumed (a stream whose frames do not
    decode raises VideoError on iteration). Sampled frames shared by overlapping windows are reused.
    """
    spec = _check(num_frames, size, sampling)
    win = _seconds("window", window)
    step = win if stride is None else _seconds("stride", stride)
    if not win or not step:
        raise ValueError(f"window and stride must be > 0 seconds, got window={window!r} stride={stride!r}")
    name = _describe(source)
    with _wrap(name):
        reader = _Reader(source)
    return _windows(reader, spec, int(num_frames), int(size), win, step)


def _windows(
    reader: _Reader, spec: Sampling, num_frames: int, size: int, window: float, stride: float
) -> Iterator[Clip]:
    try:
        with _wrap(reader.name):
            k = 0
            while True:
                s = k * stride
                if k and s >= reader.duration - _EPS:
                    return
                reader.evict_before(s)
                yield reader.clip(spec, num_frames, size, s, s + window, final=False)
                if s + window >= reader.duration - _EPS:
                    return
                k += 1
    finally:
        reader.close()


def window_spans(
    duration: float, window: float, stride: float, start: float = 0.0, end: float | None = None
) -> list[tuple[float, float]]:
    """The ``(start, end)`` seconds :func:`sliding_windows` / :func:`window_stream` sample: windows
    ``[start + k*stride, start + k*stride + window)`` clamped to ``min(end, duration)``, stopping after the
    first window that reaches it (at least one window when ``start`` lies inside the video)."""
    stop = duration if end is None else min(float(end), duration)
    spans: list[tuple[float, float]] = []
    k = 0
    while True:
        s = start + k * stride
        if (k and s >= stop - _EPS) or (not k and s >= duration - _EPS):
            return spans
        spans.append((s, min(s + window, stop)))
        if s + window >= stop - _EPS:
            return spans
        k += 1


class WindowStream:
    """Sliding windows of one video, decoded front to back as they are consumed (see :func:`window_stream`).

    Iterating yields ``(index, Clip)`` in window order. The packet index is built as the windows need
    it (a window is cut once every frame shown before its end is indexed), so the first window of a long
    file, or of a file still arriving (an :class:`~vmtl.upload_buffer.UploadBuffer`), comes before the
    demuxer has seen the rest. ``count`` is the number of windows expected: from the header's duration
    until the index reaches the end, then exact (``spans``). A file cut short (its header counts more
    frames than its packets hold: a truncated download or copy) yields the windows that lie wholly in
    what is there, then raises VideoError naming what is missing (``missing_frames`` > 0). :meth:`close`
    releases the decoder (also at the end of iteration).
    """

    def __init__(
        self, reader: _Reader, spec: Sampling, num_frames: int, size: int, window: float, stride: float,
        start: float, end: float | None,
    ) -> None:  # fmt: skip
        self._reader = reader
        self._args = (spec, num_frames, size)
        self.window, self.stride, self.start, self.end = window, stride, start, end
        self.missing_frames = 0
        self._final = False
        self.duration = float(reader.header_duration)
        self.spans = window_spans(self.duration, window, stride, start, end) if self.duration > 0 else []
        if reader.index_done:
            self._finalise()

    @property
    def count(self) -> int:
        """Windows expected (an estimate from the header until the index is complete)."""
        return len(self.spans)

    def _finalise(self) -> None:
        """The index reached the end: the exact duration, windows and missing frames."""
        reader, window, stride, start, end = self._reader, self.window, self.stride, self.start, self.end
        self._final = True
        self.duration = float(reader.duration)
        self.spans = window_spans(self.duration, window, stride, start, end)
        header = reader.header_frames or 0
        self.missing_frames = header - reader.n_packets if reader.mode == "pts" else 0
        if self.missing_frames > 1 and reader.fps:  # cut short: only windows wholly in what is there
            expected = header / reader.fps
            spans = window_spans(expected, window, stride, start, end)
            self.spans = [sp for sp in spans if sp[1] <= self.duration + _EPS]
        else:
            self.missing_frames = 0

    def _index_to(self, t: float) -> None:
        self._reader.index_until(t)
        if self._reader.index_done and not self._final:
            self._finalise()

    def __iter__(self) -> Iterator[tuple[int, Clip]]:
        reader = self._reader
        spec, num_frames, size = self._args
        try:
            with _wrap(reader.name):
                self._index_to(self.start + self.window)
                if self.start >= reader.duration - _EPS:
                    raise VideoError(
                        f"{reader.name}: start {self.start:.3f} s is at or after the end of the video "
                        f"({reader.duration:.3f} s of frames)"
                    )
                k = 0
                while True:
                    s = self.start + k * self.stride
                    e = s + self.window if self.end is None else min(s + self.window, self.end)
                    self._index_to(e)
                    stop = reader.duration if self.end is None else min(self.end, reader.duration)
                    if self.missing_frames and k >= len(self.spans):
                        raise VideoError(self._truncated())
                    if k and s >= stop - _EPS:
                        return
                    reader.evict_before(s)
                    clip = reader.clip(spec, num_frames, size, s, e, final=False)
                    reader.committed = True
                    yield k, clip
                    if s + self.window >= stop - _EPS:
                        return
                    k += 1
        finally:
            reader.close()

    def _truncated(self) -> str:
        r = self._reader
        total = r.n_packets + self.missing_frames
        return (
            f"{r.name}: the file is cut short: its header counts {total} frames but only {r.n_packets} are "
            f"there ({self.duration:.2f} s); the windows from "
            f"{self.start + len(self.spans) * self.stride:.2f} s on are missing"
        )

    def close(self) -> None:
        self._reader.close()


def window_stream(
    source: Source,
    num_frames: int,
    size: int,
    *,
    window: float,
    stride: float | None = None,
    sampling: str | Sampling = "uniform",
    start: float | None = None,
    end: float | None = None,
) -> WindowStream:
    """:func:`sliding_windows` over ``[start, end)`` seconds (default: the whole video), with each window's
    index: windows ``[start + k*stride, start + k*stride + window)``, the last clamped to ``end`` (and the
    duration). With ``start``/``end`` unset the clips equal :func:`sliding_windows`'s. ``source`` may also be
    an :class:`~vmtl.upload_buffer.UploadBuffer` still receiving the file. The source is opened on the call
    (VideoError there when unreadable); it is indexed and decoded as windows are consumed.
    """
    spec = _check(num_frames, size, sampling)
    win = _seconds("window", window)
    step = win if stride is None else _seconds("stride", stride)
    if not win or not step:
        raise ValueError(f"window and stride must be > 0 seconds, got window={window!r} stride={stride!r}")
    s, e = _seconds("start", start), _seconds("end", end)
    if s is not None and e is not None and e <= s:
        raise ValueError(f"end ({e}) must be greater than start ({s})")
    name = _describe(source)
    with _wrap(name):
        reader = _Reader(source, incremental=True)
    return WindowStream(reader, spec, int(num_frames), int(size), win, step, s or 0.0, e)
