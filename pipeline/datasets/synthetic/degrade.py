"""Version 2's video nuisance, drawn per utterance: colour cast, an occluder over part of the face, and blur.

These set how hard the teacher's task is (`SynthConfig.occlusion`, `blur`, `lighting`); pixel noise and pose
jitter are applied by `face.render_talking_face`. The band is painted here; the blur is torchvision's.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms.functional import gaussian_blur as gaussian_blur_tensor

_SIDES = ("top", "bottom", "left", "right")
_REFERENCE_SIZE = 96  # `blur` is in pixels of a frame this wide


def spoiler(rng: np.random.Generator, occlusion: float, blur: float, lighting: float, size: int):
    """A `degrade(image, boxes)` for `render_talking_face`, its draws made now so that the utterance is reproducible."""
    gains = np.exp(rng.normal(0.0, lighting, 3) + rng.normal(0.0, lighting / 2)).astype(np.float32)
    share, side = rng.uniform(0.0, occlusion), _SIDES[rng.integers(len(_SIDES))]
    colour = rng.uniform(0.05, 0.95, 3).astype(np.float32)
    sigma = rng.uniform(0.0, blur) * size / _REFERENCE_SIZE

    def degrade(image: np.ndarray, boxes: np.ndarray) -> None:
        """Spoil planar frames (3, T, S, S) in [0, 255] in place; boxes (T, 4) are the face's, x0 y0 x1 y1."""
        image *= gains[:, None, None, None]
        if share > 0:
            occlude(image, boxes, share, side, colour * 255)
        if sigma > 0.3:  # below a third of a pixel the kernel is a delta
            image[:] = gaussian_blur(image, sigma)

    return degrade


def occlude(image: np.ndarray, boxes: np.ndarray, share: float, side: str, colour: np.ndarray) -> None:
    """Cover `share` of each frame's face box from one side with a flat band (a hand, a microphone, a scarf) that
    follows the face, soft-edged over one pixel."""
    size = image.shape[-1]
    grid = np.arange(size, dtype=np.float32) + 0.5  # pixel centres
    x0, y0, x1, y1 = (boxes[:, k].astype(np.float32)[:, None] for k in range(4))  # each (T, 1)
    if side in ("top", "bottom"):
        edge = y0 + share * (y1 - y0) if side == "top" else y1 - share * (y1 - y0)
        inside = _ramp(edge - grid if side == "top" else grid - edge)  # (T, S) over rows
        across = _ramp(np.minimum(grid - x0, x1 - grid) + 2)  # the band spans the face's width (T, S)
        cover = inside[:, :, None] * across[:, None, :]  # (T, S, S)
    else:
        edge = x0 + share * (x1 - x0) if side == "left" else x1 - share * (x1 - x0)
        inside = _ramp(edge - grid if side == "left" else grid - edge)  # (T, S) over columns
        across = _ramp(np.minimum(grid - y0, y1 - grid) + 2)  # (T, S) over rows
        cover = across[:, :, None] * inside[:, None, :]
    image += cover[None] * (colour[:, None, None, None] - image)


def _ramp(distance: np.ndarray) -> np.ndarray:
    """Coverage in [0, 1] of a pixel at signed `distance` pixels inside an edge."""
    return np.clip(distance + 0.5, 0.0, 1.0)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (torchvision's, edges reflected) of planar frames (3, T, S, S)."""
    channels, count, height, width = image.shape
    radius = min(max(1, int(np.ceil(3 * sigma))), min(height, width) - 1)  # reflect padding needs radius < side
    planes = torch.from_numpy(image).reshape(channels * count, 1, height, width)
    blurred = gaussian_blur_tensor(planes, [2 * radius + 1] * 2, [sigma, sigma])
    return blurred.reshape(channels, count, height, width).numpy()
