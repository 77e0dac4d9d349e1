"""The fused heads step's two designs, in process: K head sessions in stage order vs one merged graph.

The fused heads model (`vmtl export --heads fused`) holds one ONNX Runtime session per head and runs the
asked heads in stage order, feeding each DLM its auxiliaries' ``repr``. The other design the serving-cost
issue named is one merged multi-output graph (``onnx.compose.merge_models``, each DLM's ``repr_<aux>``
input wired to its auxiliary's ``repr`` output): one session call per request, but every head in it runs
whatever the request asked. This times both on a repository's heads, with the trunk's real features of
random clips, for every task and for one task, at batch 1 and 8 (medians, the host's session options).

    .venv/bin/python benchmarks/bench_merged_heads.py REPO [--update-results]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import compose

from vmtl.contract import HEAD_FEATURES, HEAD_OUTPUT, HEAD_REPR, repr_input
from vmtl.runtime import LocalModel, ort_session

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serving_cost import cpu_line  # noqa: E402
from results import publish  # noqa: E402

SECTION = "## Fused heads: K sessions vs one merged graph"


def merged_heads(model: LocalModel, tasks: list[str], out: Path) -> Path:
    """One ONNX graph of ``tasks``' heads: inputs ``<task>/features``, outputs ``<task>/output``; each
    DLM's ``repr_<aux>`` fed from ``<aux>/repr`` inside the graph."""
    merged: onnx.ModelProto | None = None
    for task in model.graph.closure(tasks):
        head = compose.add_prefix(onnx.load(str(model.heads[task])), f"{task}/")
        if merged is None:
            merged = head
            continue
        io_map = [(f"{a}/{HEAD_REPR}", f"{task}/{repr_input(a)}") for a in model.graph.task(task).auxiliaries]
        merged = compose.merge_models(merged, head, io_map=io_map)
    assert merged is not None
    onnx.save(merged, str(out))
    return out


def interleaved_ms(fns: list[Callable[[], object]], iters: int) -> list[float]:
    """Median ms of each of ``fns``, called in turn ``iters`` times (so drift in the machine's load hits
    every one alike)."""
    for fn in fns:
        for _ in range(3):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(iters):
        for fn, ts in zip(fns, times, strict=True):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    return [1e3 * statistics.median(ts) for ts in times]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("repo", type=Path)
    ap.add_argument("--iters", type=int, default=1000)
    ap.add_argument("--update-results", action="store_true")
    args = ap.parse_args(argv)

    model = LocalModel.load(args.repo)
    pipe = model.host_pipeline()
    graph = model.graph
    first = graph.trunk_names[0]
    tasks = [t.name for t in graph.tasks if graph.trunk_of(t.name) == first]
    pre = graph.preprocess
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-merged-") as tmp:
        path = merged_heads(model, tasks, Path(tmp) / "heads.onnx")
        sess = ort_session(path, threads=1)
        names = [o.name for o in sess.get_outputs() if o.name.endswith(f"/{HEAD_OUTPUT}")]
        for batch in (1, 8):
            video = np.random.default_rng(0).integers(
                0, 256, (batch, pre.num_frames, pre.size, pre.size, 3), np.uint8
            )
            feats = pipe.features(video, tasks)
            feed = {f"{t}/{HEAD_FEATURES}": feats[t] for t in tasks}
            # The merged graph answers what the K sessions answer.
            want = pipe.run_heads(feats, tasks)
            got = dict(zip(names, sess.run(names, feed), strict=True))
            err = max(float(np.abs(want[t] - got[f"{t}/{HEAD_OUTPUT}"]).max()) for t in tasks)
            k_all, m_all, k_one = interleaved_ms(
                [
                    lambda f=feats: pipe.run_heads(f, tasks),
                    lambda fd=feed: sess.run(names, fd),
                    lambda f=feats: pipe.run_heads(f, tasks[:1]),
                ],
                args.iters,
            )
            rows.append((batch, k_all, m_all, k_one, err))
    lines = [
        SECTION,
        "",
        f"`.venv/bin/python benchmarks/bench_merged_heads.py {args.repo}`: CPU {cpu_line()}; the "
        f"repository's {len(tasks)} heads on its first trunk ({', '.join(tasks)}), one intra-op thread "
        f"(the heads host's setting), median of {args.iters} calls each, interleaved.",
        "",
        "| batch | K sessions, every task (ms) | merged graph, every task (ms) | merged / K | K sessions, "
        f"`{tasks[0]}` only (ms) | max abs diff |",
        "|---|---|---|---|---|---|",
    ]
    for batch, k_all, m_all, k_one, err in rows:
        lines.append(
            f"| {batch} | {k_all:.3f} | {m_all:.3f} | {m_all / k_all:.2f}x | {k_one:.3f} | {err:.1e} |"
        )
    publish(SECTION, "\n".join(lines) + "\n", args.update_results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
