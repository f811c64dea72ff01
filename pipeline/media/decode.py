"""Decode audio and video with PyAV, resample both to the pipeline's rates, align the streams."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from pipeline.errors import UserError

# Tolerance for float timestamps: 2 s at 25 fps must give 50 frames, not 49.
_TIME_EPS = 1e-6
# Containers without a seek index whose timestamps FFmpeg misassigns after a seek (see _decode_from).
_DECODE_FROM_START = frozenset({"mpeg", "mpegts", "mpegvideo"})


class MediaError(UserError, ValueError):
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


def decode_audio(
    path: Path | str, sample_rate: int = 16000, start: float | None = None, end: float | None = None
) -> np.ndarray:
    """Decode the first audio stream to float32 mono in [-1, 1] at `sample_rate`, shape (n,).

    With `start` and/or `end` (seconds from the start of the file) only [start, end) is returned: the
    decoder seeks to just before `start` and the samples are trimmed by timestamp.
    """
    ranged = start is not None or end is not None
    if ranged:
        start, end = _check_range(path, start, end)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    chunks: list[np.ndarray] = []
    first_time = None  # time of the first decoded frame, seconds from the file's start
    with _open(path) as container:
        if not container.streams.audio:
            raise MediaError(f"{path}: no audio track")
        stream = container.streams.audio[0]
        origin = _origin(container)
        try:
            decoded = _decode_from(container, stream, origin + start) if ranged else container.decode(stream)
            for frame in decoded:
                if ranged:
                    if frame.time is None:
                        raise MediaError(f"{path}: audio frames carry no timestamps; cannot cut [{start}, {end})")
                    if first_time is None:
                        first_time = frame.time - origin
                    if frame.time - origin >= end:
                        break
                chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
            # The resampler buffers a few samples of filter delay: flushing returns them.
            chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
        except av.FFmpegError as error:
            raise MediaError(f"{path}: cannot decode (corrupt or truncated): {error}") from error
    audio = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
    if ranged and first_time is not None:
        count = round((end - start) * sample_rate) if math.isfinite(end) else None
        audio = _trim_samples(audio, round((start - first_time) * sample_rate), count)
    if len(audio) == 0:
        where = f" in [{start}, {end})" if ranged else ""
        raise MediaError(f"{path}: zero-length audio{where}")
    # Float decoders (AAC) can overshoot full scale slightly; the contract is [-1, 1].
    return np.clip(audio, -1.0, 1.0, out=audio)


def _check_range(path: Path | str, start: float | None, end: float | None) -> tuple[float, float]:
    """A time range as (start, end) seconds; an empty or negative range is a MediaError naming the file."""
    start = 0.0 if start is None else float(start)
    end = math.inf if end is None else float(end)
    if start < 0 or not end > start:
        raise MediaError(f"{path}: empty or negative time range [{start}, {end})")
    return start, end


def _origin(container: av.container.InputContainer) -> float:
    """The file's time zero in stream time, seconds: what `start` and `end` are measured from."""
    return container.start_time / av.time_base if container.start_time is not None else 0.0


def _decode_from(
    container: av.container.InputContainer, stream: av.stream.Stream, seconds: float
) -> Iterator[av.AudioFrame | av.VideoFrame]:
    """Decoded frames of `stream` from the last keyframe at or before `seconds` (stream time) onwards.

    Demuxers seek by keyframe index where they have one (mp4, avi) but by byte estimate where they do
    not (MPEG-PS): when the first frame lands after `seconds`, seek again further back, at last from
    the beginning. A seek can also land inside a packet, whose decode error is skipped. MPEG program
    and transport streams are decoded from the beginning instead: after a seek there, FFmpeg's MPEG-1/2
    decoders stamp frames one frame late.
    """
    if container.format.name in _DECODE_FROM_START:
        yield from container.decode(stream)
        return
    for backoff in (0.0, 1.0, 5.0, None):
        target = None if backoff is None else seconds - backoff
        if target is None or target <= 0 or stream.time_base is None:
            container.seek(0)
        else:
            container.seek(int(target / stream.time_base), stream=stream, backward=True, any_frame=False)
        frames = _frames_after_seek(container, stream)
        first = next(frames, None)
        if first is None:
            return
        if target is None or target <= 0 or first.time is None or first.time <= seconds + _TIME_EPS:
            yield first
            yield from frames
            return
        frames.close()


def _frames_after_seek(
    container: av.container.InputContainer, stream: av.stream.Stream
) -> Iterator[av.AudioFrame | av.VideoFrame]:
    """Decode `stream` from the demuxer's position, skipping undecodable packets before the first frame."""
    decoded_any = False
    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.InvalidDataError:
            if decoded_any:
                raise
            continue  # the seek landed inside a packet
        for frame in frames:
            decoded_any = True
            yield frame


def _trim_samples(audio: np.ndarray, offset: int, count: int | None) -> np.ndarray:
    """audio[offset : offset + count]; a negative offset (decoding began after `start`) pads silence in front."""
    if offset < 0:
        audio = np.concatenate([np.zeros(-offset, dtype=audio.dtype), audio])
        offset = 0
    return audio[offset:] if count is None else audio[offset : offset + count]


def decode_video(
    path: Path | str, fps: float = 25.0, start: float | None = None, end: float | None = None
) -> np.ndarray:
    """Decode the first video stream to uint8 RGB (T, H, W, 3), resampled by timestamp to exactly `fps`.

    With `start` and/or `end` (seconds from the start of the file) output frame i shows the source frame
    on screen at start + i/fps, for start + i/fps < end; the decoder seeks to the keyframe before `start`.
    """
    ranged = start is not None or end is not None
    if ranged:
        start, end = _check_range(path, start, end)
    with _open(path) as container:
        if not container.streams.video:
            raise MediaError(f"{path}: no video track")
        # No frame threading: per-file decode is faster without it, and loader workers parallelise files.
        stream = container.streams.video[0]
        try:
            if ranged:
                origin = _origin(container)
                decoded = _decode_from(container, stream, origin + start)
                frames = _resample_frames(decoded, stream, fps, origin + start, end - start)
            else:
                frames = _resample_frames(container.decode(stream), stream, fps)
        except av.FFmpegError as error:
            raise MediaError(f"{path}: cannot decode (corrupt or truncated): {error}") from error
    if not frames:
        where = f" in [{start}, {end})" if ranged else ""
        raise MediaError(f"{path}: zero video frames{where}")
    return np.stack(frames)


def _resample_frames(
    decoded: Iterable[av.VideoFrame],
    stream: av.video.stream.VideoStream,
    fps: float,
    origin: float | None = None,
    duration: float = math.inf,
) -> list[np.ndarray]:
    """Output frame i = the latest source frame with time <= origin + i/fps, for i/fps < duration.

    `origin` None means the first decoded frame's time. Converts only frames that are shown.
    """
    nominal_rate = stream.average_rate or stream.guessed_rate
    nominal_period = 1.0 / float(nominal_rate) if nominal_rate else 1.0 / fps
    limit = math.ceil(duration * fps - _TIME_EPS) if math.isfinite(duration) else None
    out: list[np.ndarray] = []
    previous = None  # (frame, time relative to the origin)
    for index, frame in enumerate(decoded):
        time = frame.time if frame.time is not None else index * nominal_period
        origin = time if origin is None else origin
        time = time - origin
        if previous is not None:
            # The decoder returns presentation order; clamping guards against broken timestamps.
            time = max(time, previous[1])
            # Every output index i with i/fps < time shows the previous frame.
            _emit(out, previous[0], total=_bounded(math.ceil(time * fps - _TIME_EPS), limit))
        if limit is not None and time >= duration:
            return out  # this frame starts at or after the end of the range
        previous = (frame, time)
    if previous is None:
        return out
    last_frame, last_time = previous
    total = math.floor((last_time + _frame_duration(last_frame, nominal_period)) * fps + _TIME_EPS)
    total = _bounded(total, limit)
    _emit(out, last_frame, total=total)
    return out[:total]


def _bounded(total: int, limit: int | None) -> int:
    """`total` capped at `limit` when there is one."""
    return total if limit is None else min(total, limit)


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


def load_audio_visual(
    video_path: Path | str,
    audio_path: Path | str | None = None,
    sample_rate: int = 16000,
    fps: float = 25.0,
    start: float | None = None,
    end: float | None = None,
    cut_audio: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode frames and audio and cut both to the shorter stream: (audio (T*sample_rate/fps,), frames (T,H,W,3)).

    `start`/`end` (seconds) cut [start, end) out of the video file, and out of the audio when it is the
    same file. A separate `audio_path` is taken whole from its beginning, aligned with `start`: it is
    the utterance's own recording (IEMOCAP's sentence wavs). `cut_audio` overrides that choice.
    """
    frames = decode_video(video_path, fps=fps, start=start, end=end)
    same_file = audio_path is None or Path(audio_path) == Path(video_path)
    if same_file if cut_audio is None else cut_audio:
        audio = decode_audio(audio_path or video_path, sample_rate=sample_rate, start=start, end=end)
    else:
        audio = decode_audio(audio_path, sample_rate=sample_rate)
    samples_per_frame = sample_rate / fps
    count = min(len(frames), int(len(audio) // samples_per_frame))
    if count == 0:
        raise MediaError(f"{video_path}: no whole video frame of audio-visual overlap (audio {len(audio)} samples)")
    return audio[: round(count * samples_per_frame)], frames[:count]
