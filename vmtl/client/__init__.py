"""vmtl.client: the gRPC client of a vmtl Triton server (``VmtlClient``) and ``vmtl analyze``.

No torch here: numpy, PyAV (vmtl.video) and tritonclient only.
"""

from vmtl.client.client import (
    DEFAULT_URL,
    ClientError,
    InferenceError,
    InputError,
    ServerBusyError,
    ServerContractError,
    ServerUnavailableError,
    TlsError,
    UnknownTaskError,
    VideoResult,
    VmtlClient,
    WindowResult,
    analyze,
)
from vmtl.client.stream import WindowStream

__all__ = [
    "DEFAULT_URL",
    "ClientError",
    "InferenceError",
    "InputError",
    "ServerBusyError",
    "ServerContractError",
    "ServerUnavailableError",
    "TlsError",
    "UnknownTaskError",
    "VideoResult",
    "VmtlClient",
    "WindowResult",
    "WindowStream",
    "analyze",
]
