"""A repository's generations: what a heads-only export replaced, kept so ``vmtl reload --rollback`` can
return to it.

``vmtl export --only-heads`` that adds or changes tasks writes the heads into a new version directory and
leaves the previous one in place. Before it installs anything it records the *previous generation* in
``<repo>/vmtl-history.json`` (a stack): the manifest, the config of every model it replaces (the heads
model(s) and the ensembles) with the version each served, and the models it adds. :func:`rollback_generation`
pops the last record and rewrites those configs, pinning a model whose newer version directory stays on
disk to its previous version (``version_policy: specific``), and the manifest; the repository then describes
the previous generation exactly (a restarted server serves it too). Only small text files are written.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from vmtl.contract import MANIFEST, Manifest, RepositoryError, read_manifest, validate_repository

__all__ = [
    "HISTORY_FILE",
    "Rollback",
    "highest_version",
    "push_generation",
    "read_history",
    "rollback_generation",
    "snapshot_generation",
    "write_deferred",
]

HISTORY_FILE = "vmtl-history.json"


def highest_version(model_dir: Path) -> int:
    """The highest numeric version directory of a model (0 when it has none)."""
    if not model_dir.is_dir():
        return 0
    return max((int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), default=0)


def _served_version(model_dir: Path) -> int:
    """The version a model's config serves: its pinned one, else its highest."""
    cfg = mc.ModelConfig()
    text_format.Parse((model_dir / "config.pbtxt").read_text(), cfg)
    if cfg.version_policy.HasField("specific") and cfg.version_policy.specific.versions:
        return int(max(cfg.version_policy.specific.versions))
    return highest_version(model_dir)


def _replace(path: Path, text: str) -> None:
    """Write ``path`` as a new file renamed into place: the model directory's time changes too (Triton
    missed a config rewritten in place when deciding whether an ensemble changed)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def read_history(repo: Path) -> list[dict[str, Any]]:
    """The recorded previous generations, oldest first (empty when none)."""
    path = Path(repo) / HISTORY_FILE
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise RepositoryError(f"{path} is not valid JSON: {exc}") from exc
    return list(data.get("generations") or [])


def _write_history(repo: Path, generations: list[dict[str, Any]]) -> None:
    (Path(repo) / HISTORY_FILE).write_text(json.dumps({"generations": generations}, indent=1) + "\n")


def snapshot_generation(repo: Path, models: Iterable[str]) -> dict[str, Any]:
    """The current generation's record for ``models`` (those about to be replaced)."""
    repo = Path(repo)
    configs: dict[str, str] = {}
    versions: dict[str, int] = {}
    for name in models:
        path = repo / name / "config.pbtxt"
        if path.is_file():
            configs[name] = path.read_text()
            versions[name] = _served_version(repo / name)
    return {
        "recorded": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "manifest": read_manifest(repo),
        "configs": configs,
        "versions": versions,
    }


def push_generation(repo: Path, snapshot: dict[str, Any], added: Iterable[str]) -> None:
    """Record ``snapshot`` (the generation just replaced) and the models the new generation added."""
    generations = read_history(repo)
    generations.append({**snapshot, "added": sorted(added)})
    _write_history(repo, generations)


@dataclass
class Rollback:
    """What :func:`rollback_generation` rewrote: the models to load (heads before ensembles), those to
    unload (added by the generation rolled back), and the task lists before and after."""

    load: list[str] = field(default_factory=list)
    unload: list[str] = field(default_factory=list)
    deferred: dict[str, str] = field(default_factory=dict)  # model -> config text still to write
    tasks_before: list[str] = field(default_factory=list)
    tasks_after: list[str] = field(default_factory=list)


def rollback_generation(repo: Path, *, defer_models: bool = False) -> Rollback:
    """Rewrite ``repo`` to its previous generation (see the module docstring). The result is validated;
    when it is invalid every file is restored and :class:`RepositoryError` raised.

    ``defer_models``: write only the ensembles' configs (and the manifest) now and return the other
    models' in ``Rollback.deferred``, for :func:`write_deferred` once a live server has loaded the
    ensembles (Triton reloads a changed composing model when an ensemble is loaded, and then the other
    ensembles with their loaded configs, which may not fit the previous heads)."""
    repo = Path(repo)
    generations = read_history(repo)
    if not generations:
        raise RepositoryError(f"{repo}: nothing to roll back to (no previous generation in {HISTORY_FILE})")
    last = generations[-1]
    previous = Manifest.from_dict(last["manifest"])
    current = Manifest.read(repo)
    texts: dict[str, str] = {}
    ensembles: list[str] = []
    for name, text in dict(last.get("configs") or {}).items():
        cfg = mc.ModelConfig()
        text_format.Parse(text, cfg)
        if cfg.platform == "ensemble":
            ensembles.append(name)
        version = int((last.get("versions") or {}).get(name, 0))
        if cfg.platform != "ensemble" and version and highest_version(repo / name) > version:
            cfg.version_policy.Clear()
            cfg.version_policy.specific.versions.append(version)
        texts[name] = text_format.MessageToString(cfg)
    deferred = {n: t for n, t in texts.items() if n not in ensembles} if defer_models else {}
    texts = {n: t for n, t in texts.items() if n not in deferred}
    saved = {name: (repo / name / "config.pbtxt").read_text() for name in texts}
    saved_manifest = (repo / MANIFEST).read_text()
    try:
        for name, text in texts.items():
            _replace(repo / name / "config.pbtxt", text)
        previous.write(repo)
        validate_repository(repo)
    except (RepositoryError, OSError) as exc:
        for name, text in saved.items():
            (repo / name / "config.pbtxt").write_text(text)
        (repo / MANIFEST).write_text(saved_manifest)
        raise RepositoryError(
            f"{repo}: the previous generation does not validate, nothing changed: {exc}"
        ) from exc
    _write_history(repo, generations[:-1])
    models = [n for n in [*texts, *deferred] if n not in ensembles]
    return Rollback(
        load=models + [n for n in texts if n in ensembles],
        unload=list(last.get("added") or []),
        tasks_before=current.graph.names,
        tasks_after=previous.graph.names,
        deferred=deferred,
    )


def write_deferred(repo: Path, rollback: Rollback) -> None:
    """Write the configs :func:`rollback_generation` deferred, and validate the repository."""
    for name, text in rollback.deferred.items():
        _replace(Path(repo) / name / "config.pbtxt", text)
    rollback.deferred = {}
    validate_repository(repo)
