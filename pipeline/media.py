"""Decode audio and video with PyAV, resample both to the pipeline's rates, crop faces, align streams."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F

# Tolerance for float timestamps: 2 s at 25 fps must give 50 frames, not 49.
_TIME_EPS = 1e-6


class MediaError(ValueError):
    """A media file cannot be used; the message starts with the file path, then the problem."""


@dataclass(frozen=True)
class MediaInfo:
    """What a container holds, from its headers (no decoding)."""

    path: Path
    has_audio: bool
    has_video: bool
    audio_rate: int | None
    audio_channels: int | None
    video_fps: float | None
    width: int | None
    height: int | None
    duration: float  # seconds; 0.0 when the container does not say
    audio_codec: str | None = None
    video_codec: str | None = None


def _open(path: Path | str) -> av.container.InputContainer:
    """Open a container for reading, turning FFmpeg's error into a MediaError naming the file."""
    try:
        return av.open(str(path))
    except av.FFmpegError as error:
        raise MediaError(f"{path}: cannot open: {error}") from error


def probe(path: Path | str) -> MediaInfo:
    """Read stream headers: rates, sizes, codecs and duration."""
    with _open(path) as container:
        audio = container.streams.audio[0] if container.streams.audio else None
        video = container.streams.video[0] if container.streams.video else None
        fps = None
        if video is not None:
            rate = video.average_rate or video.guessed_rate
            fps = float(rate) if rate else None
        return MediaInfo(
            path=Path(path),
            has_audio=audio is not None,
            has_video=video is not None,
            audio_rate=audio.codec_context.sample_rate if audio else None,
            audio_channels=audio.codec_context.layout.nb_channels if audio else None,
            video_fps=fps,
            width=video.codec_context.width if video else None,
            height=video.codec_context.height if video else None,
            duration=_container_duration(container, audio or video),
            audio_codec=audio.codec_context.name if audio else None,
            video_codec=video.codec_context.name if video else None,
        )


def _container_duration(container: av.container.InputContainer, stream: av.stream.Stream | None) -> float:
    """Duration in seconds from the container, else from the stream, else 0."""
    if container.duration is not None:
        return container.duration / av.time_base
    if stream is not None and stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return 0.0


def decode_audio(path: Path | str, sample_rate: int = 16000) -> np.ndarray:
    """Decode the first audio stream to float32 mono in [-1, 1] at `sample_rate`, shape (n,)."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    chunks: list[np.ndarray] = []
    with _open(path) as container:
        if not container.streams.audio:
            raise MediaError(f"{path}: no audio track")
        stream = container.streams.audio[0]
        try:
            for frame in container.decode(stream):
                chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
            # The resampler buffers a few samples of filter delay: flushing returns them.
            chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
        except av.FFmpegError as error:
            raise MediaError(f"{path}: cannot decode (corrupt or truncated): {error}") from error
    if not chunks or sum(len(chunk) for chunk in chunks) == 0:
        raise MediaError(f"{path}: zero-length audio")
    audio = np.concatenate(chunks).astype(np.float32, copy=False)
    # Float decoders (AAC) can overshoot full scale slightly; the contract is [-1, 1].
    return np.clip(audio, -1.0, 1.0, out=audio)


def decode_video(path: Path | str, fps: float = 25.0) -> np.ndarray:
    """Decode the first video stream to uint8 RGB (T, H, W, 3), resampled by timestamp to exactly `fps`."""
    with _open(path) as container:
        if not container.streams.video:
            raise MediaError(f"{path}: no video track")
        # No frame threading: per-file decode is faster without it, and loader workers parallelise files.
        stream = container.streams.video[0]
        try:
            frames = _resample_frames(container.decode(stream), stream, fps)
        except av.FFmpegError as error:
            raise MediaError(f"{path}: cannot decode (corrupt or truncated): {error}") from error
    if not frames:
        raise MediaError(f"{path}: zero video frames")
    return np.stack(frames)


def _resample_frames(
    decoded: Iterable[av.VideoFrame], stream: av.video.stream.VideoStream, fps: float
) -> list[np.ndarray]:
    """Output frame i = the latest source frame with time <= i/fps; converts only frames that are shown."""
    nominal_rate = stream.average_rate or stream.guessed_rate
    nominal_period = 1.0 / float(nominal_rate) if nominal_rate else 1.0 / fps
    out: list[np.ndarray] = []
    previous = None  # (frame, time relative to the first frame)
    start = None
    for index, frame in enumerate(decoded):
        time = frame.time if frame.time is not None else index * nominal_period
        start = time if start is None else start
        time = time - start
        if previous is not None:
            # The decoder returns presentation order; clamping guards against broken timestamps.
            time = max(time, previous[1])
            # Every output index i with i/fps < time shows the previous frame.
            _emit(out, previous[0], total=math.ceil(time * fps - _TIME_EPS))
        previous = (frame, time)
    if previous is None:
        return out
    last_frame, last_time = previous
    total = math.floor((last_time + _frame_duration(last_frame, nominal_period)) * fps + _TIME_EPS)
    _emit(out, last_frame, total=total)
    return out[:total]


def _frame_duration(frame: av.VideoFrame, fallback: float) -> float:
    """The frame's own duration in seconds when the container records it, else the nominal period."""
    duration = getattr(frame, "duration", None)
    if duration and frame.time_base is not None:
        return float(duration * frame.time_base)
    return fallback


def _emit(out: list[np.ndarray], frame: av.VideoFrame, total: int) -> None:
    """Append `frame` until `out` holds `total` frames (no conversion when none is needed)."""
    count = total - len(out)
    if count > 0:
        out.extend([frame.to_ndarray(format="rgb24")] * count)


def centre_crop_resize(frames: np.ndarray, crop_fraction: float, size: int) -> np.ndarray:
    """Square centre crop of side crop_fraction * min(H, W), resized to (T, size, size, 3) uint8."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3), got {frames.shape}")
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    _, height, width, _ = frames.shape
    side = max(1, round(crop_fraction * min(height, width)))
    top, left = (height - side) // 2, (width - side) // 2
    crop = np.ascontiguousarray(frames[:, top : top + side, left : left + side])
    # A (T, H, W, 3) buffer viewed as (T, 3, H, W) is channels-last: torch's fast uint8 antialias kernel.
    channels_last = torch.from_numpy(crop).permute(0, 3, 1, 2)
    resized = F.interpolate(channels_last, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return np.ascontiguousarray(resized.permute(0, 2, 3, 1).numpy())


def load_audio_visual(
    video_path: Path | str,
    audio_path: Path | str | None = None,
    sample_rate: int = 16000,
    fps: float = 25.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode frames and audio and cut both to the shorter stream: (audio (T*sample_rate/fps,), frames (T,H,W,3))."""
    frames = decode_video(video_path, fps=fps)
    audio = decode_audio(audio_path if audio_path is not None else video_path, sample_rate=sample_rate)
    samples_per_frame = sample_rate / fps
    count = min(len(frames), int(len(audio) // samples_per_frame))
    if count == 0:
        raise MediaError(f"{video_path}: no whole video frame of audio-visual overlap (audio {len(audio)} samples)")
    return audio[: round(count * samples_per_frame)], frames[:count]
