"""Triton python-backend model running every task head in one step (the ``cpu`` flavour's fused heads).

Copied by ``vmtl export --heads fused`` to ``heads/1/model.py``, next to one ONNX file per head
(``head_<task>.onnx``). The ensembles run ``backbone -> heads``: one stub crossing for all the heads
instead of one per head. Inputs ``feat_<task>`` (the trunk's features), one output per task named after
it. Config parameters: the task graph (``vmtl_task_graph``) and ``intra_op_threads`` (default 1).

Which tasks run: the request parameter ``vmtl_tasks`` (comma-separated task names; Triton forwards an
ensemble request's parameters to every step), each with its DLM auxiliaries, in stage order. Without
it every task runs (a plain KServe-v2 client gets every output). An unknown name is that request's error.
Outputs of tasks that were not asked are left out of the response (the ensemble tolerates that).

A multi-trunk repository has one such model per trunk (config parameter ``vmtl_head_tasks``: the tasks it
answers, comma-separated); it runs the asked ones among them (with their auxiliaries, whichever trunk
those read) and answers no tensors when none of its tasks is asked.

A backbone that stacks its features (config parameter ``vmtl_feat_stack``: the tasks in stack order) sends
them as one ``feat_stack`` input [B,T,N,D] instead of one ``feat_<task>`` per task; each head reads its slice.

Tasks added after the backbone was exported (config parameter ``vmtl_tap_tasks``, comma-separated) read
the backbone's ``trunk_taps`` output instead of ``feat_<task>``: their head graph computes the features.

Per-task Prometheus counters on Triton's metrics endpoint: ``vmtl_head_executions_total`` (clips a head
ran on) and ``vmtl_head_compute_microseconds_total``, labelled ``task``. They are counted in the model and
published every ``METRICS_FLUSH_S`` seconds (:mod:`vmtl.server.hosting`) by a thread of their own: each
update of a python-backend metric is a round trip from the stub to the server (~33 us measured here), so
updating two per task on every request cost ~0.5 ms of a seven-task request's step. The endpoint lags by
at most that interval. Nothing is published once the server process is gone (the stub has a new parent):
an update sent to a dead server waits for its answer forever, and the stub 2.51 then cannot exit (it
lingered after a SIGKILLed server while every other stub ended). An update already on its way when the
server dies cannot be recalled, so a watchdog thread ends the stub ``ORPHAN_GRACE_S`` after its server.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from vmtl.contract import (
    FEAT_STACK,
    PARAM_FEAT_STACK,
    PARAM_GRAPH,
    PARAM_HEAD_TASKS,
    PARAM_TAP_TASKS,
    PARAM_TASKS,
    fused_head_file,
)
from vmtl.runtime import OrtPipeline, host_session
from vmtl.server.hosting import METRICS_FLUSH_S, BadRequest, config_and_params, version_dir
from vmtl.tasks import TaskGraph

#: How many distinct request-parameter strings the model remembers the asked tasks of (other parameters a
#: client sends, e.g. a request id, make each request's string new; those are parsed every time).
PLAN_CACHE = 256
#: Seconds a stub whose server died may take to end on its own before the model ends it.
ORPHAN_GRACE_S = 5.0


class TritonPythonModel:
    """Every head's ONNX Runtime session; runs the asked tasks' heads in stage order."""

    def initialize(self, args: dict[str, str]) -> None:
        config, params = config_and_params(args)
        self.name = config.get("name") or "heads"
        self.graph = TaskGraph.from_dict(json.loads(params[PARAM_GRAPH]))
        taps = [t for t in params.get(PARAM_TAP_TASKS, "").split(",") if t]
        owned = [t for t in params.get(PARAM_HEAD_TASKS, "").split(",") if t]
        self.owned = tuple(owned or self.graph.names)  # the tasks this model answers
        folder = version_dir(args)
        sessions = {}
        for task in self.graph.closure(self.owned):
            path = folder / fused_head_file(task)
            if not path.is_file():
                raise pb_utils.TritonModelException(f"{self.name}: head file not found: {path}")
            sessions[task] = host_session(path, params)
        self.pipeline = OrtPipeline.from_sessions(self.graph, _no_trunk, sessions, tap_tasks=taps)
        self.max_batch_size = int(config.get("max_batch_size", 0))
        self.dims = {i["name"]: tuple(int(d) for d in i["dims"]) for i in config["input"]}
        stack = [t for t in params.get(PARAM_FEAT_STACK, "").split(",") if t]
        #: task -> (the input holding its features, its index on that input's axis 1 or None: all of it)
        self.sources: dict[str, tuple[str, int | None]] = {
            t: (FEAT_STACK, stack.index(t)) if t in stack and t not in taps else (name, None)
            for t, name in self.pipeline.feature_output.items()
        }
        unfed = sorted({self.sources[t][0] for t in self.graph.closure(self.owned)} - set(self.dims))
        if unfed:
            raise pb_utils.TritonModelException(f"{self.name}: the heads read {unfed}, which are not inputs")
        self.executions = pb_utils.MetricFamily(
            name="vmtl_head_executions_total",
            description="Clips each task head of the fused heads model ran on",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.compute = pb_utils.MetricFamily(
            name="vmtl_head_compute_microseconds_total",
            description="Time each task head of the fused heads model spent computing",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        labels = {"model": self.name}
        ran = self.graph.closure(self.owned)
        self.count_metric = {t: self.executions.Metric(labels={**labels, "task": t}) for t in ran}
        self.time_metric = {t: self.compute.Metric(labels={**labels, "task": t}) for t in ran}
        self.pending: dict[str, list[int]] = {}  # task -> [clips, microseconds] not yet published
        self.server_pid = os.getppid()  # the stub's parent: tritonserver
        self.asked: dict[str, tuple[str, ...]] = {}  # request parameters -> the tasks they ask
        self.plans: dict[tuple[str, ...], tuple[tuple[str, str, int | None], ...]] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.publisher = threading.Thread(target=self._publish_loop, name="vmtl-head-metrics", daemon=True)
        self.publisher.start()
        self.watchdog = threading.Thread(target=self._watch_server, name="vmtl-head-watchdog", daemon=True)
        self.watchdog.start()

    # -- metrics ---------------------------------------------------------------------------------
    def _count(self, spent: list[tuple[str, int]], clips: int) -> None:
        """Record that each (task, microseconds) of ``spent`` ran on ``clips`` clips."""
        with self.lock:
            for task, micros in spent:
                entry = self.pending.setdefault(task, [0, 0])
                entry[0] += clips
                entry[1] += micros

    def _publish(self) -> None:
        with self.lock:
            pending, self.pending = self.pending, {}
        for task, (clips, micros) in pending.items():
            self.count_metric[task].increment(clips)
            self.time_metric[task].increment(micros)

    def _server_alive(self) -> bool:
        """Whether the server that started this stub still runs (a dead one's stubs get a new parent)."""
        return os.getppid() == self.server_pid

    def _watch_server(self) -> None:
        """End this stub if it outlives its server by ORPHAN_GRACE_S. The stub ends itself when its server is
        gone, unless a counter update sent in the instant the server died waits for an answer forever."""
        while not self.stop.wait(0.5):
            if not self._server_alive():
                if not self.stop.wait(ORPHAN_GRACE_S):
                    os._exit(1)
                return

    def _publish_loop(self) -> None:
        while not self.stop.wait(METRICS_FLUSH_S):
            if not self._server_alive():  # an update now would wait for an answer that never comes
                return
            try:
                self._publish()
            except Exception as exc:  # the counters are best effort; the heads keep serving
                pb_utils.Logger.log_warn(f"{self.name}: cannot publish the per-task counters: {exc}")

    # ------------------------------------------------------------------------------------------
    def _tasks(self, request: Any) -> tuple[str, ...]:
        """The owned tasks the request asks for (its ``vmtl_tasks`` parameter), remembered per parameter
        string: parsing and checking them each time cost ~0.1 ms of a request's step."""
        raw = request.parameters()
        tasks = self.asked.get(raw)
        if tasks is None:
            tasks = self._parse_tasks(raw)  # BadRequest: not remembered, each such request is refused
            if len(self.asked) < PLAN_CACHE:
                self.asked[raw] = tasks
        return tasks

    def _parse_tasks(self, raw: str) -> tuple[str, ...]:
        value = json.loads(raw).get(PARAM_TASKS) if raw and raw != "{}" else None
        if value is None:
            return self.owned
        asked = [t.strip() for t in str(value).split(",") if t.strip()]
        unknown = [t for t in asked if t not in self.graph]
        if unknown or not asked:
            raise BadRequest(
                f"{self.name}: unknown task(s) {unknown or [value]} in request parameter "
                f"'{PARAM_TASKS}'; the model has: {', '.join(self.graph.names)}"
            )
        wanted = set(asked)
        return tuple(n for n in self.owned if n in wanted)

    def _plan(self, tasks: tuple[str, ...]) -> tuple[tuple[str, str, int | None], ...]:
        """(task, input tensor, the task's index in it or None) of every head ``tasks`` run, auxiliaries
        first (stage order)."""
        plan = self.plans.get(tasks)
        if plan is None:
            plan = tuple((t, *self.sources[t]) for t in self.graph.closure(tasks))
            self.plans[tasks] = plan  # at most one per subset of the owned tasks
        return plan

    def _features(self, request: Any, tasks: tuple[str, ...]) -> tuple[dict[str, np.ndarray], int]:
        given = {tensor.name(): tensor for tensor in request.inputs()}
        arrays: dict[str, np.ndarray] = {}
        feats: dict[str, np.ndarray] = {}
        batch = -1
        for task, name, index in self._plan(tasks):
            array = arrays.get(name)
            if array is None:
                tensor = given.get(name)
                if tensor is None:
                    raise BadRequest(f"{self.name}: missing input tensor '{name}'")
                array = arrays[name] = tensor.as_numpy()
                want = self.dims[name]
                if array.dtype != np.float32 or array.shape[1:] != want or batch not in (-1, array.shape[0]):
                    raise BadRequest(
                        f"{self.name}: input '{name}' expected float32 [B,{','.join(map(str, want))}], "
                        f"got {array.dtype.name} {list(array.shape)}"
                    )
                batch = array.shape[0]
            # A stacked task's slice is contiguous at batch 1 (no copy); a batch is copied for ONNX Runtime.
            feats[task] = array if index is None else np.ascontiguousarray(array[:, index])
        return feats, max(batch, 1)

    def _run(self, tasks: tuple[str, ...], members: list[tuple[int, dict[str, np.ndarray], int]]) -> dict:
        """One pass of the asked heads over the concatenated requests: {task: output}."""
        feats = (
            members[0][1]
            if len(members) == 1
            else {t: np.concatenate([m[1][t] for m in members]) for t in members[0][1]}
        )
        outputs: dict[str, np.ndarray] = {}
        reprs: dict[str, np.ndarray] = {}
        clips = sum(m[2] for m in members)
        spent: list[tuple[str, int]] = []
        for task, _, _ in self._plan(tasks):
            start = time.perf_counter_ns()
            outputs[task], reprs[task] = self.pipeline.run_head(task, feats[task], reprs)
            spent.append((task, (time.perf_counter_ns() - start) // 1000))
        self._count(spent, clips)
        return outputs

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        groups: dict[tuple[str, ...], list[tuple[int, dict[str, np.ndarray], int]]] = {}
        for index, request in enumerate(requests):
            try:
                tasks = self._tasks(request)
                feats, batch = self._features(request, tasks)
            except BadRequest as exc:
                responses[index] = _error(str(exc))
                continue
            except Exception as exc:
                responses[index] = _error(f"{self.name}: bad request: {exc}")
                continue
            if not tasks:  # none of this model's tasks was asked (another trunk's heads answer)
                responses[index] = pb_utils.InferenceResponse(output_tensors=[])
                continue
            groups.setdefault(tasks, []).append((index, feats, batch))
        for tasks, members in groups.items():
            try:
                outputs = self._run(tasks, members)
            except Exception as exc:
                for index, *_ in members:
                    responses[index] = _error(f"{self.name}: ONNX Runtime failed: {exc}")
                continue
            offset = 0
            for index, _, batch in members:
                part = slice(offset, offset + batch)
                offset += batch
                tensors = [pb_utils.Tensor(t, np.ascontiguousarray(outputs[t][part])) for t in tasks]
                responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
        return responses

    def finalize(self) -> None:
        self.stop.set()
        self.publisher.join(timeout=5)
        self.watchdog.join(timeout=5)
        if self._server_alive():
            with contextlib.suppress(Exception):  # the server may already be tearing its metrics down
                self._publish()
        self.pipeline = None


def _no_trunk(video: np.ndarray) -> dict[str, np.ndarray]:
    raise RuntimeError("the fused heads model has no trunk")


def _error(message: str) -> Any:
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))
