"""The built wheel: what a `pip install .` (not editable) gets must be enough to run `vmtl demo`."""

from __future__ import annotations

import email.parser
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from vmtl.training.config import load_config

ROOT = Path(__file__).resolve().parents[1]
#: What setuptools needs to build the wheel (a copy, so the build leaves nothing in the checkout).
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "vmtl")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """vmtl's wheel, built from a copy of the checkout with the installed setuptools (no network)."""
    tree = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, tree / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, tree / name)
    out = tmp_path_factory.mktemp("dist")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(out),
        ".",
    ]
    proc = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "deprecat" not in (proc.stdout + proc.stderr).lower(), proc.stderr[-3000:]
    (path,) = out.glob("vmtl-*.whl")
    return path


def test_wheel_holds_the_demo_config_and_the_python_backend_models(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "vmtl/configs/demo.yaml" in names
    backend = sorted(p.name for p in (ROOT / "vmtl" / "server" / "models").glob("*.py"))
    assert backend, "no python-backend model sources in the checkout"
    for name in backend:
        assert f"vmtl/server/models/{name}" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


def test_wheel_metadata_declares_the_spdx_license(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        (meta,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        headers = email.parser.Parser().parsestr(zf.read(meta).decode())
    assert headers["License-Expression"] == "Apache-2.0"
    assert headers.get_all("License-File") == ["LICENSE"]


def test_packaged_demo_config_loads(wheel: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        zf.extract("vmtl/configs/demo.yaml", tmp_path)
    packaged = tmp_path / "vmtl" / "configs" / "demo.yaml"
    assert packaged.read_text() == (ROOT / "configs" / "demo.yaml").read_text()  # the clone's link
    # As `vmtl demo` loads it: against a data root (here only the labels files its tasks name).
    data = tmp_path / "data"
    for task in yaml.safe_load(packaged.read_text())["tasks"]:
        if "labels_file" in task:
            (data / task["data"]).mkdir(parents=True)
            (data / task["data"] / task["labels_file"]).write_text("a\nb\nc\n")
    cfg = load_config(packaged, data_root=data)
    assert cfg.name == "demo" and len(cfg.graph.tasks) == 8 and cfg.data_root == data


def test_installed_wheel_finds_its_demo_config(wheel: Path, tmp_path: Path) -> None:
    """Unpacked (what pip installs for a pure-Python wheel) and run away from the checkout."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import vmtl, vmtl.demo.config, vmtl.cli; print(vmtl.__file__); print(vmtl.demo.config.default_config()); "
        "raise SystemExit(vmtl.cli.main(['demo', '--print-config']))"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    module, config, text = proc.stdout.split("\n", 2)
    assert Path(module).is_relative_to(site) and Path(config) == site / "vmtl" / "configs" / "demo.yaml"
    assert text == (ROOT / "vmtl" / "configs" / "demo.yaml").read_text()
