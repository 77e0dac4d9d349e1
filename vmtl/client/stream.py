"""Stream one long video's per-window results from the ``vmtl_stream`` ensemble (upload once).

::

    with client.stream("match.mp4", tasks=["motion"], window=4.0) as windows:
        for w in windows:                      # WindowResults in window order, as they arrive
            print(w.start, w["motion"].summary())

The encoded file is sent **once** over gRPC's bidirectional stream (``ModelStreamInfer``): in one
request, or, when the server's ``video_stream`` takes chunked uploads (config parameter
``upload_chunk_bytes``) and the file is larger than a chunk, as its first chunk in the stream request
and the rest from a background thread straight to ``video_stream`` (a second gRPC stream, paced by the
server's acknowledgements so it keeps just ahead of the decoding; a path is read chunk by chunk), so the
server decodes the first windows while the rest is on its way. The server's decoupled ``video_stream``
decoder decodes it front to back and answers one response per window as soon as its frames are
decoded; each window's clip runs through the backbone (the dynamic batcher groups windows) and the asked
heads. Responses may arrive out of order: they are buffered and yielded by window index. The end is
Triton's final-response flag (``enable_empty_final_response``); a decoder error ends the stream after
the windows decoded so far (they are yielded first, then :class:`InferenceError` is raised).

Cancelling (closing the stream early, ``break`` in the loop, Ctrl-C): the gRPC stream is cancelled, and
because Triton 2.51 does not pass a cancel through an ensemble to its decoupled first step, a stop
request naming this stream's id goes straight to ``video_stream``; the decoder checks for it before every
window, so decoding (and with it any further trunk run for the video) stops at once.

The largest file is the server's ``video_stream`` ``max_video_bytes``; sent in one request, also
Triton's gRPC limit (INT32_MAX bytes, less room for the request's other fields). Above it
:class:`InputError` says so and points to clip mode (decode here, send clips). A chunk the server refuses
ends the stream with its reason (:class:`InferenceError`).
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

# The client module imports this one (VmtlClient.stream): its names are read at call time.
from vmtl.client import client as _client
from vmtl.contract import (
    PARAM_CANCEL,
    PARAM_STREAM_ID,
    PARAM_TASKS,
    PARAM_UPLOAD_BYTES,
    PARAM_UPLOAD_OFFSET,
    STREAM_ENSEMBLE,
    STREAM_EXTRA_OUTPUTS,
    STREAM_RANGE,
    STREAM_WINDOWING,
    UPLOAD_CHUNK_PARAM,
    VIDEO_STREAM,
    WINDOW_INDEX_OUTPUT,
)
from vmtl.tasks import combine_windows, postprocess

__all__ = ["StreamInfo", "WindowStream", "stream_info", "video_result"]

#: Seconds to wait for the decoder to acknowledge a stop request.
STOP_TIMEOUT_S = 5.0
#: Upload chunks sent and not yet acknowledged (the server acknowledges as its decoder nears them).
UPLOAD_INFLIGHT = 2


@dataclass(frozen=True)
class StreamInfo:
    """What the server's streaming path accepts: whether it exists, and the largest payload."""

    available: bool
    max_bytes: int  # 0: no cap besides gRPC's
    reason: str = ""
    chunk_bytes: int = 0  # the upload chunk size (0: a repository that takes one payload per stream)


def stream_info(client: _client.VmtlClient) -> StreamInfo:
    """Whether ``client``'s server serves ``vmtl_stream`` (ready) and its ``video_stream`` payload cap;
    read once per client."""
    cached = getattr(client, "_stream_info", None)
    if cached is not None:
        return cached
    raw = client._client
    try:
        ready = bool(raw.is_model_ready(STREAM_ENSEMBLE, client_timeout=client.connect_timeout))
        cfg = (
            raw.get_model_config(VIDEO_STREAM, client_timeout=client.connect_timeout).config
            if ready
            else None
        )
    except InferenceServerException:
        ready, cfg = False, None
    if not ready or cfg is None:
        info = StreamInfo(
            False,
            0,
            f"the server at {client.url} has no ready {STREAM_ENSEMBLE!r} model (a repository exported "
            "before streaming); re-export it, or use per-window requests",
        )
    else:
        info = StreamInfo(
            True, _int_param(cfg, "max_video_bytes"), chunk_bytes=_int_param(cfg, UPLOAD_CHUNK_PARAM)
        )
    client._stream_info = info  # type: ignore[attr-defined]
    return info


class _Payload:
    """The file to send: bytes in memory, or a path read one chunk at a time (a long video is never held
    whole by the client when it goes up in chunks)."""

    def __init__(self, source: bytes | Path, size: int) -> None:
        self._source = source
        self.size = size

    def read(self, offset: int, n: int) -> bytes:
        if isinstance(self._source, bytes):
            return self._source[offset : offset + n]
        with open(self._source, "rb") as f:
            f.seek(offset)
            data = f.read(n)
        if len(data) != min(n, self.size - offset):
            raise OSError(f"{self._source} changed while it was being sent")
        return data


def _payload(client: _client.VmtlClient, source: Any, name: str, chunked: bool) -> _Payload:
    """What :func:`open_stream` sends: a path stays on disk when the upload is chunked."""
    if chunked and isinstance(source, (str, os.PathLike)) and Path(source).is_file():
        size = Path(source).stat().st_size
        if size:
            return _Payload(Path(source), size)
    data = client._read_payload(source, name)
    return _Payload(data, len(data))


def _bytes_input(data: bytes) -> Any:
    """``video_bytes`` [1, 1]: the file, one chunk of it, or nothing (a stop request)."""
    payload = grpcclient.InferInput("video_bytes", [1, 1], "BYTES")
    payload.set_data_from_numpy(np.array([[data]], dtype=np.object_))
    return payload


def _windowing_input(window: float, stride: float) -> Any:
    windowing = grpcclient.InferInput(STREAM_WINDOWING, [1, 2], "FP32")
    windowing.set_data_from_numpy(np.array([[window, stride]], np.float32))
    return windowing


def _int_param(cfg: Any, key: str) -> int:
    value = cfg.parameters[key].string_value if key in cfg.parameters else ""
    try:
        return max(int(value or 0), 0)
    except ValueError:
        return 0


class WindowStream:
    """The per-window results of one video, in window order (an iterator and a context manager).

    ``count``: the number of windows the server expects (known with the first response; None before).
    ``bytes_sent``: the payload bytes sent (the file's size: it is sent once). ``first_window_s``: seconds
    from the request to the first response. :meth:`close` cancels a stream that has not ended.
    """

    def __init__(
        self,
        client: _client.VmtlClient,
        data: bytes | _Payload,
        name: str,
        names: list[str],
        *,
        window: float,
        stride: float,
        start: float | None = None,
        end: float | None = None,
        chunk_bytes: int = 0,
    ) -> None:
        self._owner = client
        self.name = name
        self.names = names
        self.window, self.stride = window, stride
        self.count: int | None = None
        self.first_window_s: float | None = None
        self.bytes_sent = 0
        self.stream_id = uuid.uuid4().hex
        self._queue: queue.Queue[tuple[Any, Any]] = queue.Queue()
        self._pending: dict[int, _client.WindowResult] = {}
        self._next = 0
        self._done = False
        self._error: Exception | None = None  # a server error, raised after the windows before it
        self._url = client._endpoint(None).url  # the stream and its stop request go to one server
        self._grpc = client._new_grpc_client(self._url)
        self._uploader: threading.Thread | None = None
        self._stop_upload = threading.Event()
        try:
            self._grpc.start_stream(callback=self._on_response)
            payload = data if isinstance(data, _Payload) else _Payload(bytes(data), len(data))
            chunked = 0 < chunk_bytes < payload.size
            first = payload.read(0, chunk_bytes if chunked else payload.size)
            self._send(first, start, end, payload.size if chunked else 0)
        except InferenceServerException as exc:
            self._grpc.close()
            raise client._server_error(exc, name) from exc
        except BaseException:
            self._grpc.close()
            raise
        self._t0 = time.perf_counter()
        if chunked:  # the rest of the file goes up while the first windows come back
            self._uploader = threading.Thread(
                target=self._upload, args=(payload, chunk_bytes), name="vmtl-upload", daemon=True
            )
            self._uploader.start()

    # -- sending -------------------------------------------------------------------------------------
    def _send(self, data: bytes, start: float | None, end: float | None, total: int) -> None:
        """The stream request: the whole file, or (``total`` > 0) its first chunk of a chunked upload."""
        inputs = [_bytes_input(data), _windowing_input(self.window, self.stride)]
        if start is not None or end is not None:
            span = grpcclient.InferInput(STREAM_RANGE, [1, 2], "FP32")
            bounds = [-1.0 if start is None else start, -1.0 if end is None else end]
            span.set_data_from_numpy(np.array([bounds], np.float32))
            inputs.append(span)
        outputs = [grpcclient.InferRequestedOutput(n) for n in [*self.names, *STREAM_EXTRA_OUTPUTS]]
        params: dict[str, Any] = {PARAM_TASKS: ",".join(self.names), PARAM_STREAM_ID: self.stream_id}
        if total:
            params[PARAM_UPLOAD_BYTES] = total
        self._grpc.async_stream_infer(
            STREAM_ENSEMBLE,
            inputs,
            outputs=outputs,
            enable_empty_final_response=True,
            parameters=params,
        )
        self.bytes_sent += len(data)

    def _upload(self, data: _Payload, chunk: int) -> None:
        """Send the chunks after the first straight to ``video_stream`` (one gRPC stream, in order), at
        most ``UPLOAD_INFLIGHT`` unacknowledged: the server acknowledges a chunk when its decoder nears
        it, so the upload keeps just ahead of the decoding. A refused chunk ends the stream with the
        server's reason."""
        acks: queue.Queue[Any] = queue.Queue()
        up = self._owner._new_grpc_client(self._url)
        offsets = list(range(chunk, data.size, chunk))
        acked = 0
        try:
            up.start_stream(callback=lambda result, error: acks.put(error))
            windowing = _windowing_input(self.window, self.stride)
            for sent, offset in enumerate(offsets):
                while sent - acked >= UPLOAD_INFLIGHT:
                    if not self._acknowledged(acks):
                        return
                    acked += 1
                up.async_stream_infer(
                    VIDEO_STREAM,
                    [_bytes_input(data.read(offset, chunk)), windowing],
                    enable_empty_final_response=True,
                    parameters={
                        PARAM_STREAM_ID: self.stream_id,
                        PARAM_UPLOAD_BYTES: data.size,
                        PARAM_UPLOAD_OFFSET: offset,
                    },
                )
                self.bytes_sent += min(chunk, data.size - offset)
            while acked < len(offsets):
                if not self._acknowledged(acks):
                    return
                acked += 1
            up.stop_stream()
        except InferenceServerException as exc:
            self._queue.put((None, exc))
        except OSError as exc:  # the file went away or changed under the upload
            self._queue.put((None, InferenceServerException(f"{self.name}: cannot read ({exc})")))
        finally:
            up.close()

    def _acknowledged(self, acks: queue.Queue[Any]) -> bool:
        """Wait for one chunk's acknowledgement; False when the stream ended or the chunk was refused
        (its error then ends the stream)."""
        while not self._stop_upload.is_set():
            try:
                error = acks.get(timeout=0.5)
            except queue.Empty:
                continue
            if error is not None:
                self._queue.put((None, error))
                return False
            return True
        return False

    def _on_response(self, result: Any, error: Any) -> None:
        self._queue.put((result, error))

    # -- receiving -----------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[_client.WindowResult]:
        return self

    def __next__(self) -> _client.WindowResult:
        while True:
            if self._next in self._pending:
                self._next += 1
                return self._pending.pop(self._next - 1)
            if self._done:
                if self._error is not None:
                    self._pending.clear()
                    raise self._error
                if self._pending:  # the final flag came but windows are missing (dropped on the way)
                    self._pending.clear()
                    raise _client.InferenceError(f"{self.name}: the stream ended without window {self._next}")
                raise StopIteration
            self._receive()

    def _receive(self) -> None:
        """Wait for one response: buffer a window, or mark the end (final flag or error)."""
        try:
            result, error = self._queue.get(timeout=self._owner.timeout)
        except queue.Empty:
            self.close()
            raise _client.InferenceError(
                f"{self.name}: no window from {self._owner.url} within {self._owner.timeout:g} s"
            ) from None
        if error is not None:  # the end: the windows before it are delivered first, then this
            self._error = self._owner._server_error(error, self.name)
            self._finish(cancel=True)
            return
        response = result.get_response()
        final = response.parameters["triton_final_response"].bool_param if response.parameters else False
        if result.as_numpy(WINDOW_INDEX_OUTPUT) is not None:
            if self.first_window_s is None:
                self.first_window_s = time.perf_counter() - self._t0
            window = self._window(result)
            index = int(result.as_numpy(WINDOW_INDEX_OUTPUT)[0][0])
            if index >= self._next:
                self._pending[index] = window
        if final:
            self._finish()

    def _window(self, result: Any) -> _client.WindowResult:
        index, count = (int(v) for v in result.as_numpy(WINDOW_INDEX_OUTPUT)[0])
        self.count = count
        geometry = _client._geometry(result, 0, self.name)
        per_clip = {}
        for n in self.names:
            array = result.as_numpy(n)
            if array is None:
                raise _client.InferenceError(
                    f"{self.name}: window {index}: the server's answer has no output {n!r}"
                )
            per_clip[n] = array[0]
        graph = self._owner.graph
        try:
            tasks = {n: postprocess(graph.task(n), per_clip[n], geometry) for n in self.names}
        except ValueError as exc:
            raise _client.InferenceError(f"{self.name}: cannot post-process window {index}: {exc}") from exc
        return _client.WindowResult(
            start=geometry.start,
            end=geometry.end,
            timestamps=geometry.timestamps,
            crop=geometry.crop,
            tasks=tasks,
            outputs=per_clip,
        )

    # -- ending --------------------------------------------------------------------------------------
    def _finish(self, cancel: bool = False) -> None:
        """The server ended the stream (final flag, or an error: no final flag follows): close it."""
        if not self._done:
            self._done = True
            self._stop_upload.set()
            try:
                self._grpc.stop_stream(cancel_requests=cancel)
            finally:
                self._grpc.close()

    def close(self) -> None:
        """Cancel the stream if it has not ended (the server stops decoding); idempotent."""
        if self._done:
            return
        self._done = True
        self._stop_upload.set()
        self._pending.clear()
        try:
            self._grpc.stop_stream(cancel_requests=True)
        finally:
            self._grpc.close()
        self._owner_stop()

    def _owner_stop(self) -> None:
        """Send the stop request for this stream straight to the decoder (see the module docstring)."""
        stop = self._owner._new_grpc_client(self._url)
        acked: queue.Queue[Any] = queue.Queue()
        try:
            stop.start_stream(callback=lambda result, error: acked.put(error))
            stop.async_stream_infer(
                VIDEO_STREAM,
                [_bytes_input(b""), _windowing_input(1.0, 1.0)],
                enable_empty_final_response=True,
                parameters={PARAM_CANCEL: self.stream_id},
            )
            with contextlib.suppress(queue.Empty):
                acked.get(timeout=STOP_TIMEOUT_S)
            stop.stop_stream()
        except InferenceServerException:
            pass  # the server is gone: nothing decodes there any more
        finally:
            stop.close()

    def __enter__(self) -> WindowStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_done", True):
            with contextlib.suppress(Exception):
                self.close()


def open_stream(
    client: _client.VmtlClient,
    source: Any,
    names: list[str],
    name: str,
    *,
    window: float,
    stride: float,
    start: float | None = None,
    end: float | None = None,
) -> WindowStream:
    """Check the server's streaming path and the payload size, then start a :class:`WindowStream`."""
    info = stream_info(client)
    if not info.available:
        raise _client.ServerContractError(info.reason)
    data = _payload(client, source, name, info.chunk_bytes > 0)
    # Sent in chunks, a file is bound by the server's cap only (0: none); in one request, also by gRPC's.
    limit, what = info.max_bytes, "video_stream max_video_bytes"
    if not info.chunk_bytes and not 0 < info.max_bytes < GRPC_LIMIT:
        limit, what = GRPC_LIMIT, "gRPC"
    if limit and data.size > limit:
        raise _client.InputError(
            f"{name}: {data.size} bytes ({data.size / 2**20:.1f} MiB) exceeds the largest video one "
            f"stream can carry ({limit} bytes, {limit / 2**20:.1f} MiB: {what}); decode on this side "
            "and send clips instead (mode='clip', --mode clip)"
        )
    return WindowStream(
        client, data, name, names, window=window, stride=stride, start=start, end=end,
        chunk_bytes=info.chunk_bytes,
    )  # fmt: skip


#: The payload one streaming request carries at most: gRPC's INT32_MAX less 1 MiB for the rest.
GRPC_LIMIT = 2**31 - 2**20


def video_result(
    client: _client.VmtlClient,
    name: str,
    names: Sequence[str],
    windows: list[_client.WindowResult],
    *,
    window: float,
    stride: float,
    seconds: float,
    mode: str = "bytes",
) -> _client.VideoResult:
    """Windows combined into a whole-video result, as :meth:`VmtlClient.analyze` does."""
    if not windows:
        raise _client.ClientError(f"{name}: nothing was analysed")
    combined = {n: combine_windows(client.graph.task(n), [w.tasks[n] for w in windows]) for n in names}
    return _client.VideoResult(
        source=name,
        mode=mode,
        tasks=combined,
        windows=windows,
        windowed=True,
        window=window,
        stride=stride,
        seconds=seconds,
    )
