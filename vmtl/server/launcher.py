"""Start a real NVIDIA Triton Inference Server from the `tritonserver` binary shipped in nvidia-pytriton.

The wheel carries Triton 2.51 (CPU-capable), the python backend (`libtriton_python.so`) and one
python-backend stub per Python version. Triton looks for `triton_python_backend_stub` next to
`libtriton_python.so`, so :func:`prepare_backend_dir` assembles a private backend directory in a cache
with the stub for the running interpreter; :func:`server_env` sets the library and module search paths
the server and its stubs need; :class:`TritonServer` runs the process in its own process group and
stops it (and every stub) cleanly.

Typical use::

    with TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0) as server:
        server.wait_ready(60)
        client = tritonclient.grpc.InferenceServerClient(server.grpc_url)

This module must stay light: no torch, no onnxruntime; of tritonclient only the ``ModelConfig``
protobuf that :mod:`vmtl.contract` validates repositories with.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
import warnings
import weakref
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import tritonclient.grpc as grpcclient

from vmtl.contract import RepositoryError, RepositoryInfo, is_model_repository, validate_repository

__all__ = [
    "ADMIN_PROTOCOLS",
    "DEFAULT_BACKEND_CONFIG",
    "RepositoryInfo",
    "ServerError",
    "TritonServer",
    "admin_header",
    "check_repository",
    "find_tritonserver",
    "free_port",
    "is_loopback",
    "is_model_repository",
    "prepare_backend_dir",
    "pytriton_dist_dir",
    "response_cache_args",
    "server_env",
]

#: python-backend settings passed as ``--backend-config=python,KEY=VALUE``. None is needed for the backend
#: to work here; Triton 2.51's defaults are a 1 MiB shared-memory region per model instance growing in
#: 1 MiB steps. The regions are really allocated in /dev/shm (``du`` counts them), so the start stays
#: modest (4 MiB per instance, as pytriton does), and growth is 4 MiB so that a batch of decoded clips
#: (8 x 16x224x224x3 uint8 = 19 MB) costs a few one-time grows instead of twenty. The region prefix is
#: made unique per server by :class:`TritonServer`, so servers on one machine never share a region name.
DEFAULT_BACKEND_CONFIG: dict[str, str] = {
    "shm-default-byte-size": str(4 * 1024 * 1024),
    "shm-growth-byte-size": str(4 * 1024 * 1024),
}

#: Triton's gRPC protocols (HTTP APIs) that change the server rather than ask it: loading and unloading
#: models, registering shared-memory regions. ``restrict_admin`` puts them behind a header key.
ADMIN_PROTOCOLS = ("model-repository", "shared-memory")

_INSTALL_HINT = "install it with `pip install nvidia-pytriton` (it ships the tritonserver binary)"
_LOG_TAIL_LINES = 40


class ServerError(RuntimeError):
    """tritonserver could not be found, prepared, started, or did not become ready."""


# --------------------------------------------------------------------------------------------------------
# Locating the wheel's pieces


def pytriton_dist_dir() -> Path:
    """The ``pytriton/tritonserver`` directory of the installed nvidia-pytriton (without importing it)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError(f"nvidia-pytriton is not installed; {_INSTALL_HINT}.")
    for location in spec.submodule_search_locations:
        dist = Path(location) / "tritonserver"
        if dist.is_dir():
            return dist
    raise ServerError(f"nvidia-pytriton is installed but carries no tritonserver directory; {_INSTALL_HINT}.")


def find_tritonserver() -> Path:
    """Path of the ``tritonserver`` executable shipped inside nvidia-pytriton."""
    binary = pytriton_dist_dir() / "bin" / "tritonserver"
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise ServerError(f"no executable tritonserver at {binary}; {_INSTALL_HINT}.")
    return binary


def _libs_dir() -> Path:
    """The wheel's bundled shared libraries (libtritonserver, libcudart, ...), named by auditwheel."""
    libs = pytriton_dist_dir().parent.parent / "nvidia_pytriton.libs"
    if not libs.is_dir():
        raise ServerError(f"nvidia-pytriton's shared libraries are missing ({libs}); {_INSTALL_HINT}.")
    return libs


def _python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _stub_path() -> Path:
    stubs = pytriton_dist_dir() / "python_backend_stubs"
    stub = stubs / _python_version() / "triton_python_backend_stub"
    if not stub.is_file():
        have = sorted(p.name for p in stubs.iterdir()) if stubs.is_dir() else []
        raise ServerError(
            f"nvidia-pytriton has no python-backend stub for Python {_python_version()} "
            f"(available: {', '.join(have) or 'none'}); run vmtl with one of those Python versions."
        )
    return stub


def _default_cache_dir() -> Path:
    root = os.environ.get("VMTL_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vmtl"


# --------------------------------------------------------------------------------------------------------
# Backend directory and environment


def prepare_backend_dir(cache_dir: Path | None = None) -> Path:
    """Return a Triton ``--backend-directory`` whose ``python/`` holds the backend and this Python's stub.

    Layout: ``<cache_dir>/triton-backends/<py version>-<fingerprint>/python/`` with ``libtriton_python.so``,
    ``triton_python_backend_stub`` and ``triton_python_backend_utils.py``. The fingerprint changes when the
    installed wheel changes, so an upgrade never reuses stale files. Idempotent and safe against
    concurrent callers: the directory is assembled under a temporary name and renamed into place.
    ``cache_dir`` defaults to ``$VMTL_CACHE_DIR`` or ``~/.cache/vmtl``.
    """
    src_backend = pytriton_dist_dir() / "backends" / "python"
    if not (src_backend / "libtriton_python.so").is_file():
        raise ServerError(f"nvidia-pytriton carries no python backend at {src_backend}; {_INSTALL_HINT}.")
    stub = _stub_path()
    sources = [stub, *sorted(p for p in src_backend.iterdir() if p.is_file())]
    digest = hashlib.sha256()
    for p in sources:
        st = p.stat()
        digest.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    fingerprint = digest.hexdigest()[:12]

    root = (cache_dir or _default_cache_dir()) / "triton-backends"
    final = root / f"py{_python_version()}-{fingerprint}"
    if (final / "python" / "triton_python_backend_stub").is_file():
        return final

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        python_dir = tmp / "python"
        python_dir.mkdir()
        for p in sources:
            if p == stub:
                continue
            shutil.copy2(p, python_dir / p.name)
        shutil.copy2(stub, python_dir / "triton_python_backend_stub")
        os.chmod(python_dir / "triton_python_backend_stub", 0o755)
        try:
            os.rename(tmp, final)  # atomic; fails if another process won the race
        except OSError:
            if not (final / "python" / "triton_python_backend_stub").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _site_packages() -> list[str]:
    paths: list[str] = []
    for key in ("purelib", "platlib"):
        path = sysconfig.get_paths().get(key)
        if path and path not in paths and Path(path).is_dir():
            paths.append(path)
    return paths


def _vmtl_source_root() -> Path:
    return Path(__file__).resolve().parents[2]


def _prepend(value: str | None, *paths: str) -> str:
    parts = [p for p in paths if p]
    parts += [p for p in (value or "").split(os.pathsep) if p and p not in parts]
    return os.pathsep.join(parts)


def server_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for tritonserver and its python-backend stubs (a copy of ``base`` or ``os.environ``).

    - ``LD_LIBRARY_PATH``: the wheel's ``nvidia_pytriton.libs`` (libtritonserver, libcudart...; the stub's
      RPATH is relative to its place in the wheel and breaks once copied to the backend directory), plus
      this interpreter's own shared ``libpython`` directory when it has one, so the stub embeds the very
      Python that installed the site-packages (otherwise it falls back to the system's libpython).
    - ``PATH``: this interpreter's directory first. The stub's embedded Python ignores ``PYTHONPATH`` and
      takes its prefix (and so its site-packages: numpy<2, onnxruntime, av, vmtl) from the first
      ``python3`` on ``PATH``; without this, a virtualenv that is not activated (``make test`` runs
      ``.venv/bin/python``) leaves the stubs on the system's Python, where those packages are missing.
    - ``PYTHONPATH``: this interpreter's site-packages and the vmtl source root, for Pythons that honour it.

    Thread settings (OMP_NUM_THREADS...) are left to the caller.
    """
    env = dict(os.environ if base is None else base)
    lib_paths = [str(_libs_dir())]
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        libdir = sysconfig.get_config_var("LIBDIR")
        if libdir and any(Path(libdir).glob(f"libpython{_python_version()}*.so*")):
            lib_paths.append(libdir)
    env["LD_LIBRARY_PATH"] = _prepend(env.get("LD_LIBRARY_PATH"), *lib_paths)
    env["PATH"] = _prepend(env.get("PATH"), str(Path(sys.executable).parent))
    env["PYTHONPATH"] = _prepend(env.get("PYTHONPATH"), str(_vmtl_source_root()), *_site_packages())
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _check_numpy() -> None:
    try:
        major = int(metadata.version("numpy").split(".")[0])
    except (metadata.PackageNotFoundError, ValueError):
        return
    if major >= 2:
        warnings.warn(
            "numpy>=2 is installed; the python-backend stub of Triton 2.51 needs numpy<2 "
            "(pip install 'numpy<2')",
            RuntimeWarning,
            stacklevel=3,
        )


# --------------------------------------------------------------------------------------------------------
# Model repository checks


def check_repository(repo: Path | str) -> RepositoryInfo:
    """Check that ``repo`` is a Triton model repository Triton will load; raise :class:`ServerError` if not.

    :func:`vmtl.contract.validate_repository`, the check `vmtl export` runs before installing a
    repository: every ``config.pbtxt`` parsed into Triton's ``ModelConfig`` protobuf, names matching
    directories, version directories and model files present, ensembles wired to models of the
    repository with matching tensors. Its warnings name ensemble outputs that also feed another step
    (Triton 2.51 cannot then serve a request for only some of the ensemble's outputs).
    """
    repo = Path(repo)
    if not repo.exists():
        raise ServerError(f"model repository {repo} does not exist")
    if not repo.is_dir():
        raise ServerError(f"model repository {repo} is not a directory")
    if not is_model_repository(repo):
        raise ServerError(
            f"{repo} is not a Triton model repository: no <model>/config.pbtxt under it "
            "(write one with `vmtl export`)"
        )
    try:
        return validate_repository(repo)
    except RepositoryError as exc:
        raise ServerError(f"{repo} is not a valid model repository: {exc}") from exc


# --------------------------------------------------------------------------------------------------------
# Ports


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    return _free_ports(1, host)[0]


def _free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct free ports; all sockets stay open until all are chosen, so they differ."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(n):
            sock = stack.enter_context(socket.socket(family, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        return ports


def _check_port_free(host: str, port: int, what: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as tritonserver binds
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ServerError(
                f"{what} port {port} on {host} is not free ({exc.strerror}); another tritonserver may be "
                "running there. Choose other ports (0 picks free ones)."
            ) from None


def _port_taken(message: str) -> bool:
    """Whether a start failure was a port taken by someone else (our check, or tritonserver's bind)."""
    return "already in use" in message or "is not free" in message


def _bind_probe_host(host: str) -> str:
    """Address on which to probe for free ports when the server binds to ``host``."""
    return {"": "0.0.0.0", "::": "::"}.get(host, host.strip("[]"))


def _client_host(host: str) -> str:
    """Address a client on this machine uses to reach a server bound to ``host``."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


# --------------------------------------------------------------------------------------------------------
# The server


# Readiness probes go straight to the server, never through an http_proxy from the environment.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))

_LIVE: weakref.WeakSet[TritonServer] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop(timeout=5)


# One Triton log line: severity, date, time, thread, source location, then the (JSON-quoted) message.
_LOG_LINE = re.compile(r"^([IWE])\d{4} [\d:.]+\s+\d+ [^\]]+\] ?(.*)$")
_FAILED_LOAD = re.compile(r"^failed to load '([^']+)'(?: version \d+)?: (.*)", re.S)
_POLL_FAILED = re.compile(r"^Poll failed for model directory '([^']+)': (.*)", re.S)
_LOADING = re.compile(r"^loading: ([^:]+):\d+$")
_LOADED = re.compile(r"^successfully loaded '([^']+)'$")
# Errors a CPU-only machine always logs (no CUDA driver); harmless, left out of error reports.
_CPU_NOISE = ("CudaDriverHelper has not been initialized", "CUDA driver version is insufficient")


def _log_message(line: str) -> tuple[str, str] | None:
    """(severity, message) of a Triton log line, the message unquoted; None for other lines."""
    match = _LOG_LINE.match(line)
    if not match:
        return None
    message = match.group(2).strip()
    if message.startswith('"') and message.endswith('"'):
        with contextlib.suppress(ValueError):
            message = json.loads(message)
    return match.group(1), message


class TritonServer:
    """A ``tritonserver`` process on a model repository (a context manager: start on enter, stop on exit).

    Ports given as 0 are replaced by free ports when the object is created. Server output goes to
    ``log_file`` (a temporary file when None), never to the terminal; ``echo_log=True`` also copies it to
    stderr as it grows. ``model_control`` is Triton's ``--model-control-mode`` (``none``, ``explicit``,
    ``poll``). ``auto_complete_config=False`` (the default) passes ``--disable-auto-complete-config``:
    configs must be complete. ``backend_config`` adds or overrides python-backend settings (see
    :data:`DEFAULT_BACKEND_CONFIG`). ``extra_args`` are appended last to the command line.

    ``tls_cert`` and ``tls_key`` (PEM files) turn on TLS for gRPC; ``tls_ca`` also asks clients for a
    certificate signed by that CA (mutual TLS). Triton's HTTP endpoint has no TLS, so with TLS on it is
    bound to loopback only (the readiness probe and :meth:`status` use it there). ``restrict_admin``
    (``(key, value)``) makes the :data:`ADMIN_PROTOCOLS` answer only requests carrying that header, on
    gRPC and HTTP. ``die_with_parent`` (Linux) has the kernel kill tritonserver when the process that
    started it dies, even by SIGKILL (only when started from the main thread: the signal follows the
    thread that forked, not the process).
    """

    def __init__(
        self,
        repo: Path | str,
        *,
        host: str = "127.0.0.1",
        http_port: int = 8000,
        grpc_port: int = 8001,
        metrics_port: int = 8002,
        log_file: Path | str | None = None,
        model_control: str = "none",
        extra_args: Sequence[str] = (),
        echo_log: bool = False,
        log_verbose: int = 0,
        backend_config: dict[str, str] | None = None,
        exit_timeout_secs: int = 5,
        auto_complete_config: bool = False,
        env: dict[str, str] | None = None,
        cache_dir: Path | None = None,
        tls_cert: Path | str | None = None,
        tls_key: Path | str | None = None,
        tls_ca: Path | str | None = None,
        restrict_admin: tuple[str, str] | None = None,
        die_with_parent: bool = True,
    ) -> None:
        if model_control not in ("none", "explicit", "poll"):
            raise ValueError(f"model_control must be none, explicit or poll, not {model_control!r}")
        self.repo = Path(repo).resolve()
        self.host = host
        self.tls_cert, self.tls_key, self.tls_ca = _tls_files(tls_cert, tls_key, tls_ca)
        # Triton's HTTP endpoint has no TLS: with TLS on, keep it off the network.
        self.http_host = _loopback_for(host) if self.tls_cert is not None else host
        if restrict_admin is not None:
            restrict_admin = _check_header(*restrict_admin)
        self.restrict_admin = restrict_admin
        self.die_with_parent = die_with_parent
        self._wanted_ports = (http_port, grpc_port, metrics_port)  # 0: pick a free one (again on retry)
        self._pick_ports()
        self.model_control = model_control
        self.extra_args = list(extra_args)
        self.echo_log = echo_log
        self.log_verbose = log_verbose
        self.backend_config = {**DEFAULT_BACKEND_CONFIG, **(backend_config or {})}
        self.exit_timeout_secs = exit_timeout_secs
        self.auto_complete_config = auto_complete_config
        self.log_file = Path(log_file) if log_file is not None else None
        # Unique per server: the python backend names its /dev/shm regions <prefix><uuid>; stop() removes
        # what a killed server leaves there, and servers of other users/tests never share a name.
        token = uuid.uuid4().hex[:8]
        self.shm_prefix = f"vmtl_{os.getpid()}_{token}_"
        self.server_id = f"vmtl-{os.getpid()}-{token}"  # --id: readiness probes check they reach this server
        self.started_at: float | None = None
        self.ready_after_s: float | None = None
        self._env = env
        self._cache_dir = cache_dir
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None
        self._log_start = 0
        self._echo_stop = threading.Event()
        self._echo_thread: threading.Thread | None = None

    # ---------------------------------------------------------------- endpoints
    @property
    def grpc_url(self) -> str:
        """``host:port`` of the gRPC endpoint, as ``tritonclient.grpc.InferenceServerClient`` expects."""
        return f"{_client_host(self.host)}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        """``host:port`` of the HTTP endpoint, as ``tritonclient.http.InferenceServerClient`` expects."""
        return f"{_client_host(self.http_host)}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        """Full URL of the Prometheus metrics page."""
        return f"http://{_client_host(self.host)}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        """Process id of tritonserver (also its process-group id), None before start()."""
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """Exit status once the process has ended, else None."""
        return self._proc.poll() if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # ---------------------------------------------------------------- lifecycle
    def command(self, backend_dir: Path | None = None) -> list[str]:
        """The full tritonserver command line."""
        backend_dir = backend_dir or prepare_backend_dir(self._cache_dir)
        args = [
            str(find_tritonserver()),
            f"--id={self.server_id}",
            f"--model-repository={self.repo}",
            f"--backend-directory={backend_dir}",
            f"--model-control-mode={self.model_control}",
            f"--http-address={self.http_host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--metrics-config=summary_latencies=true",  # p50..p99 per model (deploy/prometheus)
            # Graceful shutdown waits at most this long for in-flight requests before unloading models.
            f"--exit-timeout-secs={self.exit_timeout_secs}",
            f"--log-verbose={self.log_verbose}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
        ]
        args += [f"--backend-config=python,{k}={v}" for k, v in self.backend_config.items()]
        if not self.auto_complete_config:
            # Repositories vmtl writes carry complete configs (checked against ModelConfig). With
            # auto-complete on, the python backend starts one extra stub per model only to ask model.py
            # for config additions: 1.6 s -> 0.5 s to ready with two python models on 2 cores.
            args.append("--disable-auto-complete-config")
        if not _has_nvidia_gpu():
            # Without a GPU, Triton's attempt to allocate its 256 MiB pinned-memory pool only fails with a
            # "CUDA driver version is insufficient" warning; pinned memory is useless on CPU anyway.
            args.append("--pinned-memory-pool-byte-size=0")
        args += self._security_args()
        caches = pytriton_dist_dir() / "caches"
        if caches.is_dir():  # the wheel's response-cache implementations (default: /opt/tritonserver/caches)
            args.append(f"--cache-directory={caches}")
        return args + self.extra_args

    @property
    def tls(self) -> bool:
        """Whether gRPC is served over TLS."""
        return self.tls_cert is not None

    def _security_args(self) -> list[str]:
        """tritonserver flags for TLS on gRPC and the restricted admin protocols."""
        args = []
        if self.tls_cert is not None:
            args += [
                "--grpc-use-ssl=true",
                f"--grpc-server-cert={self.tls_cert}",
                f"--grpc-server-key={self.tls_key}",
            ]
            if self.tls_ca is not None:  # clients must show a certificate this CA signed
                args += ["--grpc-use-ssl-mutual=true", f"--grpc-root-cert={self.tls_ca}"]
        if self.restrict_admin is not None:
            key, value = self.restrict_admin
            protocols = ",".join(ADMIN_PROTOCOLS)
            args += [
                f"--grpc-restricted-protocol={protocols}:{key}={value}",
                f"--http-restricted-api={protocols}:{key}={value}",
            ]
        return args

    def admin_headers(self, protocol: str = "grpc") -> dict[str, str]:
        """The header the restricted admin protocols ask for, for ``protocol`` ``grpc`` or ``http`` ({} when
        they are not restricted). Triton 2.51 expects the gRPC key prefixed ``triton-grpc-protocol-``."""
        if self.restrict_admin is None:
            return {}
        key, value = self.restrict_admin
        return {admin_header(key) if protocol == "grpc" else key: value}

    def grpc_client(self) -> grpcclient.InferenceServerClient:
        """A tritonclient gRPC client of this server (TLS as the server speaks it: the server's own
        certificate as the root of trust, and with mutual TLS its own key and certificate as the
        client's; right for a self-signed certificate or one signed by ``tls_ca``)."""
        if self.tls_cert is None:
            return grpcclient.InferenceServerClient(self.grpc_url)
        mutual = self.tls_ca is not None
        return grpcclient.InferenceServerClient(
            self.grpc_url,
            ssl=True,
            root_certificates=str(self.tls_ca if mutual else self.tls_cert),
            private_key=str(self.tls_key) if mutual else None,
            certificate_chain=str(self.tls_cert) if mutual else None,
        )

    def start(self) -> TritonServer:
        """Launch tritonserver in its own process group and return at once (then call :meth:`wait_ready`)."""
        if self.is_running():
            raise ServerError(f"tritonserver already running (pid {self.pid})")
        if not self.repo.is_dir():
            raise ServerError(f"model repository {self.repo} does not exist or is not a directory")
        _check_numpy()
        for what, host, port in (
            ("HTTP", self.http_host, self.http_port),
            ("gRPC", self.host, self.grpc_port),
            ("metrics", self.host, self.metrics_port),
        ):
            _check_port_free(_bind_probe_host(host), port, what)
        cmd = self.command()
        if self.log_file is None:
            fd, name = tempfile.mkstemp(prefix="vmtl-tritonserver-", suffix=".log")
            os.close(fd)
            self.log_file = Path(name)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_file, "ab")  # noqa: SIM115 - closed when the server has exited
        log.write(("$ " + " ".join(cmd) + "\n").encode())
        log.flush()
        self._log_handle, self._log_start = log, log.tell()
        self.started_at, self.ready_after_s = time.monotonic(), None
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=server_env(self._env),
            # Own session/process group: Ctrl-C in a terminal reaches only us, and stop() can find and
            # kill every python-backend stub the server forked.
            start_new_session=True,
            preexec_fn=(
                functools.partial(_die_with_parent, ctypes.CDLL(None, use_errno=True).prctl, os.getpid())
                if self.die_with_parent and _can_tie_to_parent()
                else None
            ),
        )
        _LIVE.add(self)
        if self.echo_log:
            self._echo_stop.clear()
            self._echo_thread = threading.Thread(target=self._echo, name="tritonserver-log", daemon=True)
            self._echo_thread.start()
        return self

    def _pick_ports(self) -> None:
        wanted = self._wanted_ports
        free = iter(_free_ports(wanted.count(0), _bind_probe_host(self.host)))
        self.http_port, self.grpc_port, self.metrics_port = (p if p else next(free) for p in wanted)

    def start_ready(
        self,
        timeout: float = 120.0,
        *,
        attempts: int = 3,
        progress: Callable[[TritonServer, float], None] | None = None,
    ) -> float:
        """:meth:`start` then :meth:`wait_ready`; return the seconds it took to become ready.

        Ports given as 0 are picked free before tritonserver binds them, so another process can take one
        in between: then new ones are picked and the server started again (at most ``attempts`` times).
        Any other failure, or a taken port that was given explicitly, raises at once.
        """
        for attempt in range(attempts):
            try:
                self.start()
                return self.wait_ready(timeout, progress=progress)
            except ServerError as exc:
                self.stop()
                retry = 0 in self._wanted_ports and _port_taken(str(exc)) and attempt < attempts - 1
                if not retry:
                    raise
                self._pick_ports()
        raise AssertionError("unreachable")  # the last attempt returns or raises

    def wait_ready(
        self,
        timeout: float = 120.0,
        *,
        poll_interval: float = 0.1,
        progress: Callable[[TritonServer, float], None] | None = None,
    ) -> float:
        """Block until the server reports ready; return the seconds since start().

        Polls HTTP ``/v2/health/ready`` (gRPC ``ServerReady`` when HTTP is disabled). ``progress`` is called
        with (server, elapsed seconds) on every poll. Raises :class:`ServerError` naming the models that
        failed to load and quoting the log's tail when the process exits first or ``timeout`` passes (the
        server is then stopped).
        """
        if self._proc is None or self.started_at is None:
            raise ServerError("tritonserver was not started; call start() first")
        deadline = time.monotonic() + timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                self._cleanup_after_exit()
                raise ServerError(
                    self._failure_message(f"tritonserver exited with code {code} before it was ready")
                )
            if self._probe_ready():
                self.ready_after_s = time.monotonic() - self.started_at
                return self.ready_after_s
            if progress is not None:
                progress(self, time.monotonic() - self.started_at)
            if time.monotonic() >= deadline:
                message = self._failure_message(f"tritonserver was not ready after {timeout:.0f} s")
                self.stop()
                raise ServerError(message)
            time.sleep(poll_interval)

    @property
    def http_enabled(self) -> bool:
        """False when ``extra_args`` turn Triton's HTTP endpoint off (probes then go over gRPC)."""
        return "--allow-http=false" not in self.extra_args

    def status(self) -> tuple[str, list[dict[str, Any]]]:
        """(Triton version, repository index: one {name, version, state, reason} per model), over HTTP like
        the readiness probe (gRPC when HTTP is disabled), so a caller needs no gRPC client of its own."""
        if not self.http_enabled:
            with self.grpc_client() as client:
                version = client.get_server_metadata().version
                index = client.get_model_repository_index(headers=self.admin_headers("grpc"), as_json=True)
                return version, index.get("models", [])
        with _NO_PROXY.open(f"http://{self.http_url}/v2", timeout=5) as response:
            version = json.loads(response.read()).get("version", "?")
        index = urllib.request.Request(
            f"http://{self.http_url}/v2/repository/index",
            data=b"{}",
            method="POST",
            headers=self.admin_headers("http"),
        )
        with _NO_PROXY.open(index, timeout=5) as response:
            return version, list(json.loads(response.read()))

    def is_ready(self) -> bool:
        """One readiness probe (False while starting, loading models, or stopped)."""
        return self.is_running() and self._probe_ready()

    def _probe_ready(self) -> bool:
        """Ready, and really this server: another one on the same port would answer too (``--id`` check)."""
        if not self.http_enabled:
            try:
                with self.grpc_client() as client:
                    if not client.is_server_ready(client_timeout=2):
                        return False
                    return client.get_server_metadata(client_timeout=2).name == self.server_id
            except Exception:
                return False
        try:
            with _NO_PROXY.open(f"http://{self.http_url}/v2/health/ready", timeout=2) as response:
                if response.status != 200:
                    return False
            with _NO_PROXY.open(f"http://{self.http_url}/v2", timeout=2) as response:
                return json.loads(response.read()).get("name") == self.server_id
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def stop(self, timeout: float = 15.0) -> int | None:
        """Stop the server; return its exit status (None if never started).

        SIGTERM to tritonserver (it drains requests and unloads models, which ends the stubs), SIGKILL to
        its whole process group after ``timeout``; then any stub still alive is killed and the server's
        shared-memory regions are removed.
        """
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self._cleanup_after_exit()
        return proc.returncode

    def _cleanup_after_exit(self) -> None:
        """After tritonserver has exited: kill leftover stubs, remove shm regions, close the log."""
        proc = self._proc
        if proc is None:
            return
        # Orphaned stubs notice that their parent is gone and exit within a second or two.
        if not _wait_group_gone(proc.pid, 2.0):
            _killpg(proc.pid, signal.SIGKILL)
            _wait_group_gone(proc.pid, 2.0)
        for region in Path("/dev/shm").glob(f"{self.shm_prefix}*"):
            with contextlib.suppress(OSError):
                region.unlink()
        self._echo_stop.set()
        if self._echo_thread is not None:
            self._echo_thread.join(2)
            self._echo_thread = None
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        _LIVE.discard(self)

    def process_group(self) -> list[int]:
        """Live (non-zombie) processes of the server's process group: tritonserver and its stubs."""
        return _group_members(self._proc.pid) if self._proc is not None else []

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.is_running() else "stopped"
        return f"TritonServer({str(self.repo)!r}, grpc={self.grpc_url}, http={self.http_url}, {state})"

    # ---------------------------------------------------------------- logs
    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of this run's log."""
        return "\n".join(self._run_log().splitlines()[-lines:])

    def _run_log(self) -> str:
        """This run's part of the log file."""
        if self.log_file is None or not self.log_file.is_file():
            return ""
        with open(self.log_file, "rb") as f:
            f.seek(self._log_start)
            return f.read().decode(errors="replace")

    def error_lines(self) -> list[str]:
        """Error messages of this run's log (``E`` lines and the final ``error:`` line), CPU noise removed."""
        errors = []
        for line in self._run_log().splitlines():
            parsed = _log_message(line)
            if parsed is not None:
                severity, message = parsed
                if severity == "E" and not any(noise in message for noise in _CPU_NOISE):
                    errors.append(message.strip())
            elif line.startswith("error:"):
                errors.append(line.strip())
        return errors

    def load_progress(self) -> tuple[list[str], list[str]]:
        """(models whose loading started, models loaded successfully) according to this run's log."""
        loading: list[str] = []
        loaded: list[str] = []
        for line in self._run_log().splitlines():
            parsed = _log_message(line)
            if parsed is None:
                continue
            for pattern, names in ((_LOADING, loading), (_LOADED, loaded)):
                match = pattern.match(parsed[1])
                if match and match.group(1) not in names:
                    names.append(match.group(1))
        return loading, loaded

    def failed_models(self) -> dict[str, str]:
        """Models this run's log reports as failed to load, with the reason."""
        failed: dict[str, str] = {}
        for message in self.error_lines():
            match = _FAILED_LOAD.match(message) or _POLL_FAILED.match(message)
            if match:
                failed.setdefault(match.group(1), match.group(2).strip())
        return failed

    def _failure_message(self, headline: str) -> str:
        parts = [headline + "."]
        failed = self.failed_models()
        errors = self.error_lines()
        if failed:
            parts.append("Models that failed to load:")
            parts += [f"  - {name}: {_indent(reason)}" for name, reason in failed.items()]
        elif errors:
            parts.append("Errors reported by the server:")
            parts += [f"  - {_indent(message)}" for message in errors[-10:]]
        # The tail without Triton's wide ASCII tables (their content is summarised above).
        tail = [
            line
            for line in self._run_log().splitlines()
            if line.strip() and line[:1] not in "+|" and (_log_message(line) or ("", "x"))[1]
        ]
        parts.append(f"Last lines of the server log ({self.log_file}):")
        parts += ["  " + line for line in tail[-_LOG_TAIL_LINES:]]
        return "\n".join(parts)

    def _echo(self) -> None:
        assert self.log_file is not None
        with open(self.log_file, "rb") as f:
            f.seek(self._log_start)
            while True:
                chunk = f.read(65536)
                if chunk:
                    sys.stderr.write(chunk.decode(errors="replace"))
                    sys.stderr.flush()
                    continue
                if self._echo_stop.wait(0.2):
                    rest = f.read()
                    if rest:
                        sys.stderr.write(rest.decode(errors="replace"))
                    return


def _tls_files(
    cert: Path | str | None, key: Path | str | None, ca: Path | str | None
) -> tuple[Path | None, Path | None, Path | None]:
    """The TLS files, resolved and checked: a certificate needs its key and the other way round."""
    if (cert is None) != (key is None):
        raise ServerError("TLS needs both a certificate and its key (--tls-cert and --tls-key)")
    if cert is None and ca is not None:
        raise ServerError("--tls-ca (clients must show a certificate) needs --tls-cert and --tls-key")
    files = []
    for what, path in (("certificate", cert), ("key", key), ("CA certificate", ca)):
        if path is None:
            files.append(None)
            continue
        path = Path(path).expanduser().resolve()
        if not path.is_file():
            raise ServerError(f"TLS {what} {path} does not exist")
        files.append(path)
    return files[0], files[1], files[2]


def _check_header(key: str, value: str) -> tuple[str, str]:
    """A gRPC metadata key (lower case, ``[a-z0-9-_.]``) and a value Triton can parse (no ``,`` ``:`` ``=``)."""
    if not re.fullmatch(r"[a-z0-9_.-]+", key or "") or key.startswith("grpc-"):
        raise ServerError(
            f"admin header key {key!r} must be lower case letters, digits, '-', '_' or '.' (not grpc-...)"
        )
    if not value or re.search(r"[\s,:=]", value):
        raise ServerError("the admin header value must be non-empty, without spaces, ',', ':' or '='")
    return key, value


def admin_header(key: str) -> str:
    """The gRPC metadata key a client sends for ``vmtl serve --restrict-admin KEY=VALUE`` (Triton 2.51 checks
    ``triton-grpc-protocol-<KEY>``; over HTTP the header is ``KEY`` itself)."""
    return f"triton-grpc-protocol-{key}"


def _loopback_for(host: str) -> str:
    """The loopback address of ``host``'s family."""
    return "::1" if ":" in host else "127.0.0.1"


def is_loopback(host: str) -> bool:
    """Whether binding to ``host`` keeps a port on this machine (127.0.0.0/8, ::1, localhost)."""
    host = host.strip("[]")
    return host == "localhost" or host == "::1" or host.startswith("127.")


_PR_SET_PDEATHSIG = 1


def _can_tie_to_parent() -> bool:
    """PR_SET_PDEATHSIG is Linux's, and it fires when the forking *thread* ends: only the main thread."""
    return sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread()


def _die_with_parent(prctl: Any, parent: int) -> None:
    """In the forked child, before exec: the kernel sends SIGKILL when the parent dies (any way). A
    parent that died before the call leaves the child to init: then exit at once. ``prctl`` is looked up
    in the parent: the child, forked from a process that may run threads, loads nothing."""
    prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def _has_nvidia_gpu() -> bool:
    return Path("/dev/nvidiactl").exists()


def _indent(text: str) -> str:
    return "\n      ".join(line for line in text.rstrip().splitlines() if line.strip())


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid`` (Linux /proc; else a signal probe)."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass
        return [pgid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ..." - comm may contain spaces and parentheses.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def _wait_group_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _group_members(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def response_cache_args(size_mb: float) -> list[str]:
    """tritonserver arguments for Triton's local response cache of ``size_mb`` MiB (none for 0).

    The cache serves the models whose config has ``response_cache { enable: true }`` (``vmtl export
    --cache``: the backbone). Its key is the model, its version and the request's input tensors (request
    parameters are not part of it); its memory is bounded by the size given here, and when it is full the
    least recently used entries are evicted. One backbone entry holds a clip's features for every task.
    """
    if size_mb < 0:
        raise ValueError(f"the response cache size must be >= 0 MiB, got {size_mb}")
    if not size_mb:
        return []
    return [f"--cache-config=local,size={int(size_mb * 2**20)}"]
