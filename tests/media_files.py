"""Small media files the tests write with PyAV: grey-level mp4s, tone wavs, and the muxing steps they share."""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def write_mp4(
    path: Path,
    seconds: float,
    fps: int = 25,
    sample_rate: int | None = 16000,
    size: int | tuple[int, int] = 32,
    grey: int | None = None,
) -> Path:
    """An H.264 mp4, `size` px square or (width, height), whose frame i is filled with grey level 8i (mod 256), or
    with `grey` throughout, and an optional AAC 440 Hz tone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = round(seconds * fps)
    levels = [grey] * frames if grey is not None else [(index * 8) % 256 for index in range(frames)]
    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height = (size, size) if isinstance(size, int) else size
        video.pix_fmt = "yuv420p"
        video.options = {"preset": "ultrafast", "crf": "18"}
        if sample_rate is not None:
            audio = container.add_stream("aac", rate=sample_rate, layout="mono")
            mux_audio(container, audio, tone(seconds, sample_rate), sample_rate)
        mux_grey_frames(container, video, levels, fps)
    return path


def write_wav(path: Path, seconds: float, sample_rate: int, channels: int) -> Path:
    """A 16-bit PCM wav of a 220 Hz tone."""
    n = round(seconds * sample_rate)
    samples = (0.5 * np.sin(2 * np.pi * 220 * np.arange(n) / sample_rate) * 32767).astype(np.int16)
    layout = "stereo" if channels == 2 else "mono"
    with av.open(str(path), "w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=sample_rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(np.tile(samples, channels)[None], format="s16", layout=layout)
        frame.sample_rate, frame.pts = sample_rate, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def tone(seconds: float, sample_rate: int) -> np.ndarray:
    """A 0.3-amplitude 440 Hz sine, float32."""
    return (0.3 * np.sin(2 * np.pi * 440 * np.arange(round(seconds * sample_rate)) / sample_rate)).astype(np.float32)


def mux_audio(container: av.container.OutputContainer, stream, samples: np.ndarray, sample_rate: int) -> None:
    """Encode a whole mono signal (float32, or int16 PCM) as one frame at time 0, then flush the encoder."""
    sample_format = "s16" if samples.dtype == np.int16 else "fltp"
    frame = av.AudioFrame.from_ndarray(samples[None], format=sample_format, layout="mono")
    frame.sample_rate, frame.pts, frame.time_base = sample_rate, 0, Fraction(1, sample_rate)
    container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def mux_grey_frames(container: av.container.OutputContainer, stream, levels: Iterable[int], fps: int) -> None:
    """Encode flat grey frames, frame i at level levels[i] (which marks it in a decode), then flush the encoder."""
    for index, level in enumerate(levels):
        image = av.VideoFrame.from_ndarray(np.full((stream.height, stream.width, 3), level, np.uint8), format="rgb24")
        image.pts, image.time_base = index, Fraction(1, fps)
        container.mux(stream.encode(image))
    container.mux(stream.encode(None))
