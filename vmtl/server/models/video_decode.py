"""Triton python-backend model ``video_decode``: encoded video bytes -> sampled uint8 clip (PyAV).

Copied by ``vmtl.export.repository.write_repository`` to ``video_decode/1/model.py``. It decodes with
``vmtl.video.read_clip`` using the repository's preprocessing spec (config parameter ``vmtl_preprocess``:
num_frames, size, sampling), so serving samples frames exactly as training and offline inference do.

Inputs (per batch item): ``video_bytes`` BYTES [1]; optional ``window`` FP32 [2] = (start, end) seconds
of the part of the video to sample (for sliding windows; a negative or NaN bound means "from the start" /
"to the end"). Outputs: ``video`` UINT8 [T,S,S,3], ``timestamps`` FP64 [T] (seconds of each sampled
frame), ``crop`` FP32 [3] (x0, y0, side of the square crop in source pixels), ``window`` FP32 [2] (the
start and end actually sampled).

Config parameter ``max_video_bytes`` (default 256 MiB, 0 = no cap) bounds one payload. A corrupt, empty,
non-video or oversized payload is answered with a ``TritonError`` carrying the reason; the other
requests of the batch and the server carry on.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from vmtl.server.hosting import BadRequest, ClipSpec, config_and_params

_DEFAULT_MAX_BYTES = 256 * 1024 * 1024


def _bound(value: float) -> float | None:
    value = float(value)
    return None if math.isnan(value) or value < 0 else value


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


class TritonPythonModel:
    """Decode + sample + resize, one request item at a time."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.name = config.get("name") or "video_decode"
        params = config_and_params(args)[1]
        try:
            spec = ClipSpec.from_params(params, self.name, _DEFAULT_MAX_BYTES)
        except ValueError as exc:
            raise pb_utils.TritonModelException(str(exc)) from exc
        self.num_frames, self.size, self.sampling = spec.num_frames, spec.size, spec.sampling
        self.max_bytes = spec.max_bytes
        try:
            from vmtl.video import VideoError, read_clip
        except ImportError as exc:
            raise pb_utils.TritonModelException(
                f"{self.name}: cannot import vmtl.video ({exc}); the python-backend stub needs vmtl on its "
                "PYTHONPATH (vmtl.server.launcher.server_env sets it)"
            ) from exc
        self._read_clip = read_clip
        self._video_error = VideoError

    def _payload(self, item: Any, where: str) -> bytes:
        if isinstance(item, np.ndarray):
            item = item.reshape(-1)[0] if item.size == 1 else item.tobytes()
        if isinstance(item, str):
            item = item.encode("latin-1")
        data = bytes(item)
        if not data:
            raise BadRequest(f"{where}: empty payload (0 bytes); send the encoded video file's bytes")
        if self.max_bytes > 0 and len(data) > self.max_bytes:
            raise BadRequest(
                f"{where}: payload of {len(data)} bytes ({_mib(len(data))}) exceeds the limit of "
                f"{self.max_bytes} bytes ({_mib(self.max_bytes)}; video_decode parameter max_video_bytes); "
                "send a shorter or smaller video"
            )
        return data

    def _decode(self, request: Any) -> Any:
        tensor = pb_utils.get_input_tensor_by_name(request, "video_bytes")
        if tensor is None:
            raise BadRequest(f"{self.name}: missing input 'video_bytes'")
        items = tensor.as_numpy()
        if items.ndim == 0 or items.shape[0] < 1:
            raise BadRequest(f"{self.name}: input 'video_bytes' expected [B,1], got {list(items.shape)}")
        batch = items.shape[0]
        items = items.reshape(batch, -1)
        if items.shape[1] != 1:
            raise BadRequest(
                f"{self.name}: input 'video_bytes' expected [B,1], got {list(tensor.as_numpy().shape)}"
            )
        windows = None
        wt = pb_utils.get_input_tensor_by_name(request, "window")
        if wt is not None:
            windows = wt.as_numpy()
            if windows.shape != (batch, 2):
                raise BadRequest(
                    f"{self.name}: input 'window' expected FP32 [{batch},2] (start, end seconds), "
                    f"got {windows.dtype.name} {list(windows.shape)}"
                )
        videos, stamps, crops, spans = [], [], [], []
        for b in range(batch):
            where = f"{self.name}: item {b}" if batch > 1 else self.name
            data = self._payload(items[b, 0], where)
            start = end = None
            if windows is not None:
                start, end = _bound(windows[b, 0]), _bound(windows[b, 1])
                if start is not None and end is not None and end <= start:
                    raise BadRequest(f"{where}: window end {end:g} s is not after its start {start:g} s")
            try:
                clip = self._read_clip(
                    data, self.num_frames, self.size, sampling=self.sampling, start=start, end=end
                )
            except self._video_error as exc:
                raise BadRequest(f"{where}: {exc}") from exc
            frames = np.asarray(clip.frames, dtype=np.uint8)
            want = (self.num_frames, self.size, self.size, 3)
            if frames.shape != want:
                raise BadRequest(
                    f"{where}: decoder returned frames {list(frames.shape)}, expected {list(want)}"
                )
            videos.append(frames)
            stamps.append(np.asarray(clip.timestamps, dtype=np.float64))
            crops.append(np.asarray(clip.crop, dtype=np.float32))
            spans.append(np.asarray([clip.start, clip.end], dtype=np.float32))
        outputs = {
            "video": np.stack(videos),
            "timestamps": np.stack(stamps),
            "crop": np.stack(crops),
            "window": np.stack(spans),
        }
        wanted = [n for n in request.requested_output_names() if n in outputs] or list(outputs)
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(n, outputs[n]) for n in wanted])

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                responses.append(self._decode(request))
            except BadRequest as exc:
                responses.append(
                    pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc)))
                )
            except Exception as exc:
                message = f"{self.name}: cannot decode the video: {type(exc).__name__}: {exc}"
                responses.append(
                    pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))
                )
        return responses
