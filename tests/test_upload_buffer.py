"""A file still arriving (vmtl.upload_buffer) and the streaming decoder reading it (vmtl.video.window_stream):
chunks in and out of order, a decoder that starts before the file is complete and gives the same windows
as the whole file, stalls and aborts that end a waiting decoder with a clear error."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from test_video import _container

from vmtl.upload_buffer import UploadBuffer, UploadError
from vmtl.video import VideoError, sliding_windows, window_stream


@pytest.fixture(scope="module")
def video() -> bytes:
    """30 s of h264 (B-frames, 2 s GOP) in an mp4 whose index is in front: decodable from its first bytes."""
    return _container("mp4", "libx264", muxer={"movflags": "faststart"}, bf="2", g="20")


def test_chunks_assemble_in_any_order_once() -> None:
    buf = UploadBuffer(10)
    buf.append(6, b"ghij")  # overtook the chunk in front of it: held back
    assert buf.received == 0
    buf.append(0, b"abc")
    buf.append(3, b"def")
    assert buf.complete and buf.reader().read() == b"abcdefghij"
    with pytest.raises(UploadError, match="twice"):
        buf.append(3, b"def")
    with pytest.raises(UploadError, match="outside the announced size"):
        UploadBuffer(4).append(2, b"xyz")
    with pytest.raises(UploadError, match="positive size"):
        UploadBuffer(0)


def test_a_reader_waits_for_bytes_and_seeks_like_a_file() -> None:
    buf = UploadBuffer(8)
    buf.append(0, b"0123")
    r = buf.reader()
    assert r.read(100) == b"0123"  # what is here, without waiting for the rest
    threading.Timer(0.2, lambda: buf.append(4, b"4567")).start()
    t0 = time.perf_counter()
    assert r.read(2) == b"45" and time.perf_counter() - t0 >= 0.15  # waited for the next chunk
    assert r.seek(-1, io.SEEK_END) == 7 and r.read() == b"7" and r.read() == b""
    assert r.seek(2) == 2 and r.tell() == 2 and buf.reader().read(3) == b"012"  # readers move apart


def test_an_abort_or_a_stall_ends_a_waiting_reader() -> None:
    buf = UploadBuffer(100)
    buf.append(0, b"x" * 10)
    r = buf.reader()
    r.seek(10)
    threading.Timer(0.2, lambda: buf.abort("stopped by the client")).start()
    with pytest.raises(UploadError, match="stopped by the client"):
        r.read(5)
    with pytest.raises(UploadError, match="stopped"):
        buf.append(10, b"late")
    stalled = UploadBuffer(100, stall_s=0.3)
    stalled.append(0, b"x" * 10)
    r = stalled.reader()
    r.seek(10)
    with pytest.raises(UploadError, match=r"upload stalled: 10 of 100 bytes arrived, then nothing for 0.3 s"):
        r.read(5)


def test_the_decoder_streams_an_upload_before_it_is_complete(video: bytes) -> None:
    buf = UploadBuffer(len(video))
    head = len(video) * 5 // 8  # the index (in front) and ~19 s of 30: enough for the first window
    buf.append(0, video[:head])
    state: dict[str, int | None] = {"when_first": None}
    feeding = threading.Event()

    def feed() -> None:
        feeding.wait(10)  # the rest comes only once the first window is out
        for off in range(head, len(video), 1000):
            buf.append(off, video[off : off + 1000])
            time.sleep(0.002)

    threading.Thread(target=feed, daemon=True).start()
    stream = window_stream(buf, 4, 32, window=4.0, stride=3.0)
    got = []
    for _, clip in stream:
        if not got:
            state["when_first"] = buf.received
            feeding.set()
        got.append(clip)
    assert state["when_first"] is not None and state["when_first"] < len(video)
    whole = list(sliding_windows(video, 4, 32, window=4.0, stride=3.0))
    assert len(got) == len(whole) == stream.count == 10
    for a, b in zip(got, whole, strict=True):
        assert (a.start, a.end) == (b.start, b.end)
        np.testing.assert_array_equal(a.frames, b.frames)
        np.testing.assert_allclose(a.timestamps, b.timestamps)


def test_a_stalled_upload_is_a_clear_video_error(video: bytes) -> None:
    buf = UploadBuffer(len(video), stall_s=0.5)
    buf.append(0, video[: len(video) // 10])
    with pytest.raises(VideoError, match=rf"<upload of {len(video)} bytes>: upload stalled"):
        for _ in window_stream(buf, 4, 32, window=4.0):
            pass


def test_acknowledgements_wait_until_the_readers_near_the_chunk() -> None:
    """The pacing: a chunk far ahead of what the decoder asked for is acknowledged only once it nears;
    a read at the end (an MP4 index there) or an abort releases everything."""
    buf = UploadBuffer(100, ahead=10)
    released: list[int] = []
    for off in (0, 10, 20, 30):
        buf.append(off, b"x" * 10)
        buf.hold(off, lambda off=off: released.append(off))
    assert released == [0, 10]  # within 10 bytes of byte 0
    r = buf.reader()
    r.read(15)  # asks for bytes up to 15: the chunk at 20 is now within reach, 30 not yet
    assert released == [0, 10, 20]
    r.seek(-5, io.SEEK_END)
    buf.hold(40, lambda: released.append(40))
    threading.Timer(0.1, lambda: buf.abort("stopped by the client")).start()
    with pytest.raises(UploadError):
        r.read(5)  # asking for the end released what was held, then the abort ended the wait
    assert sorted(released) == [0, 10, 20, 30, 40]
    buf.hold(50, lambda: released.append(50))  # after the end: at once
    assert released[-1] == 50
