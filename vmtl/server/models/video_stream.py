"""Triton python-backend model ``video_stream``: one encoded video -> one sampled clip per window, streamed.

Copied by ``vmtl.export.repository.write_repository`` to ``video_stream/1/model.py``; the first step of
the ``vmtl_stream`` ensemble. A **decoupled** model (``model_transaction_policy { decoupled: true }``):
each request takes the encoded file once and is answered with one response per sliding window, sent as
soon as that window's frames are decoded (:func:`vmtl.video.window_stream`: the file is indexed as far as
the next window needs, and decoded front to back, seeking only where the sampling skips whole GOPs), then
the final flag. The backbone's dynamic batcher groups the windows (of this stream and of others) and the
heads follow.

Chunked uploads (config parameter ``upload_chunk_bytes``: the chunk size clients use). The stream
request carries the first chunk and the file's size (request parameter ``vmtl_upload_bytes``); the
other chunks come straight to this model (not through the ensemble) with the same ``vmtl_stream_id``
and their ``vmtl_upload_offset``. Each is answered with an empty final response once the decoder has
asked for bytes within two chunks of it (at once when it has; the client keeps two chunks
unacknowledged, so the upload runs just ahead of the decoding rather than competing with the first
windows for the CPU), or with an error when it does not fit, which also ends the stream. The decoder
reads a :class:`vmtl.upload_buffer.UploadBuffer` whose reads wait for the bytes still to come, so the
first windows are sent while the file is still arriving (when its index is in front). This model runs
one instance, so every chunk meets its stream; a chunk that overtakes the stream request waits in the
buffer. An upload idle for ``upload_stall_s`` (default 30 s) ends its stream with an error.

Inputs: ``video_bytes`` BYTES [1]; ``windowing`` FP32 [2] = (window, stride) seconds; optional ``range``
FP32 [2] = (start, end) seconds to cover (a negative or NaN bound: from the start / to the end).
Outputs per response (batch 1): ``video`` UINT8 [T,S,S,3], ``timestamps`` FP64 [T], ``crop`` FP32 [3],
``window`` FP32 [2] (start, end sampled), ``window_index`` INT64 [2] (this window's index, the number of
windows the stream expects). Responses may reach the client out of order (the batcher, a cache hit):
the client sorts them by index.

Errors: a payload that cannot be opened, an empty or oversized one (config parameter
``max_video_bytes``; for a chunked upload, its announced size) or bad windowing is answered with one
error response. A video that fails part-way (a file cut short, a decode error) is answered with the
windows decoded so far, then one error response naming the cause; the error carries the final flag.
The server and the other streams carry on.

Stopping a stream. Through an ensemble Triton 2.51 never tells this model that its client cancelled
(``is_cancelled()`` stays false; the ensemble only stops forwarding), so the decoder would decode the
whole file for nobody. Two signals stop it between two windows:

- ``is_cancelled()`` on the response sender (works when the model is called directly);
- a stop request: the client gives each stream an id (request parameter ``vmtl_stream_id``) and, on
  close or Ctrl-C, sends a request straight to ``video_stream`` with the parameter ``vmtl_cancel`` = that
  id. Any instance may receive it, so it is recorded as a marker file in a directory shared by the
  model's instances (under the system temp directory, per model repository); each stream checks its
  marker before every window (one ``stat``). The stop request is answered at once with an empty final
  response, and markers older than an hour are swept.

Requests are served on threads (``max_streams`` config parameter: streams one instance decodes at
once, default 4; more wait for a slot), so a stop request never waits behind a long stream.

Prometheus counters (labelled ``model``): ``vmtl_stream_windows_total`` (windows sent) and
``vmtl_stream_stopped_total`` (streams stopped early by a cancel).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from vmtl.contract import (
    DEFAULT_UPLOAD_CHUNK_BYTES,
    PARAM_CANCEL,
    PARAM_STREAM_ID,
    PARAM_UPLOAD_BYTES,
    PARAM_UPLOAD_OFFSET,
    STREAM_RANGE,
    STREAM_WINDOWING,
    UPLOAD_CHUNK_PARAM,
)
from vmtl.server.hosting import BadRequest, ClipSpec, config_and_params
from vmtl.upload_buffer import UploadBuffer, UploadError
from vmtl.video import VideoError, window_stream

#: One payload's default cap: what one gRPC request to Triton 2.51 can carry, less room for the rest.
_DEFAULT_MAX_BYTES = 2**31 - 2**20
_MARKER_TTL_S = 3600.0
#: An upload nobody streams (its stream request failed, or never came) is dropped after this long idle.
_UPLOAD_TTL_S = 600.0
_FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _bound(value: float) -> float | None:
    value = float(value)
    return None if math.isnan(value) or value < 0 else value


def _safe_id(value: Any) -> str:
    """A stream id usable as a file name (hex digest of whatever the client sent)."""
    return hashlib.sha1(str(value).encode()).hexdigest()


class TritonPythonModel:
    """Decode one video front to back and send each window's clip as its own response."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.name = config.get("name") or "video_stream"
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException(
                f"{self.name}: needs model_transaction_policy {{ decoupled: true }} (re-export the repository)"
            )
        params = config_and_params(args)[1]
        try:
            spec = ClipSpec.from_params(params, self.name, _DEFAULT_MAX_BYTES)
        except ValueError as exc:
            raise pb_utils.TritonModelException(str(exc)) from exc
        self.num_frames, self.size, self.sampling = spec.num_frames, spec.size, spec.sampling
        self.max_bytes = spec.max_bytes
        self.slots = threading.Semaphore(max(int(params.get("max_streams") or 4), 1))
        self.chunk_bytes = int(params.get(UPLOAD_CHUNK_PARAM) or DEFAULT_UPLOAD_CHUNK_BYTES)
        self.stall_s = float(params.get("upload_stall_s") or 30.0)
        self.uploads: dict[str, tuple[UploadBuffer, float]] = {}  # stream id -> (buffer, last touched)
        repo = Path(args["model_repository"]).resolve()
        key = hashlib.sha1(str(repo).encode()).hexdigest()[:16]
        self.markers = Path(tempfile.gettempdir()) / f"vmtl-stream-stop-{key}"
        self.markers.mkdir(parents=True, exist_ok=True)
        self.threads: set[threading.Thread] = set()
        self.lock = threading.Lock()
        labels = {"model": self.name}
        windows = pb_utils.MetricFamily(
            name="vmtl_stream_windows_total",
            description="Windows the streaming decoder sent",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        stopped = pb_utils.MetricFamily(
            name="vmtl_stream_stopped_total",
            description="Streams the streaming decoder stopped early on a cancel",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.windows_metric = windows.Metric(labels=labels)
        self.stopped_metric = stopped.Metric(labels=labels)
        self._families = (windows, stopped)

    # -- requests --------------------------------------------------------------------------------------
    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            sender = request.get_response_sender()
            try:
                raw = request.parameters()
                params = json.loads(raw) if raw else {}
                if PARAM_CANCEL in params:
                    self._stop(params[PARAM_CANCEL])
                    sender.send(flags=_FINAL)
                    continue
                if PARAM_UPLOAD_OFFSET in params:
                    self._chunk(request, params, sender)  # acknowledged when the decoder nears it
                    continue
                job = self._job(request, params)
            except BadRequest as exc:
                sender.send(_error(str(exc)), flags=_FINAL)
                continue
            except Exception as exc:
                sender.send(_error(f"{self.name}: bad request: {type(exc).__name__}: {exc}"), flags=_FINAL)
                continue
            thread = threading.Thread(target=self._serve, args=(sender, *job), daemon=True)
            with self.lock:
                self.threads.add(thread)
            thread.start()
        return None

    def _job(self, request: Any, params: dict[str, Any]) -> tuple:
        """(payload, window, stride, start, end, stream id) of a stream request; BadRequest if bad. The
        payload is the file's bytes, or for a chunked upload its buffer (made last, once all else is
        valid, so a refused request leaves no upload behind)."""
        data = self._payload(request)
        wt = pb_utils.get_input_tensor_by_name(request, STREAM_WINDOWING)
        if wt is None:
            raise BadRequest(f"{self.name}: missing input '{STREAM_WINDOWING}' (window, stride seconds)")
        windowing = wt.as_numpy().reshape(-1)
        if windowing.size != 2 or not all(math.isfinite(v) and v > 0 for v in windowing):
            raise BadRequest(
                f"{self.name}: input '{STREAM_WINDOWING}' must be (window, stride) seconds > 0, "
                f"got {windowing.tolist()}"
            )
        start = end = None
        rt = pb_utils.get_input_tensor_by_name(request, STREAM_RANGE)
        if rt is not None:
            span = rt.as_numpy().reshape(-1)
            if span.size != 2:
                raise BadRequest(f"{self.name}: input '{STREAM_RANGE}' must be (start, end) seconds")
            start, end = _bound(span[0]), _bound(span[1])
            if start is not None and end is not None and end <= start:
                raise BadRequest(f"{self.name}: range end {end:g} s is not after its start {start:g} s")
        stream_id = _safe_id(params[PARAM_STREAM_ID]) if PARAM_STREAM_ID in params else None
        source: bytes | UploadBuffer = data
        if PARAM_UPLOAD_BYTES in params:  # chunked: this request carries the first chunk
            if stream_id is None:
                raise BadRequest(f"{self.name}: a chunked upload needs the parameter {PARAM_STREAM_ID!r}")
            total = int(params[PARAM_UPLOAD_BYTES])
            self._check_size(total)
            source = self._upload(stream_id, total)
            try:
                source.append(0, data)
            except UploadError as exc:
                source.abort(str(exc))
                raise BadRequest(f"{self.name}: {exc}") from exc
        else:
            self._check_size(len(data))
        return source, float(windowing[0]), float(windowing[1]), start, end, stream_id

    def _payload(self, request: Any) -> bytes:
        """The bytes of the request's one ``video_bytes`` item (the file, or a chunk of it)."""
        tensor = pb_utils.get_input_tensor_by_name(request, "video_bytes")
        if tensor is None:
            raise BadRequest(f"{self.name}: missing input 'video_bytes'")
        items = tensor.as_numpy().reshape(-1)
        if items.size != 1:
            raise BadRequest(f"{self.name}: input 'video_bytes' expected one item, got {items.size}")
        item = items[0]
        return item.encode("latin-1") if isinstance(item, str) else bytes(item)

    def _check_size(self, size: int) -> None:
        if size <= 0:
            raise BadRequest(f"{self.name}: empty payload (0 bytes); send the encoded video file's bytes")
        if self.max_bytes > 0 and size > self.max_bytes:
            raise BadRequest(
                f"{self.name}: payload of {size} bytes ({_mib(size)}) exceeds the limit of "
                f"{self.max_bytes} bytes ({_mib(self.max_bytes)}; {self.name} parameter max_video_bytes); "
                "decode on the client side instead (mode='clip', --mode clip)"
            )

    # -- chunked uploads ---------------------------------------------------------------------------------
    def _upload(self, stream_id: str, total: int) -> UploadBuffer:
        """The buffer of upload ``stream_id`` (made by whichever of its requests comes first)."""
        now = time.monotonic()
        with self.lock:
            for key, (_, touched) in list(self.uploads.items()):
                if now - touched > _UPLOAD_TTL_S:
                    self.uploads.pop(key)[0].abort("upload abandoned")
            entry = self.uploads.get(stream_id)
            if entry is None:
                entry = (UploadBuffer(total, stall_s=self.stall_s, ahead=2 * self.chunk_bytes), now)
            elif entry[0].total != total:
                raise BadRequest(
                    f"{self.name}: upload {stream_id[:8]} was announced as {entry[0].total} bytes, "
                    f"now as {total}"
                )
            self.uploads[stream_id] = (entry[0], now)
            return entry[0]

    def _chunk(self, request: Any, params: dict[str, Any], sender: Any) -> None:
        """One chunk of an upload (sent straight to this model): append it, and acknowledge it once the
        decoder has asked for bytes within two chunks of it (the client keeps only a few unacknowledged,
        so the upload runs just ahead of the decoding); BadRequest if it does not fit."""
        if PARAM_STREAM_ID not in params or PARAM_UPLOAD_BYTES not in params:
            raise BadRequest(
                f"{self.name}: a chunk needs the parameters {PARAM_STREAM_ID!r} and {PARAM_UPLOAD_BYTES!r}"
            )
        total = int(params[PARAM_UPLOAD_BYTES])
        self._check_size(total)
        chunk = self._payload(request)
        buffer = self._upload(_safe_id(params[PARAM_STREAM_ID]), total)
        offset = int(params[PARAM_UPLOAD_OFFSET])
        try:
            buffer.append(offset, chunk)
        except UploadError as exc:
            buffer.abort(str(exc))  # the stream cannot complete: end it with this reason
            raise BadRequest(f"{self.name}: {exc}") from exc

        def ack() -> None:  # may run on the decoder's thread: never let it fail there
            with contextlib.suppress(Exception):
                sender.send(flags=_FINAL)

        buffer.hold(offset, ack)

    # -- streaming ---------------------------------------------------------------------------------------
    def _serve(self, sender: Any, *job: Any) -> None:
        try:
            with self.slots:
                self._stream(sender, *job)
        except Exception as exc:  # never leave a stream without its final response
            with contextlib.suppress(Exception):
                sender.send(_error(f"{self.name}: {type(exc).__name__}: {exc}"), flags=_FINAL)
        finally:
            with self.lock:
                self.threads.discard(threading.current_thread())

    def _stream(
        self,
        sender: Any,
        data: bytes | UploadBuffer,
        window: float,
        stride: float,
        start: float | None,
        end: float | None,
        stream_id: str | None,
    ) -> None:
        marker = self.markers / stream_id if stream_id else None
        sent = 0
        try:
            stream = window_stream(
                data,
                self.num_frames,
                self.size,
                window=window,
                stride=stride,
                sampling=self.sampling,
                start=start,
                end=end,
            )
            for index, clip in stream:
                if sender.is_cancelled() or (marker is not None and marker.exists()):
                    stream.close()
                    self.stopped_metric.increment(1)
                    sender.send(flags=_FINAL)
                    return
                sender.send(_window_response(clip, index, stream.count))
                sent += 1
                self.windows_metric.increment(1)
        except (VideoError, ValueError) as exc:
            if marker is not None and marker.exists():  # stopped while waiting for upload chunks
                self.stopped_metric.increment(1)
                sender.send(flags=_FINAL)
                return
            done = f" after {sent} window{'s' if sent != 1 else ''}" if sent else ""
            sender.send(_error(f"{self.name}: {exc}{done}"), flags=_FINAL)
            return
        finally:
            if marker is not None:
                marker.unlink(missing_ok=True)
            if isinstance(data, UploadBuffer):
                data.abort("the stream ended")  # late chunks of a failed stream are refused
                with self.lock:
                    self.uploads.pop(stream_id or "", None)
        sender.send(flags=_FINAL)

    def _stop(self, stream_id: Any) -> None:
        """Record a stop request for stream ``stream_id`` (seen by every instance); sweep old markers."""
        key = _safe_id(stream_id)
        (self.markers / key).touch()
        with self.lock:
            entry = self.uploads.pop(key, None)
        if entry is not None:  # a decoder waiting for the rest of the file stops waiting
            entry[0].abort("stopped by the client")
        now = time.time()
        for old in self.markers.iterdir():
            try:
                if now - old.stat().st_mtime > _MARKER_TTL_S:
                    old.unlink()
            except OSError:
                pass

    def finalize(self) -> None:
        with self.lock:
            threads = list(self.threads)
        for thread in threads:
            thread.join(timeout=5)


def _window_response(clip: Any, index: int, count: int) -> Any:
    outputs = {
        "video": np.ascontiguousarray(clip.frames, dtype=np.uint8)[None],
        "timestamps": np.asarray(clip.timestamps, dtype=np.float64)[None],
        "crop": np.asarray(clip.crop, dtype=np.float32)[None],
        "window": np.asarray([[clip.start, clip.end]], dtype=np.float32),
        "window_index": np.asarray([[index, count]], dtype=np.int64),
    }
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(n, v) for n, v in outputs.items()])


def _error(message: str) -> Any:
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))
