"""The three engines of ``vmtl batch``: in-process ONNX Runtime, a Triton server, and Ray Data.

Every engine turns a list of video paths into one JSON-ready *record* per path (in any order)::

    {"path": ..., "ok": true, "tasks": {task: TaskResult.to_dict()}, "windows": [...], "elapsed_s": s}
    {"path": ..., "ok": false, "error": "why"}

``windows`` (``{"start", "end", task: {...}}`` per window, as :meth:`vmtl.client.WindowResult.to_dict`)
is there only with sliding windows; ``tasks`` is then the windows combined by
:func:`vmtl.tasks.combine_windows`. A video that cannot be analysed becomes an error record; problems that
are not the video's (a lost server, a broken model) raise :class:`BatchError` and stop the run.

- :class:`LocalEngine`: decodes with :mod:`vmtl.video` (the repository's preprocessing spec) in a thread
  pool, runs the repository's ONNX graphs with :class:`OrtRunner` (:class:`vmtl.runtime.OrtPipeline`:
  trunk once per batch of clips, then only the heads the asked tasks need, in stage order),
  post-processes with :mod:`vmtl.tasks`.
- :class:`TritonEngine`: :meth:`vmtl.client.VmtlClient.iter_analyze` against a running server.
- :class:`RayEngine`: ``ray.data.read_binary_files`` -> decode (``map``) -> ``map_batches`` over an
  actor pool whose actors hold an :class:`OrtRunner` -> records, streamed back to the driver (Ray Data
  fuses the decode into the actors).

No torch here (ONNX Runtime through :mod:`vmtl.runtime`); ray is imported only by the engine that uses it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from vmtl.client.client import ClientError, InputError, ServerUnavailableError, VmtlClient
from vmtl.client.engine_names import ENGINES
from vmtl.contract import CLIP_ENSEMBLE, VIDEO_ENSEMBLE, RepositoryError
from vmtl.runtime import LocalModel, cores
from vmtl.runtime_openvino import local_pipeline
from vmtl.tasks import ClipLike, Preprocess, TaskGraph, combine_windows, postprocess
from vmtl.video import Clip, VideoError, read_clip, sliding_windows

__all__ = [
    "ENGINES",
    "BatchError",
    "BatchInterrupted",
    "Engine",
    "LocalEngine",
    "LocalModel",
    "OrtRunner",
    "RayEngine",
    "TritonEngine",
    "decode_clips",
    "error_record",
    "load_model",
    "select_tasks",
    "video_record",
]


class BatchError(Exception):
    """A problem that stops the whole batch (bad arguments, missing repository, unreachable server...)."""


class BatchInterrupted(BatchError):
    """The run stopped part-way for a reason that is not one video's (lost server, model failure); the
    results written so far are kept and running again resumes."""


# --------------------------------------------------------------------------------------------------
# Records


def error_record(path: str, error: str) -> dict[str, Any]:
    """The record of a video that could not be analysed."""
    return {"path": path, "ok": False, "error": error}


def _geometry_dict(clip: ClipLike) -> dict[str, Any]:
    return {
        "timestamps": [float(t) for t in np.asarray(clip.timestamps)],
        "crop": [float(v) for v in clip.crop],
        "start": float(clip.start),
        "end": float(clip.end),
    }


@dataclass(frozen=True)
class _Geometry:
    """What post-processing needs of a clip (satisfies vmtl.tasks.ClipLike), without the frames."""

    timestamps: np.ndarray
    crop: tuple[float, float, float]
    start: float
    end: float

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> _Geometry:
        return cls(np.asarray(d["timestamps"], np.float64), tuple(d["crop"]), d["start"], d["end"])  # type: ignore[arg-type]


def video_record(
    path: str,
    graph: TaskGraph,
    tasks: Sequence[str],
    clips: Sequence[ClipLike],
    outputs: Sequence[dict[str, np.ndarray]],
    *,
    windowed: bool,
    elapsed: float,
) -> dict[str, Any]:
    """Post-process raw head outputs (one dict per clip, batch axis removed) into a video's record."""
    per_window = [
        {n: postprocess(graph.task(n), out[n], clip) for n in tasks}
        for clip, out in zip(clips, outputs, strict=True)
    ]
    if windowed:
        combined = {n: combine_windows(graph.task(n), [w[n] for w in per_window]) for n in tasks}
    else:
        combined = per_window[0]
    record: dict[str, Any] = {
        "path": path,
        "ok": True,
        "tasks": {n: r.to_dict() for n, r in combined.items()},
    }
    if windowed:
        record["windows"] = [
            {"start": float(c.start), "end": float(c.end), **{n: r.to_dict() for n, r in w.items()}}
            for c, w in zip(clips, per_window, strict=True)
        ]
    record["elapsed_s"] = round(float(elapsed), 6)
    return record


def select_tasks(graph: TaskGraph, tasks: str | Iterable[str] | None) -> list[str]:
    """Validated task names in graph order (all when None; a string may list several, comma-separated)."""
    if tasks is None:
        return graph.names
    if isinstance(tasks, str):
        tasks = tasks.split(",")
    wanted = [t.strip() for t in tasks if t.strip()]
    kinds = ", ".join(f"{t.name} ({t.kind})" for t in graph.tasks)
    if not wanted:
        raise BatchError(f"no task given; the repository has: {kinds}")
    unknown = [t for t in wanted if t not in graph]
    if unknown:
        raise BatchError(f"unknown task(s) {', '.join(map(repr, unknown))}; the repository has: {kinds}")
    return [n for n in graph.names if n in set(wanted)]


def decode_clips(
    source: str | bytes, pre: Preprocess, window: float | None = None, stride: float | None = None
) -> list[Clip]:
    """The clip(s) of one video as the repository's preprocessing samples them (one per window)."""
    if window is None:
        return [read_clip(source, pre.num_frames, pre.size, sampling=pre.sampling)]
    return list(
        sliding_windows(source, pre.num_frames, pre.size, window=window, stride=stride, sampling=pre.sampling)
    )


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, VideoError) else f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------------------------------
# The repository's ONNX graphs in this process


def load_model(repo: str | os.PathLike[str]) -> LocalModel:
    """:meth:`vmtl.runtime.LocalModel.load`, a repository problem raised as :class:`BatchError`."""
    try:
        return LocalModel.load(repo)
    except RepositoryError as exc:
        raise BatchError(str(exc)) from exc


class OrtRunner:
    """ONNX Runtime sessions of a repository's trunk and of the heads ``tasks`` need (auxiliaries too).

    :meth:`run` takes uint8 clips ``[B,T,S,S,3]`` and returns each asked task's raw output ``[B,...]``:
    the trunk runs once, then the needed heads in stage order, each fed its auxiliaries' ``repr``.
    """

    def __init__(self, model: LocalModel, tasks: Sequence[str], *, threads: int | None = None) -> None:
        self.graph = model.graph
        self.tasks = list(tasks)
        pre = self.graph.preprocess
        self.clip_shape = (pre.num_frames, pre.size, pre.size, 3)
        try:
            # The backbone on the runtime and precision the served host would run on this machine.
            self.pipeline, self.hosted = local_pipeline(model, self.tasks, threads=threads)
        except Exception as exc:
            raise BatchError(f"{model.path}: ONNX Runtime cannot load the model: {exc}") from exc

    def run(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """Raw outputs ``{task: [B,...]}`` of the asked tasks for uint8 clips ``[B,T,S,S,3]``."""
        self._check(frames)
        return self.pipeline.run(frames, self.tasks)

    def _check(self, frames: np.ndarray) -> None:
        if frames.dtype != np.uint8 or frames.shape[1:] != self.clip_shape:
            raise ValueError(
                f"clips must be uint8 [B,{','.join(map(str, self.clip_shape))}], got {frames.dtype} {list(frames.shape)}"
            )

    def run_batched(self, frames: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
        """:meth:`run` in chunks of at most ``batch_size`` clips, concatenated. A failure of ONNX Runtime
        (a model problem, not a video's: every clip has the validated shape) is a BatchError."""
        try:
            self._check(frames)
            return self.pipeline.run_batched(frames, batch_size, self.tasks)
        except Exception as exc:
            raise BatchInterrupted(f"ONNX Runtime failed on a batch of {len(frames)} clip(s): {exc}") from exc


# --------------------------------------------------------------------------------------------------
# Engines


class Engine(Protocol):
    """What :func:`vmtl.client.batch.run_batch` drives."""

    name: str
    graph: TaskGraph
    tasks: list[str]

    def run(self, paths: Sequence[str]) -> Iterator[dict[str, Any]]:
        """One record per path, in any order, as each is ready."""
        ...

    def close(self) -> None: ...


@dataclass
class _Decoded:
    path: str
    t0: float
    clips: list[Clip] = field(default_factory=list)
    error: str | None = None


class LocalEngine:
    """In-process ONNX Runtime over a model repository's graphs.

    ``workers`` threads decode (PyAV releases the GIL) while the main thread runs ONNX Runtime on batches
    of up to ``batch_size`` clips (default: the repository's max_batch_size) gathered across videos.
    ``threads``: ONNX Runtime intra-op threads (default: all cores).
    """

    name = "local"

    def __init__(
        self,
        repo: str | os.PathLike[str],
        tasks: str | Iterable[str] | None = None,
        *,
        window: float | None = None,
        stride: float | None = None,
        workers: int | None = None,
        batch_size: int | None = None,
        threads: int | None = None,
    ) -> None:
        self.model = load_model(repo)
        self.graph = self.model.graph
        self.tasks = select_tasks(self.graph, tasks)
        self.window, self.stride = window, stride
        self.workers = max(int(workers or cores()), 1)
        self.batch_size = max(int(batch_size or self.model.max_batch_size), 1)
        self.runner = OrtRunner(self.model, self.tasks, threads=threads)

    def _decode(self, path: str) -> _Decoded:
        t0 = time.perf_counter()
        try:
            return _Decoded(path, t0, decode_clips(path, self.graph.preprocess, self.window, self.stride))
        except Exception as exc:  # one bad video must not end the batch
            return _Decoded(path, t0, error=_describe(exc))

    def _infer(self, videos: list[_Decoded]) -> Iterator[dict[str, Any]]:
        frames = np.stack([c.frames for v in videos for c in v.clips])
        outputs = self.runner.run_batched(frames, self.batch_size)
        i = 0
        for v in videos:
            n = len(v.clips)
            per_clip = [{t: outputs[t][j] for t in self.tasks} for j in range(i, i + n)]
            i += n
            try:
                yield video_record(
                    v.path,
                    self.graph,
                    self.tasks,
                    v.clips,
                    per_clip,
                    windowed=self.window is not None,
                    elapsed=time.perf_counter() - v.t0,
                )
            except ValueError as exc:  # e.g. non-finite outputs for this clip
                yield error_record(v.path, f"{v.path}: cannot post-process: {exc}")

    def run(self, paths: Sequence[str]) -> Iterator[dict[str, Any]]:
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="vmtl-decode")
        ahead = max(2 * self.workers, self.batch_size + self.workers)
        futures: deque[Future[_Decoded]] = deque()
        todo: Iterator[str] = iter(paths)
        try:
            batch: list[_Decoded] = []
            clips = 0
            while True:
                while len(futures) < ahead:
                    path = next(todo, None)
                    if path is None:
                        break
                    futures.append(pool.submit(self._decode, path))
                if futures and clips < self.batch_size:
                    decoded = futures.popleft().result()
                    if decoded.error is not None:
                        yield error_record(decoded.path, decoded.error)
                    else:
                        batch.append(decoded)
                        clips += len(decoded.clips)
                    continue
                if not batch:
                    return
                yield from self._infer(batch)
                batch, clips = [], 0
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        pass


class TritonEngine:
    """A running vmtl Triton server, ``concurrency`` videos in flight (:meth:`VmtlClient.iter_analyze`).

    ``mode="bytes"`` sends the encoded files (the server decodes), ``"clip"`` decodes here. ``repo``, when
    given, must hold the task graph the server serves. ``url`` may name several servers
    (``"a:8001,b:8001"``): the client spreads the videos over them and moves a request whose server went
    away to another, so the run stops (to be resumed) only when none is left. ``tls``: the client's TLS
    keywords (``tls``, ``ca``, ``cert``, ``key``).
    """

    name = "triton"

    def __init__(
        self,
        url: str,
        tasks: str | Iterable[str] | None = None,
        *,
        window: float | None = None,
        stride: float | None = None,
        concurrency: int = 8,
        mode: str = "bytes",
        timeout: float = 300.0,
        repo: str | os.PathLike[str] | None = None,
        tls: dict[str, Any] | None = None,
    ) -> None:
        try:
            self.client = VmtlClient(url, timeout=timeout, **(tls or {}))
        except ClientError as exc:
            raise BatchError(str(exc)) from exc
        try:
            self.graph = self.client.graph
            if repo is not None:
                local = load_model(repo).graph
                if local != self.graph:
                    raise BatchError(
                        f"the server at {url} serves task graph {self.graph.name!r} ({', '.join(self.graph.names)}) "
                        f"but {repo} holds {local.name!r} ({', '.join(local.names)}); point --url at a server of "
                        "that repository (`vmtl serve REPO`) or drop --repo"
                    )
            self.tasks = select_tasks(self.graph, tasks)
        except BaseException:
            self.client.close()
            raise
        self.window, self.stride = window, stride
        self.concurrency = max(int(concurrency), 1)
        self.mode = mode

    def run(self, paths: Sequence[str]) -> Iterator[dict[str, Any]]:
        results = self.client.iter_analyze(
            paths,
            self.tasks,
            concurrency=self.concurrency,
            mode=self.mode,  # type: ignore[arg-type]
            window=self.window,
            stride=self.stride,
        )
        for source, result in results:
            if isinstance(result, ClientError):
                if self._server_problem(result):
                    raise BatchInterrupted(f"{result} (the results so far are kept; run again to resume)")
                yield error_record(str(source), str(result))
                continue
            record: dict[str, Any] = {
                "path": str(source),
                "ok": True,
                "tasks": {n: r.to_dict() for n, r in result.tasks.items()},
            }
            if result.windowed:
                record["windows"] = [w.to_dict() for w in result.windows]
            record["elapsed_s"] = round(float(result.seconds), 6)
            yield record

    def _server_problem(self, exc: Exception) -> bool:
        """Whether a failed request says something about the server rather than the video: then the
        run stops (to be resumed) instead of recording an error for a video that may be fine."""
        if isinstance(exc, ServerUnavailableError):
            return True
        if isinstance(exc, InputError):  # decided on this side: the file itself
            return False
        text = str(exc).lower()
        status = str(getattr(exc, "status", "") or "").upper()
        if any(m in text for m in _SERVER_STATE) or any(s in status for s in _SERVER_STATUS):
            return True
        return not self._healthy()

    def _healthy(self) -> bool:
        """A server is ready and serves the ensemble this run uses."""
        model = VIDEO_ENSEMBLE if self.mode == "bytes" else CLIP_ENSEMBLE
        try:
            return self.client.is_ready(model)
        except Exception:
            return False

    def close(self) -> None:
        self.client.close()


#: Failure messages (lower case) and gRPC statuses that describe the server's state, not the video's.
_SERVER_STATE = (
    "unknown model",
    "no available versions",
    "not ready",
    "shutting down",
    "socket closed",
    "failed to connect",
    "connection reset",
    "stub process",
)
_SERVER_STATUS = ("UNAVAILABLE", "CANCELLED", "ABORTED", "RESOURCE_EXHAUSTED", "UNIMPLEMENTED")


# --------------------------------------------------------------------------------------------------
# Ray Data


def _ray_decode(
    row: dict[str, Any],
    *,
    num_frames: int,
    size: int,
    sampling: str,
    window: float | None,
    stride: float | None,
) -> dict[str, Any]:
    """Ray Data map: ``{"bytes", "path"}`` -> decoded clips as raw bytes plus their geometry (or an error)."""
    t0 = time.perf_counter()
    path, data = str(row["path"]), bytes(row["bytes"])
    pre = Preprocess(num_frames=num_frames, size=size, sampling=sampling)
    try:
        clips = decode_clips(data, pre, window, stride)
    except Exception as exc:
        message = _describe(exc).replace(f"<{len(data)} bytes>", path, 1)
        return {"path": path, "error": message, "frames": b"", "n": 0, "geometry": "[]", "decode_s": 0.0}
    frames = np.stack([c.frames for c in clips])
    return {
        "path": path,
        "error": "",
        "frames": frames.tobytes(),
        "n": len(clips),
        "geometry": json.dumps([_geometry_dict(c) for c in clips]),
        "decode_s": time.perf_counter() - t0,
    }


class _RayInfer:
    """Ray Data actor UDF: holds an :class:`OrtRunner`; a batch of decoded videos -> JSON records."""

    def __init__(
        self, repo: str, tasks: list[str], batch_size: int, window: float | None, threads: int
    ) -> None:
        self.model = load_model(repo)
        self.graph = self.model.graph
        self.tasks = tasks
        self.batch_size = batch_size
        self.windowed = window is not None
        self.runner = OrtRunner(self.model, tasks, threads=threads)
        self.shape = self.runner.clip_shape

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        paths = [str(p) for p in batch["path"]]
        records: list[dict[str, Any] | None] = [None] * len(paths)
        clips: list[np.ndarray] = []
        good: list[int] = []
        for i, path in enumerate(paths):
            if batch["error"][i]:
                records[i] = error_record(path, str(batch["error"][i]))
                continue
            n = int(batch["n"][i])
            clips.append(np.frombuffer(batch["frames"][i], np.uint8).reshape(n, *self.shape))
            good.append(i)
        if good:
            outputs = self.runner.run_batched(np.concatenate(clips), self.batch_size)
            share = (time.perf_counter() - t0) / len(good)
            j = 0
            for i in good:
                geoms = [_Geometry.from_dict(g) for g in json.loads(batch["geometry"][i])]
                per_clip = [{t: outputs[t][k] for t in self.tasks} for k in range(j, j + len(geoms))]
                j += len(geoms)
                try:
                    records[i] = video_record(
                        paths[i],
                        self.graph,
                        self.tasks,
                        geoms,
                        per_clip,
                        windowed=self.windowed,
                        elapsed=float(batch["decode_s"][i]) + share,
                    )
                except ValueError as exc:
                    records[i] = error_record(paths[i], f"{paths[i]}: cannot post-process: {exc}")
        return {
            "path": np.array(paths, dtype=object),
            "record": np.array([json.dumps(r, separators=(",", ":")) for r in records], dtype=object),
        }


class RayEngine:
    """Ray Data: read bytes -> decode (tasks) -> ORT in an actor pool of ``actors`` -> records.

    Connects to ``address`` (a running cluster, e.g. ``auto`` or ``ray://host:10001``) or starts a local
    instance with ``num_cpus`` CPUs (default: all); a Ray instance it started is shut down by :meth:`close`.
    """

    name = "ray"

    def __init__(
        self,
        repo: str | os.PathLike[str],
        tasks: str | Iterable[str] | None = None,
        *,
        window: float | None = None,
        stride: float | None = None,
        actors: int | None = None,
        batch_size: int | None = None,
        address: str | None = None,
        num_cpus: int | None = None,
        threads: int = 1,
    ) -> None:
        self.ray = _import_ray()
        self.model = load_model(repo)
        self.graph = self.model.graph
        self.tasks = select_tasks(self.graph, tasks)
        self.window, self.stride = window, stride
        self.batch_size = max(int(batch_size or self.model.max_batch_size), 1)
        self.threads = max(int(threads), 1)
        self.started = False
        if not self.ray.is_initialized():
            kw: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
            if address:
                kw["address"] = address
            else:
                kw["num_cpus"] = int(num_cpus or cores())
            try:
                self.ray.init(**kw)
            except Exception as exc:
                where = f"the Ray cluster at {address}" if address else "a local Ray instance"
                raise BatchError(f"cannot start or reach {where}: {type(exc).__name__}: {exc}") from exc
            self.started = True
        self.cpus = max(int(self.ray.cluster_resources().get("CPU", 1)), 1)
        # Each actor holds `threads` CPUs; at least one CPU must stay free for the read tasks, or the
        # pipeline stalls. Default: half the CPUs (decoding is fused into the actors by Ray Data).
        most = max((self.cpus - 1) // self.threads, 1)
        self.actors = min(max(int(actors or self.cpus // 2), 1), most)
        if actors and actors > most:
            print(
                f"vmtl batch: {actors} ray actors of {self.threads} CPU(s) would leave no CPU of the "
                f"{self.cpus} for reading files; using {most}",
                file=sys.stderr,
            )
        ctx = self.ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        for attr in ("print_on_execution_start", "enable_auto_log_stats"):
            if hasattr(ctx, attr):
                setattr(ctx, attr, False)
        logging.getLogger("ray.data").setLevel(logging.WARNING)

    def run(self, paths: Sequence[str]) -> Iterator[dict[str, Any]]:
        present = [p for p in paths if os.path.isfile(p)]
        for p in paths:
            if not os.path.isfile(p):
                yield error_record(p, f"{p}: no such file")
        if not present:
            return
        rd = self.ray.data
        pre = self.graph.preprocess
        # blocks of ~50 files (at least 2 per CPU): fewer, larger Ray tasks than one per file
        blocks = max(1, min(len(present), max(2 * self.cpus, math.ceil(len(present) / 50))))
        ds = rd.read_binary_files(present, include_paths=True, override_num_blocks=blocks)
        ds = ds.map(
            _ray_decode,
            fn_kwargs={
                "num_frames": pre.num_frames,
                "size": pre.size,
                "sampling": pre.sampling,
                "window": self.window,
                "stride": self.stride,
            },
        )
        ds = ds.map_batches(
            _RayInfer,
            fn_constructor_kwargs={
                "repo": str(self.model.path.absolute()),
                "tasks": self.tasks,
                "batch_size": self.batch_size,
                "window": self.window,
                "threads": self.threads,
            },
            batch_size=self.batch_size,
            batch_format="numpy",
            compute=rd.ActorPoolStrategy(size=self.actors),
            num_cpus=self.threads,
        )
        try:
            for row in ds.iter_rows():
                yield json.loads(row["record"])
        except Exception as exc:  # a failed Ray task or actor (the videos' own errors are records)
            lines = str(exc).strip().splitlines()
            raise BatchInterrupted(
                f"the Ray Data pipeline failed: {type(exc).__name__}: {lines[-1] if lines else ''}"
            ) from exc

    def close(self) -> None:
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()
            self.started = False


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise BatchError(
            f"the ray engine needs Ray Data, which is not installed ({exc}); "
            "install it with `pip install 'vmtl[ray]'` (or `pip install \"ray[data]\"`)"
        ) from exc
    return ray
