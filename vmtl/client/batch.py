"""Offline batch inference over many videos (``vmtl batch``): inputs, resumable JSONL results, metrics.

::

    from vmtl.client.batch import batch

    summary = batch("videos/", engine="local", repo="model_repository", out="results.jsonl")
    print(summary.ok, summary.errors, summary.rate)

Inputs (:func:`collect_inputs`): a directory (searched recursively for video files), a glob pattern, one
video file, or an MMAction2 annotation list (``path [label ...]`` lines, paths relative to the list; a
``.json`` file is an ActivityNet-style localize or track annotation file). An annotation list with labels
also gives ground truth for one task (:func:`resolve_labels`), and the run ends with that task's metrics
(:func:`vmtl.metrics.records.record_metrics`, the numpy metrics of :mod:`vmtl.metrics` on the records).

Output: one JSON object per line per video (see :mod:`vmtl.client.engines` for the record). The file is
the checkpoint (:class:`ResultLog`): each record is appended and flushed as soon as it is ready, a run
that starts on an existing file skips every path already in it (ok or error; ``retry_errors`` re-runs
the errors), and a torn last line left by a killed run is cut off first. Nothing is lost or written
twice when a run is killed at any point. An advisory lock keeps two runs from writing one file.

The environment variable ``VMTL_BATCH_THROTTLE_S`` (seconds) pauses after every record; it only exists
so that tests can kill a run half-way.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from tqdm import tqdm

from vmtl.client.client import DEFAULT_URL
from vmtl.client.engines import (
    ENGINES,
    BatchError,
    BatchInterrupted,
    Engine,
    LocalEngine,
    RayEngine,
    TritonEngine,
)
from vmtl.data.annotations import AnnotationError, read_task_annotations
from vmtl.metrics import format_table
from vmtl.metrics.records import record_metrics
from vmtl.tasks import TaskGraph, TaskSpec

__all__ = [
    "VIDEO_EXTENSIONS",
    "BatchError",
    "BatchInput",
    "BatchInterrupted",
    "BatchSummary",
    "Labels",
    "ResultLog",
    "batch",
    "collect_inputs",
    "format_metrics",
    "make_engine",
    "read_records",
    "require_pyarrow",
    "resolve_labels",
    "run_batch",
    "write_parquet",
]

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".flv", ".wmv", ".3gp", ".ogv"}
)
_GLOB_CHARS = frozenset("*?[")
THROTTLE_ENV = "VMTL_BATCH_THROTTLE_S"


def _norm(path: str | os.PathLike[str]) -> str:
    """The key a video has in the results: its absolute, normalised path."""
    return os.path.normpath(os.path.abspath(os.fspath(path)))


# --------------------------------------------------------------------------------------------------
# Inputs


@dataclass
class BatchInput:
    """The videos of one run (absolute paths, no duplicates) and the annotation list they came from."""

    paths: list[str]
    source: str
    annotation_file: Path | None = None
    has_labels: bool = False


def collect_inputs(spec: str | os.PathLike[str]) -> BatchInput:
    """Resolve INPUT: a directory, a glob, a video file, or an annotation list (``.txt``/``.json``)."""
    text = os.fspath(spec)
    path = Path(text)
    if path.is_dir():
        found = [
            p
            for p in path.rglob("*")
            if p.suffix.lower() in VIDEO_EXTENSIONS
            and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        ]
        paths = sorted(_norm(p) for p in found)
        if not paths:
            raise BatchError(
                f"no video files in {text} (searched recursively for {', '.join(sorted(VIDEO_EXTENSIONS))})"
            )
        return BatchInput(paths, f"directory {text}")
    if path.is_file():
        if path.suffix.lower() in VIDEO_EXTENSIONS:
            return BatchInput([_norm(path)], f"video {text}")
        paths, labelled = _read_list(path)
        if not paths:
            raise BatchError(f"the annotation list {text} lists no videos")
        return BatchInput(paths, f"annotation list {text}", path, labelled)
    if _GLOB_CHARS & set(text):
        paths = sorted({_norm(p) for p in glob.glob(text, recursive=True) if os.path.isfile(p)})
        if not paths:
            raise BatchError(f"the pattern {text!r} matches no files")
        return BatchInput(paths, f"pattern {text!r}")
    raise BatchError(
        f"INPUT {text} does not exist (give a directory of videos, a glob pattern in quotes, a video file, "
        "or an annotation list)"
    )


def _read_list(path: Path) -> tuple[list[str], bool]:
    """(video paths, whether any has labels) of a ``path [label ...]`` list or a localize/track JSON file."""
    base = path.absolute().parent
    if path.suffix.lower() == ".json":
        entries = _json_entries(path)
        paths = [
            _norm(base / str(e["path"])) for e in entries.values() if isinstance(e, dict) and "path" in e
        ]
        return list(dict.fromkeys(paths)), bool(paths)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise BatchError(f"{path} is neither a video nor a text annotation list ({exc.reason})") from exc
    paths: list[str] = []
    labelled = False
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        paths.append(_norm(base / parts[0]))
        labelled = labelled or len(parts) > 1
    return list(dict.fromkeys(paths)), labelled


def _json_entries(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BatchError(f"{path} is not a JSON annotation file: {exc}") from exc
    if not isinstance(data, dict):
        raise BatchError(
            f"{path}: expected an object of videos ({{id: {{'path': ...}}}}), got {type(data).__name__}"
        )
    return data


# --------------------------------------------------------------------------------------------------
# Ground truth


@dataclass
class Labels:
    """Ground truth for one task, keyed by video path (the records of :mod:`vmtl.data.annotations`)."""

    task: TaskSpec
    file: Path
    truths: dict[str, Any]


@dataclass(frozen=True)
class LabelShape:
    """What an annotation file's labels look like: which kinds' formats it can be in."""

    json_keys: frozenset[str] | None = None  # a JSON file: the keys every video entry has (None: a text list)
    ints: bool = False  # a text list: every line has labels and all of them are integers
    floats: bool = False  # ... all of them are numbers
    widths: frozenset[int] = frozenset()  # ... the numbers of labels per line


def _label_shape(path: Path) -> LabelShape:
    if path.suffix.lower() == ".json":
        entries = [e for e in _json_entries(path).values() if isinstance(e, dict)]
        keys = frozenset.intersection(*(frozenset(e) for e in entries)) if entries else frozenset()
        return LabelShape(json_keys=keys)
    lines = [line.split() for line in path.read_text(encoding="utf-8").splitlines()]
    rows = [parts[1:] for parts in lines if parts and not parts[0].startswith("#")]
    if not rows or any(not r for r in rows):
        return LabelShape()
    tokens = [t for r in rows for t in r]
    return LabelShape(
        ints=all(_is_int(t) for t in tokens),
        floats=all(_is_float(t) for t in tokens),
        widths=frozenset(len(r) for r in rows),
    )


def _fitting_kinds(path: Path) -> set[str]:
    """Task kinds whose annotation format the file has."""
    shape = _label_shape(path)
    return {kind for kind, row in KIND_BATCH.items() if row.fits(shape)}


def _is_int(t: str) -> bool:
    try:
        int(t)
    except ValueError:
        return False
    return True


def _is_float(t: str) -> bool:
    try:
        float(t)
    except ValueError:
        return False
    return True


def _read_truths(task: TaskSpec, path: Path) -> dict[str, Any]:
    try:
        records = read_task_annotations(task, path)
    except AnnotationError as exc:
        raise BatchError(f"labels for task {task.name!r} ({task.kind}): {exc}") from exc
    return {_norm(r.path): r for r in records}


def resolve_labels(
    inputs: BatchInput, graph: TaskGraph, tasks: Sequence[str], labels_task: str | None = None
) -> Labels | None:
    """Which task an annotation list labels (``labels_task``, else inferred) and its ground truth.

    Inference keeps the run's tasks whose kind fits the file's format and whose labels it can read; the
    one named like the list's directory (``DATA/<task>/val.txt``) wins, else it must be the only one.
    ``labels_task="none"`` turns metrics off. None when the input carries no labels.
    """
    if labels_task == "none":
        return None
    if inputs.annotation_file is None or not inputs.has_labels:
        if labels_task is not None:
            raise BatchError(
                f"--labels-task {labels_task} needs INPUT to be an annotation list with labels "
                f"(`path label ...` lines), not a {inputs.source}"
            )
        return None
    path = inputs.annotation_file
    if labels_task is not None:
        if labels_task not in graph:
            raise BatchError(
                f"--labels-task: unknown task {labels_task!r}; the model has {', '.join(graph.names)}"
            )
        if labels_task not in tasks:
            raise BatchError(
                f"--labels-task {labels_task} is not one of the tasks run ({', '.join(tasks)}); add it to --tasks"
            )
        task = graph.task(labels_task)
        return Labels(task, path, _read_truths(task, path))
    kinds = _fitting_kinds(path)
    fits: dict[str, dict[str, Any]] = {}
    for name in tasks:
        task = graph.task(name)
        if task.kind in kinds:
            with contextlib.suppress(BatchError):
                fits[name] = _read_truths(task, path)
    run = ", ".join(f"{n} ({graph.task(n).kind})" for n in tasks)
    if not fits:
        raise BatchError(
            f"the labels in {path} fit none of the tasks run ({run}); pass --labels-task TASK to see why, "
            "or --labels-task none to skip metrics"
        )
    folder = path.absolute().parent.name
    if folder in fits:
        name = folder
    elif len(fits) == 1:
        name = next(iter(fits))
    else:
        raise BatchError(
            f"the labels in {path} could be for any of {', '.join(sorted(fits))}; pass --labels-task TASK "
            "(or --labels-task none to skip metrics)"
        )
    return Labels(graph.task(name), path, fits[name])


# --------------------------------------------------------------------------------------------------
# Metrics


def format_metrics(labels: Labels, metrics: dict[str, float], evaluated: int, left_out: int) -> str:
    """The metrics table printed at the end of a labelled run."""
    note = f" ({left_out} labelled video(s) without a result left out)" if left_out else ""
    head = f"metrics for task {labels.task.name!r} ({labels.task.kind}) on {evaluated} video(s) from {labels.file}{note}"
    return head + "\n" + format_table({labels.task.name: metrics})


# --------------------------------------------------------------------------------------------------
# The results file


class ResultLog:
    """Append-only JSONL results that double as the checkpoint of a resumable run.

    :meth:`open` takes an exclusive advisory lock, cuts a torn last line (a partial record without its
    newline), drops unreadable lines (and error records with ``retry_errors``) and returns the records
    already there, by path. :meth:`append` writes one record and its newline with one ``write`` on an
    ``O_APPEND`` descriptor, so a killed run leaves whole records (or at worst a torn last line).
    """

    def __init__(self, path: str | os.PathLike[str], *, retry_errors: bool = False) -> None:
        self.path = Path(path)
        self.retry_errors = retry_errors
        self.fd: int | None = None
        self.torn_bytes = 0
        self.dropped = 0

    def open(self) -> dict[str, dict[str, Any]]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise BatchError(f"cannot open the results file {self.path}: {exc.strerror or exc}") from exc
        self.fd = self._lock(fd)
        with open(self.fd, "rb", closefd=False) as f:
            f.seek(0)
            data = f.read()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            self.torn_bytes = len(data) - keep
            os.ftruncate(self.fd, keep)
            data = data[:keep]
        records: dict[str, dict[str, Any]] = {}
        kept: list[bytes] = []
        for line in data.splitlines():
            try:
                record = json.loads(line)
                key = str(record["path"])
            except (ValueError, KeyError, TypeError):
                self.dropped += 1
                continue
            if key in records or (self.retry_errors and not record.get("ok")):
                self.dropped += 1
                continue
            records[key] = record
            kept.append(line)
        if self.dropped:
            self._rewrite(kept)
        return records

    def _lock(self, fd: int) -> int:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BatchError(
                f"another `vmtl batch` is writing {self.path}; wait for it or pick another --out"
            ) from None
        return fd

    def _rewrite(self, lines: list[bytes]) -> None:
        """Replace the file by ``lines`` atomically (temporary file + rename), then lock the new file."""
        tmp = self.path.with_name(f".{self.path.name}.rewrite-{os.getpid()}")
        with open(tmp, "wb") as f:
            f.write(b"".join(line + b"\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        old = self.fd
        self.fd = self._lock(os.open(self.path, os.O_RDWR | os.O_APPEND))
        if old is not None:
            os.close(old)

    def append(self, record: dict[str, Any]) -> None:
        if self.fd is None:
            raise RuntimeError("ResultLog.append before open")
        data = memoryview((json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n").encode())
        while data:
            n = os.write(self.fd, data)
            data = data[n:]

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.fsync(self.fd)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> ResultLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every complete record of a results file (a torn last line is ignored)."""
    out = []
    with open(path, "rb") as f:
        for line in f:
            if line.endswith(b"\n"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
    return out


# --------------------------------------------------------------------------------------------------
# Parquet


def require_pyarrow() -> Any:
    """``pyarrow.parquet``, or BatchError saying how to install it."""
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise BatchError(
            f"--parquet needs pyarrow, which is not installed ({exc}); `pip install pyarrow` "
            "(it also comes with `pip install 'vmtl[ray]'`), or drop --parquet and use the JSONL"
        ) from exc
    return pq


def write_parquet(jsonl: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """A Parquet copy of a results file: ``path``, ``ok``, ``error``, ``elapsed_s``, one JSON column per
    task (its result), ``windows`` (JSON), and typed columns per kind: ``<task>.label``/``.score``
    (classify), ``<task>.labels`` (tag), ``<task>.values`` (regress), ``<task>.embedding`` (embed)."""
    pq = require_pyarrow()
    import pyarrow as pa

    records = read_records(jsonl)
    kinds: dict[str, str] = {}
    for r in records:
        for name, result in (r.get("tasks") or {}).items():
            kinds.setdefault(name, result.get("kind", ""))
    cols: dict[str, Any] = {
        "path": pa.array([r["path"] for r in records], pa.string()),
        "ok": pa.array([bool(r.get("ok")) for r in records], pa.bool_()),
        "error": pa.array([r.get("error") for r in records], pa.string()),
        "elapsed_s": pa.array([r.get("elapsed_s") for r in records], pa.float64()),
    }
    for name, kind in kinds.items():
        results = [(r.get("tasks") or {}).get(name) for r in records]
        cols[name] = pa.array([json.dumps(x) if x is not None else None for x in results], pa.string())
        row = KIND_BATCH.get(kind)
        if row is not None and row.columns is not None:
            cols.update(row.columns(pa, name, results))
    cols["windows"] = pa.array(
        [json.dumps(r["windows"]) if "windows" in r else None for r in records], pa.string()
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    pq.write_table(pa.table(cols), tmp)
    os.replace(tmp, out)
    return out


# --------------------------------------------------------------------------------------------------
# Per kind


@dataclass(frozen=True)
class KindBatch:
    """What `vmtl batch` does per task kind: whether an annotation file of a given shape can hold its
    labels (``fits``) and its typed Parquet columns (``columns(pa, task_name, results)``; results are
    the task's JSON results, None where a record has none)."""

    fits: Callable[[LabelShape], bool]
    columns: Callable[[Any, str, list[dict[str, Any] | None]], dict[str, Any]] | None = None


def _classify_columns(pa: Any, name: str, results: list[dict[str, Any] | None]) -> dict[str, Any]:
    top = [x["top_k"][0]["score"] if x and x.get("top_k") else None for x in results]
    return {
        f"{name}.label": pa.array([x and x.get("label") for x in results], pa.string()),
        f"{name}.score": pa.array(top, pa.float64()),
    }


def _tag_columns(pa: Any, name: str, results: list[dict[str, Any] | None]) -> dict[str, Any]:
    return {f"{name}.labels": pa.array([x and x.get("labels") for x in results], pa.list_(pa.string()))}


def _regress_columns(pa: Any, name: str, results: list[dict[str, Any] | None]) -> dict[str, Any]:
    return {f"{name}.values": pa.array([x and x.get("values") for x in results], pa.list_(pa.float64()))}


def _embed_columns(pa: Any, name: str, results: list[dict[str, Any] | None]) -> dict[str, Any]:
    return {
        f"{name}.embedding": pa.array([x and x.get("embedding") for x in results], pa.list_(pa.float32()))
    }


def _one_index(s: LabelShape) -> bool:
    return s.ints and s.widths == {1}


def _json_with(key: str, *, without: str | None = None) -> Callable[[LabelShape], bool]:
    """A JSON file whose every entry has `key` (and, if given, not every entry has `without`)."""
    return lambda s: s.json_keys is not None and key in s.json_keys and without not in s.json_keys


KIND_BATCH: Mapping[str, KindBatch] = MappingProxyType(
    {
        "classify": KindBatch(_one_index, _classify_columns),
        "tag": KindBatch(lambda s: s.ints, _tag_columns),
        "localize": KindBatch(_json_with("annotations")),
        "embed": KindBatch(_one_index, _embed_columns),
        "regress": KindBatch(lambda s: s.floats and len(s.widths) == 1, _regress_columns),
        "track": KindBatch(_json_with("boxes", without="annotations")),  # entries with both: localize
    }
)


# --------------------------------------------------------------------------------------------------
# Running


@dataclass
class BatchSummary:
    """What a run did. ``done``/``ok``/``errors`` count this run's videos; ``skipped`` were already in
    the output; ``metrics`` holds the labelled task's metrics over every labelled result in the output."""

    out: Path
    engine: str
    total: int
    skipped: int
    done: int = 0
    ok: int = 0
    errors: int = 0
    seconds: float = 0.0
    torn_bytes: int = 0
    labels: Labels | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    evaluated: int = 0
    left_out: int = 0

    @property
    def rate(self) -> float:
        """Videos per second in this run."""
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        skipped = f", {self.skipped} already in {self.out}" if self.skipped else ""
        return (
            f"{self.engine}: {self.done} video(s) in {self.seconds:.1f} s ({self.rate:.2f} videos/s): "
            f"{self.ok} ok, {self.errors} error(s){skipped}; results in {self.out}"
        )


def make_engine(
    kind: str,
    *,
    repo: str | os.PathLike[str] | None = None,
    url: str | None = None,
    tasks: str | Iterable[str] | None = None,
    window: float | None = None,
    stride: float | None = None,
    concurrency: int | None = None,
    batch_size: int | None = None,
    mode: str = "bytes",
    timeout: float = 300.0,
    tls: dict[str, Any] | None = None,
    ray_address: str | None = None,
    ray_cpus: int | None = None,
) -> Engine:
    """Build an engine. ``concurrency``: decode threads (local), requests in flight (triton), ORT actors
    (ray); ``batch_size``: clips per trunk run (local, ray)."""
    if kind not in ENGINES:
        raise BatchError(f"unknown engine {kind!r}; choose one of {', '.join(ENGINES)}")
    if stride is not None and window is None:
        raise BatchError("--stride needs --window")
    for flag, value in (("--window", window), ("--stride", stride)):
        if value is not None and not value > 0:
            raise BatchError(f"{flag} must be > 0 seconds, got {value}")
    if kind == "triton":
        return TritonEngine(
            url or DEFAULT_URL,
            tasks,
            window=window,
            stride=stride,
            concurrency=concurrency or 8,
            mode=mode,
            timeout=timeout,
            repo=repo,
            tls=tls,
        )
    if repo is None:
        raise BatchError(f"the {kind} engine needs --repo MODEL_REPOSITORY (written by `vmtl export`)")
    if kind == "local":
        return LocalEngine(
            repo, tasks, window=window, stride=stride, workers=concurrency, batch_size=batch_size
        )
    return RayEngine(
        repo,
        tasks,
        window=window,
        stride=stride,
        actors=concurrency,
        batch_size=batch_size,
        address=ray_address,
        num_cpus=ray_cpus,
    )


def run_batch(
    engine: Engine,
    inputs: BatchInput,
    out: str | os.PathLike[str],
    *,
    labels: Labels | None = None,
    retry_errors: bool = False,
    progress: bool = True,
    parquet: str | os.PathLike[str] | None = None,
) -> BatchSummary:
    """Run ``engine`` over the inputs not yet in ``out``, appending one record per video; then metrics
    (with ``labels``) and the Parquet copy (with ``parquet``)."""
    if parquet is not None:
        require_pyarrow()
    throttle = float(os.environ.get(THROTTLE_ENV) or 0)
    with ResultLog(out, retry_errors=retry_errors) as log:
        done = log.open()
        todo = [p for p in inputs.paths if p not in done]
        summary = BatchSummary(
            Path(out),
            engine.name,
            len(inputs.paths),
            len(inputs.paths) - len(todo),
            torn_bytes=log.torn_bytes,
        )
        wanted = set(todo)
        bar = tqdm(
            total=len(todo),
            unit="video",
            desc=f"vmtl batch ({engine.name})",
            disable=not progress or not todo,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        t0 = time.perf_counter()
        try:
            for record in _records(engine, todo):
                key = str(record["path"])
                if key not in wanted:  # never write a path twice, nor one not asked for
                    continue
                wanted.discard(key)
                log.append(record)
                done[key] = record
                summary.done += 1
                if record.get("ok"):
                    summary.ok += 1
                else:
                    summary.errors += 1
                bar.update(1)
                if summary.errors:
                    bar.set_postfix(errors=summary.errors, refresh=False)
                if throttle:
                    time.sleep(throttle)
        finally:
            summary.seconds = time.perf_counter() - t0
            bar.close()
    if wanted:
        raise BatchInterrupted(
            f"the {engine.name} engine returned no result for {len(wanted)} video(s), e.g. {min(wanted)}"
        )
    if labels is not None:
        name = labels.task.name
        keys = [p for p in inputs.paths if p in labels.truths]
        good = [p for p in keys if done.get(p, {}).get("ok") and name in done[p].get("tasks", {})]
        summary.labels = labels
        summary.evaluated, summary.left_out = len(good), len(keys) - len(good)
        summary.metrics = record_metrics(
            labels.task, [done[p]["tasks"][name] for p in good], [labels.truths[p] for p in good]
        )
    if parquet is not None:
        write_parquet(out, parquet)
    return summary


def _records(engine: Engine, todo: Sequence[str]) -> Iterator[dict[str, Any]]:
    if todo:
        yield from engine.run(todo)


def batch(
    input: str | os.PathLike[str],
    *,
    engine: str = "local",
    repo: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str],
    url: str | None = None,
    tasks: str | Iterable[str] | None = None,
    window: float | None = None,
    stride: float | None = None,
    concurrency: int | None = None,
    batch_size: int | None = None,
    labels_task: str | None = None,
    parquet: str | os.PathLike[str] | None = None,
    retry_errors: bool = False,
    progress: bool = False,
    **engine_kw: Any,
) -> BatchSummary:
    """Everything ``vmtl batch`` does, as a function: collect inputs, build the engine, run, evaluate."""
    if parquet is not None:
        require_pyarrow()
    inputs = collect_inputs(input)
    eng = make_engine(
        engine,
        repo=repo,
        url=url,
        tasks=tasks,
        window=window,
        stride=stride,
        concurrency=concurrency,
        batch_size=batch_size,
        **engine_kw,
    )
    try:
        labels = resolve_labels(inputs, eng.graph, eng.tasks, labels_task)
        return run_batch(
            eng, inputs, out, labels=labels, retry_errors=retry_errors, progress=progress, parquet=parquet
        )
    finally:
        eng.close()
