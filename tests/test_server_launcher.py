"""A real tritonserver (nvidia-pytriton's binary, CPU) on a tiny hand-written model repository.

The repository: python-backend models ``add_one`` (dynamic batching) and ``times_two``, and two ensembles
wiring add_one -> times_two:

- ``chain`` exposes add_one's result as PLUS_ONE and feeds times_two from a second output of add_one
  carrying the same values, so a request for PLUS_ONE alone never runs times_two (output pruning);
- ``chain_shared`` exposes the very tensor that feeds times_two; Triton 2.51 cannot serve a request for
  only one of its outputs (its pruning then drops add_one too and fails with "unexpected deadlock").
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from vmtl.cli import main as vmtl_main
from vmtl.server import launcher
from vmtl.server.launcher import ServerError, TritonServer, check_repository, prepare_backend_dir

grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

pytestmark = pytest.mark.triton

try:
    launcher.find_tritonserver()
except ServerError as exc:  # pragma: no cover - nvidia-pytriton is a dependency of vmtl
    pytest.skip(str(exc), allow_module_level=True)


# ------------------------------------------------------------------------------------------ the repository

ADD_ONE = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            y = (x + 1).astype(np.float32)
            # OUTPUT1 carries the same values under a second name, to feed the next ensemble step.
            outputs = [pb_utils.Tensor("OUTPUT0", y), pb_utils.Tensor("OUTPUT1", y)]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses
"""

TIMES_TWO = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            out = pb_utils.Tensor("OUTPUT0", (x * 2).astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
"""

BROKEN = """
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("weights file missing: /nowhere/broken.onnx")

    def execute(self, requests):
        return []
"""

# A long enough queue delay that 8 requests sent together are batched even on a busy 2-core machine.
BATCH_DELAY_US = 100_000


def _tensor(name: str) -> str:
    return f'{{ name: "{name}" data_type: TYPE_FP32 dims: [ -1 ] }}'


def _python_model(repo: Path, name: str, source: str, outputs: list[str], batch_delay_us: int = 0) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "1" / "model.py").write_text(textwrap.dedent(source))
    batching = (
        f"dynamic_batching {{ max_queue_delay_microseconds: {batch_delay_us} }}" if batch_delay_us else ""
    )
    (repo / name / "config.pbtxt").write_text(
        f"""
name: "{name}"
backend: "python"
max_batch_size: 8
input [ {_tensor("INPUT0")} ]
output [ {", ".join(_tensor(o) for o in outputs)} ]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
{batching}
"""
    )


def _ensemble(repo: Path, name: str, feed: str) -> None:
    """X -> add_one -> PLUS_ONE (exposed); add_one's ``feed`` output -> times_two -> RESULT."""
    (repo / name / "1").mkdir(parents=True)
    plus_one_maps = 'output_map { key: "OUTPUT0" value: "PLUS_ONE" }'
    if feed != "OUTPUT0":
        plus_one_maps += f' output_map {{ key: "{feed}" value: "fwd" }}'
    times_two_input = "PLUS_ONE" if feed == "OUTPUT0" else "fwd"
    (repo / name / "config.pbtxt").write_text(
        f"""
name: "{name}"
platform: "ensemble"
max_batch_size: 8
input [ {{ name: "X" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {_tensor("PLUS_ONE")}, {_tensor("RESULT")} ]
ensemble_scheduling {{
  step [
    {{ model_name: "add_one" model_version: -1
       input_map {{ key: "INPUT0" value: "X" }} {plus_one_maps} }},
    {{ model_name: "times_two" model_version: -1
       input_map {{ key: "INPUT0" value: "{times_two_input}" }}
       output_map {{ key: "OUTPUT0" value: "RESULT" }} }}
  ]
}}
"""
    )


def write_repository(repo: Path) -> Path:
    _python_model(repo, "add_one", ADD_ONE, ["OUTPUT0", "OUTPUT1"], batch_delay_us=BATCH_DELAY_US)
    _python_model(repo, "times_two", TIMES_TWO, ["OUTPUT0"])
    _ensemble(repo, "chain", feed="OUTPUT1")
    _ensemble(repo, "chain_shared", feed="OUTPUT0")
    return repo


def small_repository(repo: Path) -> Path:
    _python_model(repo, "times_two", TIMES_TWO, ["OUTPUT0"])
    return repo


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_repository(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    log = tmp_path_factory.mktemp("log") / "tritonserver.log"
    with TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, log_file=log) as srv:
        srv.wait_ready(60)
        yield srv


@pytest.fixture(scope="module")
def client(server: TritonServer) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        yield c


def test_status_reports_the_version_and_every_model_over_http_or_grpc(
    server: TritonServer, client: grpcclient.InferenceServerClient, repo: Path
) -> None:
    version, index = server.status()  # HTTP: the serve process needs no gRPC client of its own
    assert version == client.get_server_metadata().version
    want = client.get_model_repository_index(as_json=True)["models"]
    assert sorted((m["name"], m.get("state")) for m in index) == sorted(
        (m["name"], m.get("state")) for m in want
    )
    assert all(m.get("state") == "READY" for m in index)
    # With HTTP disabled the same answer comes over gRPC (same ports, the flag is all that differs).
    no_http = TritonServer(
        repo, http_port=server.http_port, grpc_port=server.grpc_port, extra_args=["--allow-http=false"]
    )
    assert no_http.status() == (version, index)


def _input(name: str, array: np.ndarray, dtype: str = "FP32") -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), dtype)
    tensor.set_data_from_numpy(array)
    return tensor


def _infer(
    client: grpcclient.InferenceServerClient, model: str, x: np.ndarray, outputs: list[str] | None = None
):
    requested = [grpcclient.InferRequestedOutput(o) for o in outputs] if outputs else None
    name = "X" if model.startswith("chain") else "INPUT0"
    return client.infer(model, [_input(name, x)], outputs=requested)


def _counts(client: grpcclient.InferenceServerClient, model: str) -> tuple[int, int]:
    """(inference_count, execution_count) of a model from Triton's statistics API."""
    stats = client.get_inference_statistics(model_name=model, as_json=True)["model_stats"][0]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (stubs carry the server's shm prefix)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline and _alive(int(entry.name)):
                found.append(int(entry.name))
    return found


X = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=np.float32)


# ------------------------------------------------------------------------------------------ the server


def test_server_ready_models_and_endpoints(
    server: TritonServer, client: grpcclient.InferenceServerClient
) -> None:
    assert server.is_running() and server.is_ready()
    assert client.get_server_metadata().version.startswith("2.")
    index = {m["name"]: m["state"] for m in client.get_model_repository_index(as_json=True)["models"]}
    assert index == {"add_one": "READY", "times_two": "READY", "chain": "READY", "chain_shared": "READY"}
    config = client.get_model_config("add_one", as_json=True)["config"]
    assert config["max_batch_size"] == 8 and "dynamic_batching" in config
    with urllib.request.urlopen(server.metrics_url, timeout=5) as response:
        assert b"nv_inference_request_success" in response.read()
    # The server's output went to its log file, not to the terminal.
    assert "successfully loaded 'add_one'" in server.log_file.read_text()
    assert server.load_progress()[1] and not server.failed_models()


def test_add_one_over_grpc(client: grpcclient.InferenceServerClient) -> None:
    result = _infer(client, "add_one", X)
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), X + 1)
    np.testing.assert_allclose(result.as_numpy("OUTPUT1"), X + 1)


def test_dynamic_batching_groups_concurrent_requests(client: grpcclient.InferenceServerClient) -> None:
    before = _counts(client, "add_one")
    pending = []
    for i in range(8):
        x = np.full((1, 4), i, dtype=np.float32)
        done: concurrent.futures.Future = concurrent.futures.Future()
        client.async_infer(
            "add_one", [_input("INPUT0", x)], lambda result, error, d=done: d.set_result((result, error))
        )
        pending.append((x, done))
    for x, done in pending:
        result, error = done.result(timeout=30)
        assert error is None, error
        np.testing.assert_allclose(result.as_numpy("OUTPUT0"), x + 1)
    # Statistics can land just after the responses: poll until all 8 inferences are counted.
    deadline = time.monotonic() + 10
    while True:
        inferences, executions = (a - b for a, b in zip(_counts(client, "add_one"), before, strict=True))
        if inferences >= 8 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert inferences == 8
    assert executions < 8, "8 requests within the queue delay should have been batched"


def test_chain_over_grpc(client: grpcclient.InferenceServerClient) -> None:
    result = _infer(client, "chain", X)
    np.testing.assert_allclose(result.as_numpy("PLUS_ONE"), X + 1)
    np.testing.assert_allclose(result.as_numpy("RESULT"), (X + 1) * 2)


def test_tensors_larger_than_the_shm_region(client: grpcclient.InferenceServerClient) -> None:
    """16 MB in and out of each python model: the python backend grows its shared-memory regions."""
    x = np.random.default_rng(0).random((2, 2_000_000), dtype=np.float32)
    result = _infer(client, "chain", x)
    np.testing.assert_allclose(result.as_numpy("RESULT"), (x + 1) * 2, rtol=1e-6)


def test_chain_output_pruning_skips_times_two(client: grpcclient.InferenceServerClient) -> None:
    add_one, times_two, chain = (_counts(client, m) for m in ("add_one", "times_two", "chain"))

    result = _infer(client, "chain", X, outputs=["PLUS_ONE"])

    np.testing.assert_allclose(result.as_numpy("PLUS_ONE"), X + 1)
    assert result.as_numpy("RESULT") is None
    assert _counts(client, "chain")[0] == chain[0] + 2  # inference_count counts batch rows
    assert _counts(client, "add_one")[1] == add_one[1] + 1  # add_one ran once...
    assert _counts(client, "times_two") == times_two  # ...times_two never: the step was pruned

    result = _infer(client, "chain", X, outputs=["RESULT"])  # and the other way round
    np.testing.assert_allclose(result.as_numpy("RESULT"), (X + 1) * 2)
    assert _counts(client, "times_two")[1] == times_two[1] + 1


def test_ensemble_output_feeding_another_step_cannot_be_requested_alone(
    repo: Path, client: grpcclient.InferenceServerClient
) -> None:
    """Known Triton 2.51 limitation, the reason for `chain`'s second add_one output.

    If this starts passing through Triton, its ensemble pruning was fixed: update check_repository's warning.
    """
    result = _infer(client, "chain_shared", X)  # all outputs: fine
    np.testing.assert_allclose(result.as_numpy("RESULT"), (X + 1) * 2)
    times_two = _counts(client, "times_two")
    with pytest.raises(InferenceServerException, match="unexpected deadlock"):
        _infer(client, "chain_shared", X, outputs=["PLUS_ONE"])
    assert _counts(client, "times_two") == times_two
    warnings = check_repository(repo).warnings
    assert len(warnings) == 1 and "chain_shared" in warnings[0] and "PLUS_ONE" in warnings[0]


@pytest.mark.parametrize(
    ("model", "name", "array", "dtype", "message"),
    [
        (
            "chain",
            "X",
            np.ones((1, 3), np.int32),
            "INT32",
            "data-type is 'INT32', but model 'chain' expects 'FP32'",
        ),
        ("add_one", "INPUT0", np.ones(3, np.float32), "FP32", "unexpected shape for input 'INPUT0'"),
        ("add_one", "INPUT0", np.ones((9, 3), np.float32), "FP32", "batch-size must be <= 8"),
        ("add_one", "WRONG", np.ones((1, 3), np.float32), "FP32", "unexpected inference input 'WRONG'"),
        ("no_such_model", "X", np.ones((1, 3), np.float32), "FP32", "no_such_model"),
    ],
)
def test_bad_request_is_rejected_and_server_keeps_serving(
    server: TritonServer,
    client: grpcclient.InferenceServerClient,
    model: str,
    name: str,
    array: np.ndarray,
    dtype: str,
    message: str,
) -> None:
    with pytest.raises(InferenceServerException) as excinfo:
        client.infer(model, [_input(name, array, dtype)])
    assert message in str(excinfo.value)
    assert server.is_ready()
    np.testing.assert_allclose(_infer(client, "add_one", X).as_numpy("OUTPUT0"), X + 1)


# ------------------------------------------------------------------------------------------ lifecycle


def test_model_failing_at_initialize_makes_wait_ready_fail(tmp_path: Path) -> None:
    repo = small_repository(tmp_path / "repo")
    _python_model(repo, "broken", BROKEN, ["OUTPUT0"])
    server = TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, log_file=tmp_path / "server.log")
    server.start()
    try:
        with pytest.raises(ServerError) as excinfo:
            server.wait_ready(60)
    finally:
        server.stop()
    message = str(excinfo.value)
    assert "exited with code" in message
    assert "broken" in message and "weights file missing: /nowhere/broken.onnx" in message
    assert str(server.log_file) in message
    assert not server.is_running()
    assert not _processes_mentioning(server.shm_prefix)


VENV_ONLY = """
import onnxruntime  # installed in the virtualenv only, not in the system's Python


class TritonPythonModel:
    def execute(self, requests):
        return []
"""


def test_stubs_use_this_interpreter_even_when_its_venv_is_not_on_path(tmp_path: Path) -> None:
    """`make test` runs .venv/bin/python without activating the venv: the stubs must still find its packages."""
    repo = tmp_path / "repo"
    _python_model(repo, "venv_only", VENV_ONLY, ["OUTPUT0"])
    bare = {**os.environ, "PATH": "/usr/local/bin:/usr/bin:/bin"}
    server = TritonServer(
        repo, http_port=0, grpc_port=0, metrics_port=0, log_file=tmp_path / "server.log", env=bare
    )
    server.start()
    try:
        server.wait_ready(60)
    finally:
        server.stop()


def test_stop_leaves_no_tritonserver_or_stub_behind(tmp_path: Path) -> None:
    server = TritonServer(
        small_repository(tmp_path / "repo"),
        http_port=0,
        grpc_port=0,
        metrics_port=0,
        log_file=tmp_path / "log",
    )
    with server:
        server.wait_ready(60)
        group = server.process_group()
        stubs = _processes_mentioning(server.shm_prefix)
        assert server.pid in group and stubs and set(stubs) <= set(group)
        assert list(Path("/dev/shm").glob(f"{server.shm_prefix}*"))
    assert server.returncode == 0  # graceful: SIGTERM, models unloaded
    assert not server.is_running() and not server.is_ready()
    assert not [pid for pid in group if _alive(pid)]
    assert not _processes_mentioning(server.shm_prefix)
    assert not list(Path("/dev/shm").glob(f"{server.shm_prefix}*"))
    assert server.stop() == 0  # idempotent


def test_crashed_server_stubs_and_shm_are_cleaned_up(tmp_path: Path) -> None:
    server = TritonServer(
        small_repository(tmp_path / "repo"),
        http_port=0,
        grpc_port=0,
        metrics_port=0,
        log_file=tmp_path / "log",
    )
    with server:
        server.wait_ready(60)
        group = server.process_group()
        os.kill(server.pid, signal.SIGKILL)  # a crash: nobody unloads the models
        assert server.stop() == -signal.SIGKILL
    assert not [pid for pid in group if _alive(pid)]
    assert not list(Path("/dev/shm").glob(f"{server.shm_prefix}*"))


def test_start_ready_picks_new_ports_when_a_picked_one_was_taken(tmp_path: Path) -> None:
    repo = small_repository(tmp_path / "repo")
    server = TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, log_file=tmp_path / "server.log")
    taken = server.grpc_port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:  # someone took it in between
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        try:
            server.start_ready(60)
            assert server.grpc_port != taken and server.is_ready()
        finally:
            server.stop()
        explicit = TritonServer(repo, http_port=0, grpc_port=taken, metrics_port=0)
        with pytest.raises(ServerError, match=f"gRPC port {taken} on 127.0.0.1 is not free"):
            explicit.start_ready(60)  # a port the caller chose is never swapped for another
        assert explicit.grpc_port == taken and not explicit.is_running()


def test_port_in_use_is_refused_clearly(server: TritonServer, repo: Path) -> None:
    other = TritonServer(repo, http_port=server.http_port, grpc_port=0, metrics_port=0)
    with pytest.raises(ServerError, match=f"HTTP port {server.http_port} on 127.0.0.1 is not free"):
        other.start()
    assert other.pid is None


def test_prepare_backend_dir_is_idempotent_and_race_safe(tmp_path: Path) -> None:
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        dirs = set(pool.map(lambda _: prepare_backend_dir(tmp_path), range(8)))
    assert len(dirs) == 1
    backend = dirs.pop()
    stub = backend / "python" / "triton_python_backend_stub"
    assert (backend / "python" / "libtriton_python.so").is_file() and os.access(stub, os.X_OK)
    assert (backend / "python" / "triton_python_backend_utils.py").is_file()
    assert [p.name for p in (tmp_path / "triton-backends").iterdir()] == [backend.name]  # no temp dirs left
    assert prepare_backend_dir(tmp_path) == backend


def test_server_env_and_free_port() -> None:
    env = launcher.server_env({"PATH": "/usr/bin", "PYTHONPATH": "/extra"})
    assert "nvidia_pytriton.libs" in env["LD_LIBRARY_PATH"]
    paths = env["PYTHONPATH"].split(os.pathsep)
    assert str(Path(np.__file__).resolve().parents[1]) in [str(Path(p).resolve()) for p in paths]
    assert str(Path(launcher.__file__).resolve().parents[2]) in paths
    assert paths[-1] == "/extra"
    port = launcher.free_port()
    assert 1024 <= port < 65536


# ------------------------------------------------------------------------------------------ vmtl serve


def test_serve_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        vmtl_main(["serve", "--help"])
    assert excinfo.value.code == 0
    out = capsys.readouterr().out
    assert "REPO" in out and "--grpc-port" in out and "--native" in out


def test_serve_nonexistent_repository_fails_clearly(capsys: pytest.CaptureFixture[str]) -> None:
    assert vmtl_main(["serve", "/nonexistent/model_repository"]) != 0
    err = capsys.readouterr().err
    assert "/nonexistent/model_repository does not exist" in err


def test_serve_directory_that_is_not_a_repository(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    assert vmtl_main(["serve", str(tmp_path)]) != 0
    assert "is not a Triton model repository" in capsys.readouterr().err


def test_serve_native_prints_container_command(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert vmtl_main(["serve", str(repo), "--native", "--grpc-port", "9001"]) == 0
    out = capsys.readouterr().out
    assert "docker run" in out and "--gpus all" in out and "127.0.0.1:9001:8001" in out
    assert "nvcr.io/nvidia/tritonserver:24.10-py3" in out
    assert f"{repo.resolve()}:/models" in out and "tritonserver --model-repository=/models" in out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_serve_runs_in_foreground_and_stops_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    repo = small_repository(tmp_path / "repo")
    log = tmp_path / "server.log"
    cmd = [sys.executable, "-m", "vmtl.cli", "serve", str(repo), "--log-file", str(log)]
    cmd += ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
    # SIGINT back to its default in the child: a test run started as a background job (`make test &`)
    # inherits SIGINT ignored, and Python then never raises KeyboardInterrupt.
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "press Ctrl-C" in line or time.monotonic() > deadline:
                break
        output = "".join(lines)
        if "Serving; press Ctrl-C to stop." not in output:  # say how it ended (seen once: an early exit)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            server_log = log.read_text()[-3000:] if log.exists() else "(no server log)"
            pytest.fail(
                f"vmtl serve did not report serving (exit status {proc.poll()}):\n{output}\n"
                f"--- server log ---\n{server_log}"
            )
        assert "times_two" in output and "READY" in output and "gRPC" in output
        server_pid = int(output.split("(pid ")[1].split(")")[0])
        assert _alive(server_pid)
        proc.send_signal(sig)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output + rest
    assert "stopped (tritonserver exit code 0)" in rest
    assert not _alive(server_pid)
    assert not _processes_mentioning(str(repo))


def test_serve_native_says_what_a_tensorrt_plan_needs(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vmtl.export.tensorrt import ENGINE_INFO

    native = tmp_path / "native"
    shutil.copytree(repo, native)
    model = next(p for p in sorted(native.iterdir()) if (p / "config.pbtxt").is_file())
    (model / "1").mkdir(exist_ok=True)
    (model / "1" / "model.plan").write_bytes(b"not really an engine")
    assert vmtl_main(["serve", str(native), "--native"]) == 0
    out = capsys.readouterr().out
    assert f"{model.name}/1/model.plan has no readable {ENGINE_INFO}" in out
    (model / ENGINE_INFO).write_text(json.dumps({"tensorrt_version": "10.3.0", "gpu_name": "NVIDIA H100"}))
    assert vmtl_main(["serve", str(native), "--native"]) == 0
    out = capsys.readouterr().out
    assert f"# {model.name}: TensorRT plan built with TensorRT 10.3.0 on a 'NVIDIA H100'" in out


def test_serve_killed_with_sigkill_takes_its_tritonserver_along(tmp_path: Path) -> None:
    """SIGKILL gives `vmtl serve` no chance to stop tritonserver: the kernel does (PR_SET_PDEATHSIG)."""
    repo = small_repository(tmp_path / "repo")
    cmd = [sys.executable, "-m", "vmtl.cli", "serve", str(repo), "--log-file", str(tmp_path / "server.log")]
    cmd += ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    server_pid = 0
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "press Ctrl-C" in line:
                break
        output = "".join(lines)
        assert "Serving; press Ctrl-C to stop." in output, output
        server_pid = int(output.split("(pid ")[1].split(")")[0])
        assert _alive(server_pid)
        proc.kill()
        proc.wait(10)
        deadline = time.monotonic() + 5
        while _alive(server_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(server_pid), "tritonserver outlived the vmtl serve that was SIGKILLed"
        deadline = time.monotonic() + 10  # its python-backend stubs follow once their parent is gone
        while _processes_mentioning(str(repo)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _processes_mentioning(str(repo))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if server_pid and _alive(server_pid):
            os.killpg(server_pid, signal.SIGKILL)


def test_tls_and_restricted_admin_flags(tmp_path: Path, repo: Path) -> None:
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("x")
    server = TritonServer(
        repo,
        host="0.0.0.0",
        http_port=0,
        grpc_port=0,
        metrics_port=0,
        tls_cert=tmp_path / "cert.pem",
        tls_key=tmp_path / "key.pem",
        tls_ca=tmp_path / "ca.pem",
        restrict_admin=("vmtl-admin", "s3cret"),
    )
    cmd = server.command()
    assert "--grpc-use-ssl=true" in cmd and "--grpc-use-ssl-mutual=true" in cmd
    assert f"--grpc-server-cert={tmp_path / 'cert.pem'}" in cmd
    assert f"--grpc-root-cert={tmp_path / 'ca.pem'}" in cmd
    assert "--grpc-restricted-protocol=model-repository,shared-memory:vmtl-admin=s3cret" in cmd
    assert "--http-restricted-api=model-repository,shared-memory:vmtl-admin=s3cret" in cmd
    assert "--http-address=127.0.0.1" in cmd and "--grpc-address=0.0.0.0" in cmd  # HTTP has no TLS
    assert server.admin_headers("grpc") == {"triton-grpc-protocol-vmtl-admin": "s3cret"}
    assert server.admin_headers("http") == {"vmtl-admin": "s3cret"}
    with pytest.raises(ServerError, match="needs both a certificate and its key"):
        TritonServer(repo, tls_cert=tmp_path / "cert.pem")
    with pytest.raises(ServerError, match="does not exist"):
        TritonServer(repo, tls_cert=tmp_path / "nope.pem", tls_key=tmp_path / "key.pem")
    with pytest.raises(ServerError, match="admin header"):
        TritonServer(repo, restrict_admin=("Bad Key", "v"))
    plain = TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0)
    assert not any("ssl" in a or "restricted" in a for a in plain.command())


def test_serve_warns_when_reachable_without_tls(repo: Path) -> None:
    from vmtl.server.cli import _exposure_warnings

    assert _exposure_warnings(TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0)) == []
    wide = _exposure_warnings(TritonServer(repo, host="0.0.0.0", http_port=0, grpc_port=0, metrics_port=0))
    assert any("without TLS" in w and "--tls-cert" in w for w in wide)
    assert any("--restrict-admin" in w for w in wide)
