"""`vmtl export`'s arguments: a trained checkpoint -> ONNX (+ int8 / TensorRT) -> Triton model repository.

Light, for an instant ``vmtl export --help``; the run (torch, ONNX) is ``vmtl.export.run``.

Exit status: 0 written; 1 refused (parity check, accuracy gate, --only-heads trunk mismatch, TensorRT
build) with nothing written; 2 bad arguments (missing checkpoint, --int8 without --data, --trt without a
GPU...).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vmtl.export.defaults import DEFAULT_QUEUE_DELAY_US, THROUGHPUT_QUEUE_DELAY_US

_EPILOG = """\
examples:
  vmtl export runs/demo --out model_repository/                    cpu flavour (Triton python backend + ORT)
  vmtl export runs/demo --out model_repository/ --flavour both     OUT/cpu and OUT/native (vmtl serve OUT)
  vmtl export runs/demo --out model_repository/ --int8 --data data/demo
  vmtl export runs/demo-v2 --out model_repository/ --only-heads    new heads, same backbone file
  vmtl export runs/demo --out model_repository/ --heads separate   one model per head (fused: one step)
  vmtl export runs/demo --out model_repository/ --precision fp32,bf16,int8 --runtime auto --data data/demo

int8 accuracy gate (on --data's held-out 'val' split): refused when a task's primary metric drops by more
than 0.01 absolute (top1, mAP, mAP@0.5, recall@1, mIoU) or its MAE grows by more than 1 % relative.
--int8 tries QInt8 per-channel, QInt8 per-tensor, QUInt8 per-channel and QUInt8 per-tensor weights in
turn and keeps the first the gate accepts (vmtl.json records every setting tried). A graph's further
(frames) trunks are quantised statically (Conv, calibrated on training clips) behind a gate of their own:
their tasks' metrics, and each pretrained head's top-1 agreement with fp32 (--int8-agreement); a refused
trunk stays fp32 and the export goes on.

--precision P,... --runtime ort|openvino|auto: each (runtime, precision) variant of the cpu backbone
(ONNX Runtime / OpenVINO; fp32, bf16, int8 via NNCF for OpenVINO) runs the same gate and is timed; the
accepted ones ship side by side (vmtl.json metadata.variants, fastest first) and the serving host runs the
fastest its CPU supports (VMTL_RUNTIME / VMTL_PRECISION, or the backbone's runtime / precision config
parameters, override). Refused ones are listed with their numbers; the export still succeeds with what
passed (ONNX Runtime fp32 always).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Export a trained checkpoint to ONNX (trunk once + one graph per head), check parity against "
        "PyTorch, optimise for ONNX Runtime CPU, optionally quantise to int8 or build a TensorRT engine "
        "behind an accuracy gate, and write the Triton model repository that `vmtl serve` runs."
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _EPILOG
    parser.add_argument(
        "checkpoint", metavar="CKPT", type=Path, help="checkpoint directory (or its .safetensors)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("model_repository"),
        help="repository directory (default: %(default)s)",
    )
    parser.add_argument(
        "--flavour",
        "--flavor",
        choices=("cpu", "native", "both"),
        default=None,
        help="cpu: python-backend ONNX Runtime models (default; runs on this machine); native: "
        "onnxruntime_onnx/tensorrt_plan for Triton's GPU container; both: OUT/cpu and OUT/native "
        "(default with --trt: native; with --only-heads: the flavours found in OUT)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="DIR",
        help="data root of the checkpoint's tasks: parity runs on real held-out clips, and the int8 / "
        "TensorRT accuracy gate evaluates on them (required by --int8 and --trt)",
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="int8 quantisation of the cpu backbone behind the accuracy gate (dynamic; a multi-trunk graph's "
        "frames trunks static, each behind its own gate)",
    )
    parser.add_argument("--int8-heads", action="store_true", help="with --int8: quantise the heads too")
    parser.add_argument(
        "--int8-agreement",
        type=float,
        default=0.95,
        metavar="F",
        help="with --int8 on a multi-trunk graph: the share of held-out clips on which a frames trunk's "
        "pretrained head must give fp32's top-1 answer for that trunk to ship int8 (default 0.95)",
    )
    parser.add_argument(
        "--precision",
        default=None,
        metavar="P[,P...]",
        help="cpu backbone variants to gate and ship: fp32, bf16, int8 (comma list; needs --data)",
    )
    parser.add_argument(
        "--runtime",
        choices=("ort", "openvino", "auto"),
        default="auto",
        help="with --precision: ONNX Runtime, OpenVINO or both (default: %(default)s)",
    )
    parser.add_argument(
        "--trt", action="store_true", help="TensorRT fp16 engine for the native backbone (GPU)"
    )
    parser.add_argument(
        "--only-heads",
        action="store_true",
        help="re-export only the heads into an existing repository whose backbone is this checkpoint's "
        "(same trunk + adapters SHA-256); the backbone file is kept as it is",
    )
    parser.add_argument(
        "--heads",
        choices=("fused", "separate"),
        default=None,
        help="cpu flavour: fused (default) runs every head in one python-backend model that executes only "
        "the tasks a request asks for (one stub crossing instead of one per head); separate writes one "
        "model per head (per-head hot replacement; the native flavour always). With --only-heads: OUT's",
    )
    parser.add_argument(
        "--cache",
        action="store_true",
        help="turn on Triton's response cache on the backbone: a clip seen before (a second set of tasks, a "
        "retry, another client) skips the trunk; the server needs a cache (`vmtl serve --cache-mb N`)",
    )
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default: %(default)s)")
    parser.add_argument(
        "--max-batch-size", type=int, default=None, metavar="N", help="Triton max_batch_size (default: 8)"
    )
    parser.add_argument(
        "--cpu-threads",
        type=int,
        default=None,
        metavar="N",
        help="cpu flavour: ONNX Runtime threads of the backbone (default: all cores at load time)",
    )
    parser.add_argument(
        "--max-queue-size",
        type=int,
        default=0,
        metavar="N",
        help="refuse requests (server busy) once N wait at the backbone or a head (default 0: no bound). "
        "Costs throughput in Triton 2.51: a queue policy disables the batcher's prefetching and exposes "
        "a 500 ms stall under concurrent load",
    )
    delay = parser.add_mutually_exclusive_group()
    delay.add_argument(
        "--latency",
        dest="queue_delay_us",
        action="store_const",
        const=0,
        help="the backbone's batcher never waits for a batch to fill (the default): lowest latency for a "
        "lone request; requests that queue while the trunk runs are still batched",
    )
    delay.add_argument(
        "--throughput",
        dest="queue_delay_us",
        action="store_const",
        const=THROUGHPUT_QUEUE_DELAY_US,
        help=f"the backbone's batcher waits up to {THROUGHPUT_QUEUE_DELAY_US} us for company: fuller "
        "batches under load, that wait added to a lone request",
    )
    delay.add_argument(
        "--queue-delay-us",
        type=int,
        dest="queue_delay_us",
        metavar="US",
        help="the backbone batcher's max_queue_delay_microseconds, explicitly",
    )
    parser.set_defaults(queue_delay_us=DEFAULT_QUEUE_DELAY_US)
    parser.add_argument(
        "--parity-tol",
        type=float,
        default=1e-4,
        metavar="TOL",
        help="largest max-abs difference to PyTorch accepted (fp32; default: %(default)g)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the random parity clips (without --data)"
    )
    parser.add_argument(
        "--json", type=Path, default=None, metavar="FILE", help="also write the report as JSON"
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress lines, only the summary")
