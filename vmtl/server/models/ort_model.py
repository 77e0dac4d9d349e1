"""Triton python-backend model hosting one CPU inference session (vmtl ``cpu`` repository flavour).

Copied by ``vmtl.export.repository.write_repository`` to ``<model>/1/model.py`` next to ``model.onnx``.
Config parameters (all optional): ``onnx_file``, the file name in the version directory (default
``model.onnx``), and the session options :func:`vmtl.runtime.host_session` reads (``intra_op_threads``,
``inter_op_threads``, ``allow_spinning``). A backbone exported with ``--precision`` also lists its accepted
(runtime, precision) variants in ``vmtl_variants``: :func:`vmtl.runtime_openvino.host_backbone` runs the
fastest one this CPU runs natively (ONNX Runtime or OpenVINO), or the one ``runtime`` / ``precision`` (env
``VMTL_RUNTIME`` / ``VMTL_PRECISION``) name, and the choice is logged. It runs inside Triton's python stub,
where ``vmtl`` is importable (``vmtl.server.launcher.server_env`` puts it on the stub's path).

A backbone whose config parameter ``vmtl_feat_stack`` names tasks answers ``feat_stack`` instead of their
``feat_<task>`` outputs: those stacked along axis 1 [B,T,N,D], in that order (the fused heads read it).

``execute`` concatenates every request it receives (each may carry its own batch) along axis 0, runs the
session once, and splits the outputs back. A request whose tensors have the wrong dtype or shape gets its own
``TritonError`` (naming the tensor, what was expected and what came); the others still run.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from vmtl.contract import FEAT_STACK, PARAM_FEAT_STACK, feat_output
from vmtl.runtime_openvino import host_backbone
from vmtl.server.hosting import BadRequest, config_and_params, version_dir


def _shape_str(shape: Any) -> str:
    return "[" + ",".join(str(int(d)) for d in shape) + "]"


class TritonPythonModel:
    """One ONNX Runtime or OpenVINO session; dynamic batches are run as one call."""

    def initialize(self, args: dict[str, str]) -> None:
        config, params = config_and_params(args)
        self.name = config.get("name") or args.get("model_name", "model")
        path = version_dir(args) / (params.get("onnx_file") or "model.onnx")
        if not path.is_file():
            raise pb_utils.TritonModelException(f"{self.name}: ONNX file not found: {path}")
        try:
            hosted = host_backbone(path.parent, params)
        except (ValueError, RuntimeError) as exc:
            raise pb_utils.TritonModelException(f"{self.name}: {exc}") from exc
        self.session = hosted.session
        self.threads = hosted.threads
        self.runtime = "ONNX Runtime" if hosted.runtime == "ort" else "OpenVINO"
        if params.get("vmtl_variants"):
            pb_utils.Logger.log_info(f"{self.name}: runs {hosted.describe()}")

        self.max_batch_size = int(config.get("max_batch_size", 0))
        self.inputs = [
            (
                i["name"],
                np.dtype(pb_utils.triton_string_to_numpy(i["data_type"])),
                tuple(int(d) for d in i["dims"]),
                bool(i.get("optional", False)),
            )
            for i in config["input"]
        ]
        self.outputs = {
            o["name"]: np.dtype(pb_utils.triton_string_to_numpy(o["data_type"])) for o in config["output"]
        }
        #: feat_stack's members (session outputs), in stack order; empty: the backbone has no stack
        self.stack = [feat_output(t) for t in (params.get(PARAM_FEAT_STACK) or "").split(",") if t]
        have_in = {x.name for x in self.session.get_inputs()}
        have_out = {x.name for x in self.session.get_outputs()} | ({FEAT_STACK} if self.stack else set())
        missing = [n for n, *_ in self.inputs if n not in have_in] + [
            n for n in [*self.outputs, *self.stack] if n not in have_out
        ]
        if missing:
            raise pb_utils.TritonModelException(
                f"{self.name}: config tensors {missing} are not in {path.name} "
                f"(inputs {sorted(have_in)}, outputs {sorted(have_out)})"
            )

    # ------------------------------------------------------------------------------------------
    def _read(self, request: Any) -> tuple[dict[str, np.ndarray], int]:
        """Validated input arrays of one request and its batch size."""
        feeds: dict[str, np.ndarray] = {}
        batch = -1
        for name, dtype, dims, optional in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                if optional:
                    continue
                raise BadRequest(f"{self.name}: missing input tensor '{name}'")
            array = tensor.as_numpy()
            want = ((-1,) if self.max_batch_size > 0 else ()) + dims
            if array.dtype != dtype:
                raise BadRequest(self._mismatch(name, dtype, want, array, "wrong dtype"))
            if array.ndim != len(want) or any(
                w not in (-1, g) for w, g in zip(want, array.shape, strict=True)
            ):
                raise BadRequest(self._mismatch(name, dtype, want, array, "wrong shape"))
            if self.max_batch_size > 0:
                if array.shape[0] < 1:
                    raise BadRequest(f"{self.name}: input '{name}' has an empty batch")
                if batch not in (-1, array.shape[0]):
                    raise BadRequest(
                        f"{self.name}: input '{name}' has batch size {array.shape[0]} but other inputs have {batch}"
                    )
                batch = array.shape[0]
            feeds[name] = array
        return feeds, max(batch, 1)

    def _mismatch(
        self, name: str, dtype: np.dtype, want: tuple[int, ...], array: np.ndarray, why: str
    ) -> str:
        """The error message of an input whose dtype or shape is not the config's (built only on errors)."""
        batched = self.max_batch_size > 0
        dims = ",".join("B" if d == -1 and j == 0 and batched else str(d) for j, d in enumerate(want))
        got = f"{array.dtype.name} {_shape_str(array.shape)}"
        return f"{self.name}: input '{name}' expected {dtype.name} [{dims}], got {got} ({why})"

    def _wanted(self, request: Any) -> list[str]:
        names = [n for n in request.requested_output_names() if n in self.outputs]
        return names or list(self.outputs)

    def _respond(self, outputs: dict[str, np.ndarray], wanted: list[str]) -> Any:
        tensors = [
            pb_utils.Tensor(n, np.ascontiguousarray(outputs[n].astype(self.outputs[n], copy=False)))
            for n in wanted
        ]
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def _error(self, message: str) -> Any:
        return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))

    def _run(
        self, members: list[tuple[int, dict[str, np.ndarray], int, list[str]]], responses: list[Any]
    ) -> None:
        """One session call for requests whose inputs share their non-batch shapes."""
        names = sorted({n for *_, wanted in members for n in wanted})
        stacked = FEAT_STACK in names
        if stacked:  # run its members instead; the stack is built from them below
            names = sorted({n for n in names if n != FEAT_STACK} | set(self.stack))
        if len(members) == 1:
            feeds = members[0][1]
        else:
            feeds = {k: np.concatenate([m[1][k] for m in members], axis=0) for k in members[0][1]}
        try:
            results = dict(zip(names, self.session.run(names, feeds), strict=True))
            if stacked:
                results[FEAT_STACK] = np.stack([results[n] for n in self.stack], axis=1)
        except Exception as exc:
            if len(members) > 1:
                for member in members:
                    self._run([member], responses)
                return
            responses[members[0][0]] = self._error(f"{self.name}: {self.runtime} failed: {exc}")
            return
        offset = 0
        for index, _, batch, wanted in members:
            part = (
                results if len(members) == 1 else {n: v[offset : offset + batch] for n, v in results.items()}
            )
            offset += batch
            try:
                responses[index] = self._respond(part, wanted)
            except Exception as exc:
                responses[index] = self._error(f"{self.name}: cannot build the response: {exc}")

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, dict[str, np.ndarray], int, list[str]]]] = {}
        for index, request in enumerate(requests):
            try:
                feeds, batch = self._read(request)
                wanted = self._wanted(request)
            except BadRequest as exc:
                responses[index] = self._error(str(exc))
                continue
            except Exception as exc:
                responses[index] = self._error(f"{self.name}: bad request: {exc}")
                continue
            if self.max_batch_size > 0:
                key: tuple = tuple((k, v.shape[1:]) for k, v in sorted(feeds.items()))
            else:
                key = (index,)  # no batch axis: every request runs alone
            groups.setdefault(key, []).append((index, feeds, batch, wanted))
        for members in groups.values():
            # Keep each ORT call within max_batch_size (Triton's dynamic batcher already does).
            chunk: list[tuple[int, dict[str, np.ndarray], int, list[str]]] = []
            size = 0
            for member in members:
                if chunk and self.max_batch_size > 0 and size + member[2] > self.max_batch_size:
                    self._run(chunk, responses)
                    chunk, size = [], 0
                chunk.append(member)
                size += member[2]
            if chunk:
                self._run(chunk, responses)
        return responses

    def finalize(self) -> None:
        self.session = None
