"""Writing a synthetic corpus's files: H.264/AAC mp4s and text lists, each atomically (temporary name, then rename)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Protocol

import av
import numpy as np


def write_mp4(path: Path, frames: np.ndarray, audio: np.ndarray, fps: int, sample_rate: int) -> None:
    """Encode H.264 (yuv420p, crf 23) + AAC mono to a temporary name, then move it into place."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with av.open(str(temporary), "w", format="mp4") as container:
            video = container.add_stream("libx264", rate=fps)
            video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            # crf 23 keeps the faces sharp; lower values spend 4x the bytes on encoding the pixel noise.
            video.options = {"crf": "23", "preset": "veryfast"}
            sound = container.add_stream("aac", rate=sample_rate, layout="mono")
            sound.bit_rate = 48000
            # One audio frame: the encoder re-blocks it into 1024-sample AAC frames, the muxer interleaves.
            container.mux(sound.encode(audio_frame(audio, sample_rate)))
            container.mux(sound.encode(None))
            for index, image in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts, frame.time_base = index, Fraction(1, fps)
                container.mux(video.encode(frame))
            container.mux(video.encode(None))
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def audio_frame(samples: np.ndarray, sample_rate: int) -> av.AudioFrame:
    """A mono float-planar PyAV frame starting at time 0."""
    planar = np.ascontiguousarray(samples[None, :], dtype=np.float32)  # (channels, n)
    frame = av.AudioFrame.from_ndarray(planar, format="fltp", layout="mono")
    frame.sample_rate, frame.pts, frame.time_base = sample_rate, 0, Fraction(1, sample_rate)
    return frame


def write_boxes(path: Path, boxes: np.ndarray) -> None:
    """Save (T, 4) boxes as .npy atomically (temporary file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.part.npy")
    np.save(temporary, boxes.astype(np.float32))
    os.replace(temporary, path)


def write_text(path: Path, lines: list[str]) -> None:
    """Write lines atomically (temporary file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.part")
    temporary.write_text("".join(line + "\n" for line in lines))
    os.replace(temporary, path)


class Spoken(Protocol):
    """What trial_lines reads of an utterance (corpus v1's _Utterance, v2's Take: frozen dataclasses)."""

    @property
    def key(self) -> str: ...

    @property
    def speaker(self) -> int: ...


def trial_lines(rng: np.random.Generator, utterances: Sequence[Spoken], n_trials: int) -> list[str]:
    """veri_test.txt lines: half same-speaker, half different-speaker pairs, no pair twice, none with itself."""
    keys = [utterance.key for utterance in utterances]
    speakers = np.array([utterance.speaker for utterance in utterances])
    n_positive = n_trials // 2
    chosen: set[tuple[int, int]] = set()
    lines = []
    while len(lines) < n_trials:
        positive = len(lines) < n_positive
        enrol = int(rng.integers(len(keys)))
        same = speakers == speakers[enrol]
        candidates = np.flatnonzero(same if positive else ~same)
        candidates = candidates[candidates != enrol]
        test = int(rng.choice(candidates))
        pair = (min(enrol, test), max(enrol, test))
        if pair in chosen:  # config validation guarantees enough distinct pairs exist
            continue
        chosen.add(pair)
        lines.append(f"{int(positive)} {keys[enrol]}.wav {keys[test]}.wav")
    order = rng.permutation(len(lines))
    return [lines[i] for i in order]
