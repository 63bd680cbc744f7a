"""Hostile and malformed media for the upload tests: playlists, image sequences, raw streams, containers that lie.

Every builder returns bytes; :func:`hostile_videos` names each case and the status family it must get.
"""

from __future__ import annotations

import io
import random
import struct
from fractions import Fraction

import numpy as np
from PIL import Image


def jpeg(width: int, height: int, colour=(120, 90, 60)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, "JPEG")
    return out.getvalue()


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(out, "PNG")
    return out.getvalue()


def with_sof_size(data: bytes, width: int, height: int) -> bytes:
    """A JPEG whose frame header (SOF0) claims ``width`` x ``height``, its pixels unchanged."""
    at = data.index(b"\xff\xc0")
    return data[:at + 5] + struct.pack(">HH", height, width) + data[at + 9:]


def mjpeg_mkv(frames: list[bytes], width: int = 64, height: int = 64, streams: int = 1) -> bytes:
    """A Matroska file of MJPEG ``frames`` (each its own JPEG, any size) in ``streams`` copies of the stream,
    whose header says ``width`` x ``height``."""
    import av

    out = io.BytesIO()
    with av.open(out, "w", format="matroska") as container:
        targets = []
        for _ in range(streams):
            stream = container.add_stream("mjpeg", rate=10)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuvj420p"
            targets.append(stream)
        for i, frame in enumerate(frames):
            for stream in targets:
                packet = av.Packet(frame)
                packet.stream, packet.pts, packet.dts, packet.time_base = stream, i, i, Fraction(1, 10)
                container.mux(packet)
    return out.getvalue()


def encoded(format: str, codec: str = "libx264", frames: int = 6, size: int = 64, pix_fmt: str = "yuv420p") -> bytes:
    """A few frames of ``codec`` in the container ``format`` (PyAV's muxer names)."""
    import av

    out = io.BytesIO()
    with av.open(out, "w", format=format) as container:
        stream = container.add_stream(codec, rate=10)
        stream.width = stream.height = size
        stream.pix_fmt = pix_fmt
        for i in range(frames):
            image = np.full((size, size, 3), (i * 40) % 255, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()


def playlists(named: str) -> dict[str, bytes]:
    """Text formats FFmpeg would follow to another file or URL; ``named``: a real video on the server."""
    return {
        "ffconcat": f"ffconcat version 1.0\nfile {named}\n".encode(),
        "ffconcat_repeat": ("ffconcat version 1.0\n" + f"file {named}\n" * 200).encode(),
        "ffconcat_missing": b"ffconcat version 1.0\nfile data/clips/does-not-exist.mp4\n",
        "hls": f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nfile://{named}\n#EXT-X-ENDLIST\n".encode(),
        "hls_remote": b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nhttp://127.0.0.1:9/x.ts\n#EXT-X-ENDLIST\n",
        "dash": (b'<?xml version="1.0"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static"><Period><AdaptationSet>'
                 b'<Representation id="1" bandwidth="1"><BaseURL>file:///etc/hostname</BaseURL></Representation>'
                 b'</AdaptationSet></Period></MPD>'),
        "sdp": b"v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nt=0 0\nm=video 5004 RTP/AVP 96\n"
               b"a=rtpmap:96 H264/90000\n",
        "ffmetadata": b";FFMETADATA1\ntitle=x\n",
        "subrip": b"1\n00:00:00,000 --> 00:00:01,000\nhello\n",
    }


def hostile_videos(named: str) -> dict[str, tuple[bytes, set[int]]]:
    """Case name -> (bytes, the statuses it may get). Every case is refused with a 4xx."""
    not_video = {415}
    cases: dict[str, tuple[bytes, set[int]]] = {name: (data, not_video) for name, data in playlists(named).items()}
    cases["png_sequence"] = (png(32, 32) * 5, not_video)
    cases["jpeg_sequence"] = (jpeg(32, 32) * 5, not_video)
    for name, fmt, codec, pix in (("raw_h264", "h264", "libx264", "yuv420p"), ("mpegts", "mpegts", "libx264", "yuv420p"),
                                  ("nut", "nut", "mpeg4", "yuv420p"), ("y4m", "yuv4mpegpipe", "rawvideo", "yuv420p"),
                                  ("flv", "flv", "flv", "yuv420p"), ("gif", "gif", "gif", "rgb8")):
        cases[name] = (encoded(fmt, codec, pix_fmt=pix), not_video)
    good_mkv = mjpeg_mkv([jpeg(64, 64)] * 6)
    good_mp4 = encoded("mp4")
    cases["truncated_mp4"] = (good_mp4[: len(good_mp4) // 3], {415, 422})
    cases["truncated_mkv"] = (good_mkv[: len(good_mkv) // 2], {200, 422})   # its whole frames may be analysed
    cases["header_only"] = (good_mp4[:40], {415, 422})
    cases["resolution_switch"] = (mjpeg_mkv([jpeg(64, 64)] * 3 + [jpeg(1600, 1200)] * 3), {413, 422})
    cases["huge_header"] = (mjpeg_mkv([jpeg(64, 64)] * 3, width=16000, height=16000), {413, 422})
    cases["huge_frame_header"] = (mjpeg_mkv([jpeg(64, 64), with_sof_size(jpeg(64, 64), 60000, 60000)]), {413, 422})
    cases["zero_size_frames"] = (mjpeg_mkv([with_sof_size(jpeg(64, 64), 0, 0)] * 3), {413, 422})
    cases["many_streams"] = (mjpeg_mkv([jpeg(16, 16)] * 2, streams=40), {413})
    cases["empty"] = (b"", {400})
    return cases


def mutations(data: bytes, count: int, seed: int = 0) -> list[bytes]:
    """``count`` copies of ``data`` with random bytes overwritten, cut or repeated (a small deterministic fuzzer)."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        b = bytearray(data)
        for _ in range(rng.randint(1, 24)):
            kind = rng.random()
            at = rng.randrange(len(b))
            if kind < 0.7:
                b[at] = rng.randrange(256)
            elif kind < 0.85:
                del b[at: at + rng.randint(1, 64)]
            else:
                b[at:at] = b[at: at + rng.randint(1, 64)] * rng.randint(1, 8)
        out.append(bytes(b))
    return out
