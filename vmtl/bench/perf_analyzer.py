"""Triton's own ``perf_analyzer``: install it into a tools directory, run it, read its CSV.

The ``tritonclient`` wheel of the bundled server's version (2.51.0) carries the ``perf_analyzer`` binary
under ``tritonclient-2.51.0.data/data/bin/``. :func:`install` downloads that wheel with pip (no
dependencies, nothing installed into the environment, so the project's own ``tritonclient`` library
stays as it is), extracts the binary into ``<cache>/tools/perf_analyzer-2.51.0/bin/`` and makes a
``lib/`` beside it with the two shared libraries the binary needs and does not bundle: ``libb64.so.0d``
and ``libcudart.so.12`` (no GPU is used). Both are taken from the ``nvidia_pytriton.libs`` directory of
the installed ``nvidia-pytriton`` wheel (its tritonserver needs them too), else from the system (Debian
``libb64-0d``) and the PyPI wheel ``nvidia-cuda-runtime-cu12``.

``python -m vmtl.bench.perf_analyzer --install`` (``make perf-analyzer``) installs it; :func:`find` returns
it or None; :meth:`PerfAnalyzer.sweep` runs a concurrency sweep against a served model and returns the
rows of the CSV that perf_analyzer writes (the file is kept as it wrote it).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import glob
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vmtl.contract import TRITON_VERSION as BUNDLED_TRITON_VERSION
from vmtl.server.launcher import ServerError, _default_cache_dir, _libs_dir

__all__ = ["PerfAnalyzer", "PerfAnalyzerError", "find", "install", "tools_dir"]

#: The libraries perf_analyzer 2.51 links against that a CPU-only machine lacks.
NEEDED_LIBS = ("libb64.so.0d", "libcudart.so.12")


class PerfAnalyzerError(RuntimeError):
    """perf_analyzer is not installed, cannot be installed, or a run failed; the message says why."""


def tools_dir(version: str = BUNDLED_TRITON_VERSION, cache_dir: Path | None = None) -> Path:
    """Where :func:`install` puts perf_analyzer ``version`` (``$VMTL_CACHE_DIR`` or ``~/.cache/vmtl``)."""
    return (cache_dir or _default_cache_dir()) / "tools" / f"perf_analyzer-{version}"


@dataclass(frozen=True)
class PerfAnalyzer:
    """An installed perf_analyzer binary and the library directory it runs with."""

    binary: Path
    lib_dir: Path

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            [str(self.lib_dir), *[p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]]
        )
        return env

    def version(self) -> str:
        """The version line perf_analyzer prints (e.g. ``Perf Analyzer Version 2.51.0``)."""
        proc = subprocess.run(
            [str(self.binary), "--version"], env=self.env(), capture_output=True, text=True, timeout=30
        )
        if proc.returncode != 0:
            raise PerfAnalyzerError(f"{self.binary} --version failed: {(proc.stderr or proc.stdout).strip()}")
        lines = (proc.stdout + proc.stderr).strip().splitlines()
        if not lines:
            raise PerfAnalyzerError(f"{self.binary} --version printed nothing")
        return lines[0]

    def command(
        self,
        model: str,
        url: str,
        concurrency: Sequence[int],
        csv_file: Path,
        *,
        measurement_ms: int = 2000,
        parameters: Mapping[str, str] | None = None,
        extra: Sequence[str] = (),
        stability: int = 25,
    ) -> list[str]:
        """perf_analyzer's command line for a concurrency sweep over gRPC at batch 1, random inputs."""
        levels = sorted({int(c) for c in concurrency})
        if not levels or levels[0] < 1:
            raise PerfAnalyzerError(f"concurrency levels must be >= 1, got {list(concurrency)}")
        cmd = [str(self.binary), "-m", model, "-u", url, "-i", "grpc", "-b", "1"]
        cmd += ["--measurement-mode", "time_windows", "--measurement-interval", str(measurement_ms)]
        cmd += ["--stability-percentage", str(stability), "--max-trials", "8", "-f", str(csv_file)]
        for key, value in (parameters or {}).items():
            cmd += ["--request-parameter", f"{key}:{value}:string"]
        if len(levels) == 1:
            cmd += ["--concurrency-range", f"{levels[0]}"]
        else:  # perf_analyzer sweeps start:end:step; run each asked level (a range may overshoot)
            cmd += ["--concurrency-range", f"{levels[0]}:{levels[-1]}:{_step(levels)}"]
        return [*cmd, *extra]

    def sweep(
        self,
        model: str,
        url: str,
        concurrency: Sequence[int],
        csv_file: Path,
        *,
        measurement_ms: int = 2000,
        parameters: Mapping[str, str] | None = None,
        timeout: float = 600.0,
    ) -> list[dict[str, float]]:
        """Run a sweep; return one row per concurrency level (perf_analyzer's CSV, numbers as floats).

        perf_analyzer refuses a point whose windows disagree by more than 25%; on a busy machine that
        happens, so a refused sweep is run once more with windows twice as long and a 50% bound.
        """
        csv_file = Path(csv_file)
        csv_file.parent.mkdir(parents=True, exist_ok=True)
        proc = self._run(model, url, concurrency, csv_file, measurement_ms, parameters, 25, timeout)
        if proc.returncode != 0 and "stable measurement" in proc.stdout + proc.stderr:
            proc = self._run(model, url, concurrency, csv_file, 2 * measurement_ms, parameters, 50, timeout)
        if proc.returncode != 0 or not csv_file.is_file():
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise PerfAnalyzerError(f"perf_analyzer failed (exit {proc.returncode}) on {model}:\n{tail}")
        return read_csv(csv_file)

    def _run(
        self,
        model: str,
        url: str,
        concurrency: Sequence[int],
        csv_file: Path,
        measurement_ms: int,
        parameters: Mapping[str, str] | None,
        stability: int,
        timeout: float,
    ) -> subprocess.CompletedProcess[str]:
        cmd = self.command(
            model,
            url,
            concurrency,
            csv_file,
            measurement_ms=measurement_ms,
            parameters=parameters,
            stability=stability,
        )
        try:
            return subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise PerfAnalyzerError(
                f"perf_analyzer did not finish in {timeout:.0f} s: {' '.join(cmd)}"
            ) from exc


def _step(levels: Sequence[int]) -> int:
    steps = {b - a for a, b in itertools.pairwise(levels)}
    return steps.pop() if len(steps) == 1 else 1


def read_csv(path: Path) -> list[dict[str, float]]:
    """perf_analyzer's CSV as rows of floats, sorted by concurrency (columns as it names them)."""
    with open(path, newline="") as f:
        rows = [
            {k.strip(): float(v) for k, v in row.items() if k and v not in (None, "")}
            for row in csv.DictReader(f)
        ]
    if not rows or "Inferences/Second" not in rows[0]:
        raise PerfAnalyzerError(f"{path} is not a perf_analyzer CSV (no 'Inferences/Second' column)")
    return sorted(rows, key=lambda r: r.get("Concurrency", 0.0))


def find(version: str = BUNDLED_TRITON_VERSION, cache_dir: Path | None = None) -> PerfAnalyzer | None:
    """The perf_analyzer installed by :func:`install`, or None."""
    root = tools_dir(version, cache_dir)
    binary, lib_dir = root / "bin" / "perf_analyzer", root / "lib"
    if binary.is_file() and os.access(binary, os.X_OK) and all((lib_dir / n).exists() for n in NEEDED_LIBS):
        return PerfAnalyzer(binary, lib_dir)
    return None


def _library(name: str) -> Path:
    """A file that provides shared library ``name`` (e.g. ``libb64.so.0d``)."""
    stem, _, version = name.partition(".so")
    candidates: list[str] = []
    with contextlib.suppress(ServerError):  # nvidia-pytriton bundles both, named by auditwheel
        candidates += sorted(glob.glob(str(_libs_dir() / f"{stem}-*.so{version}*")))
    for root in sys.path:  # PyPI nvidia-cuda-runtime-cu12
        candidates += sorted(glob.glob(os.path.join(root, "nvidia", "*", "lib", name)))
    candidates += [p for p in (f"/usr/lib/x86_64-linux-gnu/{name}", f"/usr/lib/{name}") if os.path.exists(p)]
    if not candidates:
        raise PerfAnalyzerError(
            f"perf_analyzer needs {name} and none was found: install nvidia-pytriton (it bundles it), "
            "Debian's libb64-0d or PyPI's nvidia-cuda-runtime-cu12"
        )
    return Path(candidates[0]).resolve()


def install(
    version: str = BUNDLED_TRITON_VERSION, cache_dir: Path | None = None, *, wheel: Path | None = None
) -> PerfAnalyzer:
    """Install perf_analyzer ``version`` from the ``tritonclient`` wheel (downloaded unless ``wheel``)."""
    root = tools_dir(version, cache_dir)
    with tempfile.TemporaryDirectory(prefix="vmtl-perf-analyzer-") as tmp:
        if wheel is None:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet"]
            cmd += ["--platform", "manylinux1_x86_64", "-d", tmp, f"tritonclient=={version}"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wheels = sorted(Path(tmp).glob(f"tritonclient-{version}-*.whl"))
            if proc.returncode != 0 or not wheels:
                raise PerfAnalyzerError(
                    f"could not download tritonclient=={version}: {(proc.stderr or proc.stdout).strip()[-800:]}"
                )
            wheel = wheels[0]
        member = f"tritonclient-{version}.data/data/bin/perf_analyzer"
        try:
            with zipfile.ZipFile(wheel) as zf:
                data = zf.read(member)
        except (zipfile.BadZipFile, KeyError) as exc:
            raise PerfAnalyzerError(f"{wheel} holds no {member}") from exc
    (root / "bin").mkdir(parents=True, exist_ok=True)
    lib_dir = root / "lib"
    shutil.rmtree(lib_dir, ignore_errors=True)
    lib_dir.mkdir()
    binary = root / "bin" / "perf_analyzer"
    tmp_binary = binary.with_suffix(".tmp")
    tmp_binary.write_bytes(data)
    tmp_binary.chmod(0o755)
    os.replace(tmp_binary, binary)
    for name in NEEDED_LIBS:
        (lib_dir / name).symlink_to(_library(name))
    tool = PerfAnalyzer(binary, lib_dir)
    tool.version()  # it runs, or the error says why
    return tool


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vmtl.bench.perf_analyzer",
        description="Install Triton's perf_analyzer (from the tritonclient wheel of the bundled server's "
        "version) into vmtl's tools directory, or say where it is.",
    )
    parser.add_argument("--install", action="store_true", help="download and install it (if not there yet)")
    parser.add_argument("--force", action="store_true", help="with --install: reinstall")
    parser.add_argument(
        "--version", default=BUNDLED_TRITON_VERSION, help="Triton version (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    tool = None if args.force else find(args.version)
    if tool is None and args.install:
        try:
            tool = install(args.version)
        except PerfAnalyzerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    if tool is None:
        print(f"perf_analyzer {args.version} is not installed; run with --install", file=sys.stderr)
        return 1
    print(f"{tool.binary} ({tool.version()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
