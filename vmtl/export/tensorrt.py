"""TensorRT engine for the backbone (``vmtl export --trt``; needs an NVIDIA GPU and the ``tensorrt`` package).

Precision: the fp32 trunk ONNX is first rewritten to mixed fp16 (``onnxruntime.transformers.float16``) with
LayerNormalization, Softmax and the reductions kept in fp32 - ViT LayerNorm statistics overflow in fp16 -
and the engine is built from that graph as a *strongly typed* network: TensorRT runs every layer in the
type the graph gives it. That is the only mode TensorRT 11 has (its FP16 / precision-constraint builder
flags are gone) and it is available since TensorRT 10.0; older TensorRT (no strong typing) falls back to
the FP16 builder flag with LayerNorm/Softmax layers constrained to fp32 (``OBEY_PRECISION_CONSTRAINTS``).

One optimisation profile: batch min 1 / opt 4 / max ``max_batch_size``. A plan only runs on the TensorRT
version and GPU model it was built with, so :func:`write_engine_info` records both in ``tensorrt.json``
beside the plan and :func:`check_engine_info` refuses a mismatch with a clear error. ``tensorrt`` is an
optional extra (``vmtl[gpu]``): it is imported only inside the functions that need it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnxruntime.transformers.float16 import convert_float_to_float16

from vmtl.contract import ENGINE_INFO
from vmtl.export.quantize import ExportError

__all__ = [
    "ENGINE_INFO",
    "FP32_OPS",
    "TensorRTError",
    "TrtTrunk",
    "build_engine",
    "check_engine_info",
    "current_engine_info",
    "fp16_onnx",
    "tensorrt_unavailable",
    "write_engine_info",
]

#: ONNX ops kept in fp32 in the fp16 engine (LayerNorm statistics and softmax overflow in fp16).
FP32_OPS: tuple[str, ...] = ("LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "Pow", "Sqrt", "Erf")


class TensorRTError(ExportError):
    """TensorRT is missing, cannot build the engine, or an engine does not fit this GPU / TensorRT."""


def tensorrt_unavailable() -> str | None:
    """Why ``--trt`` cannot run here (no CUDA GPU, no tensorrt package), or None when it can."""
    reasons = []
    if not torch.cuda.is_available():
        reasons.append("no CUDA GPU is visible (torch.cuda.is_available() is False)")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        reasons.append("the tensorrt package is not installed (pip install tensorrt, on a machine with CUDA)")
    if not reasons:
        return None
    return "--trt builds a TensorRT engine and needs an NVIDIA GPU with TensorRT: " + "; ".join(reasons)


def _gpu_name() -> str:
    """Name of GPU 0: nvidia-smi, else torch."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
            )
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip().splitlines()[0].strip()
        except (OSError, subprocess.SubprocessError):
            pass
    if torch.cuda.is_available():
        return str(torch.cuda.get_device_name(0))
    return "unknown"


def current_engine_info() -> dict[str, str]:
    """TensorRT version and GPU name of this machine ("none" when TensorRT is not installed)."""
    try:
        import tensorrt as trt

        version = str(trt.__version__)
    except ImportError:
        version = "none"
    return {"tensorrt_version": version, "gpu_name": _gpu_name()}


def write_engine_info(model_dir: Path, info: dict[str, Any]) -> Path:
    """Record the TensorRT version, GPU and build settings beside a plan (``<model>/tensorrt.json``)."""
    path = Path(model_dir) / ENGINE_INFO
    path.write_text(json.dumps(info, indent=2) + "\n")
    return path


def check_engine_info(model_dir: Path, *, current: dict[str, str] | None = None) -> dict[str, Any]:
    """Raise :class:`TensorRTError` when the plan in ``model_dir`` was built for another TensorRT or GPU.

    Only the TensorRT major.minor.patch and the GPU model name are compared (a plan is specific to both).
    """
    path = Path(model_dir) / ENGINE_INFO
    if not path.is_file():
        raise TensorRTError(
            f"{model_dir}: no {ENGINE_INFO} beside the TensorRT plan; rebuild it with `vmtl export --trt`"
        )
    info = json.loads(path.read_text())
    now = current or current_engine_info()
    built_v, now_v = str(info.get("tensorrt_version", "?")), now["tensorrt_version"]
    problems = []
    if built_v.split(".")[:3] != now_v.split(".")[:3]:
        problems.append(f"it was built with TensorRT {built_v}, this machine has {now_v}")
    if info.get("gpu_name") != now["gpu_name"]:
        problems.append(f"it was built on a {info.get('gpu_name')!r}, this machine has a {now['gpu_name']!r}")
    if problems:
        raise TensorRTError(
            f"{model_dir}/1/model.plan does not fit this machine: {'; '.join(problems)}. TensorRT engines run "
            "only on the TensorRT version and GPU model they were built for; re-run `vmtl export --trt` here."
        )
    return info


def fp16_onnx(src: Path, dst: Path, *, keep_fp32: Sequence[str] = FP32_OPS) -> Path:
    """Mixed-precision copy of an fp32 ONNX model: fp16 everywhere except ``keep_fp32`` ops; I/O types kept."""
    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True, op_block_list=list(keep_fp32))
    onnx.save(model, str(dst))
    return Path(dst)


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    *,
    max_batch_size: int,
    input_name: str = "video",
    opt_batch: int = 4,
    workspace_gib: float = 4.0,
) -> dict[str, Any]:
    """Build a fp16 TensorRT plan of the trunk (see the module docstring); returns the build record."""
    reason = tensorrt_unavailable()
    if reason:
        raise TensorRTError(reason)
    import tensorrt as trt

    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strong = hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    source = onnx_path
    flags = 0
    if strong:
        source = fp16_onnx(onnx_path, plan_path.with_suffix(".fp16.onnx"))
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    elif hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # TensorRT < 10
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(source)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTError(f"TensorRT cannot parse {source.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if not strong:
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        keep = {trt.LayerType.SOFTMAX, trt.LayerType.REDUCE}
        if hasattr(trt.LayerType, "NORMALIZATION"):
            keep.add(trt.LayerType.NORMALIZATION)
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if layer.type in keep:
                layer.precision = trt.float32
                for j in range(layer.num_outputs):
                    layer.set_output_type(j, trt.float32)
    dims = tuple(onnx_input_shape(onnx_path, input_name))
    shape = lambda b: (b, *dims)  # noqa: E731
    opt = max(1, min(opt_batch, max_batch_size))
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, shape(1), shape(opt), shape(max_batch_size))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise TensorRTError(f"TensorRT failed to build an engine from {onnx_path.name} (see its log above)")
    plan_path.write_bytes(bytes(plan))
    return {
        **current_engine_info(),
        "precision": "fp16 (LayerNorm/Softmax/reductions fp32)",
        "typing": "strong" if strong else "weak (FP16 flag + precision constraints)",
        "profile": {"min": 1, "opt": opt, "max": max_batch_size},
        "input": input_name,
    }


def onnx_input_shape(path: Path, name: str) -> list[int]:
    """Non-batch dims of input ``name`` (must be static)."""
    model = onnx.load(str(path), load_external_data=False)
    for value in model.graph.input:
        if value.name == name:
            dims = [d.dim_value for d in value.type.tensor_type.shape.dim][1:]
            if any(d <= 0 for d in dims):
                raise TensorRTError(f"{path.name}: input {name!r} needs static non-batch dims, got {dims}")
            return dims
    raise TensorRTError(f"{path.name}: no input {name!r}")


class TrtTrunk:
    """Runs a trunk plan on the GPU: uint8 [B,T,S,S,3] numpy -> {output name: float32 numpy} (torch buffers)."""

    def __init__(self, plan_path: Path) -> None:
        import tensorrt as trt

        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
        if self.engine is None:
            raise TensorRTError(f"TensorRT cannot load {plan_path} (built for another TensorRT or GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) != mode]
        self._dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}

    def __call__(self, video: np.ndarray) -> dict[str, np.ndarray]:
        name = self.inputs[0]
        x = torch.from_numpy(np.ascontiguousarray(video)).cuda()
        self.context.set_input_shape(name, tuple(x.shape))
        self.context.set_tensor_address(name, x.data_ptr())
        outs = {}
        for n in self.outputs:
            shape = tuple(self.context.get_tensor_shape(n))
            outs[n] = torch.empty(shape, dtype=self._dtypes[n], device="cuda")
            self.context.set_tensor_address(n, outs[n].data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise TensorRTError("TensorRT execution failed")
        stream.synchronize()
        return {n: t.float().cpu().numpy() for n, t in outs.items()}


def _torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    table = {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.uint8: torch.uint8,
        trt.int32: torch.int32,
    }
    if dtype not in table:
        raise TensorRTError(f"unsupported TensorRT tensor type {dtype}")
    return table[dtype]
