"""Talking faces for a synthetic speaker: parametric heads painted as anti-aliased ellipses under a moving pose.

No package renders parametric faces, so the shapes, the painter and the pose are written here. The mouth
opens with the utterance's speech envelope, which links the video to the audio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from pipeline.datasets.synthetic.config import rounded

# Unit-variance Gaussian quantiles for each byte value: random bytes through this table give Gaussian
# pixel noise (8-bit resolution, which pixels cannot exceed) several times faster than standard_normal.
_GAUSSIAN_BYTES = torch.special.ndtri((torch.arange(256, dtype=torch.float64) + 0.5) / 256).numpy()
_GAUSSIAN_BYTES = (_GAUSSIAN_BYTES / _GAUSSIAN_BYTES.std()).astype(np.float32)
_SKIN_LIGHT = np.array([0.96, 0.82, 0.70])
_SKIN_DARK = np.array([0.42, 0.28, 0.19])
_HAIR_COLOURS = np.array(
    [[0.08, 0.06, 0.05], [0.35, 0.2, 0.1], [0.85, 0.7, 0.35], [0.65, 0.25, 0.1], [0.7, 0.7, 0.72], [0.5, 0.35, 0.2]]
)
_IRIS_COLOURS = np.array([[0.3, 0.18, 0.08], [0.25, 0.45, 0.7], [0.3, 0.5, 0.3], [0.1, 0.08, 0.06]])


@dataclass(frozen=True)
class Face:
    """A speaker's face; lengths are in head units (the frame spans 2 units at head scale 1)."""

    face_width: float
    face_height: float
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    hair_top: float  # hair height above the crown
    hair_bottom: float  # lowest point of the hair, from the face centre (long hair > 0)
    hair_width: float  # hair ellipse width / face width
    hairline: float  # fringe depth as a fraction of face height
    fringe_curve: float
    eye_spacing: float  # half the distance between the eyes / face width
    eye_y: float
    eye_width: float
    eye_height: float
    iris: tuple[float, float, float]
    brow_thickness: float
    brow_tilt: float  # radians
    brow_raise: float
    nose_length: float
    nose_width: float
    mouth_width: float
    mouth_y: float
    mouth_open: float  # mouth half-height at full loudness
    lips: tuple[float, float, float]
    beard: bool
    glasses: bool


def sample_face(rng: np.random.Generator) -> Face:
    """Draw one face; palettes plus continuous jitter make every face distinct."""
    skin = _SKIN_LIGHT + rng.uniform(0, 1) * (_SKIN_DARK - _SKIN_LIGHT) + rng.normal(0, 0.03, 3)
    hair = _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] + rng.normal(0, 0.04, 3)
    face_height = rng.uniform(0.44, 0.56)
    return Face(
        face_width=rounded(rng.uniform(0.32, 0.44)),
        face_height=rounded(face_height),
        skin=_colour(skin),
        hair=_colour(hair),
        hair_top=rounded(rng.uniform(0.03, 0.2)),
        hair_bottom=rounded(rng.uniform(-0.25, 0.55)),
        hair_width=rounded(rng.uniform(1.03, 1.3)),
        hairline=rounded(rng.uniform(0.12, 0.4)),
        fringe_curve=rounded(rng.uniform(-0.6, 1.2)),
        eye_spacing=rounded(rng.uniform(0.3, 0.5)),
        eye_y=rounded(-face_height * rng.uniform(0.05, 0.25)),
        eye_width=rounded(rng.uniform(0.055, 0.09)),
        eye_height=rounded(rng.uniform(0.025, 0.045)),
        iris=_colour(_IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))]),
        brow_thickness=rounded(rng.uniform(0.012, 0.035)),
        brow_tilt=rounded(rng.uniform(-0.35, 0.35)),
        brow_raise=rounded(rng.uniform(0.05, 0.1)),
        nose_length=rounded(rng.uniform(0.07, 0.16)),
        nose_width=rounded(rng.uniform(0.03, 0.065)),
        mouth_width=rounded(rng.uniform(0.09, 0.18)),
        mouth_y=rounded(face_height * rng.uniform(0.42, 0.58)),
        mouth_open=rounded(rng.uniform(0.04, 0.07)),
        lips=_colour(np.array([0.72, 0.3, 0.32]) + rng.normal(0, 0.06, 3)),
        beard=bool(rng.random() < 0.25),
        glasses=bool(rng.random() < 0.25),
    )


def _colour(rgb: np.ndarray) -> tuple[float, float, float]:
    """Clip and round an RGB triple in [0, 1]."""
    return tuple(rounded(c, 3) for c in np.clip(rgb, 0.02, 0.98))


@dataclass(frozen=True)
class _Ellipse:
    """An ellipse in head coordinates; ay may vary per frame as a (T, 1, 1) array (blinks, mouth)."""

    cx: float
    cy: float
    ax: float | np.ndarray
    ay: float | np.ndarray
    angle: float = 0.0

    def reach(self) -> float:
        """Radius of a disc around the centre that holds the ellipse in every frame."""
        return float(max(np.max(self.ax), np.max(self.ay)))

    def coverage(self, x: np.ndarray, y: np.ndarray, edge: float) -> np.ndarray:
        """Anti-aliased coverage in [0, 1] at head coordinates, with a soft edge `edge` wide."""
        dx, dy = x - self.cx, y - self.cy
        if self.angle:
            cos, sin = math.cos(self.angle), math.sin(self.angle)
            dx, dy = cos * dx + sin * dy, cos * dy - sin * dx
        radius = np.sqrt((dx / self.ax) ** 2 + (dy / self.ay) ** 2)
        return np.clip((1.0 - radius) * np.minimum(self.ax, self.ay) / edge + 0.5, 0.0, 1.0)


_Mask = Callable[[np.ndarray, np.ndarray], np.ndarray]  # head (x, y) -> coverage multiplier


class _Painter:
    """Blends head-space shapes into planar frames (3, T, S, S) under a per-frame head pose."""

    def __init__(self, image: np.ndarray, centre_x: np.ndarray, centre_y: np.ndarray, roll: np.ndarray, scale: float):
        self.image = image
        size = image.shape[-1]
        self.size, self.pixel = size, 2.0 / size  # the frame spans [-1, 1]
        self.grid = (np.arange(size, dtype=np.float32) + 0.5) * self.pixel - 1.0
        self.centre_x = centre_x.astype(np.float32)[:, None, None]  # (T, 1, 1)
        self.centre_y = centre_y.astype(np.float32)[:, None, None]
        self.cos = np.cos(roll).astype(np.float32)[:, None, None]
        self.sin = np.sin(roll).astype(np.float32)[:, None, None]
        self.scale = scale
        self.edge = self.pixel / scale  # one pixel in head units

    def fill(self, shape: _Ellipse, colour, mask: _Mask | None = None) -> None:
        """Paint `shape` in a flat colour, optionally restricted by `mask`; only its pixel box is computed."""
        rows, cols = self._box(shape.cx, shape.cy, shape.reach())
        if rows.start >= rows.stop or cols.start >= cols.stop:
            return
        x, y = self._head_coords(rows, cols)
        alpha = shape.coverage(x, y, self.edge)
        if mask is not None:
            alpha = alpha * mask(x, y)
        for channel, value in enumerate(colour):
            region = self.image[channel, :, rows, cols]
            region += alpha * (np.float32(value) - region)

    def _box(self, x: float, y: float, radius: float) -> tuple[slice, slice]:
        """Pixel rows and columns that a head-space disc at (x, y) can touch in any frame."""
        image_x = self.centre_x + self.scale * (self.cos * x - self.sin * y)
        image_y = self.centre_y + self.scale * (self.sin * x + self.cos * y)
        reach = self.scale * radius + 2 * self.pixel
        rows = self._span(image_y.min() - reach, image_y.max() + reach)
        return rows, self._span(image_x.min() - reach, image_x.max() + reach)

    def _span(self, low: float, high: float) -> slice:
        first = int(np.clip(math.floor((low + 1.0) / self.pixel), 0, self.size))
        last = int(np.clip(math.ceil((high + 1.0) / self.pixel), 0, self.size))
        return slice(first, last)

    def _head_coords(self, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        """Head-space (x, y) of the pixels in a box, each (T, h, w)."""
        dx = (self.grid[cols][None, None, :] - self.centre_x) / self.scale
        dy = (self.grid[rows][None, :, None] - self.centre_y) / self.scale
        return self.cos * dx + self.sin * dy, self.cos * dy - self.sin * dx


def render_talking_face(
    face: Face,
    opening: np.ndarray,
    scene_rng: np.random.Generator,
    rng: np.random.Generator,
    size: int,
    fps: int,
    noise: float,
    arousal: np.ndarray | None = None,
    pose_jitter: float = 1.0,
    degrade: Callable[[np.ndarray, np.ndarray], None] | None = None,
    expression: tuple[float, float, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Frames (T, size, size, 3) uint8 of a talking face in a per-video scene with per-utterance nuisance, and the
    face's box in each, (T, 4) x0 y0 x1 y1 pixels: the skin ellipse's bounds (forehead to chin, cheek to cheek,
    without hair or neck), the ground truth for a face detector.

    Version 2: `arousal` (T,) in [0, 1] raises the brows and widens the eyes and the mouth; `pose_jitter` scales
    every pose range; `degrade(image, boxes)` spoils the painted planar (3, T, S, S) frames before the pixel noise;
    `expression` (strength, curl, (T,) level) draws mouth-corner creases turned up (curl > 0) or down, longer with
    the level."""
    count = len(opening)
    # Planar (3, T, S, S): each blend then runs over contiguous per-channel blocks.
    image = np.empty((3, count, size, size), dtype=np.float32)
    image[:] = _background(scene_rng, rng, size)[:, None]
    shirt = scene_rng.uniform(0.05, 0.95, 3)
    painter = _posed_painter(image, scene_rng, rng, fps, pose_jitter)
    opening, blinks, brow_shift = opening.astype(np.float32), _blinks(rng, count, fps), 0.0
    if arousal is not None:
        level = arousal.astype(np.float32)
        opening, blinks = opening * (0.6 + 0.8 * level), blinks * (0.75 + 0.5 * level)
        brow_shift = (0.06 * (level - 0.5))[:, None, None]  # (T, 1, 1) head units
    _draw_head(painter, face, opening, shirt, blinks, brow_shift)
    if expression is not None:
        _draw_expression(painter, face, *expression)
    image *= np.float32(255 * rng.uniform(0.8, 1.15))
    boxes = _face_boxes(painter, face)
    if degrade is not None:
        degrade(image, boxes)
    if noise > 0:
        image += _GAUSSIAN_BYTES[rng.integers(0, 256, image.shape, dtype=np.uint8)] * np.float32(255 * noise)
    image += np.float32(0.5)  # so that the truncating cast below rounds
    np.clip(image, 0.0, 255.0, out=image)
    return image.transpose(1, 2, 3, 0).astype(np.uint8), boxes


def _face_boxes(painter: _Painter, face: Face) -> np.ndarray:
    """(T, 4) pixel bounds of the face ellipse under each frame's pose (a rolled ellipse's axis-aligned box)."""
    half_width = painter.scale * np.sqrt((face.face_width * painter.cos) ** 2 + (face.face_height * painter.sin) ** 2)
    half_height = painter.scale * np.sqrt((face.face_width * painter.sin) ** 2 + (face.face_height * painter.cos) ** 2)
    to_pixels = painter.size / 2  # head coordinate c ∈ [-1, 1] lies at pixel (c + 1) * size / 2
    boxes = [(painter.centre_x - half_width + 1) * to_pixels, (painter.centre_y - half_height + 1) * to_pixels,
             (painter.centre_x + half_width + 1) * to_pixels, (painter.centre_y + half_height + 1) * to_pixels]
    return np.stack([np.ravel(side) for side in boxes], axis=1).astype(np.float64)


def _background(scene_rng: np.random.Generator, rng: np.random.Generator, size: int) -> np.ndarray:
    """A video's backdrop, (3, S, S): flat colour (slightly varied per utterance) plus a linear light ramp."""
    colour = scene_rng.uniform(0.1, 0.9, 3) + rng.normal(0, 0.04, 3)
    angle, strength = scene_rng.uniform(0, 2 * np.pi), scene_rng.uniform(0, 0.15)
    grid = (np.arange(size) + 0.5) * 2.0 / size - 1.0
    ramp = math.cos(angle) * grid[None, :] + math.sin(angle) * grid[:, None]
    return (colour[:, None, None] + strength * ramp[None]).astype(np.float32)


def _posed_painter(
    image: np.ndarray, scene_rng: np.random.Generator, rng: np.random.Generator, fps: int, jitter: float = 1.0
) -> _Painter:
    """Head pose per frame: per-video placement, per-utterance offset, scale and roll, slow drift, shake; `jitter`
    scales every range (1.0 reproduces version 1 exactly: x * 1.0 == x)."""
    count = image.shape[1]
    times = np.arange(count) / fps
    base = scene_rng.uniform(-0.06 * jitter, 0.06 * jitter, 2) + rng.uniform(-0.03 * jitter, 0.03 * jitter, 2)
    base = base + np.array([0.0, 0.05])
    frequency, phase = rng.uniform(0.1, 0.4, (2, 1)), rng.uniform(0, 2 * np.pi, (2, 1))
    drift = rng.uniform(0, 0.03 * jitter, (2, 1)) * np.sin(2 * np.pi * frequency * times + phase)
    centre = base[:, None] + drift + rng.normal(0, 0.004 * jitter, (2, count))
    offset = rng.uniform(-0.08 * jitter, 0.08 * jitter)  # drawn before the wobble's frequency, as version 1
    roll = offset + 0.03 * jitter * np.sin(2 * np.pi * rng.uniform(0.1, 0.3) * times)
    return _Painter(image, centre[0], centre[1], roll, rng.uniform(1.0 - 0.08 * jitter, 1.0 + 0.08 * jitter))


def _blinks(rng: np.random.Generator, count: int, fps: int) -> np.ndarray:
    """Eye openness per frame in [0.1, 1]: blinks of ~3 frames about every 3 s."""
    openness = np.ones(count, dtype=np.float32)
    for start in np.flatnonzero(rng.random(count) < 1.0 / (3 * fps)):
        openness[start : start + 3] = [0.5, 0.1, 0.5][: len(openness[start : start + 3])]
    return openness


def _draw_head(painter: _Painter, face: Face, opening: np.ndarray, shirt: np.ndarray, blinks: np.ndarray,
               brow_shift: float | np.ndarray = 0.0) -> None:
    """Paint shoulders, neck, hair, face, fringe, beard, eyes, brows, glasses, nose and mouth, back to front."""
    width, height = face.face_width, face.face_height
    skin = np.array(face.skin)
    painter.fill(_Ellipse(0, height + 0.55, 0.9, 0.45), shirt)
    painter.fill(_Ellipse(0, height * 0.9, width * 0.45, 0.3), skin * 0.85)
    hair_top, hair_bottom = -height - face.hair_top, max(face.hair_bottom, -height * 0.2)
    hair = _Ellipse(0, (hair_top + hair_bottom) / 2, width * face.hair_width, (hair_bottom - hair_top) / 2)
    painter.fill(hair, face.hair)
    painter.fill(_Ellipse(0, 0, width, height), skin)
    hairline = -height + 2 * height * face.hairline
    painter.fill(hair, face.hair, mask=_above(hairline, face.fringe_curve, painter.edge))
    if face.beard:
        beard = _Ellipse(0, height * 0.55, width * 0.8, height * 0.5)
        painter.fill(beard, face.hair, mask=_above(face.mouth_y - 0.06, 0.0, painter.edge, invert=True))
    _draw_eyes(painter, face, blinks[:, None, None], brow_shift)
    nose = _Ellipse(0, face.eye_y + face.nose_length * 0.6 + 0.03, face.nose_width, face.nose_length)
    painter.fill(nose, skin * 0.8)
    _draw_mouth(painter, face, opening[:, None, None])


def _above(level: float, curve: float, edge: float, invert: bool = False) -> _Mask:
    """Mask of the region above the curve y = level - curve * x^2 (below it when invert), soft-edged."""

    def mask(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        distance = (level - curve * x**2) - y
        return np.clip((-distance if invert else distance) / edge + 0.5, 0.0, 1.0)

    return mask


def _inside(shape: _Ellipse, edge: float, invert: bool = False) -> _Mask:
    """Mask of the inside of `shape` (its outside when invert)."""

    def mask(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        coverage = shape.coverage(x, y, edge)
        return 1.0 - coverage if invert else coverage

    return mask


def _draw_eyes(painter: _Painter, face: Face, openness: np.ndarray, brow_shift: float | np.ndarray = 0.0) -> None:
    """Sclera, iris (inside the sclera), brows and, for some speakers, glasses."""
    brow_colour = np.array(face.hair) * 0.7
    for side in (-1, 1):
        x, y = side * face.eye_spacing * face.face_width, face.eye_y
        sclera = _Ellipse(x, y, face.eye_width, face.eye_height * openness)
        painter.fill(sclera, (0.93, 0.93, 0.9))
        iris = _Ellipse(x, y, face.eye_height * 0.95, face.eye_height * 0.95)
        painter.fill(iris, face.iris, mask=_inside(sclera, painter.edge))
        brow_y = y - face.eye_height - face.brow_raise - brow_shift  # minus 0.0 leaves version 1 exact
        painter.fill(_Ellipse(x, brow_y, face.eye_width * 1.3, face.brow_thickness, side * face.brow_tilt), brow_colour)
        if face.glasses:
            lens = _Ellipse(x, y, face.eye_width * 1.35, face.eye_width * 1.0)
            frame = _Ellipse(x, y, face.eye_width * 1.6, face.eye_width * 1.28)
            painter.fill(frame, (0.1, 0.1, 0.12), mask=_inside(lens, painter.edge, invert=True))


def _draw_expression(painter: _Painter, face: Face, strength: float, curl: float, level: np.ndarray) -> None:
    """An emotion's expression at the mouth's corners: a short crease each side, raised and turned up for a curl in
    (0, 1] (a smile), lowered and turned down for one in [-1, 0), as long as the arousal `level` (T,) is high;
    `strength` scales its size."""
    length = (strength * (0.02 + 0.08 * level.astype(np.float32)))[:, None, None]  # (T, 1, 1) head units
    for side in (-1, 1):
        x = side * (face.mouth_width + 0.045 * strength)
        crease = _Ellipse(x, face.mouth_y - 0.025 * strength * curl, length, 0.009 * strength**0.5,
                          -side * 0.7 * curl)
        painter.fill(crease, np.array(face.skin) * 0.45)


def _draw_mouth(painter: _Painter, face: Face, opening: np.ndarray) -> None:
    """Lips with a dark opening whose height follows the speech envelope."""
    inner_height = 0.004 + face.mouth_open * opening  # (T, 1, 1)
    painter.fill(_Ellipse(0, face.mouth_y, face.mouth_width, 0.018 + inner_height), face.lips)
    inside = _Ellipse(0, face.mouth_y, face.mouth_width * (0.85 - 0.1 * opening), inner_height)
    painter.fill(inside, (0.22, 0.05, 0.07))
