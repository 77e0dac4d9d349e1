"""The package's layers only point down, and the serving and client paths never import torch.

Layers, bottom to top (a module may import its own layer and lower ones)::

    0  vmtl.tasks, vmtl.video, vmtl.metrics, vmtl.contract,  numpy / protobuf / PyAV
       vmtl.samples, vmtl.upload_buffer
    1  vmtl.data, vmtl.runtime, vmtl.runtime_openvino        data readers, ONNX Runtime / OpenVINO sessions
    2  vmtl.models                                           torch
    3  vmtl.training
    4  vmtl.export
    5  vmtl.server, vmtl.client
    6  vmtl.bench, vmtl.demo, vmtl.deploy, vmtl.cli          commands

Imports belong at the top of a file. Function-level imports are allowed only for the CLI's lazy command
table and for optional extras (:data:`LAZY_ALLOWED`).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "vmtl"

LAYERS: dict[str, int] = {
    "vmtl": 0,
    "vmtl.tasks": 0,
    "vmtl.video": 0,
    "vmtl.metrics": 0,
    "vmtl.contract": 0,
    "vmtl.samples": 0,
    "vmtl.upload_buffer": 0,
    "vmtl.data": 1,
    "vmtl.runtime": 1,
    "vmtl.runtime_openvino": 1,
    "vmtl.precision_choice": 1,
    "vmtl.models": 2,
    "vmtl.training": 3,
    "vmtl.export": 4,
    "vmtl.server": 5,
    "vmtl.client": 5,
    "vmtl.bench": 6,
    "vmtl.demo": 6,
    "vmtl.deploy": 6,
    "vmtl.cli": 6,
}
#: Third-party modules that may be imported inside a function, and why: each is an optional extra (not a
#: dependency of vmtl), imported by the one code path that needs it so that the rest runs without it.
LAZY_ALLOWED: dict[str, str] = {
    "ray": "the ray extra: `vmtl batch --engine ray` (client/engines.py)",
    "pyarrow": "the ray extra: `vmtl batch --parquet` (client/batch.py), with a message saying how to install it",
    "tensorrt": "the gpu extra: `vmtl export --trt` and the TensorRT trunk (export/tensorrt.py)",
    "torch_tensorrt": "the gpu extra",
    "matplotlib": "the bench extra: `vmtl bench`'s PNG plot (bench/plot.py, bench/run.py)",
    "openvino": "an accelerator stack vmtl does not depend on",
    "nncf": "an accelerator stack vmtl does not depend on",
    "pycuda": "an accelerator stack vmtl does not depend on",
    "cuda": "an accelerator stack vmtl does not depend on (cuda-python)",
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(module: str) -> int | None:
    """The layer of a vmtl module: its longest prefix in LAYERS (``vmtl`` itself only for the package's
    ``__init__``, so that a new subpackage must be given a layer)."""
    if module == "vmtl":
        return LAYERS["vmtl"]
    parts = module.split(".")
    for i in range(len(parts), 1, -1):
        layer = LAYERS.get(".".join(parts[:i]))
        if layer is not None:
            return layer
    return None


def _package_modules() -> list[Path]:
    # server/models/*.py are python-backend model files copied into repositories, not package modules
    return sorted(p for p in ROOT.rglob("*.py") if "server/models" not in p.as_posix())


def _imports(tree: ast.AST, module: str, *, is_package: bool = False) -> list[tuple[str, int, bool]]:
    """(imported module, line, at top level) for every import in a parsed file (``module``; a package's
    ``__init__`` with ``is_package``, which relative imports resolve against)."""
    found: list[tuple[str, int, bool]] = []
    package = module.split(".") if is_package else module.split(".")[:-1]

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            is_nested = nested or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, not nested) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:  # relative import: level 1 is the package itself
                    base = package[: len(package) - child.level + 1]
                    name = ".".join([*base, child.module] if child.module else base)
                else:
                    name = child.module or ""
                found.append((name, child.lineno, not nested))
            visit(child, is_nested)

    visit(tree, False)
    return found


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in ast.walk(node):
                if hasattr(sub, "lineno"):
                    lines.add(sub.lineno)
    return lines


def test_every_module_has_a_layer() -> None:
    missing = [_module_name(p) for p in _package_modules() if _layer(_module_name(p)) is None]
    assert not missing, f"modules without a layer in tests/test_layers.py: {missing}"


def test_layers_only_point_down() -> None:
    bad = []
    for path in _package_modules():
        module = _module_name(path)
        own = _layer(module)
        tree = ast.parse(path.read_text())
        typing_only = _type_checking_lines(tree)
        for name, line, _ in _imports(tree, module, is_package=path.name == "__init__.py"):
            if not (name == "vmtl" or name.startswith("vmtl.")) or line in typing_only:
                continue
            target = _layer(name)
            if target is None:
                bad.append(f"{path.relative_to(ROOT.parent)}:{line}: {name} has no layer")
            elif own is not None and target > own:
                bad.append(
                    f"{path.relative_to(ROOT.parent)}:{line}: {module} (layer {own}) imports {name} (layer {target})"
                )
    assert not bad, "a lower layer imports a higher one:\n" + "\n".join(bad)


def test_imports_are_at_the_top() -> None:
    bad = []
    for path in _package_modules():
        module = _module_name(path)
        tree = ast.parse(path.read_text())
        for name, line, top in _imports(tree, module, is_package=path.name == "__init__.py"):
            if top or name.split(".")[0] in LAZY_ALLOWED:
                continue
            if module == "vmtl.cli":  # the lazy command table: `vmtl --help` stays fast
                continue
            bad.append(f"{path.relative_to(ROOT.parent)}:{line}: imports {name} inside a function")
    assert not bad, (
        "imports inside functions (move them to the top, or add the extra to LAZY_ALLOWED):\n"
        + "\n".join(bad)
    )


@pytest.mark.parametrize(
    "modules",
    [
        "vmtl.tasks, vmtl.video, vmtl.metrics, vmtl.contract, vmtl.samples",
        "vmtl.runtime, vmtl.data",
        "vmtl.client, vmtl.client.cli, vmtl.client.batch_cli, vmtl.client.batch_run",
        "vmtl.server, vmtl.server.cli, vmtl.server.launcher",
        "vmtl.deploy, vmtl.deploy.cli",
    ],
)
def test_serving_and_client_paths_never_import_torch(modules: str) -> None:
    code = f"import sys; import {modules}; bad = [m for m in ('torch', 'transformers') if m in sys.modules]; sys.exit(str(bad) if bad else 0)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr or proc.stdout


def test_the_checker_catches_an_upward_import() -> None:
    tree = ast.parse("import os\nfrom vmtl.export.onnx import x\n\ndef f():\n    import vmtl.models\n")
    found = _imports(tree, "vmtl.tasks")
    assert ("vmtl.export.onnx", 2, True) in found
    assert ("vmtl.models", 5, False) in found
    assert _layer("vmtl.export.onnx") == 4 > _layer("vmtl.tasks")


def test_relative_imports_resolve_against_the_package() -> None:
    tree = ast.parse("from .heads import TaskHead\nfrom ..tasks import TaskGraph\n")
    assert [n for n, _, _ in _imports(tree, "vmtl.models.multitask")] == ["vmtl.models.heads", "vmtl.tasks"]
    assert [n for n, _, _ in _imports(tree, "vmtl.models", is_package=True)] == [
        "vmtl.models.heads",
        "vmtl.tasks",
    ]
    assert _layer("vmtl.nowhere") is None and _layer("vmtl") == 0
