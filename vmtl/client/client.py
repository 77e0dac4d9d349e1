"""gRPC client for a vmtl Triton server: send videos, get typed per-task results.

::

    from vmtl.client import VmtlClient

    with VmtlClient("localhost:8001") as client:
        result = client.analyze("bikes.mp4", tasks=["motion", "tags"])
        print(result["motion"].summary())
        long = client.analyze("match.mp4", window=4.0, stride=2.0)   # sliding windows + combined result

On connect the client reads the task graph and the preprocessing spec from the ``vmtl_clip`` and
``vmtl_video`` ensembles' config parameters (written by ``vmtl export``), checks them against each other
and against the ensembles' tensors, and from then on knows the tasks, their kinds and labels, and the
clip shape the trunk takes. Post-processing is :func:`vmtl.tasks.postprocess`, the same function the
training evaluation and the offline batch path use.

Two ways to send a video:

- ``mode="bytes"`` (default): the encoded file goes to ``vmtl_video``; the server decodes and samples it
  (its ``video_decode`` model runs :func:`vmtl.video.read_clip`) and returns the sampled frames'
  timestamps and crop with the task outputs.
- ``mode="clip"``: the client decodes with :func:`vmtl.video.read_clip` itself and sends the uint8 clip
  ``[T,S,S,3]`` to ``vmtl_clip`` (less to send for long or large files; the server does no decoding).

Only the outputs of the asked tasks are requested, so Triton's ensemble runs only those heads (and the
heads of their auxiliaries). No torch here (and no onnxruntime): numpy, PyAV and tritonclient only.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Union

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

from vmtl.client import stream as _stream
from vmtl.client.endpoints import (
    QUEUE_FULL_MESSAGE,
    Endpoint,
    EndpointPool,
    TlsOptions,
    diagnose_tls,
    is_server_failure,
    parse_urls,
)
from vmtl.contract import (
    BACKBONE,
    CLIP_ENSEMBLE,
    PARAM_GRAPH,
    PARAM_PREPROCESS,
    PARAM_TASKS,
    VIDEO_DECODE,
    VIDEO_ENSEMBLE,
    VIDEO_EXTRA_OUTPUTS,
)
from vmtl.tasks import Preprocess, TaskGraph, TaskGraphError, TaskResult, combine_windows, postprocess
from vmtl.video import Clip, VideoError, parse_sampling, probe, read_clip, sliding_windows

__all__ = [
    "CLIP_ENSEMBLE",
    "DEFAULT_URL",
    "VIDEO_ENSEMBLE",
    "ClientError",
    "InferenceError",
    "InputError",
    "ServerContractError",
    "ServerUnavailableError",
    "TlsError",
    "UnknownTaskError",
    "VideoResult",
    "VmtlClient",
    "WindowResult",
]

DEFAULT_URL = "localhost:8001"
#: Keys of :meth:`VideoResult.to_dict` besides the task names.
RESULT_KEYS = frozenset({"path", "windows", "error", "start", "end"})
SERVE_HINT = (
    "start one with `vmtl serve REPO` (REPO written by `vmtl export`; gRPC on port 8001 by default), "
    "or point --url at the server's gRPC endpoint"
)
_EPS = 1e-6  # seconds; as vmtl.video

Source = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, Clip]
Mode = Literal["bytes", "clip"]


@dataclass
class _ServerInfo:
    """What connecting learnt of one server."""

    version: str
    graph: TaskGraph
    max_batch_size: int
    video_unavailable: str | None
    max_video_bytes: int
    max_queue_size: int


# --------------------------------------------------------------------------------------------------
# Errors


class ClientError(Exception):
    """Anything that stops a video from being analysed; the message says what and, where known, why."""


class ServerUnavailableError(ClientError):
    """No Triton server answers at the URL (or it went away)."""


class TlsError(ServerUnavailableError):
    """The connection failed for a TLS reason (plain client at a TLS server or the other way round, an
    untrusted certificate, a client certificate missing); the message says which and what to pass."""


class ServerContractError(ClientError):
    """The server answers but does not serve a vmtl model repository this client can use."""


class UnknownTaskError(ClientError, ValueError):
    """A requested task is not one of the server's tasks (raised before any request is sent)."""


class InputError(ClientError, ValueError):
    """A local input cannot be sent: unreadable file, empty input, wrong clip shape or dtype."""


class InferenceError(ClientError):
    """The server refused or failed a request; ``status`` is the gRPC status, the message the server's."""

    def __init__(self, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.status = status


class ServerBusyError(InferenceError):
    """Refused at once for load: Triton's queue was full (``max_queue_size``), or this client already had
    ``max_pending`` requests in flight."""


# --------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class _ClipGeometry:
    """What post-processing needs of a clip the server decoded (satisfies vmtl.tasks.ClipLike)."""

    timestamps: np.ndarray
    crop: tuple[float, float, float]
    start: float
    end: float


@dataclass
class WindowResult:
    """Results for one sampled clip: a window ``[start, end)`` seconds of the video (the whole video when
    not windowed). ``outputs`` holds the raw head outputs (batch axis removed) for parity checks."""

    start: float
    end: float
    timestamps: np.ndarray
    crop: tuple[float, float, float]
    tasks: dict[str, TaskResult]
    outputs: dict[str, np.ndarray] = field(repr=False)

    def __getitem__(self, task: str) -> TaskResult:
        return self.tasks[task]

    def to_dict(self) -> dict[str, Any]:
        """``{"start": s, "end": s, <task>: {...}, ...}``."""
        return {"start": self.start, "end": self.end, **{n: r.to_dict() for n, r in self.tasks.items()}}


@dataclass
class VideoResult:
    """Per-task results for one video.

    ``tasks`` is the whole-video result: the one clip's, or with sliding windows the windows combined by
    :func:`vmtl.tasks.combine_windows` (mean scores, merged segments, all boxes). ``windows`` holds every
    clip analysed (one when not windowed). ``windowed`` says whether sliding windows were asked for.
    """

    source: str
    mode: str
    tasks: dict[str, TaskResult]
    windows: list[WindowResult]
    windowed: bool = False
    window: float | None = None
    stride: float | None = None
    seconds: float = 0.0

    def __getitem__(self, task: str) -> TaskResult:
        return self.tasks[task]

    @property
    def outputs(self) -> dict[str, np.ndarray]:
        """Raw head outputs of the first (for an unwindowed video: the only) clip."""
        return self.windows[0].outputs

    @property
    def start(self) -> float:
        return min(w.start for w in self.windows)

    @property
    def end(self) -> float:
        return max(w.end for w in self.windows)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"path": ..., "start": s, "end": s, <task>: {...}, ..., "windows": [...]}``.

        ``windows`` (a list of :meth:`WindowResult.to_dict`) is present only for sliding windows.
        """
        clash = sorted(RESULT_KEYS.intersection(self.tasks))
        if clash:
            raise ValueError(f"task names {clash} clash with result keys {sorted(RESULT_KEYS)}")
        out: dict[str, Any] = {"path": self.source, "start": self.start, "end": self.end}
        out.update({n: r.to_dict() for n, r in self.tasks.items()})
        if self.windowed:
            out["windows"] = [w.to_dict() for w in self.windows]
        return out


# --------------------------------------------------------------------------------------------------
# Requests


@dataclass
class _Request:
    """One inference request and how to read its answer: one item per clip in ``clips``."""

    model: str
    inputs: list[Any]
    outputs: list[Any]
    clips: list[Clip | None]  # None: the server decoded it (geometry comes back in the answer)


def _source_name(source: Source) -> str:
    if isinstance(source, Clip):
        return f"<clip of {len(source.frames)} frames>"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{memoryview(source).nbytes} bytes>"
    return os.fspath(source)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def _window_spans(duration: float, window: float, stride: float) -> list[tuple[float, float]]:
    """The (start, end) seconds of the sliding windows, exactly as :func:`vmtl.video.sliding_windows`."""
    spans = []
    k = 0
    while True:
        s = k * stride
        if k and s >= duration - _EPS:
            return spans
        spans.append((s, min(s + window, duration)))
        if s + window >= duration - _EPS:
            return spans
        k += 1


# --------------------------------------------------------------------------------------------------
# The client


class VmtlClient:
    """Client of one or several Triton servers that serve a vmtl model repository (see the module
    docstring).

    ``url`` is ``HOST:PORT``, or several (``"a:8001,b:8001"`` or a list) serving the same repository:
    each request goes to the healthy server with the fewest requests in flight from this client, and a
    request that fails because its server went away (unreachable, connection lost; not a refusal of the
    request itself) is sent again to another one, so that each gets exactly one answer while any server
    is left. A server that failed is set aside for ``cooldown`` seconds, then probed before it gets
    requests again. Servers unreachable on connect are set aside the same way (at least one must answer);
    a server serving another task graph is an error.

    ``tls`` connects over TLS (``ca``: the PEM file of the CA to trust, default the system's; ``cert`` and
    ``key``: a client certificate for servers that ask for one); giving ``ca`` or ``cert`` implies it. A
    failure that is TLS's raises :class:`TlsError` saying what to change.

    ``timeout`` bounds each inference request (seconds), ``connect_timeout`` the calls made on connect.
    ``expect`` (a :class:`vmtl.tasks.Preprocess`, a :class:`TaskGraph`, or a mapping with any of
    ``num_frames``, ``size``, ``sampling``) makes connecting fail unless the server's preprocessing
    matches it. ``max_in_flight`` bounds the requests one :meth:`analyze` call keeps in flight (sliding
    windows; a call waits for a free slot). ``max_pending`` bounds the requests the whole client has in
    flight, all calls and threads together: beyond it a request is refused at once with
    :class:`ServerBusyError` instead of queueing (load shedding: an overload costs neither side memory).
    The client is thread-safe: :meth:`analyze_many` shares it between worker threads.
    """

    def __init__(
        self,
        url: str | Sequence[str] = DEFAULT_URL,
        *,
        timeout: float = 300.0,
        connect_timeout: float = 10.0,
        expect: Preprocess | TaskGraph | dict[str, Any] | None = None,
        max_in_flight: int = 4,
        max_pending: int | None = None,
        tls: bool = False,
        ca: str | os.PathLike[str] | None = None,
        cert: str | os.PathLike[str] | None = None,
        key: str | os.PathLike[str] | None = None,
        cooldown: float = 5.0,
        verbose: bool = False,
    ) -> None:
        if timeout <= 0 or connect_timeout <= 0:
            raise ValueError("timeout and connect_timeout must be > 0 seconds")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        if max_pending is not None and max_pending < 1:
            raise ValueError(f"max_pending must be >= 1 (None: no bound), got {max_pending}")
        try:
            self.urls = parse_urls(url)
        except ValueError as exc:
            raise ServerUnavailableError(str(exc)) from exc
        self.url = ",".join(self.urls)
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout)
        self.max_in_flight = int(max_in_flight)
        self.max_pending = max_pending
        self._pending = threading.BoundedSemaphore(max_pending) if max_pending else None
        self.tls: TlsOptions | None = None
        if tls or ca is not None or cert is not None:
            files = [None if f is None else os.fspath(f) for f in (ca, cert, key)]
            for f in files:
                if f is not None and not Path(f).is_file():
                    raise TlsError(f"TLS problem: {f} does not exist (--ca/--cert/--key take PEM files)")
            try:
                self.tls = TlsOptions(*files)
            except ValueError as exc:
                raise TlsError(f"TLS problem: {exc}") from exc
        self._refresh_lock = threading.Lock()
        try:
            self._pool = EndpointPool(
                self.urls,
                self.tls,
                cooldown=cooldown,
                probe_timeout=min(connect_timeout, 2.0),
                verbose=verbose,
            )
        except Exception as exc:  # a malformed URL
            raise ServerUnavailableError(f"cannot create a gRPC client for {url!r}: {exc}") from exc
        self._client = self._pool.endpoints[0].client
        try:
            self._connect(expect)
        except BaseException:
            self.close()
            raise

    # -- connecting ---------------------------------------------------------------------------------
    def _unreachable(self, exc: InferenceServerException, url: str) -> ServerUnavailableError:
        cause = _first_line(exc.message() or str(exc))
        problem = diagnose_tls(url, self.tls, timeout=min(self.connect_timeout, 3.0))
        if problem is not None:
            return TlsError(f"TLS problem with the Triton server at {url}: {problem} (gRPC said: {cause})")
        return ServerUnavailableError(f"cannot reach a Triton server at {url} ({cause}); {SERVE_HINT}")

    def _endpoint(self, endpoint: Endpoint | None) -> Endpoint:
        """``endpoint``, or the first healthy one (for metadata calls)."""
        if endpoint is not None:
            return endpoint
        healthy = self._pool.healthy
        return healthy[0] if healthy else self._pool.endpoints[0]

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, url: str | None = None, **kw: Any) -> Any:
        """A metadata call; an unreachable server becomes ServerUnavailableError."""
        url = url or self._endpoint(None).url
        try:
            return fn(*args, client_timeout=self.connect_timeout, **kw)
        except InferenceServerException as exc:
            if _unavailable(exc):
                raise self._unreachable(exc, url) from exc
            raise ServerContractError(f"{url}: {what} failed: {exc.message() or exc}") from exc

    def _model_config(self, name: str, endpoint: Endpoint | None = None) -> mc.ModelConfig | None:
        ep = self._endpoint(endpoint)
        try:
            response = ep.client.get_model_config(name, client_timeout=self.connect_timeout)
        except InferenceServerException as exc:
            if _unavailable(exc):
                raise self._unreachable(exc, ep.url) from exc
            return None
        return response.config

    def _connect(self, expect: Preprocess | TaskGraph | dict[str, Any] | None) -> None:
        """Connect to every endpoint; the first that answers sets the task graph, the others must agree."""
        infos: list[tuple[Endpoint, _ServerInfo]] = []
        unreachable: list[ServerUnavailableError] = []
        for ep in self._pool:
            try:
                infos.append((ep, self._connect_endpoint(ep)))
            except ServerUnavailableError as exc:
                if len(self._pool) == 1:
                    raise
                self._pool.mark_down(ep, str(exc))
                unreachable.append(exc)
        if not infos:
            tls = [e for e in unreachable if isinstance(e, TlsError)]
            cls = TlsError if len(tls) == len(unreachable) else ServerUnavailableError
            raise cls("none of the Triton servers answers: " + "; ".join(str(e) for e in unreachable))
        first_ep, first = infos[0]
        for ep, info in infos[1:]:
            self._check_same(first, info, ep.url)
        self._client = first_ep.client
        self.server_version = first.version
        self.graph = first.graph
        self.preprocess = self.graph.preprocess
        self.max_batch_size = min(i.max_batch_size for _, i in infos)
        self.video_unavailable = next((i.video_unavailable for _, i in infos if i.video_unavailable), None)
        limits = [i.max_video_bytes for _, i in infos if i.max_video_bytes]
        self.max_video_bytes = min(limits) if limits else 0
        self.max_queue_size = first.max_queue_size
        self._info = first
        self._pool.check = lambda ep: self._check_same(first, self._connect_endpoint(ep), ep.url)
        if expect is not None:
            _check_expectation(self.preprocess, expect, self.url)
        try:
            self._sampling = parse_sampling(self.preprocess.sampling)
        except ValueError as exc:
            raise ServerContractError(
                f"{self.url}: the server's sampling {self.preprocess.sampling!r} is not one this client "
                f"can reproduce: {exc}"
            ) from exc

    @staticmethod
    def _check_same(first: _ServerInfo, other: _ServerInfo, url: str) -> None:
        """Servers of one client must serve the same repository (task graph, decoding available)."""
        if other.graph != first.graph or (other.video_unavailable is None) != (
            first.video_unavailable is None
        ):
            raise ServerContractError(
                f"{url} serves task graph {other.graph.name!r} ({', '.join(other.graph.names)}) but the first "
                f"server serves {first.graph.name!r} ({', '.join(first.graph.names)}); every server given "
                "to one client must serve the same repository"
            )

    def _connect_endpoint(self, ep: Endpoint) -> _ServerInfo:
        """Read and check one server's vmtl contract."""
        self._call("liveness check", ep.client.is_server_live, url=ep.url)
        meta = self._call("server metadata", ep.client.get_server_metadata, url=ep.url)
        version = str(meta.version)
        clip_cfg = self._model_config(CLIP_ENSEMBLE, ep)
        if clip_cfg is None or not self._ready(CLIP_ENSEMBLE, ep):
            raise ServerContractError(
                f"the Triton server at {ep.url} (version {version}) has no ready model "
                f"{CLIP_ENSEMBLE!r}; models there: {self._model_list(ep)}. Is it serving a vmtl model "
                "repository (written by `vmtl export`)?"
            )
        graph = _graph_from(clip_cfg, ep.url)
        _check_clip_ensemble(clip_cfg, graph, ep.url)

        video_cfg = self._model_config(VIDEO_ENSEMBLE, ep)
        video_unavailable: str | None = None
        if video_cfg is None or not self._ready(VIDEO_ENSEMBLE, ep):
            video_unavailable = (
                f"the server at {ep.url} has no ready model {VIDEO_ENSEMBLE!r} to decode videos; "
                "use mode='clip' (--mode clip) to decode on this side"
            )
        else:
            other = _graph_from(video_cfg, ep.url)
            if other != graph:
                raise ServerContractError(
                    f"{ep.url}: {VIDEO_ENSEMBLE!r} and {CLIP_ENSEMBLE!r} carry different task graphs "
                    f"({other.names} vs {graph.names}); re-export the repository"
                )
            _check_video_ensemble(video_cfg, graph, ep.url)
        max_video_bytes = 0
        decode_cfg = self._model_config(VIDEO_DECODE, ep)
        if decode_cfg is not None and "max_video_bytes" in decode_cfg.parameters:
            try:
                max_video_bytes = int(decode_cfg.parameters["max_video_bytes"].string_value or 0)
            except ValueError:
                max_video_bytes = 0
        max_queue_size = 0  # the backbone's, for ServerBusyError's message (0: unbounded/unknown)
        backbone_cfg = self._model_config(BACKBONE, ep)
        if backbone_cfg is not None and backbone_cfg.HasField("dynamic_batching"):
            max_queue_size = int(backbone_cfg.dynamic_batching.default_queue_policy.max_queue_size)
        return _ServerInfo(
            version=version,
            graph=graph,
            max_batch_size=max(int(clip_cfg.max_batch_size), 1),
            video_unavailable=video_unavailable,
            max_video_bytes=max_video_bytes,
            max_queue_size=max_queue_size,
        )

    def refresh(self) -> bool:
        """Re-read the task graph from the server's ensembles (after `vmtl reload` added or removed tasks);
        returns whether it changed. The client also does this by itself, once, when a request names a
        task it does not know or the server refuses an output it no longer has."""
        with self._refresh_lock:
            before = self.graph
            self._connect(None)
            return self.graph != before

    def _refreshed(self) -> bool:
        """:meth:`refresh`, False when the server cannot be read right now."""
        try:
            return self.refresh()
        except ClientError:
            return False

    def _ready(self, model: str, endpoint: Endpoint | None = None) -> bool:
        try:
            return bool(
                self._endpoint(endpoint).client.is_model_ready(model, client_timeout=self.connect_timeout)
            )
        except InferenceServerException:
            return False

    def is_ready(self, model: str = CLIP_ENSEMBLE) -> bool:
        """Whether some server of this client is ready and serves ``model`` now (probes them all)."""
        for ep in self._pool:
            try:
                if ep.client.is_server_ready(
                    client_timeout=self.connect_timeout
                ) and ep.client.is_model_ready(model, client_timeout=self.connect_timeout):
                    return True
            except InferenceServerException:
                continue
        return False

    def endpoints(self) -> list[dict[str, Any]]:
        """Per server: ``{"url", "healthy", "in_flight", "served", "moved", "last_error"}`` (moved: requests
        that failed there for the server's sake and went to another server)."""
        return [
            {
                "url": e.url,
                "healthy": e.healthy,
                "in_flight": e.in_flight,
                "served": e.served,
                "moved": e.moved,
                "last_error": e.last_error,
            }
            for e in self._pool
        ]

    def _model_list(self, endpoint: Endpoint | None = None) -> str:
        try:
            index = self._endpoint(endpoint).client.get_model_repository_index(
                client_timeout=self.connect_timeout
            )
        except InferenceServerException:
            return "(unknown)"
        names = sorted(f"{m.name} ({m.state or 'unknown'})" for m in index.models)
        return ", ".join(names) or "none"

    # -- queries ------------------------------------------------------------------------------------
    @property
    def tasks(self) -> list[str]:
        """The server's task names, in task-graph order."""
        return self.graph.names

    @property
    def clip_shape(self) -> tuple[int, int, int, int]:
        """``(T, S, S, 3)``: the uint8 clip the trunk takes."""
        p = self.preprocess
        return (p.num_frames, p.size, p.size, 3)

    def select(self, tasks: str | Iterable[str] | None) -> list[str]:
        """Validated task names in graph order (all for None; a string may list several, comma-separated).

        Raises :class:`UnknownTaskError` naming the unknown ones and listing the server's tasks.
        """
        if tasks is None:
            return self.graph.names
        if isinstance(tasks, str):
            tasks = tasks.split(",")
        wanted = [t.strip() if isinstance(t, str) else t for t in tasks]
        wanted = [t for t in wanted if t]
        kinds = ", ".join(f"{t.name} ({t.kind})" for t in self.graph.tasks)
        if not wanted:
            raise UnknownTaskError(f"no task given; the server at {self.url} has: {kinds}")
        unknown = [t for t in wanted if t not in self.graph]
        if unknown and self._refreshed():  # a live reload may have added them
            kinds = ", ".join(f"{t.name} ({t.kind})" for t in self.graph.tasks)
            unknown = [t for t in wanted if t not in self.graph]
        if unknown:
            raise UnknownTaskError(
                f"unknown task{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                f"the server at {self.url} has: {kinds}"
            )
        return [n for n in self.graph.names if n in set(wanted)]

    def statistics(self) -> dict[str, dict[str, int]]:
        """Per-model counters from Triton's statistics API: ``{model: {"executions": n, "inferences": n}}``
        (of the first healthy server when there are several)."""
        ep = self._endpoint(None)
        stats = self._call("statistics", ep.client.get_inference_statistics, url=ep.url, as_json=True)
        return {
            m["name"]: {
                "executions": int(m.get("execution_count", 0)),
                "inferences": int(m.get("inference_count", 0)),
            }
            for m in stats.get("model_stats", [])
        }

    # -- analysis -----------------------------------------------------------------------------------
    def analyze(
        self,
        source: Source,
        tasks: str | Iterable[str] | None = None,
        *,
        mode: Mode = "bytes",
        window: float | None = None,
        stride: float | None = None,
    ) -> VideoResult:
        """Analyse one video (a path, its encoded bytes, or a :class:`vmtl.video.Clip`).

        ``tasks``: names (default all); only their outputs are requested. ``mode``: ``"bytes"`` sends the
        encoded file to ``vmtl_video``, ``"clip"`` decodes here and sends the uint8 clip to ``vmtl_clip``
        (a Clip is always sent as a clip). ``window`` (seconds) analyses sliding windows
        ``[k*stride, k*stride + window)`` over the whole video (``stride`` defaults to ``window``) and
        combines them; the per-window results are in ``VideoResult.windows``. Windowed bytes mode goes
        through :meth:`stream` (the file is sent once) when the server serves ``vmtl_stream``, else one
        ``vmtl_video`` request per window.
        """
        t0 = time.perf_counter()
        names = self.select(tasks)
        if mode not in ("bytes", "clip"):
            raise ValueError(f"mode must be 'bytes' or 'clip', not {mode!r}")
        win, step = _window_args(window, stride)
        name = _source_name(source)
        if win is not None and mode == "bytes" and not isinstance(source, Clip) and self.can_stream():
            with self.stream(source, names, window=win, stride=step) as windows:
                found = list(windows)
            return _stream.video_result(
                self, name, names, found, window=win, stride=step, seconds=time.perf_counter() - t0
            )
        if isinstance(source, Clip):
            if win is not None:
                raise ValueError("sliding windows need a video (a path or bytes), not a decoded Clip")
            mode = "clip"
            requests: Iterable[_Request] = [self._clip_request([self._checked(source, name)], names)]
        elif mode == "clip":
            requests = self._clip_requests(source, name, names, win, step)
        else:
            requests = self._bytes_requests(source, name, names, win, step)
        windows = self._execute(requests, names, name)
        if win is None:
            combined = windows[0].tasks
        else:
            combined = {n: combine_windows(self.graph.task(n), [w.tasks[n] for w in windows]) for n in names}
        return VideoResult(
            source=name,
            mode=mode,
            tasks=combined,
            windows=windows,
            windowed=win is not None,
            window=win,
            stride=step,
            seconds=time.perf_counter() - t0,
        )

    def stream(
        self,
        source: Source,
        tasks: str | Iterable[str] | None = None,
        *,
        window: float,
        stride: float | None = None,
        start: float | None = None,
        end: float | None = None,
    ) -> _stream.WindowStream:
        """Per-window results of one video (a path or its encoded bytes), streamed: the file is sent once
        to ``vmtl_stream`` and each window's :class:`WindowResult` is yielded, in window order, as soon as
        the server has it. Windows ``[start + k*stride, start + k*stride + window)`` cover ``[start, end)``
        (default: the whole video; ``stride`` defaults to ``window``). Use it as a context manager (or
        call ``close()``): leaving early cancels, and the server stops decoding the video. See
        :mod:`vmtl.client.stream`.
        """
        names = self.select(tasks)
        win, step = _window_args(window, stride)
        if win is None or step is None:
            raise ValueError("stream needs window (seconds)")
        for label, value in (("start", start), ("end", end)):
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{label} must be a finite number of seconds >= 0, got {value!r}")
        if start is not None and end is not None and end <= start:
            raise ValueError(f"end ({end}) must be greater than start ({start})")
        if isinstance(source, Clip):
            raise ValueError("streaming needs a video (a path or bytes), not a decoded Clip")
        name = _source_name(source)
        return _stream.open_stream(self, source, names, name, window=win, stride=step, start=start, end=end)

    def can_stream(self) -> bool:
        """Whether the server serves the streaming ensemble ``vmtl_stream`` (ready)."""
        return _stream.stream_info(self).available

    def _new_grpc_client(self, url: str | None = None) -> grpcclient.InferenceServerClient:
        """A gRPC client of its own for one bidirectional stream (tritonclient allows one per client), to
        ``url`` (default: the first healthy server; a stream stays on one server), with this client's TLS."""
        url = url or self._endpoint(None).url
        if self.tls is not None:
            return self.tls.client(url)
        return grpcclient.InferenceServerClient(url)

    def iter_analyze(
        self,
        sources: Iterable[Source],
        tasks: str | Iterable[str] | None = None,
        *,
        concurrency: int = 8,
        mode: Mode = "bytes",
        window: float | None = None,
        stride: float | None = None,
    ) -> Iterator[tuple[Source, VideoResult | ClientError]]:
        """Analyse many videos, ``concurrency`` at a time; yield ``(source, result or error)`` in input order.

        A video that fails yields its :class:`ClientError` and the others go on. Task names and the mode
        are checked once, before anything is sent.
        """
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        names = self.select(tasks)
        if mode not in ("bytes", "clip"):
            raise ValueError(f"mode must be 'bytes' or 'clip', not {mode!r}")
        _window_args(window, stride)

        def one(source: Source) -> VideoResult | ClientError:
            try:
                return self.analyze(source, names, mode=mode, window=window, stride=stride)
            except ClientError as exc:
                return exc
            except Exception as exc:  # one odd video must not end the batch
                error = ClientError(f"{_source_name(source)}: {type(exc).__name__}: {exc}")
                error.__cause__ = exc
                return error

        pending: list[tuple[Source, Future[VideoResult | ClientError]]] = []
        with ThreadPoolExecutor(concurrency, thread_name_prefix="vmtl-analyze") as pool:
            it = iter(sources)
            try:
                for source in it:
                    pending.append((source, pool.submit(one, source)))
                    if len(pending) >= 2 * concurrency:  # bounded look-ahead
                        src, fut = pending.pop(0)
                        yield src, fut.result()
                while pending:
                    src, fut = pending.pop(0)
                    yield src, fut.result()
            finally:
                for _, fut in pending:
                    fut.cancel()

    def analyze_many(
        self,
        sources: Iterable[Source],
        tasks: str | Iterable[str] | None = None,
        *,
        concurrency: int = 8,
        mode: Mode = "bytes",
        window: float | None = None,
        stride: float | None = None,
    ) -> list[VideoResult | ClientError]:
        """:meth:`iter_analyze` collected into a list (results and errors in input order)."""
        return [
            r
            for _, r in self.iter_analyze(
                sources, tasks, concurrency=concurrency, mode=mode, window=window, stride=stride
            )
        ]

    def infer_clip(
        self, frames: np.ndarray, tasks: str | Iterable[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Raw head outputs for uint8 clip(s) ``[T,S,S,3]`` or ``[B,T,S,S,3]`` (batch axis kept).

        The clip is checked against the server's preprocessing here, before anything is sent.
        """
        names = self.select(tasks)
        batch = self._check_frames(frames, "clip", batched=True)
        if len(batch) > self.max_batch_size:
            raise InputError(
                f"clip: a batch of {len(batch)} clips exceeds the server's max_batch_size {self.max_batch_size}"
            )
        inp = grpcclient.InferInput("video", list(batch.shape), "UINT8")
        inp.set_data_from_numpy(np.ascontiguousarray(batch))
        request = _Request(CLIP_ENSEMBLE, [inp], [grpcclient.InferRequestedOutput(n) for n in names], [])
        result = self._send([request], "clip")[0]
        return {n: result.as_numpy(n) for n in names}

    # -- building requests -----------------------------------------------------------------------------
    def _check_frames(self, frames: Any, name: str, *, batched: bool = False) -> np.ndarray:
        """``frames`` as uint8 ``[T,S,S,3]`` (with ``batched``: ``[B,T,S,S,3]``, a single clip gets B=1);
        InputError naming what the server takes otherwise."""
        want = self.clip_shape
        shape = list(getattr(frames, "shape", ()))
        dtype = frames.dtype.name if isinstance(frames, np.ndarray) else type(frames).__name__
        if batched and len(shape) == 4:
            frames = frames[None]
        full = list(getattr(frames, "shape", ()))
        ok = isinstance(frames, np.ndarray) and frames.dtype == np.uint8
        ok = ok and (tuple(full[1:]) == want and full[0] >= 1 if batched else tuple(full) == want)
        if not ok:
            p = self.preprocess
            layout = "[T,S,S,3] or [B,T,S,S,3]" if batched else "[T,S,S,3]"
            sampling = "" if p.sampling == "uniform" else f", sampling={p.sampling!r}"
            raise InputError(
                f"{name}: the server's models take uint8 clips {layout} with T={want[0]}, S={want[1]} "
                f"({p.num_frames} frames of {p.size}x{p.size} RGB, {p.sampling} sampling); got {dtype} "
                f"{shape}. Read clips with vmtl.video.read_clip(path, {p.num_frames}, {p.size}{sampling})"
            )
        return frames

    def _checked(self, clip: Clip, name: str) -> Clip:
        self._check_frames(clip.frames, name)
        return clip

    def _clip_request(self, clips: list[Clip], names: list[str]) -> _Request:
        video = np.stack([c.frames for c in clips]) if len(clips) > 1 else clips[0].frames[None]
        inp = grpcclient.InferInput("video", list(video.shape), "UINT8")
        inp.set_data_from_numpy(np.ascontiguousarray(video))
        outs = [grpcclient.InferRequestedOutput(n) for n in names]
        return _Request(CLIP_ENSEMBLE, [inp], outs, list(clips))

    def _clip_requests(
        self, source: Source, name: str, names: list[str], window: float | None, stride: float | None
    ) -> Iterator[_Request]:
        """Decode here; clips of consecutive windows go in batches of up to max_batch_size."""
        p = self.preprocess
        try:
            if window is None:
                yield self._clip_request(
                    [self._checked(read_clip(source, p.num_frames, p.size, sampling=self._sampling), name)],
                    names,
                )
                return
            clips = sliding_windows(
                source, p.num_frames, p.size, window=window, stride=stride, sampling=self._sampling
            )
            batch: list[Clip] = []
            for clip in clips:
                batch.append(self._checked(clip, name))
                if len(batch) == self.max_batch_size:
                    yield self._clip_request(batch, names)
                    batch = []
            if batch:
                yield self._clip_request(batch, names)
        except VideoError as exc:
            raise InputError(str(exc)) from exc
        except TypeError as exc:
            raise InputError(f"{name}: {exc}") from exc

    def _read_bytes(self, source: Source, name: str) -> bytes:
        data = self._read_payload(source, name)
        if self.max_video_bytes and len(data) > self.max_video_bytes:
            raise InputError(
                f"{name}: {len(data)} bytes exceeds the server's limit of {self.max_video_bytes} bytes per "
                "video (video_decode's max_video_bytes); use mode='clip' (--mode clip) to decode on this side"
            )
        return data

    def _read_payload(self, source: Source, name: str) -> bytes:
        """The encoded bytes of a path or bytes source; InputError when unreadable or empty."""
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
        elif isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.exists():
                raise InputError(f"{name}: no such file")
            if path.is_dir():
                raise InputError(f"{name}: is a directory, not a video file")
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise InputError(f"{name}: cannot read ({exc.strerror or exc})") from exc
        else:
            raise InputError(
                f"video source must be a path, bytes or a vmtl.video.Clip, not {type(source).__name__}"
            )
        if not data:
            raise InputError(f"{name}: empty input (0 bytes)")
        return data

    def _bytes_requests(
        self, source: Source, name: str, names: list[str], window: float | None, stride: float | None
    ) -> Iterator[_Request]:
        if self.video_unavailable:
            raise ServerContractError(self.video_unavailable)
        data = self._read_bytes(source, name)
        outs = [grpcclient.InferRequestedOutput(n) for n in [*names, *VIDEO_EXTRA_OUTPUTS]]
        payload = np.array([[data]], dtype=np.object_)
        if window is None:
            spans: list[tuple[float, float] | None] = [None]
        else:
            assert stride is not None
            try:
                duration = probe(data).duration
            except VideoError as exc:
                raise InputError(f"{name}: {exc}") from exc
            spans = list(_window_spans(duration, window, stride))
        for span in spans:
            inp = grpcclient.InferInput("video_bytes", [1, 1], "BYTES")
            inp.set_data_from_numpy(payload)
            inputs = [inp]
            if span is not None:
                w = grpcclient.InferInput("window", [1, 2], "FP32")
                w.set_data_from_numpy(np.array([[span[0], span[0] + window]], np.float32))  # type: ignore[operator]
                inputs.append(w)
            yield _Request(VIDEO_ENSEMBLE, inputs, outs, [None])

    # -- running requests ------------------------------------------------------------------------------
    def _send(self, requests: Iterable[_Request], name: str) -> list[Any]:
        """Send requests (at most ``max_in_flight`` at a time, while later ones are still being built);
        return their results in order. The first failure stops further sends and is raised."""
        slots = threading.Semaphore(self.max_in_flight)
        futures: list[Future[Any]] = []
        try:
            for request in requests:
                slots.acquire()
                if any(f.done() and f.exception() is not None for f in futures):
                    slots.release()
                    break
                future: Future[Any] = Future()
                futures.append(future)
                if self._pending is not None and not self._pending.acquire(blocking=False):
                    slots.release()
                    future.set_exception(self._shed(name))
                    break
                self._attempt(request, future, [], slots)
        finally:
            results = []
            first_error: BaseException | None = None
            for future in futures:
                try:
                    results.append(future.result())
                except (InferenceServerException, ClientError) as exc:
                    first_error = first_error or exc
        if isinstance(first_error, ClientError):
            raise first_error
        if first_error is not None:
            raise self._server_error(first_error, name)  # type: ignore[arg-type]
        return results

    def _attempt(
        self, request: _Request, future: Future[Any], tried: list[Endpoint], slots: threading.Semaphore
    ) -> None:
        """Send ``request`` to the best server not yet ``tried``; on a server failure, to the next one.
        ``future`` gets the one answer (or the last failure); ``slots`` and the client-wide bound are
        released once, then."""

        def finish(result: Any, error: Any) -> None:
            slots.release()
            if self._pending is not None:
                self._pending.release()
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        ep = self._pool.pick(exclude=tried)
        if ep is None:
            last = tried[-1].last_error if tried else ""
            finish(
                None,
                InferenceServerException(
                    f"failed to connect to any server ({last or 'every server is set aside'})",
                    status="StatusCode.UNAVAILABLE",
                ),
            )
            return
        tried.append(ep)

        def done(result: Any, error: Any) -> None:
            moved = error is not None and is_server_failure(error)
            self._pool.done(ep, failed=moved)
            if moved:
                self._pool.mark_down(ep, _first_line(error.message() or str(error)))
                if len(tried) < len(self._pool):
                    self._attempt(request, future, tried, slots)  # another server answers it
                    return
            finish(result, error)

        try:
            ep.client.async_infer(
                request.model,
                request.inputs,
                done,
                outputs=request.outputs,
                client_timeout=self.timeout,
                parameters=self._task_parameter(request),
            )
        except InferenceServerException as exc:
            done(None, exc)

    def _shed(self, name: str) -> ServerBusyError:
        return ServerBusyError(
            f"{name}: server busy: this client already has {self.max_pending} requests in flight "
            "(max_pending); refused at once instead of queueing; retry later or lower concurrency",
            "RESOURCE_EXHAUSTED",
        )

    def _task_parameter(self, request: _Request) -> dict[str, str] | None:
        """The request parameter that tells the fused heads model which tasks to run (the asked ones)."""
        tasks = [o.name() for o in request.outputs if o.name() in self.graph]
        return {PARAM_TASKS: ",".join(tasks)} if tasks else None

    def _server_error(self, exc: InferenceServerException, name: str) -> ClientError:
        message = exc.message() or str(exc)
        status = str(exc.status() or "")
        if QUEUE_FULL_MESSAGE in message:  # also UNAVAILABLE, but the server is there and answering
            limit = f"max_queue_size {self.max_queue_size}" if self.max_queue_size else "max_queue_size"
            return ServerBusyError(
                f"{name}: server busy: its queue is full ({limit}); retry later or lower concurrency",
                status,
            )
        if _unavailable(exc):
            which = (
                f"every Triton server ({self.url})" if "," in self.url else f"the Triton server at {self.url}"
            )
            return ServerUnavailableError(f"{name}: lost {which} ({_first_line(message)}); {SERVE_HINT}")
        if any(m in message for m in _GRAPH_CHANGED_MESSAGES) and self._refreshed():
            return UnknownTaskError(
                f"{name}: the server's task graph changed (a live reload); it now has: "
                f"{', '.join(self.graph.names)}: {_first_line(message)}"
            )
        if "DEADLINE_EXCEEDED" in status or "Deadline Exceeded" in message:
            return InferenceError(f"{name}: no answer from {self.url} within {self.timeout:g} s", status)
        return InferenceError(f"{name}: the server refused the request: {message}", status)

    def _execute(self, requests: Iterable[_Request], names: list[str], name: str) -> list[WindowResult]:
        built: list[_Request] = []

        def tracked() -> Iterator[_Request]:
            for r in requests:
                built.append(r)
                yield r

        results = self._send(tracked(), name)
        windows: list[WindowResult] = []
        for request, result in zip(built, results, strict=True):
            outputs = {}
            for n in names:
                array = result.as_numpy(n)
                if array is None:
                    self._refreshed()
                    raise InferenceError(f"{name}: the server's answer has no output {n!r}")
                outputs[n] = array
            for i, clip in enumerate(request.clips):
                geometry: Clip | _ClipGeometry = _geometry(result, i, name) if clip is None else clip
                per_clip = {n: outputs[n][i] for n in names}
                try:
                    tasks = {n: postprocess(self.graph.task(n), per_clip[n], geometry) for n in names}
                except ValueError as exc:
                    raise InferenceError(f"{name}: cannot post-process the server's answer: {exc}") from exc
                windows.append(
                    WindowResult(
                        start=float(geometry.start),
                        end=float(geometry.end),
                        timestamps=np.asarray(geometry.timestamps, dtype=np.float64),
                        crop=tuple(float(v) for v in geometry.crop),  # type: ignore[arg-type]
                        tasks=tasks,
                        outputs=per_clip,
                    )
                )
        if not windows:
            raise InferenceError(f"{name}: nothing was analysed")
        return windows

    # -- lifetime ---------------------------------------------------------------------------------------
    def close(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.close()

    def __enter__(self) -> VmtlClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        p = getattr(self, "preprocess", None)
        shape = f"{p.num_frames}x{p.size}px" if p else "?"
        return f"VmtlClient({self.url!r}, tasks={getattr(self, 'tasks', '?')}, clip={shape})"


# --------------------------------------------------------------------------------------------------
# Helpers


#: Server errors that mean the ensembles no longer have an asked task (after a live reload or rollback).
_GRAPH_CHANGED_MESSAGES = ("unexpected inference output", "unknown task")


def _unavailable(exc: InferenceServerException) -> bool:
    status = str(exc.status() or "")
    return "UNAVAILABLE" in status or "failed to connect" in (exc.message() or "")


def _window_args(window: float | None, stride: float | None) -> tuple[float | None, float | None]:
    if window is None:
        if stride is not None:
            raise ValueError("stride needs window (sliding windows of `window` seconds)")
        return None, None
    win = float(window)
    step = win if stride is None else float(stride)
    if not (math.isfinite(win) and win > 0 and math.isfinite(step) and step > 0):
        raise ValueError(f"window and stride must be > 0 seconds, got window={window!r} stride={stride!r}")
    return win, step


def _graph_from(cfg: mc.ModelConfig, url: str) -> TaskGraph:
    where = f"{url}: model {cfg.name!r}"
    for key in (PARAM_GRAPH, PARAM_PREPROCESS):
        if key not in cfg.parameters:
            raise ServerContractError(
                f"{where} has no config parameter {key!r}; is it a vmtl repository written by `vmtl export`?"
            )
    try:
        graph = TaskGraph.from_dict(json.loads(cfg.parameters[PARAM_GRAPH].string_value))
        raw = json.loads(cfg.parameters[PARAM_PREPROCESS].string_value)
        raw = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
        pre = Preprocess(**raw)
        pre.validate()
    except (ValueError, TypeError, TaskGraphError) as exc:
        raise ServerContractError(f"{where}: cannot read the task graph from its config: {exc}") from exc
    if pre != graph.preprocess:
        raise ServerContractError(
            f"{where}: {PARAM_PREPROCESS} ({pre}) disagrees with the task graph's preprocess "
            f"({graph.preprocess}); re-export the repository"
        )
    return graph


def _check_clip_ensemble(cfg: mc.ModelConfig, graph: TaskGraph, url: str) -> None:
    where = f"{url}: {CLIP_ENSEMBLE!r}"
    p = graph.preprocess
    inputs = {i.name: i for i in cfg.input}
    video = inputs.get("video")
    want = [p.num_frames, p.size, p.size, 3]
    if video is None or video.data_type != mc.TYPE_UINT8 or list(video.dims) != want:
        got = f"{mc.DataType.Name(video.data_type)} {list(video.dims)}" if video is not None else "none"
        raise ServerContractError(
            f"{where}: input 'video' should be UINT8 {want} for the task graph's preprocess "
            f"({p.num_frames} frames, {p.size} px), the server has {got}"
        )
    _check_task_outputs(cfg, graph, where)


def _check_video_ensemble(cfg: mc.ModelConfig, graph: TaskGraph, url: str) -> None:
    where = f"{url}: {VIDEO_ENSEMBLE!r}"
    inputs = {i.name for i in cfg.input}
    if not {"video_bytes", "window"} <= inputs:
        raise ServerContractError(f"{where}: needs inputs 'video_bytes' and 'window', has {sorted(inputs)}")
    outputs = {o.name for o in cfg.output}
    missing = [n for n in VIDEO_EXTRA_OUTPUTS if n not in outputs]
    if missing:
        raise ServerContractError(f"{where}: missing outputs {missing}")
    _check_task_outputs(cfg, graph, where)


def _check_task_outputs(cfg: mc.ModelConfig, graph: TaskGraph, where: str) -> None:
    outputs = {o.name: o for o in cfg.output}
    for task in graph.tasks:
        out = outputs.get(task.name)
        if out is None:
            raise ServerContractError(f"{where}: no output for task {task.name!r} (has {sorted(outputs)})")
        if out.dims and out.dims[-1] not in (-1, task.out_dim):
            raise ServerContractError(
                f"{where}: output {task.name!r} has {out.dims[-1]} values but a {task.kind} task with "
                f"this graph's labels/dim needs {task.out_dim}"
            )


def _check_expectation(pre: Preprocess, expect: Preprocess | TaskGraph | dict[str, Any], url: str) -> None:
    if isinstance(expect, TaskGraph):
        expect = expect.preprocess
    wanted = (
        {"num_frames": expect.num_frames, "size": expect.size, "sampling": expect.sampling}
        if isinstance(expect, Preprocess)
        else dict(expect)
    )
    wrong = {k: (v, getattr(pre, k, None)) for k, v in wanted.items() if getattr(pre, k, None) != v}
    if wrong:
        detail = ", ".join(f"{k}: expected {a!r}, server has {b!r}" for k, (a, b) in wrong.items())
        raise ServerContractError(
            f"{url}: the server's preprocessing differs from what was expected ({detail})"
        )


def _geometry(result: Any, i: int, name: str) -> _ClipGeometry:
    stamps, crop, span = (result.as_numpy(n) for n in VIDEO_EXTRA_OUTPUTS)
    if stamps is None or crop is None or span is None:
        raise InferenceError(f"{name}: the server's answer lacks {', '.join(VIDEO_EXTRA_OUTPUTS)}")
    return _ClipGeometry(
        timestamps=np.asarray(stamps[i], dtype=np.float64),
        crop=tuple(float(v) for v in crop[i]),  # type: ignore[arg-type]
        start=float(span[i][0]),
        end=float(span[i][1]),
    )


def analyze(
    source: Source,
    tasks: str | Sequence[str] | None = None,
    *,
    url: str = DEFAULT_URL,
    **kw: Any,
) -> VideoResult:
    """One-shot :meth:`VmtlClient.analyze` (connects, analyses, closes)."""
    with VmtlClient(url) as client:
        return client.analyze(source, tasks, **kw)
