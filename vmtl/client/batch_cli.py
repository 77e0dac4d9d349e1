"""`vmtl batch`'s arguments: offline batch inference over many videos (local, triton or ray).

Light (no ONNX Runtime), for an instant ``vmtl batch --help``; the run is ``vmtl.client.batch_run``.

Exit status: 0 when every input has a record in the output (error records included), 1 when the run
stopped part-way (lost server, model failure; run again to resume), 2 for bad arguments or setup
problems (missing repository, unreachable server, empty input, unknown task).
"""

from __future__ import annotations

import argparse

from vmtl.client.engine_names import ENGINES
from vmtl.client.options import add_server_arguments

_DESCRIPTION = """\
Run every task (or --tasks) of a vmtl model repository over many videos and write one JSON line per
video to --out. Three engines give the same results:

  local   ONNX Runtime in this process on the repository's ONNX graphs: videos are decoded in
          --concurrency threads with the repository's preprocessing, the trunk runs once per batch of
          --batch-size clips, then only the heads the asked tasks need, in stage order.
  triton  a running vmtl Triton server (`vmtl serve REPO`) at --url, --concurrency videos in flight;
          several servers (--url a:8001,b:8001) share the videos, and one that goes away mid-run
          hands its videos to the others (the run stops only when none is left).
  ray     Ray Data: read_binary_files -> decode -> map_batches over a pool of --concurrency actors
          holding ONNX Runtime sessions (Ray fuses the decode into them); for more videos than one
          machine handles (--ray-address of a cluster, else a local instance with --ray-cpus).
          Needs `pip install 'vmtl[ray]'`.

INPUT is a directory (searched recursively for video files), a glob pattern (quote it), a video file,
or an MMAction2 annotation list (`path label ...` lines, paths relative to the list; a .json file is an
ActivityNet-style localize/track annotation file). An annotation list with labels also prints the
metrics of the task it labels (named by --labels-task, or inferred: the task named like the list's
folder, or the only task whose kind fits the labels).

Output lines:  {"path": ..., "ok": true, "tasks": {task: result}, "windows": [...], "elapsed_s": s}
               {"path": ..., "ok": false, "error": "why"}          (a video that cannot be decoded)
"windows" (each {"start", "end", task: result}) only with --window; "tasks" then combines the windows.

Resumable: each record is appended and flushed as soon as it is ready; running the same command again
skips every video already in --out (ok or error; --retry-errors re-runs the errors). A killed run
loses nothing and writes nothing twice (a torn last line is cut off on resume).
"""

_EPILOG = """\
examples:
  vmtl batch videos/ --repo model_repository --out results.jsonl
  vmtl batch 'clips/**/*.mp4' --engine triton --url localhost:8001 --out results.jsonl --concurrency 8
  vmtl batch videos/ --engine triton --url a:8001,b:8001 --ca ca.pem --out results.jsonl   # 2 servers, TLS
  vmtl batch data/synth/motion/val.txt --repo model_repository --out val.jsonl     # + metrics table
  vmtl batch long/ --repo model_repository --out long.jsonl --window 4 --stride 2 --tasks segments
  vmtl batch videos/ --engine ray --repo model_repository --out results.jsonl --parquet results.parquet

exit status: 0 every input has a record in --out (error records included); 1 the run stopped part-way
(lost server, model failure: run again to resume); 2 bad arguments or setup (missing repository,
unreachable server, empty input, unknown task, ambiguous labels).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = _DESCRIPTION
    parser.epilog = _EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    _add_job_arguments(parser)
    _add_throughput_arguments(parser)
    _add_output_arguments(parser)
    _add_engine_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """What to run over: the input, the engine and its repository or server, the tasks, the windows."""
    parser.add_argument(
        "input", metavar="INPUT", help="directory, glob pattern, video file or annotation list"
    )
    parser.add_argument(
        "--engine", choices=ENGINES, default="local", help="where inference runs (default: local)"
    )
    parser.add_argument(
        "--repo",
        metavar="MODEL_REPOSITORY",
        default=None,
        help="model repository written by `vmtl export` (needed by local and ray; with triton, checked "
        "against the server's task graph)",
    )
    parser.add_argument("--out", required=True, metavar="FILE.jsonl", help="results, one JSON line per video")
    add_server_arguments(parser, prefix="triton: ")
    parser.add_argument(
        "--tasks", default=None, metavar="A,B", help="comma-separated task names (default: all)"
    )
    parser.add_argument(
        "--window", type=float, default=None, metavar="S", help="sliding windows of S seconds"
    )
    parser.add_argument(
        "--stride", type=float, default=None, metavar="S", help="seconds between windows (default: --window)"
    )


def _add_throughput_arguments(parser: argparse.ArgumentParser) -> None:
    """How much runs at once."""
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        metavar="N",
        help="local: decode threads (default: cores); triton: videos in flight (default 8); "
        "ray: ONNX Runtime actors (default: half the cluster's CPUs)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        metavar="N",
        help="local, ray: clips per trunk run (default: the repository's max_batch_size)",
    )


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """What is written besides --out, the labels the metrics read, and resuming."""
    parser.add_argument(
        "--parquet", default=None, metavar="FILE", help="also write the results as Parquet (needs pyarrow)"
    )
    parser.add_argument(
        "--labels-task",
        default=None,
        metavar="TASK",
        help="the task an annotation list INPUT labels (default: inferred); `none`: no metrics",
    )
    parser.add_argument(
        "--retry-errors", action="store_true", help="re-run videos whose record in --out is an error"
    )


def _add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """Settings of one engine only (triton, ray)."""
    parser.add_argument(
        "--mode",
        choices=("bytes", "clip"),
        default="bytes",
        help="triton: send encoded files (server decodes, default) or decode here and send clips",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="S",
        help="triton: per-request timeout (default 300 s)",
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="ray: cluster to join (default: start a local instance)",
    )
    parser.add_argument(
        "--ray-cpus", type=int, default=None, metavar="N", help="ray: CPUs of a local instance (default: all)"
    )
