"""One utterance as stage 0 stores it: its audio on the 25 fps grid and its face crops (centre, boxes from files,
boxes found by the detector) or, for an audio-only corpus, its audio alone."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.datasets.base import Utterance
from pipeline.features import VIDEO_FPS
from pipeline.media.decode import MediaError, decode_audio, load_audio_visual
from pipeline.media.detect import DetectionSettings, speaker_boxes
from pipeline.media.faces import crop_boxes, face_crops

FACE_MODES = ("centre", "boxes", "detect")
SAMPLE_RATE = 16000


@dataclass(frozen=True)
class FaceSettings:
    """How stage 0 cuts faces out: `mode` is one of FACE_MODES; `detection` applies to "detect"."""

    mode: str = "centre"
    size: int = 64
    crop_fraction: float = 1.0
    detection: DetectionSettings = DetectionSettings()

    def describe(self) -> str:
        """The face store's `crop` attribute: a store is only resumed by a run that cuts faces the same way."""
        if self.mode == "detect":
            return self.detection.describe()
        return "boxes" if self.mode == "boxes" else f"centre {self.crop_fraction}"


@dataclass(frozen=True)
class Clip:
    """A decoded utterance: audio of exactly `n_video_frames` × 40 ms, its face crops (None: audio only) and,
    when the detector found them, the square crop boxes (T, 4) it cut."""

    audio: np.ndarray
    n_video_frames: int
    faces: np.ndarray | None = None
    boxes: np.ndarray | None = None


def load_audio_only(utterance: Utterance) -> Clip:
    """The utterance's audio (its own file whole, or [start, end) of the file it shares with the video), cut to
    whole video frames so the spectrogram keeps the 4-rows-per-frame grid."""
    path = utterance.audio_path or utterance.video_path
    same_file = utterance.video_path is None or Path(path) == Path(utterance.video_path)
    audio = decode_audio(path, SAMPLE_RATE, *((utterance.start, utterance.end) if same_file else (None, None)))
    samples_per_frame = SAMPLE_RATE // VIDEO_FPS
    n_frames = len(audio) // samples_per_frame
    if n_frames == 0:
        raise MediaError(f"{path}: {len(audio)} samples, shorter than one 40 ms frame")
    return Clip(audio[: n_frames * samples_per_frame], n_frames)


def load_clip(utterance: Utterance, faces: FaceSettings) -> Clip:
    """Audio and face crops of an utterance with video; a clip without video is a MediaError naming it."""
    if utterance.video_path is None:
        raise MediaError(f"{utterance.audio_path}: no video file for utterance {utterance.key!r} "
                         "(pass --audio-only to prepare a corpus without video)")
    separate_audio = utterance.audio_path if utterance.audio_path != utterance.video_path else None
    audio, frames = load_audio_visual(utterance.video_path, separate_audio, sample_rate=SAMPLE_RATE, fps=VIDEO_FPS,
                                      start=utterance.start, end=utterance.end)
    if faces.mode == "detect":
        _, boxes = speaker_boxes(frames, faces.detection, str(utterance.video_path))
        return Clip(audio, len(frames), crop_boxes(frames, boxes, faces.size), boxes)
    return Clip(audio, len(frames), face_crops(frames, faces.size, faces.crop_fraction, utterance.boxes_path))
