"""Load a changed repository into a live Triton server (explicit model control) without touching the
backbone: the heads model(s), then the ensembles, through Triton's repository API.

``vmtl serve`` starts Triton with ``--model-control-mode=explicit --load-model=*`` after compiling every
``model.py`` of the repository (:func:`precompile_models`): Triton reloads a composing model when any file
under it changed since it was loaded, and the python backend writes ``<version>/__pycache__`` on first load,
so without this the first ensemble reload would restart the backbone. :func:`reload_repository`:

1. validates the repository (:func:`vmtl.contract.validate_repository`) before anything is loaded, so a bad
   one never unloads the working ensemble (no config overrides are ever sent: an override naming a missing
   model unloads the ensemble);
2. compiles the new ``model.py`` files, checks the server serves this repository's backbone;
3. ``load_model`` on each heads model (a new version directory is picked up; unchanged models are not
   reloaded), then on each ensemble (on a rollback the ensembles first: the side with more outputs goes
   first, so the ensembles never ask the heads for an output they lack). Triton finishes requests in flight on the old models and sends new
   ones to the new; the backbone is never named, so it keeps its process and statistics.

``rollback=True`` first rewrites the repository to its previous generation
(:func:`vmtl.export.generations.rollback_generation`), loads the same way and unloads the models the rolled
back generation added.
"""

from __future__ import annotations

import importlib.util
import py_compile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from vmtl.contract import STREAM_ENSEMBLE, Manifest, RepositoryError, validate_repository
from vmtl.export.generations import Rollback, rollback_generation, write_deferred

__all__ = ["ReloadError", "ReloadReport", "precompile_models", "reload_repository"]


class ReloadError(RuntimeError):
    """The server refused a load, or does not serve this repository; the message says which and why."""


@dataclass
class ReloadReport:
    """What :func:`reload_repository` did, with the time each load took."""

    repo: Path
    tasks: list[str]
    previous_tasks: list[str] = field(default_factory=list)
    loaded: dict[str, float] = field(default_factory=dict)  # model -> seconds its load_model took
    unloaded: list[str] = field(default_factory=list)
    rollback: bool = False
    seconds: float = 0.0

    def summary(self) -> str:
        what = "rolled back" if self.rollback else "reloaded"
        loads = ", ".join(f"{m} {s:.2f} s" for m, s in self.loaded.items())
        lines = [
            f"vmtl reload: {what} {self.repo} in {self.seconds:.2f} s: tasks {', '.join(self.tasks)}"
            + (f" (were {', '.join(self.previous_tasks)})" if self.previous_tasks != self.tasks else ""),
            f"  loaded: {loads or 'nothing'}",
        ]
        if self.unloaded:
            lines.append(f"  unloaded: {', '.join(self.unloaded)}")
        return "\n".join(lines)


def precompile_models(repo: Path) -> list[Path]:
    """Compile every ``<model>/<version>/model.py`` of ``repo`` in place (``__pycache__``), so that
    loading a python-backend model writes nothing under it. A file already compiled is left alone
    (rewriting its cache would itself count as a change and reload the model). Returns the files compiled."""
    done = []
    for source in sorted(Path(repo).glob("*/*/model.py")):
        if not source.parent.name.isdigit():
            continue
        cache = Path(importlib.util.cache_from_source(str(source)))
        if cache.is_file() and cache.stat().st_mtime >= source.stat().st_mtime:
            continue
        py_compile.compile(str(source), doraise=True)
        done.append(source)
    return done


def _served_tasks(client: grpcclient.InferenceServerClient, ensemble: str, timeout: float) -> list[str]:
    try:
        cfg = client.get_model_config(ensemble, client_timeout=timeout).config
    except InferenceServerException:
        return []
    return [o.name for o in cfg.output]


def reload_repository(
    repo: Path | str,
    url: str,
    *,
    rollback: bool = False,
    timeout: float = 300.0,
    log: Callable[[str], None] | None = None,
    headers: dict[str, str] | None = None,
) -> ReloadReport:
    """Load ``repo``'s heads and ensembles into the server at ``url`` (gRPC ``host:port``); see the
    module docstring. ``headers`` go with the model-control calls (a server started with
    ``vmtl serve --restrict-admin KEY=VALUE`` answers them only with ``{KEY: VALUE}``). Raises :class:`RepositoryError` (nothing loaded) or :class:`ReloadError`."""
    say = log or (lambda _m: None)
    repo = Path(repo)
    t0 = time.perf_counter()
    client = grpcclient.InferenceServerClient(url)
    try:
        manifest = Manifest.read(repo)
        models = manifest.models
        try:
            ready = client.is_model_ready(models.backbone, client_timeout=timeout)
        except InferenceServerException as exc:
            raise ReloadError(f"cannot reach the Triton server at {url}: {exc.message() or exc}") from exc
        if not ready:
            raise ReloadError(
                f"the server at {url} has no ready {models.backbone!r}: it does not serve {repo} (start it "
                f"with `vmtl serve {repo}`)"
            )
        previous = _served_tasks(client, models.clip_ensemble, timeout)
        unload: list[str] = []
        plan: Rollback | None = None
        if rollback:
            plan = rollback_generation(repo, defer_models=True)
            say(f"rolled {repo} back: tasks {plan.tasks_before} -> {plan.tasks_after}")
            manifest = Manifest.read(repo)
            models = manifest.models
            unload = plan.unload
        info = validate_repository(repo)
        ensembles = [models.clip_ensemble, models.video_ensemble]
        ensembles += [STREAM_ENSEMBLE] if STREAM_ENSEMBLE in info.models else []
        for model in [*models.head_models(), *ensembles]:
            if model not in info.models:
                raise RepositoryError(
                    f"{repo}: model {model!r} named by the manifest is not in the repository"
                )
        precompile_models(repo)
        report = ReloadReport(repo, manifest.graph.names, previous, rollback=rollback)
        # The side with more outputs goes first, so that every moment the ensembles ask the heads only for
        # outputs they have: adding tasks, the heads then the ensembles; rolling back, the reverse, and
        # the heads' previous configs are written only once the ensembles are loaded.
        heads = [*models.head_models(), *(plan.load if plan else [])]
        heads = [m for m in dict.fromkeys(heads) if m not in ensembles]
        order = [*ensembles, *heads] if rollback else [*heads, *ensembles]
        for model in order:
            if plan is not None and plan.deferred and model not in ensembles:
                write_deferred(repo, plan)
                precompile_models(repo)
            start = time.perf_counter()
            try:
                client.load_model(model, headers=headers, client_timeout=timeout)
            except InferenceServerException as exc:
                raise ReloadError(
                    f"the server at {url} refused to load {model!r}: {exc.message() or exc}; the models "
                    "loaded before it stay as they are (fix the repository and run `vmtl reload` again)"
                ) from exc
            report.loaded[model] = time.perf_counter() - start
            say(f"loaded {model} ({report.loaded[model]:.2f} s)")
        for model in unload:
            try:
                client.unload_model(model, headers=headers, client_timeout=timeout)
                report.unloaded.append(model)
            except InferenceServerException as exc:
                say(f"could not unload {model}: {exc.message() or exc}")
        report.seconds = time.perf_counter() - t0
        return report
    finally:
        client.close()
