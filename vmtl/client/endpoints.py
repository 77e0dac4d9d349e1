"""Several Triton gRPC endpoints behind one client: spread requests, set aside the ones that fail, TLS.

:class:`EndpointPool` holds one ``tritonclient.grpc`` client per server. :meth:`EndpointPool.pick` gives
the healthy endpoint with the fewest requests in flight (ties go round the list); one that lost a request
to a server failure (:func:`is_server_failure`: unreachable, connection lost) is set aside for
``cooldown`` seconds and then probed (readiness plus the caller's ``check``) before it gets requests
again. :func:`diagnose_tls` tells why a connection failed when TLS is the cause (a plain client at a TLS
server, a certificate this side does not trust, a server that wants a client certificate), with a
handshake of Python's own ``ssl`` against the same address.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

__all__ = [
    "Endpoint",
    "EndpointPool",
    "TlsOptions",
    "diagnose_tls",
    "is_server_failure",
    "parse_urls",
]

#: Triton's message (status UNAVAILABLE) when a dynamic batcher's queue is at ``max_queue_size``: the
#: server is there and answering, so this is not a server failure.
QUEUE_FULL_MESSAGE = "Exceeds maximum queue size"
#: Messages of a lost or refused connection, whatever gRPC status carries them.
_LOST = (
    "failed to connect",
    "socket closed",
    "connection reset",
    "broken pipe",
    "goaway",
    "connection refused",
)


@dataclass(frozen=True)
class TlsOptions:
    """TLS for gRPC: ``ca`` is the PEM file of the roots to trust (None: the system's), ``cert`` and
    ``key`` a client certificate and its key for servers that ask for one (mutual TLS)."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate needs its key (cert and key together)")

    def client(self, url: str, verbose: bool = False) -> grpcclient.InferenceServerClient:
        return grpcclient.InferenceServerClient(
            url,
            verbose=verbose,
            ssl=True,
            root_certificates=self.ca,
            private_key=self.key,
            certificate_chain=self.cert,
        )


def parse_urls(url: str | Sequence[str]) -> list[str]:
    """``"a:8001,b:8001"`` or a list of them -> the distinct ``host:port`` endpoints, in order."""
    parts = url.split(",") if isinstance(url, str) else [p for u in url for p in str(u).split(",")]
    urls = []
    for part in (p.strip() for p in parts):
        if part and part not in urls:
            urls.append(part)
    if not urls:
        raise ValueError(f"no server address in {url!r} (give HOST:PORT, several comma-separated)")
    return urls


def is_server_failure(exc: InferenceServerException) -> bool:
    """Whether a failed request says the server is gone or unreachable (then another server may take it),
    rather than refusing this request (bad input, unknown task, a full queue, a timeout)."""
    message = (exc.message() or str(exc)).lower()
    if QUEUE_FULL_MESSAGE.lower() in message or "protocol is restricted" in message:
        return False
    return "UNAVAILABLE" in str(exc.status() or "") or any(m in message for m in _LOST)


@dataclass(eq=False)
class Endpoint:
    """One server: its client, the requests in flight there, and when it may be tried again."""

    url: str
    client: grpcclient.InferenceServerClient
    in_flight: int = 0
    down_until: float = 0.0  # monotonic seconds; 0: healthy
    last_error: str = ""
    probing: bool = False
    served: int = 0  # requests answered (any outcome but a server failure)
    moved: int = 0  # requests that failed here for the server's sake and went elsewhere

    @property
    def healthy(self) -> bool:
        return self.down_until == 0.0


@dataclass
class EndpointPool:
    """The endpoints of one client (see the module docstring). Thread-safe."""

    urls: list[str]
    tls: TlsOptions | None = None
    cooldown: float = 5.0
    probe_timeout: float = 2.0
    verbose: bool = False
    check: Callable[[Endpoint], None] | None = None  # raises when a revived endpoint must stay out
    endpoints: list[Endpoint] = field(init=False)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._turn = 0
        self.endpoints = []
        try:
            for url in self.urls:
                client = (
                    self.tls.client(url, self.verbose)
                    if self.tls is not None
                    else grpcclient.InferenceServerClient(url, verbose=self.verbose)
                )
                self.endpoints.append(Endpoint(url, client))
        except BaseException:
            self.close()
            raise

    def __iter__(self) -> Iterator[Endpoint]:
        return iter(self.endpoints)

    def __len__(self) -> int:
        return len(self.endpoints)

    @property
    def healthy(self) -> list[Endpoint]:
        return [e for e in self.endpoints if e.healthy]

    def mark_down(self, endpoint: Endpoint, reason: str) -> None:
        """Set ``endpoint`` aside for ``cooldown`` seconds."""
        with self._lock:
            endpoint.down_until = time.monotonic() + self.cooldown
            endpoint.last_error = reason

    def pick(self, exclude: Sequence[Endpoint] = ()) -> Endpoint | None:
        """The endpoint for the next request (counted in flight until :meth:`done`): the healthy one with
        the fewest requests in flight. When every endpoint not in ``exclude`` is set aside, they are
        probed at once (soonest due first); None when none answers."""
        self.revive_due()
        with self._lock:
            usable = [e for e in self.endpoints if e.healthy and e not in exclude]
            if usable:
                n = len(self.endpoints)
                order = {id(e): (i - self._turn) % n for i, e in enumerate(self.endpoints)}
                best = min(usable, key=lambda e: (e.in_flight, order[id(e)]))
                self._turn = (self.endpoints.index(best) + 1) % n
                best.in_flight += 1
                return best
            waiting = sorted((e for e in self.endpoints if e not in exclude), key=lambda e: e.down_until)
        for endpoint in waiting:
            if self._revive(endpoint):
                with self._lock:
                    endpoint.in_flight += 1
                return endpoint
        return None

    def revive_due(self) -> None:
        """Probe the endpoints whose cooldown has passed; those that answer take requests again."""
        now = time.monotonic()
        for endpoint in self.endpoints:
            if not endpoint.healthy and endpoint.down_until <= now:
                self._revive(endpoint)

    def _revive(self, endpoint: Endpoint) -> bool:
        """Probe a set-aside endpoint (one thread at a time; the others take it as still down)."""
        with self._lock:
            if endpoint.healthy:
                return True
            if endpoint.probing:
                return False
            endpoint.probing = True
        alive = self._probe(endpoint)
        with self._lock:
            endpoint.probing = False
            if alive:
                endpoint.down_until, endpoint.last_error = 0.0, ""
            else:
                endpoint.down_until = time.monotonic() + self.cooldown
        return alive

    def done(self, endpoint: Endpoint, *, failed: bool = False) -> None:
        with self._lock:
            endpoint.in_flight -= 1
            if failed:
                endpoint.moved += 1
            else:
                endpoint.served += 1

    def _probe(self, endpoint: Endpoint) -> bool:
        try:
            if not endpoint.client.is_server_ready(client_timeout=self.probe_timeout):
                return False
            if self.check is not None:
                self.check(endpoint)
            return True
        except Exception as exc:  # unreachable, or no longer serving what the client checked
            endpoint.last_error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return False

    def close(self) -> None:
        for endpoint in self.endpoints:
            endpoint.client.close()


# --------------------------------------------------------------------------------------------------
# TLS diagnosis


def _host_port(url: str) -> tuple[str, int]:
    host, _, port = url.rpartition(":")
    return host.strip("[]") or "localhost", int(port)


def diagnose_tls(url: str, tls: TlsOptions | None, timeout: float = 3.0) -> str | None:
    """Why a gRPC connection to ``url`` fails for TLS reasons, in words; None when TLS is not the cause
    (nothing listens there, or the handshake this side would make succeeds)."""
    try:
        host, port = _host_port(url)
        raw = socket.create_connection((host, port), timeout=timeout)
    except (OSError, ValueError):
        return None  # nothing to handshake with: not a TLS problem
    with raw:
        raw.settimeout(timeout)
        if tls is None:
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            try:
                with context.wrap_socket(raw, server_hostname=host):
                    pass
            except (ssl.SSLError, OSError):
                return None  # it does not speak TLS either
            return (
                "the server speaks TLS and this client connected without it: connect with --tls "
                "(VmtlClient(tls=True)), and --ca CA.pem when its certificate is not signed by a CA this "
                "machine trusts"
            )
        context = ssl.create_default_context(cafile=tls.ca)
        if tls.cert is not None:
            context.load_cert_chain(tls.cert, tls.key)
        wants_cert = (
            "the server closed the connection right after the TLS handshake: it wants a client "
            "certificate its CA signed (mutual TLS); give --cert and --key (VmtlClient(cert=..., key=...))"
        )
        try:
            with context.wrap_socket(raw, server_hostname=host) as conn:
                # A server that wants a client certificate it did not get closes the connection once
                # the (TLS 1.3) handshake is done; a content one answers HTTP/2's preface.
                conn.settimeout(min(timeout, 2.0))
                try:
                    conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                    if conn.recv(1) == b"":
                        return wants_cert
                except (ssl.SSLEOFError, ConnectionResetError, BrokenPipeError):
                    return wants_cert
                except TimeoutError:
                    pass
        except ssl.SSLEOFError:
            return wants_cert  # TLS 1.2: the refusal comes inside the handshake
        except ssl.SSLCertVerificationError as exc:
            where = f"the CA in {tls.ca}" if tls.ca else "this machine's trusted CAs"
            return (
                f"the server's certificate is not trusted ({exc.verify_message}): it is not signed by {where} "
                "or does not name this host; pass the CA that signed it with --ca (VmtlClient(ca=...))"
            )
        except ssl.SSLError as exc:
            reason = exc.reason or str(exc)
            if "CERTIFICATE_REQUIRED" in str(reason).upper() or "CERTIFICATE" in str(reason).upper():
                return (
                    f"the server wants a client certificate (mutual TLS) and refused this one ({reason}); "
                    "give --cert and --key of a certificate its CA signed"
                )
            return (
                f"the TLS handshake failed ({reason}): the server does not speak TLS on this port, or not "
                "this client's TLS; drop --tls for a plain server"
            )
        except OSError as exc:
            return f"the connection closed during the TLS handshake ({exc}): the server may not speak TLS"
    return None
