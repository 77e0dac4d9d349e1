"""The training loop: stage 0 (trunk warm-up, only without a pretrained trunk), stage 1 (VMT-Adapters +
heads on heterogeneous batches: each batch from one task's dataset, that head's loss only), stage 2 (DLMs
only, on the primary tasks' losses). With `train.mosaic`, a share of the stage-0 steps trains the trunk on
object mosaics (vmtl.data.mosaic) through a throw-away per-token readout. DDP under torchrun (gloo on
CPU): every rank draws the same task each step and its own clips; gradients are averaged across ranks.

A checkpoint is a directory laid out as `vmtl.models.checkpoint` describes.
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from tqdm.auto import tqdm

from vmtl.data.clips import ClipSet, load_clipset
from vmtl.data.mosaic import ObjectMosaic
from vmtl.metrics import format_table
from vmtl.metrics.evaluate import chance_level, primary, task_metrics
from vmtl.models.checkpoint import (
    CONFIG_FILE,
    METRICS_FILE,
    MODEL_CONFIG_FILE,
    OPTIMIZER_FILE,
    STATE_FILE,
    TASK_GRAPH_FILE,
    WEIGHTS_FILE,
    CheckpointError,
)
from vmtl.models.losses import TaskLoss, build_loss
from vmtl.models.multitask import MultiTaskModel
from vmtl.training.config import TrainConfig, save_config
from vmtl.training.incremental import Increment, apply_increment, plan_increment, restrict_to_increment

MOSAIC = "mosaic"  # the stage-0 draw that renders object mosaics instead of reading a task's dataset
CLIP_RNG = "clip_rng"  # mid-stage saves: the clip sampler's state, so a resumed run draws what it would have


@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    """gloo process group when launched by torchrun (WORLD_SIZE > 1), else single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_environment(threads: int, world: int) -> dict[str, Any]:
    """What, besides config, data and seed, decides the exact weights: recorded in the state file."""
    return {
        "torch": torch.__version__,
        "numpy": np.__version__,
        "threads": threads,
        "world_size": world,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": platform.machine(),
    }


def load_splits(cfg: TrainConfig, num_tokens: int, split: str, progress: bool) -> dict[str, ClipSet]:
    return {
        t.name: load_clipset(cfg.data_root, t, split, cfg.graph.preprocess, num_tokens, progress=progress)
        for t in cfg.graph.tasks
        if not t.pretrained  # a pretrained head has no training data
    }


def task_probabilities(
    sizes: dict[str, int], temperature: float, weights: dict[str, float] | None = None
) -> dict[str, float]:
    """p_t ∝ w_t * n_t ** temperature (temperature 1: by dataset size, 0: uniform; w_t default 1)."""
    w = {t: (weights or {}).get(t, 1.0) * float(n) ** temperature for t, n in sizes.items()}
    total = sum(w.values())
    return {t: v / total for t, v in w.items()}


def lr_at(step: int, steps: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def build_losses(cfg: TrainConfig, train: dict[str, ClipSet]) -> dict[str, TaskLoss]:
    return {
        t.name: build_loss(t, embed_loss=cfg.train.embed_loss, targets=train[t.name].targets)
        for t in cfg.graph.tasks
        if t.name in train
    }


@torch.no_grad()
def predict(model: MultiTaskModel, clips: ClipSet, task: str, batch_size: int) -> np.ndarray:
    """Raw outputs of `task` for every clip, in order."""
    model.eval()
    outs = []
    for i in range(0, len(clips), batch_size):
        video = torch.from_numpy(clips.frames[i : i + batch_size])
        outs.append(model(video, [task])[task].float().numpy())
    return np.concatenate(outs)


def evaluate(
    model: MultiTaskModel, val: dict[str, ClipSet], batch_size: int = 32
) -> dict[str, dict[str, float]]:
    """Held-out metrics of every task (with its chance level, for reading the table)."""
    out = {}
    for t in model.graph.tasks:
        if t.name not in val:  # a pretrained head: no held-out data
            continue
        m = task_metrics(t, predict(model, val[t.name], t.name, batch_size), val[t.name])
        m["chance"] = chance_level(t, val[t.name])
        out[t.name] = m
    return out


def _batch(clips: ClipSet, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(clips.frames[idx]), torch.from_numpy(np.ascontiguousarray(clips.targets[idx]))


def _allreduce_grads(params: list[torch.nn.Parameter], world: int) -> None:
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad /= world


class Trainer:
    """Runs the stages of one config into one checkpoint directory (resumable)."""

    def __init__(
        self,
        cfg: TrainConfig,
        out_dir: Path,
        *,
        resume: bool = False,
        init_from: Path | None = None,
        progress: bool = True,
        log: Callable[[str], None] = print,
    ) -> None:
        self.cfg, self.out, self.progress = cfg, Path(out_dir), progress
        self.dist = init_distributed()
        self.log = log if self.dist.main else (lambda _msg: None)
        threads = cfg.train.threads or max(1, (os.cpu_count() or 1) // self.dist.world)
        torch.set_num_threads(threads)  # CPU float reductions depend on it: recorded in the state file
        seed_everything(cfg.seed)
        self.state: dict[str, Any] = {"stage": None, "step": 0, "completed": [], "metrics": {}}
        #: With --init-from a checkpoint whose graph this one extends: the tasks this run trains.
        self.increment: Increment | None = None
        if resume:
            self.model = self._resume()
            if self.state.get("increment"):
                self.increment = Increment.from_dict(self.state["increment"])
        else:
            if (self.out / STATE_FILE).exists():
                raise FileExistsError(
                    f"{self.out} already holds a checkpoint; pass --resume to continue it or choose another --out"
                )
            self.model = MultiTaskModel(cfg.graph, cfg.model)
            if init_from is not None:
                self.increment = plan_increment(cfg, Path(init_from))
                if self.increment is None:
                    load_trunk(self.model, Path(init_from))
                else:
                    apply_increment(self.model, self.increment)
                    self.state["increment"] = self.increment.to_dict()
                    self.log(
                        f"incremental run from {self.increment.base}: training {', '.join(self.increment.trained)} "
                        f"(new {self.increment.new}, changed {self.increment.changed}, dependents "
                        f"{self.increment.dependents}); every other weight stays as it is"
                    )
        self.state["environment"] = run_environment(threads, self.dist.world)
        tokens = self.model.temporal_tokens
        show = progress and self.dist.main
        self.train_sets = load_splits(cfg, tokens, "train", show)
        self.val_sets = load_splits(cfg, tokens, "val", show)
        self.losses = build_losses(cfg, self.train_sets)
        if resume and (self.out / OPTIMIZER_FILE).exists():
            bundle = torch.load(self.out / OPTIMIZER_FILE, weights_only=False)
            for n, sd in bundle.get("losses", {}).items():
                self.losses[n].load_state_dict(sd)
            self._optimizer_state = bundle.get("optimizer")
            self._mosaic_state = bundle.get(MOSAIC)
            self._clip_rng_state = bundle.get(CLIP_RNG)
        else:
            self._optimizer_state = self._mosaic_state = self._clip_rng_state = None
        self._clip_rng: np.random.Generator | None = None
        self.mosaic_readout: torch.nn.Linear | None = None

    # -- stages ----------------------------------------------------------------------------------------------
    def stages(self) -> list[int]:
        s = []
        if not self.model.pretrained and self.cfg.train.stage0.steps > 0:
            s.append(0)
        if self.cfg.train.stage1.steps > 0:
            s.append(1)
        if self.model.has_dlms() and self.cfg.train.stage2.steps > 0 and self._stage2_tasks():
            s.append(2)
        return s

    def _trained(self, names: list[str]) -> list[str]:
        return names if self.increment is None else [n for n in names if n in self.increment.trained]

    def _stage2_tasks(self) -> list[str]:
        return self._trained([t.name for t in self.cfg.graph.tasks if t.auxiliaries and self.cfg.model.dlm])

    def run(self) -> Path:
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.out / CONFIG_FILE)
            self.log(self.model.summary(flops=False))
        for stage in self.stages():
            if stage in self.state["completed"]:
                continue
            self._run_stage(stage)
            self.state["completed"].append(stage)
            self.state["stage"], self.state["step"] = None, 0
            metrics = evaluate(self.model, self.val_sets, self.cfg.train.eval_batch_size)
            self.state["metrics"][f"stage{stage}"] = metrics
            self.log(f"held-out metrics after stage {stage}:\n{format_table(metrics)}")
            self._save()
        if self.dist.world > 1:
            dist.barrier()
        return self.out

    def _run_stage(self, stage: int) -> None:
        sc = self.cfg.train.stage(stage)
        self.model.set_stage(stage)
        tasks = [
            t.name
            for t in self.cfg.graph.tasks
            if not t.pretrained and (stage != 2 or (t.auxiliaries and self.cfg.model.dlm))
        ]
        if self.increment is not None:
            restrict_to_increment(self.model, self.increment)
            tasks = self._trained(tasks)
        params = self.model.trainable_parameters()
        if stage != 2:  # the embed head's identity prototypes train with the heads
            params += [p for n in tasks for p in self.losses[n].parameters()]
        mosaic = self._mosaic() if stage == 0 else None
        if mosaic is not None:
            params += list(self.mosaic_readout.parameters())  # type: ignore[union-attr]
        opt = torch.optim.AdamW(params, lr=sc.lr, weight_decay=sc.weight_decay)
        start = self.state["step"] if self.state["stage"] == stage else 0
        if start and self._optimizer_state is not None:
            opt.load_state_dict(self._optimizer_state)
        sizes = {n: len(self.train_sets[n]) for n in tasks}
        probs = task_probabilities(sizes, self.cfg.train.temperature, self.cfg.train.task_weights)
        names, weights = list(probs), list(probs.values())
        if mosaic is not None:
            share = self.cfg.train.mosaic.share
            names, weights = [*names, MOSAIC], [w * (1 - share) for w in weights] + [share]
        # Same task sequence on every rank (seeded by stage), own clips per rank.
        task_rng = np.random.default_rng([self.cfg.seed, stage])
        clip_rng = np.random.default_rng([self.cfg.seed, stage, self.dist.rank, 1])
        for _ in range(start):  # replay the draws so a resumed run continues the same sequence
            task_rng.choice(len(names), p=weights)
        if start and self._clip_rng_state is not None:  # and the clips (and mosaics) where they stopped
            clip_rng.bit_generator.state = self._clip_rng_state
        self._clip_rng = clip_rng
        self.model.train()
        bar = tqdm(
            range(start, sc.steps),
            desc=f"stage {stage}",
            disable=not (self.progress and self.dist.main),
            initial=start,
            total=sc.steps,
            unit="step",
        )
        running: dict[str, float] = {}
        t0 = time.perf_counter()
        for step in bar:
            name = names[int(task_rng.choice(len(names), p=weights))]
            for g in opt.param_groups:
                g["lr"] = lr_at(step, sc.steps, sc.lr, sc.warmup)
            if name == MOSAIC:
                ramp = self.cfg.train.mosaic.ramp * sc.steps
                spread = min(1.0, (step + 1) / ramp) if ramp > 0 else 1.0
                frames, labels = mosaic.batch(clip_rng, sc.batch_size, spread)  # type: ignore[union-attr]
                loss, acc = self._mosaic_loss(torch.from_numpy(frames), torch.from_numpy(labels))
                running["mosaic_acc"] = 0.9 * running.get("mosaic_acc", acc) + 0.1 * acc
            else:
                data = self.train_sets[name]
                idx = clip_rng.choice(len(data), size=min(sc.batch_size, len(data)), replace=False)
                video, target = _batch(data, idx)
                out = self.model(video, [name])[name]
                loss = self.losses[name](out, target)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"stage {stage} step {step}: task {name!r} loss is {loss.item()}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.dist.world > 1:
                _allreduce_grads(params, self.dist.world)
            torch.nn.utils.clip_grad_norm_(params, sc.grad_clip)
            opt.step()
            running[name] = 0.9 * running.get(name, loss.item()) + 0.1 * loss.item()
            bar.set_postfix({k[:8]: f"{v:.3f}" for k, v in running.items()}, refresh=False)
            self.state["stage"], self.state["step"] = stage, step + 1
            if (
                self.cfg.train.save_every
                and (step + 1) % self.cfg.train.save_every == 0
                and step + 1 < sc.steps
            ):
                self._save(opt=opt)
        self.log(f"stage {stage}: {sc.steps - start} steps in {time.perf_counter() - t0:.0f} s")
        if "mosaic_acc" in running:
            self.log(
                f"stage {stage}: {self.cfg.train.mosaic.task} mosaics, per-token top-1 (running, train) "
                f"{running['mosaic_acc']:.2f} (chance {1 / mosaic.num_classes:.2f})"  # type: ignore[union-attr]
            )

    def _mosaic(self) -> ObjectMosaic | None:
        """The stage-0 mosaic source and its per-token readout (None when `train.mosaic` is off)."""
        mc = self.cfg.train.mosaic
        if mc.share <= 0:
            return None
        task = self.cfg.graph.task(mc.task)
        pre = self.cfg.graph.preprocess
        mosaic = ObjectMosaic.from_dataset(
            self.cfg.data_root,
            frames=pre.num_frames,
            size=pre.size,
            tokens=self.model.temporal_tokens,
            labels=tuple(task.labels),
        )
        self.mosaic_readout = torch.nn.Linear(self.model.trunk.hidden_size, mosaic.num_classes)
        if self._mosaic_state is not None:
            self.mosaic_readout.load_state_dict(self._mosaic_state)
        return mosaic

    def _mosaic_loss(self, video: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Cross-entropy of every temporal token's class, read from the mosaic task's trunk features
        (averaged over the token's cells) by a linear layer that is dropped after stage 0."""
        logits = mosaic_logits(self.model, self.mosaic_readout, self.cfg.train.mosaic.task, video)  # type: ignore[arg-type]
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
        return loss, float((logits.argmax(-1) == labels).float().mean())

    # -- checkpoints -----------------------------------------------------------------------------------------
    def _save(self, opt: torch.optim.Optimizer | None = None) -> None:
        if not self.dist.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        self.model.save_checkpoint(self.out / WEIGHTS_FILE)
        self.cfg.graph.save(self.out / TASK_GRAPH_FILE)
        (self.out / MODEL_CONFIG_FILE).write_text(json.dumps(self.model.cfg.to_dict(), indent=2))
        (self.out / METRICS_FILE).write_text(json.dumps(self.state["metrics"], indent=2))
        # Mid-stage: optimizer + loss state (embed prototypes); between stages: the loss state alone.
        bundle: dict[str, Any] = {"losses": {n: lo.state_dict() for n, lo in self.losses.items()}}
        if opt is not None:
            bundle["optimizer"] = opt.state_dict()
            if self.mosaic_readout is not None and self.state["stage"] == 0:
                bundle[MOSAIC] = self.mosaic_readout.state_dict()
            if self._clip_rng is not None:
                bundle[CLIP_RNG] = self._clip_rng.bit_generator.state
        torch.save(bundle, self.out / OPTIMIZER_FILE)
        (self.out / STATE_FILE).write_text(json.dumps(self.state, indent=2))

    def _resume(self) -> MultiTaskModel:
        state_file = self.out / STATE_FILE
        if not state_file.is_file():
            raise FileNotFoundError(f"nothing to resume: {state_file} does not exist")
        self.state = json.loads(state_file.read_text())
        model = MultiTaskModel.load_checkpoint(self.out / WEIGHTS_FILE, graph=self.cfg.graph)
        self.log(
            f"resuming {self.out}: completed stages {self.state['completed']}, "
            f"stage {self.state['stage']} at step {self.state['step']}"
        )
        return model


def mosaic_logits(
    model: MultiTaskModel, readout: torch.nn.Linear, task: str, video: torch.Tensor
) -> torch.Tensor:
    """[B, T', C]: the stage-0 mosaic readout of `task`'s trunk features, averaged over each temporal
    token's cells."""
    feats = model.trunk(video, [task])[task]
    return readout(feats.reshape(video.shape[0], model.temporal_tokens, -1, feats.shape[-1]).mean(2))


def load_trunk(model: MultiTaskModel, ckpt: Path) -> None:
    """Start `model`'s frozen trunk from another vmtl checkpoint's trunk (which then counts as pretrained,
    so stage 0 is skipped). Adapters, heads and DLMs keep their fresh initialisation."""
    weights = ckpt / WEIGHTS_FILE if ckpt.is_dir() else ckpt
    if not weights.is_file():
        raise CheckpointError(f"--init-from: no vmtl checkpoint at {weights}")
    state = load_file(str(weights))
    ids = {id(p) for p in model.trunk.backbone_parameters()}
    names = [f"trunk.{n}" for n, p in model.trunk.named_parameters() if id(p) in ids]
    missing = [n for n in names if n not in state]
    if missing:
        raise CheckpointError(
            f"--init-from {weights}: its trunk does not match this config (missing {missing[:3]})"
        )
    own = model.state_dict()
    for n in names:
        if state[n].shape != own[n].shape:
            raise CheckpointError(
                f"--init-from {weights}: {n} has shape {list(state[n].shape)}, this config needs {list(own[n].shape)}"
            )
    model.load_state_dict({n: state[n] for n in names}, strict=False)
    model.pretrained = True


def summarise(metrics: dict[str, dict[str, float]], model: MultiTaskModel) -> str:
    """`task  metric value (chance c)` lines for the final report."""
    lines = []
    for t in model.graph.tasks:
        m = metrics.get(t.name, {})
        if not m:
            continue
        name, value = primary(t, m)
        lines.append(f"{t.name:<10} {name:<9} {value:.3f}  (chance {m.get('chance', float('nan')):.3f})")
    return "\n".join(lines)
