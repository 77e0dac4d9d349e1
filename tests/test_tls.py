"""TLS on gRPC and the restricted admin APIs, on real tritonservers with certificates made here.

A CA and a server certificate for localhost/127.0.0.1 (and a second, unrelated CA) are made with the
openssl command line. A TLS client that trusts the CA is served; a plain client and a client trusting the
other CA are refused with an error that says it is a TLS problem and what to pass. A server started with
``tls_ca`` wants client certificates (its readiness probe then runs over gRPC with TLS, HTTP off). With
``restrict_admin``, model control answers only requests carrying the key; inference needs none.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_repository import make_toy_models, toy_graph

from vmtl.cli import main as vmtl_main
from vmtl.client import ServerUnavailableError, TlsError, VmtlClient
from vmtl.export.repository import write_repository
from vmtl.server.launcher import TritonServer, admin_header

pytestmark = pytest.mark.triton
grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

ADMIN = ("vmtl-admin", "s3cret")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ca.pem/ca.key, server.pem/server.key (localhost, 127.0.0.1, signed by ca), client.pem/client.key
    (signed by ca), other.pem (an unrelated self-signed CA)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    d = tmp_path_factory.mktemp("certs")
    (d / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    new = ["req", "-newkey", "rsa:2048", "-nodes"]
    _openssl(
        *new, "-x509", "-days", "2", "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=vmtl-test-ca", cwd=d
    )
    _openssl(
        *new, "-x509", "-days", "2", "-keyout", "other.key", "-out", "other.pem", "-subj", "/CN=other", cwd=d
    )
    for name, cn in (("server", "localhost"), ("client", "vmtl-client")):
        _openssl(*new, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext", cwd=d,
        )  # fmt: skip
    return d


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tls-repo")
    graph = toy_graph()
    trunk, heads = make_toy_models(root / "onnx", graph)
    return write_repository(root / "repo", graph, trunk, heads, max_batch_size=4)


def _server(repo: Path, log: Path, **kw: Any) -> Iterator[TritonServer]:
    server = TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, log_file=log, **kw)
    try:
        server.start_ready(90)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tls_server(repo: Path, certs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    log = tmp_path_factory.mktemp("tls") / "triton.log"
    yield from _server(
        repo, log, tls_cert=certs / "server.pem", tls_key=certs / "server.key", restrict_admin=ADMIN
    )


def test_a_tls_client_is_served(tls_server: TritonServer, certs: Path, tiny_video: Path) -> None:
    with VmtlClient(tls_server.grpc_url, ca=certs / "ca.pem") as client:
        assert client.tls is not None
        result = client.analyze(tiny_video)
        assert list(result.tasks) == client.tasks
    with VmtlClient(
        tls_server.grpc_url.replace("127.0.0.1", "localhost"), tls=True, ca=certs / "ca.pem"
    ) as c:
        assert c.analyze(tiny_video, mode="clip").tasks


def test_a_plain_client_is_refused_with_a_tls_error(tls_server: TritonServer) -> None:
    with pytest.raises(TlsError) as info:
        VmtlClient(tls_server.grpc_url, connect_timeout=5)
    message = str(info.value)
    assert message.startswith(f"TLS problem with the Triton server at {tls_server.grpc_url}")
    assert "speaks TLS" in message and "--tls" in message
    assert isinstance(info.value, ServerUnavailableError)  # callers catching that still catch it


def test_a_client_with_the_wrong_ca_is_refused_with_a_tls_error(
    tls_server: TritonServer, certs: Path
) -> None:
    with pytest.raises(TlsError) as info:
        VmtlClient(tls_server.grpc_url, ca=certs / "other.pem", connect_timeout=5)
    message = str(info.value)
    assert "TLS problem" in message and "certificate is not trusted" in message and "--ca" in message
    assert "other.pem" in message
    with pytest.raises(TlsError, match="does not exist"):
        VmtlClient(tls_server.grpc_url, ca=certs / "missing.pem")


def test_analyze_cli_over_tls(tls_server: TritonServer, certs: Path, tiny_video: Path, capsys) -> None:
    url = ["--url", tls_server.grpc_url]
    assert vmtl_main(["analyze", str(tiny_video), *url, "--ca", str(certs / "ca.pem"), "--json"]) == 0
    assert '"path"' in capsys.readouterr().out
    assert vmtl_main(["analyze", str(tiny_video), *url]) == 1
    assert "TLS problem" in capsys.readouterr().err


def test_admin_apis_need_the_key_inference_does_not(
    tls_server: TritonServer, certs: Path, tiny_video: Path
) -> None:
    key, value = ADMIN
    with grpcclient.InferenceServerClient(
        tls_server.grpc_url, ssl=True, root_certificates=str(certs / "ca.pem")
    ) as raw:
        with pytest.raises(InferenceServerException, match="restricted"):
            raw.get_model_repository_index()
        with pytest.raises(InferenceServerException, match="restricted"):
            raw.unload_model("vmtl_clip")
        with pytest.raises(InferenceServerException, match="restricted"):
            raw.get_system_shared_memory_status()
        index = raw.get_model_repository_index(headers={admin_header(key): value})
        assert "vmtl_clip" in {m.name for m in index.models}
        with pytest.raises(InferenceServerException, match="restricted"):
            raw.get_model_repository_index(headers={admin_header(key): "wrong"})
        assert raw.is_model_ready("vmtl_clip")  # health and metadata stay open
    version, models = tls_server.status()  # the launcher's own status sends the key (over HTTP)
    assert version.startswith("2.") and any(m["name"] == "vmtl_clip" for m in models)
    with VmtlClient(tls_server.grpc_url, ca=certs / "ca.pem") as client:
        assert client.analyze(tiny_video).tasks


def test_mutual_tls_wants_a_client_certificate(
    repo: Path, certs: Path, tmp_path: Path, tiny_video: Path
) -> None:
    """Clients must show a certificate the CA signed; the readiness probe runs over gRPC with TLS."""
    for server in _server(
        repo,
        tmp_path / "mutual.log",
        tls_cert=certs / "server.pem",
        tls_key=certs / "server.key",
        tls_ca=certs / "ca.pem",
        extra_args=["--allow-http=false"],
    ):
        assert not server.http_enabled and server.ready_after_s is not None
        with pytest.raises(TlsError) as info:
            VmtlClient(server.grpc_url, ca=certs / "ca.pem", connect_timeout=5)
        assert "client certificate" in str(info.value) and "--cert" in str(info.value)
        with VmtlClient(
            server.grpc_url, ca=certs / "ca.pem", cert=certs / "client.pem", key=certs / "client.key"
        ) as client:
            assert client.analyze(tiny_video).tasks
