"""Rendering of planned synthetic videos (numpy) and their h264 encoding (PyAV).

A :class:`VideoPlan` fixes everything random about a video (the objects' images, colours and per-frame
centre/size/angle, the background's kind and seed, the per-frame brightness), so rendering is a pure
function of the plan: the same plan always gives the same frames, in any process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

BACKGROUNDS: tuple[str, ...] = ("gradient", "blobs", "stripes", "checker")
ALPHA_GAIN = 6.0  # grey level g in [0,1] -> opacity min(1, 6 g): solid objects, even dark garments
BOX_ALPHA = 0.5  # a pixel belongs to the object's box when its opacity is at least this


@dataclass
class ObjectTrack:
    """One object: its 28x28 grey image, class, colour and per-frame centre, size (px) and angle (deg)."""

    image: np.ndarray
    class_index: int
    image_index: int
    color: tuple[float, float, float]
    cx: np.ndarray
    cy: np.ndarray
    size: np.ndarray
    angle: np.ndarray


@dataclass
class VideoPlan:
    """Everything needed to render one video; ``target`` holds the task's label information."""

    task: str
    video_id: str
    split: str
    size: int
    fps: int
    num_frames: int
    background: str
    bg_seed: int
    gain: np.ndarray
    objects: list[ObjectTrack]
    target: dict[str, Any] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps


# --------------------------------------------------------------------------------------------------
# Backgrounds


def _resize_bilinear(a: np.ndarray, out: int) -> np.ndarray:
    """Bilinear resize of a small [h, w, c] array to [out, out, c] (align-corners=False)."""
    h, w = a.shape[:2]
    ys = np.clip((np.arange(out) + 0.5) * h / out - 0.5, 0, h - 1)
    xs = np.clip((np.arange(out) + 0.5) * w / out - 0.5, 0, w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = a[y0][:, x0] * (1 - fx) + a[y0][:, x1] * fx
    bot = a[y1][:, x0] * (1 - fx) + a[y1][:, x1] * fx
    return top * (1 - fy) + bot * fy


def render_background(kind: str, seed: int, size: int) -> np.ndarray:
    """A static, muted background (float32 [S, S, 3], 0..255) from its kind and seed."""
    rng = np.random.default_rng(seed)
    yy, xx = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size
    c0, c1 = rng.uniform(5, 95, 3), rng.uniform(5, 95, 3)
    if kind == "gradient":
        th = rng.uniform(0, 2 * np.pi)
        t = (xx - 0.5) * np.cos(th) + (yy - 0.5) * np.sin(th) + 0.5
        t = np.clip(t, 0, 1)[..., None]
        bg = c0 * (1 - t) + c1 * t
    elif kind == "blobs":
        g = int(rng.integers(2, 5))
        bg = _resize_bilinear(rng.uniform(5, 95, (g, g, 3)), size)
    elif kind == "stripes":
        th = rng.uniform(0, np.pi)
        freq = rng.uniform(2.0, 6.0)
        c1 = c0 + rng.uniform(-30, 30, 3)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (xx * np.cos(th) + yy * np.sin(th)))
        bg = c0 * (1 - t[..., None]) + c1 * t[..., None]
    elif kind == "checker":
        cell = rng.uniform(0.06, 0.2)
        c1 = c0 + rng.uniform(-25, 25, 3)
        t = ((np.floor(xx / cell) + np.floor(yy / cell)) % 2)[..., None]
        bg = c0 * (1 - t) + c1 * t
    else:
        raise ValueError(f"unknown background {kind!r}; choose one of {', '.join(BACKGROUNDS)}")
    bg = bg + rng.normal(0.0, 2.0, (size, size, 1))  # faint static grain
    return np.clip(bg, 0, 255).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Sprites


def warp_sprite(image: np.ndarray, out: int, angle: float = 0.0) -> np.ndarray:
    """The 28x28 grey image scaled to ``out`` x ``out`` px and rotated by ``angle`` degrees (float 0..1)."""
    src = np.pad(image.astype(np.float32) / 255.0, 1)
    n = image.shape[0]
    c = (np.arange(out, dtype=np.float32) + 0.5) * (n / out) - n / 2  # output pixel centres in source units
    v, u = np.meshgrid(c, c, indexing="ij")
    th = np.deg2rad(angle)
    cos, sin = np.float32(np.cos(th)), np.float32(np.sin(th))
    sx = cos * u + sin * v + n / 2 - 0.5 + 1  # inverse rotation; +1 for the padding
    sy = -sin * u + cos * v + n / 2 - 0.5 + 1
    sx = np.clip(sx, 0, n + 1 - 1e-4)
    sy = np.clip(sy, 0, n + 1 - 1e-4)
    x0, y0 = np.floor(sx).astype(np.int32), np.floor(sy).astype(np.int32)
    fx, fy = sx - x0, sy - y0
    x1, y1 = np.minimum(x0 + 1, n + 1), np.minimum(y0 + 1, n + 1)
    top = src[y0, x0] * (1 - fx) + src[y0, x1] * fx
    bot = src[y1, x0] * (1 - fx) + src[y1, x1] * fx
    return top * (1 - fy) + bot * fy


def _placement(cx: float, cy: float, n: int) -> tuple[int, int]:
    return round(float(cx) - n / 2), round(float(cy) - n / 2)


def render_frames(plan: VideoPlan, draw_objects: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Frames (uint8 [T, S, S, 3]) and every object's tight box per frame (float [K, T, 4], x1 y1 x2 y2).

    A box covers the pixels whose opacity is at least ``BOX_ALPHA`` (x2, y2 exclusive), clipped to the
    frame; ``draw_objects=False`` renders the background only (the boxes are still computed).
    """
    S, T = plan.size, plan.num_frames
    bg = render_background(plan.background, plan.bg_seed, S)
    stack = np.empty((T, S, S, 3), np.float32)
    stack[:] = bg
    boxes = np.zeros((len(plan.objects), T, 4), np.float64)
    # (object, size, angle) -> (premultiplied colour [n,n,3], 1 - opacity [n,n,1], opaque mask [n,n])
    cache: dict[tuple[int, int, float], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for t in range(T):
        f = stack[t]
        for k, ob in enumerate(plan.objects):
            n = max(2, round(float(ob.size[t])))
            ang = round(float(ob.angle[t]), 3)
            key = (k, n, ang)
            if key not in cache:
                g = warp_sprite(ob.image, n, ang)[..., None]
                a = np.minimum(1.0, g * ALPHA_GAIN)
                premul = np.asarray(ob.color, np.float32) * (0.45 + 0.55 * g) * a
                cache[key] = (premul.astype(np.float32), (1.0 - a).astype(np.float32), a[..., 0] >= BOX_ALPHA)
            premul, inv, opaque = cache[key]
            x, y = _placement(float(ob.cx[t]), float(ob.cy[t]), n)
            xa, ya, xb, yb = max(x, 0), max(y, 0), min(x + n, S), min(y + n, S)
            if xb <= xa or yb <= ya:
                continue
            sl = (slice(ya - y, yb - y), slice(xa - x, xb - x))
            m = opaque[sl]
            rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
            if rows.size:
                boxes[k, t] = (xa + cols[0], ya + rows[0], xa + cols[-1] + 1, ya + rows[-1] + 1)
            if draw_objects:
                region = f[ya:yb, xa:xb]
                region *= inv[sl]
                region += premul[sl]
    stack *= plan.gain.astype(np.float32)[:, None, None, None]
    frames = np.clip(stack, 0, 255, out=stack).astype(np.uint8)
    return frames, boxes


# --------------------------------------------------------------------------------------------------
# Encoding


def encode_mp4(frames: np.ndarray, path: str | os.PathLike[str], fps: int, crf: int = 20) -> int:
    """Encode uint8 [T, H, W, 3] RGB frames as h264/yuv420p mp4 (single-threaded, so reproducible).

    Written to a temporary name and renamed, so a file that exists is complete. Returns its size in bytes.
    """
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp.mp4")
    T, H, W = frames.shape[:3]
    with av.open(str(tmp), mode="w", format="mp4") as out:
        st = out.add_stream(
            "libx264",
            rate=Fraction(fps),
            options={"crf": str(crf), "preset": "veryfast", "threads": "1", "g": str(2 * fps)},
        )
        st.width, st.height, st.pix_fmt = W, H, "yuv420p"
        st.codec_context.thread_count = 1
        st.codec_context.time_base = Fraction(1, fps)
        for i in range(T):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i]), format="rgb24")
            vf.pts = i
            vf.time_base = Fraction(1, fps)
            for pkt in st.encode(vf):
                out.mux(pkt)
        for pkt in st.encode(None):
            out.mux(pkt)
    os.replace(tmp, p)
    return p.stat().st_size


def decode_mp4(path: str | os.PathLike[str]) -> np.ndarray:
    """All frames of a video as uint8 [T, H, W, 3] RGB (for checks and tests)."""
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
