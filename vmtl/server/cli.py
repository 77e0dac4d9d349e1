"""`vmtl serve`: run the real Triton server on a model repository, in the foreground.

Starts the ``tritonserver`` shipped in nvidia-pytriton (see :mod:`vmtl.server.launcher`), waits until
every model is loaded, prints the endpoints and the models, and stops the server (and its python-backend
stubs) on Ctrl-C or SIGTERM. ``--native`` instead prints how to run the repository's GPU flavour in
NVIDIA's NGC Triton container.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vmtl.contract import (
    ENGINE_INFO,
    MANIFEST,
    TRITON_VERSION,
    Manifest,
    RepositoryError,
    is_model_repository,
)
from vmtl.precision_choice import planned_choices
from vmtl.server.launcher import (
    ServerError,
    TritonServer,
    check_repository,
    is_loopback,
    prepare_backend_dir,
    response_cache_args,
)
from vmtl.server.reload import precompile_models

#: Triton release inside nvidia-pytriton 0.7.0; its NGC container is tritonserver:24.10-py3.
BUNDLED_TRITON_VERSION = TRITON_VERSION
# Model platforms and the backend directory each needs.
_PLATFORM_BACKEND = {
    "onnxruntime_onnx": "onnxruntime",
    "tensorrt_plan": "tensorrt",
    "pytorch_libtorch": "pytorch",
    "tensorflow_savedmodel": "tensorflow",
    "tensorflow_graphdef": "tensorflow",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Start NVIDIA Triton (the tritonserver binary of nvidia-pytriton, CPU) on a model repository "
        "written by `vmtl export`, wait until all models are loaded, and serve in the foreground until "
        "Ctrl-C or SIGTERM. tritonserver dies with this command, even when it is killed (Linux)."
    )
    parser.add_argument(
        "repo",
        metavar="REPO",
        type=Path,
        help="model repository (directories <model>/config.pbtxt + <model>/1/), or a directory holding "
        "its flavours cpu/ and native/",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--http-port", type=int, default=8000, help="HTTP port, 0 = any free (default: 8000)")
    parser.add_argument("--grpc-port", type=int, default=8001, help="gRPC port, 0 = any free (default: 8001)")
    parser.add_argument(
        "--metrics-port", type=int, default=8002, help="Prometheus metrics port, 0 = any free (default: 8002)"
    )
    parser.add_argument(
        "--log-file", type=Path, default=None, help="server log (default: a new file under the temp dir)"
    )
    parser.add_argument(
        "--verbose", "-v", action="store_true", help="also copy the server log to the terminal as it grows"
    )
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=600.0,
        metavar="S",
        help="give up when the models are not all loaded after S seconds (default: %(default)s)",
    )
    parser.add_argument(
        "--cache-mb",
        type=float,
        default=0.0,
        metavar="N",
        help="Triton's response cache of N MiB (--cache-config local,size=...): a clip the backbone has seen "
        "skips the trunk when the repository was exported with --cache; least recently used entries are "
        "evicted when full (default: 0, no cache)",
    )
    parser.add_argument(
        "--tls-cert", type=Path, default=None, metavar="PEM", help="serve gRPC over TLS with this certificate"
    )
    parser.add_argument(
        "--tls-key", type=Path, default=None, metavar="PEM", help="the certificate's private key"
    )
    parser.add_argument(
        "--tls-ca",
        type=Path,
        default=None,
        metavar="PEM",
        help="mutual TLS: accept only clients with a certificate this CA signed",
    )
    parser.add_argument(
        "--restrict-admin",
        default=None,
        metavar="KEY=VALUE",
        help="answer the model-control and shared-memory APIs only to requests carrying header KEY: VALUE "
        "(gRPC metadata triton-grpc-protocol-KEY; HTTP header KEY)",
    )
    parser.add_argument(
        "--model-control",
        choices=("explicit", "none"),
        default="explicit",
        help="explicit (default): Triton loads every model at start and `vmtl reload` can load new heads "
        "into it while it serves; none: the repository is fixed while the server runs",
    )
    parser.add_argument(
        "--native",
        action="store_true",
        help="start nothing; print how to run the repository's `native` flavour (ONNX Runtime / TensorRT "
        "on a GPU) in NVIDIA's Triton container",
    )
    parser.add_argument(
        "--image",
        default=None,
        help="container image for --native (default: nvcr.io/nvidia/tritonserver:<release>-py3 of the "
        "repository's Triton version)",
    )


def run(args: argparse.Namespace) -> int:
    repo: Path = args.repo.expanduser()
    if not repo.exists():
        return _fail(f"model repository {repo} does not exist (write one with `vmtl export`)")
    if not repo.is_dir():
        return _fail(f"model repository {repo} is not a directory")
    try:
        if args.native:
            return _print_native(repo, args)
        return _serve(repo, args)
    except ServerError as exc:
        return _fail(str(exc))


# ------------------------------------------------------------------------------------------------ serve


def _model_control(repo: Path, mode: str) -> tuple[str, list[str]]:
    """Triton's model-control mode and arguments for ``--model-control``: explicit loads every model at
    start, after compiling the python-backend sources (so that a later `vmtl reload` never reloads the
    backbone)."""
    if mode != "explicit":
        return "none", []
    precompile_models(repo)
    return "explicit", ["--load-model=*"]


def _serve(repo: Path, args: argparse.Namespace) -> int:
    served = _flavour_dir(repo, "cpu")
    if served is None:
        raise ServerError(
            f"{repo} is not a Triton model repository: no <model>/config.pbtxt under it, nor under "
            f"{repo / 'cpu'} (write one with `vmtl export`)"
        )
    info = check_repository(served)
    _check_backends(info.models, served)
    meta = _read_meta(served)
    if args.cache_mb < 0:
        raise ServerError(f"--cache-mb must be >= 0, got {args.cache_mb:g}")
    for warning in info.warnings:
        print(f"vmtl serve: warning: {warning}", file=sys.stderr)

    model_control, load_args = _model_control(served, args.model_control)
    server = TritonServer(
        served,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        log_file=args.log_file,
        echo_log=args.verbose,
        extra_args=[*response_cache_args(args.cache_mb), *load_args],
        model_control=model_control,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_ca=args.tls_ca,
        restrict_admin=_admin_header(args.restrict_admin),
    )
    for warning in _exposure_warnings(server):
        print(f"vmtl serve: warning: {warning}", file=sys.stderr)
    print(f"vmtl serve: starting Triton on {served.resolve()} ({len(info.models)} models)", flush=True)
    if meta is not None:
        print(f"vmtl serve: {_describe_meta(meta)}", flush=True)
    for model, choice in planned_choices(served).items():
        print(f"vmtl serve: {model} runs {choice}", flush=True)
    progress = _Progress(len(info.models), enabled=not args.verbose)
    try:
        with _stop_signals():
            server.start()
            try:
                seconds = server.wait_ready(args.ready_timeout, poll_interval=0.2, progress=progress)
            finally:
                progress.done()
            _print_ready(server, seconds)
            while server.is_running():
                time.sleep(0.5)
            code = server.returncode
            print(
                f"vmtl serve: tritonserver exited unexpectedly with code {code}.\n"
                f"Last lines of its log ({server.log_file}):\n{server.log_tail(30)}",
                file=sys.stderr,
            )
            server.stop()
            return 1
    except _StopRequested as stop:
        print(f"\nvmtl serve: {stop.args[0]}, stopping tritonserver ...", flush=True)
    except KeyboardInterrupt:
        print("\nvmtl serve: interrupted, stopping tritonserver ...", flush=True)
    except BaseException:
        with _ignore_stop_signals():
            server.stop()
        raise
    with _ignore_stop_signals():
        code = server.stop()
    print(f"vmtl serve: stopped (tritonserver exit code {code}); log: {server.log_file}", flush=True)
    return 0


def _admin_header(spec: str | None) -> tuple[str, str] | None:
    """``KEY=VALUE`` of --restrict-admin."""
    if spec is None:
        return None
    key, sep, value = spec.partition("=")
    if not sep:
        raise ServerError(f"--restrict-admin takes KEY=VALUE (a header and its value), not {spec!r}")
    return key.strip(), value.strip()


def _exposure_warnings(server: TritonServer) -> list[str]:
    """What is reachable beyond this machine without TLS or without a key on the admin APIs."""
    if is_loopback(server.host):
        return []
    warnings = []
    if not server.tls:
        warnings.append(
            f"gRPC on {server.host} is reachable from other machines without TLS: requests, videos and "
            "results travel in clear text and anyone who can connect is served. Give --tls-cert and "
            "--tls-key (or bind --host 127.0.0.1 behind a TLS proxy)"
        )
    if server.restrict_admin is None:
        warnings.append(
            "the model-control and shared-memory APIs are open to every client; --restrict-admin KEY=VALUE "
            "puts them behind a header"
        )
    return warnings


class _StopRequested(Exception):
    """SIGTERM/SIGHUP arrived."""


@contextlib.contextmanager
def _stop_signals() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into :class:`_StopRequested` (main thread only; Ctrl-C stays KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise _StopRequested(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def _ignore_stop_signals() -> Iterator[None]:
    """While stopping: a second Ctrl-C/SIGTERM must not abandon the server half-stopped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in sigs}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class _Progress:
    """Shows 'models loaded k/n' while the server starts (one rewritten line on a terminal)."""

    def __init__(self, total: int, *, enabled: bool = True) -> None:
        self.total = total
        self.enabled = enabled
        self.tty = sys.stdout.isatty()
        self.last = ""
        self.shown = False

    def __call__(self, server: TritonServer, elapsed: float) -> None:
        if not self.enabled or elapsed < 1.0:
            return
        loading, loaded = server.load_progress()
        current = loaded[-1] if loaded else (loading[-1] if loading else "")
        text = f"loading models: {len(loaded)}/{self.total} ready"
        if self.tty:
            line = f"{text} ({elapsed:4.1f} s) {current}"
            print("\r" + line.ljust(len(self.last)), end="", flush=True)
            self.last = line
            self.shown = True
        elif text != self.last:
            print(f"vmtl serve: {text} ({elapsed:.1f} s)", flush=True)
            self.last = text

    def done(self) -> None:
        if self.tty and self.shown:
            print(flush=True)


def _print_ready(server: TritonServer, seconds: float) -> None:
    version, index = server.status()
    print(f"vmtl serve: Triton {version} ready in {seconds:.1f} s (pid {server.pid})")
    mutual = " (mutual: clients need a certificate)" if server.tls_ca is not None else ""
    print(f"  gRPC     {server.grpc_url}" + (f"  TLS{mutual}" if server.tls else ""))
    print(
        f"  HTTP     http://{server.http_url}" + ("  (loopback only: HTTP has no TLS)" if server.tls else "")
    )
    if server.restrict_admin is not None:
        print(f"  admin    model control and shared memory need header {server.restrict_admin[0]!r}")
    print(f"  metrics  {server.metrics_url}")
    print(f"  log      {server.log_file}")
    print("Models:")
    width = max((len(m.get("name", "")) for m in index), default=0)
    for model in sorted(index, key=lambda m: m.get("name", "")):
        name = model.get("name", "?")
        line = f"  {name:<{width}}  v{model.get('version', '?'):<3} {model.get('state', '?')}"
        if model.get("reason"):
            line += f"  ({model['reason']})"
        print(line)
    print("Serving; press Ctrl-C to stop.", flush=True)


def _check_backends(models: dict[str, str], repo: Path) -> None:
    """Fail early, and clearly, on models whose backend this tritonserver lacks (e.g. the native flavour)."""
    backend_dir = prepare_backend_dir()
    missing = {}
    for name, kind in models.items():
        backend = _PLATFORM_BACKEND.get(kind, kind)
        if backend in ("ensemble", "?") or (backend_dir / backend).is_dir():
            continue
        missing[name] = backend
    if missing:
        listing = ", ".join(f"{name} ({backend})" for name, backend in sorted(missing.items()))
        cpu = repo.parent / "cpu"
        hint = f" ({cpu})" if cpu != repo and is_model_repository(cpu) else ""
        raise ServerError(
            f"{repo}: this tritonserver (nvidia-pytriton, CPU) has only the python backend; these models "
            f"need other backends: {listing}. Serve the repository's `cpu` flavour{hint} here, or run this "
            f"one in NVIDIA's container (`vmtl serve {repo} --native` prints how)."
        )


# ------------------------------------------------------------------------------------------------ native


def ngc_release(triton_version: str) -> str:
    """NGC container release (YY.MM) of a Triton server version: 2.51.x -> 24.10 (one release a month)."""
    major, minor = (int(part) for part in triton_version.split(".")[:2])
    if major != 2:
        raise ValueError(f"unknown Triton version {triton_version!r}")
    months = 2024 * 12 + 9 + (minor - 51)
    return f"{months // 12 % 100:02d}.{months % 12 + 1:02d}"


def _print_native(repo: Path, args: argparse.Namespace) -> int:
    native = _flavour_dir(repo, "native")
    note = ""
    if native is None:
        if not is_model_repository(repo):
            raise ServerError(
                f"{repo} is not a Triton model repository and holds no native/ flavour "
                "(write one with `vmtl export`)"
            )
        native = repo
        note = (
            f"# Note: {repo} does not say it is the `native` flavour (no native/ beside it, no "
            '"flavour": "native" in vmtl.json); printing the command for it as it is.\n'
        )
    info = check_repository(native)
    meta = _read_meta(native)
    version = (meta.triton_version if meta is not None else None) or BUNDLED_TRITON_VERSION
    image = args.image or f"nvcr.io/nvidia/tritonserver:{ngc_release(version)}-py3"
    bind = "" if args.host in ("0.0.0.0", "") else f"{args.host}:"
    lines = [
        "docker run --rm --gpus all --shm-size=1g",
        f"-p {bind}{args.http_port}:8000 -p {bind}{args.grpc_port}:8001 -p {bind}{args.metrics_port}:8002",
        f"-v {shlex.quote(str(native.resolve()))}:/models:ro",
    ]
    python_models = sorted(name for name, kind in info.models.items() if kind == "python")
    uses_vmtl = [name for name in python_models if _imports_vmtl(native / name)]
    if uses_vmtl:
        vmtl_root = Path(__file__).resolve().parents[2]
        lines.append(f"-v {shlex.quote(str(vmtl_root))}:/opt/vmtl:ro -e PYTHONPATH=/opt/vmtl")
    lines += [image, "tritonserver --model-repository=/models"]
    print(
        note + "# Run the `native` flavour (ONNX Runtime / TensorRT on the GPU) in NVIDIA's Triton container:"
    )
    print(" \\\n  ".join(lines))
    if python_models:
        print(
            f"# Python-backend models ({', '.join(python_models)}) need their Python packages inside the "
            f"container (numpy<2, av, ...): build an image FROM {image} that pip-installs them."
        )
    for line in _plan_notes(native):
        print(line)
    if info.warnings:
        for warning in info.warnings:
            print(f"# warning: {warning}")
    return 0


def _plan_notes(native: Path) -> list[str]:
    """What each TensorRT plan of the repository needs of the container and GPU (from the engine info
    `vmtl export --trt` writes beside it): a plan runs only on the TensorRT version and GPU model it was
    built for, which cannot be checked from here (this machine is not where the container runs)."""
    notes = []
    for plan in sorted(native.glob("*/*/model.plan")):
        model = plan.parent.parent
        path = model / ENGINE_INFO
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            notes.append(
                f"# warning: {model.name}/{plan.parent.name}/model.plan has no readable {ENGINE_INFO}: which "
                "TensorRT and GPU it needs is unknown; rebuild it with `vmtl export --trt` on the serving GPU"
            )
            continue
        notes.append(
            f"# {model.name}: TensorRT plan built with TensorRT {info.get('tensorrt_version', '?')} on a "
            f"{info.get('gpu_name', '?')!r}: the container must ship that TensorRT and run on that GPU model "
            "(engines are not portable; inside it, vmtl.export.tensorrt.check_engine_info checks both)"
        )
    return notes


def _imports_vmtl(model_dir: Path) -> bool:
    for source in model_dir.glob("*/model.py"):
        with contextlib.suppress(OSError):
            text = source.read_text()
            if "import vmtl" in text or "from vmtl" in text:
                return True
    return False


# ------------------------------------------------------------------------------------------------ helpers


def _read_meta(repo: Path) -> Manifest | None:
    """The repository's manifest (written by `vmtl export`); None when absent or unreadable."""
    if not (repo / MANIFEST).is_file():
        return None
    try:
        return Manifest.read(repo)
    except RepositoryError as exc:
        print(f"vmtl serve: warning: ignoring {repo / MANIFEST}: {exc}", file=sys.stderr)
        return None


def _flavour_dir(repo: Path, flavour: str) -> Path | None:
    """The repository of ``flavour`` for REPO.

    REPO/<flavour>/ when REPO holds the flavours; REPO itself when it is a repository (always, for ``cpu``:
    the one given is the one served); for ``native``, else the one vmtl.json's ``metadata.flavours``
    names (relative to REPO) or the sibling ``../native``.
    """
    if not is_model_repository(repo):
        return repo / flavour if is_model_repository(repo / flavour) else None
    if flavour == "cpu" or _own_flavour(repo) == flavour:
        return repo
    meta = _read_meta(repo)
    declared = (meta.metadata.flavours or {}).get(flavour) if meta is not None else None
    for candidate in ([repo / str(declared)] if declared else []) + [repo.parent / flavour]:
        if candidate.resolve() != repo.resolve() and is_model_repository(candidate):
            return candidate
    return None


def _own_flavour(repo: Path) -> str:
    meta = _read_meta(repo)
    return meta.flavour if meta is not None else ("native" if repo.name == "native" else "cpu")


def _describe_meta(meta: Manifest) -> str:
    parts = [f"flavour {meta.flavour}"]
    if meta.triton_version:
        parts.append(f"triton_version {meta.triton_version}")
    if meta.created:
        parts.append(f"created {meta.created}")
    if meta.metadata.checkpoint:
        parts.append(f"checkpoint {meta.metadata.checkpoint}")
    parts.append("tasks " + ", ".join(meta.tasks))
    return "vmtl.json: " + "; ".join(parts)


def _fail(message: str) -> int:
    print(f"vmtl serve: error: {message}", file=sys.stderr)
    return 2
