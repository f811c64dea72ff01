"""Version 2's people and moods: a per-speaker latent partly rendered into both face and voice, and a per-utterance
arousal track that drives both brows/eyes/mouth and pitch/loudness/brightness.

Shared factors (each a standard normal per speaker; the face renders `sqrt(s)·shared + sqrt(1−s)·own` and so does
the voice, so across speakers the two correlate by s = `shared_strength`):
  size   face height and jaw length  ↔  vocal-tract length (every formant scales down together)
  shape  face breadth (width/height) ↔  pitch register (broad faces speak lower)
Everything else (colours, hair, eyes, nose, glasses; speaking rate, breathiness, bandwidths, tilt, jitter) is
private to one modality. With s = 0 the face says nothing about the voice: the null corpus.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from pipeline.datasets.synthetic.config import rounded
from pipeline.datasets.synthetic.face import Face, sample_face
from pipeline.datasets.synthetic.voice import Voice, voice_with

SHARED_FACTORS = ("size", "shape")
_NEUTRAL_FORMANTS = np.array([500.0, 1500.0, 2500.0])
_LOW_F0, _HIGH_F0 = 90.0, 220.0
# Emotion classes of the emotion task: (arousal level, contour), named as the RAVDESS emotions they resemble
# (RAVDESS code); the level is the track's mean, the contour its slope over the utterance.
EMOTION_CLASSES = {
    "sad": ("low", "falling", "04"),
    "calm": ("low", "rising", "02"),
    "happy": ("high", "rising", "03"),
    "angry": ("high", "falling", "05"),
}
_LEVELS = {"low": 0.28, "high": 0.72}
_SLOPES = {"falling": -1.0, "rising": 1.0}


def valence(emotion: str) -> float:
    """+1 for a class whose arousal rises over the utterance (calm, happy), -1 for a falling one (sad, angry)."""
    return _SLOPES[EMOTION_CLASSES[emotion][1]]


@dataclass(frozen=True)
class Latent:
    """A speaker's latent factors (SHARED_FACTORS order): the shared draw and what each modality renders."""

    shared: tuple[float, float]
    face: tuple[float, float]
    voice: tuple[float, float]


def sample_latent(rng: np.random.Generator, strength: float) -> Latent:
    """Shared and private normals; the same draws whatever the strength, so corpora that differ only in strength
    hold the same people."""
    shared, face_own, voice_own = rng.standard_normal((3, len(SHARED_FACTORS)))
    keep, own = math.sqrt(strength), math.sqrt(1.0 - strength)
    return Latent(*(tuple(rounded(v) for v in values)
                    for values in (shared, keep * shared + own * face_own, keep * shared + own * voice_own)))


def _quantile(value: float) -> float:
    """The standard normal's CDF: a factor as a position in [0, 1] of its range."""
    return 0.5 * (1.0 + math.erf(value / math.sqrt(2.0)))


def latent_face(rng: np.random.Generator, latent: Latent) -> Face:
    """A face whose size (height, jaw) and breadth follow the latent; the rest drawn as version 1 draws it."""
    face = sample_face(rng)
    size, shape = (_quantile(v) for v in latent.face)
    height = 0.44 + 0.12 * size
    return replace(
        face,
        face_height=rounded(height),
        face_width=rounded(height * (0.62 + 0.26 * shape)),
        eye_y=rounded(face.eye_y / face.face_height * height),
        mouth_y=rounded(height * (0.4 + 0.18 * size)),  # a longer jaw in a bigger face
    )


def latent_voice(rng: np.random.Generator, latent: Latent) -> Voice:
    """A voice whose tract length and pitch register follow the latent; source details private."""
    size, shape = (_quantile(v) for v in latent.voice)
    tract = 0.92 + 0.16 * size  # longer tract: lower formants
    formants = _NEUTRAL_FORMANTS / tract * rng.uniform(0.98, 1.02, 3)
    return voice_with(rng, _HIGH_F0 * (_LOW_F0 / _HIGH_F0) ** shape, formants)  # f0 log-uniform over [90, 220] Hz


def arousal_track(rng: np.random.Generator, n_frames: int, fps: int, emotion: str | None = None) -> np.ndarray:
    """Arousal per video frame in [0, 1]: a level, a slope over the utterance and a slow wander. `emotion` (an
    EMOTION_CLASSES name) fixes the level (low/high) and the contour (falling/rising); None draws both freely."""
    if emotion is None:
        level, slope = rng.uniform(0.15, 0.85), rng.uniform(-0.5, 0.5)
    else:
        name_level, contour, _ = EMOTION_CLASSES[emotion]
        level = _LEVELS[name_level] + rng.uniform(-0.1, 0.1)
        slope = _SLOPES[contour] * rng.uniform(0.3, 0.6)
    times = np.arange(n_frames) / fps
    position = (np.arange(n_frames) + 0.5) / n_frames - 0.5  # -0.5 .. 0.5 over the utterance
    periods, phases = rng.uniform(1.0, 4.0, 3), rng.uniform(0, 2 * np.pi, 3)
    wander = 0.05 * np.sin(2 * np.pi * times[:, None] / periods + phases).sum(axis=1)
    return np.clip(level + slope * position + wander, 0.0, 1.0)


def mixed_track(own: np.ndarray, other: np.ndarray, strength: float) -> np.ndarray:
    """What the face shows: `own` (the voice's track) with weight sqrt(s), an unrelated track with sqrt(1−s)."""
    mixed = 0.5 + math.sqrt(strength) * (own - 0.5) + math.sqrt(1.0 - strength) * (other - 0.5)
    return np.clip(mixed, 0.0, 1.0)
