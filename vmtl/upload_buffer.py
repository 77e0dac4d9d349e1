"""A file that is still arriving: bytes appended in chunks, read by decoders that wait for them.

The streaming decoder (``video_stream``) receives a long video in chunks and starts decoding the first
windows while the rest is on its way. :class:`UploadBuffer` holds what has arrived; each decoder (PyAV
opens the file once to index it and once to decode it) gets its own :meth:`UploadBuffer.reader`, a
seekable read-only file object whose ``read`` blocks until the bytes it asks for have arrived, the
upload is complete, or it fails:

- :meth:`UploadBuffer.append` adds a chunk at its byte offset (one that overtook those in front of it
  waits for them);
- :meth:`UploadBuffer.abort` ends every wait with :class:`UploadError` (a stop request, a bad chunk);
- a reader that waits ``stall_s`` seconds without any new byte raises :class:`UploadError` (the client
  went away mid-upload);
- :meth:`UploadBuffer.hold` paces the sender: a chunk's acknowledgement is released once the readers have
  asked for bytes within ``ahead`` bytes of it (at once when they have), so a client that keeps a few
  chunks unacknowledged uploads just ahead of the decoder instead of competing with its first windows
  for the CPU. A reader that seeks to the end (an MP4 whose index is there) releases everything.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable

__all__ = ["UploadBuffer", "UploadError"]


class UploadError(Exception):
    """The upload stalled, was aborted, or a chunk did not fit."""


class UploadBuffer:
    """``total`` bytes arriving in chunks; :meth:`reader` gives blocking file objects over them."""

    def __init__(self, total: int, *, stall_s: float = 30.0, ahead: int = 2**21) -> None:
        if total <= 0:
            raise UploadError(f"an upload needs a positive size, got {total} bytes")
        self.total = int(total)
        self.stall_s = float(stall_s)
        self.ahead = int(ahead)
        self._wanted = 0  # the furthest byte a reader has asked for
        self._holds: list[tuple[int, Callable[[], None]]] = []  # (chunk offset, its acknowledgement)
        self._data = bytearray()
        self._early: dict[int, bytes] = {}  # chunks that came before the ones in front of them
        self._cond = threading.Condition()
        self._error: str | None = None
        self._last = time.monotonic()

    @property
    def received(self) -> int:
        return len(self._data)

    @property
    def complete(self) -> bool:
        return len(self._data) >= self.total

    def append(self, offset: int, chunk: bytes) -> None:
        """Add ``chunk``, the bytes from ``offset`` on. A chunk that arrives before those in front of it
        waits until they have (two paths may deliver chunks); each byte must come once."""
        with self._cond:
            if self._error is not None:
                raise UploadError(self._error)
            if offset < 0 or offset + len(chunk) > self.total:
                raise UploadError(
                    f"chunk at byte {offset} of {len(chunk)} bytes lies outside the announced size of "
                    f"{self.total} bytes"
                )
            if offset < len(self._data) or offset in self._early:
                raise UploadError(f"chunk at byte {offset} arrived twice")
            if offset > len(self._data):
                self._early[offset] = bytes(chunk)
                return
            self._data += chunk
            while len(self._data) in self._early:
                self._data += self._early.pop(len(self._data))
            self._last = time.monotonic()
            self._cond.notify_all()

    def abort(self, reason: str) -> None:
        """Fail every current and later read with ``reason``; release every held acknowledgement."""
        with self._cond:
            if self._error is None:
                self._error = reason
            self._cond.notify_all()
            due, self._holds = self._holds, []
        for _, release in due:
            release()

    def hold(self, offset: int, release: Callable[[], None]) -> None:
        """Call ``release`` (a chunk's acknowledgement) once the readers have asked for bytes within
        ``ahead`` of ``offset``: now if they have (or the upload ended), else from the reader that does."""
        with self._cond:
            if self._error is None and offset > self._wanted + self.ahead:
                self._holds.append((offset, release))
                return
        release()

    def _want(self, end: int) -> None:
        """A reader asked for bytes up to ``end``: release the acknowledgements now due."""
        with self._cond:
            if end <= self._wanted:
                return
            self._wanted = end
            limit = end + self.ahead
            due = [h for h in self._holds if h[0] <= limit]
            self._holds = [h for h in self._holds if h[0] > limit]
        for _, release in due:
            release()

    def wait_for(self, end: int) -> int:
        """Block until ``min(end, total)`` bytes are here; return how many are (UploadError on failure).
        Readers say how far they read first (``_want``), which releases the acknowledgements due."""
        end = min(end, self.total)
        with self._cond:
            while len(self._data) < end:
                if self._error is not None:
                    raise UploadError(self._error)
                idle = time.monotonic() - self._last
                if idle >= self.stall_s:
                    raise UploadError(
                        f"upload stalled: {len(self._data)} of {self.total} bytes arrived, then nothing "
                        f"for {self.stall_s:g} s"
                    )
                self._cond.wait(min(self.stall_s - idle, 1.0))
            if self._error is not None:
                raise UploadError(self._error)
            return len(self._data)

    def view(self, start: int, stop: int) -> bytes:
        with self._cond:
            return bytes(self._data[start:stop])

    def reader(self) -> _View:
        """A new file object at position 0 (each decoder needs its own position)."""
        return _View(self)


class _View(io.RawIOBase):
    """Read-only, seekable view of an :class:`UploadBuffer`; reads wait for bytes still to come."""

    def __init__(self, buffer: UploadBuffer) -> None:
        super().__init__()
        self._buf = buffer
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._buf.total + offset
        else:
            raise ValueError(f"unsupported whence {whence}")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def read(self, size: int = -1) -> bytes:
        if self._pos >= self._buf.total:
            return b""
        stop = self._buf.total if size is None or size < 0 else min(self._pos + size, self._buf.total)
        # Wait for the first byte wanted only: hand the decoder what is here rather than a full buffer.
        self._buf._want(stop)
        have = self._buf.wait_for(self._pos + 1)
        stop = min(stop, have)
        out = self._buf.view(self._pos, stop)
        self._pos += len(out)
        return out

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)
