"""Face crops for the teacher: square centre crops, or crops around per-frame face boxes read from a file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.media.decode import MediaError


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
    return np.ascontiguousarray(_resize(channels_last, size).permute(0, 2, 3, 1).numpy())


def _resize(crops: torch.Tensor, size: int) -> torch.Tensor:
    """(T, 3, h, w) uint8 channels-last view → (T, 3, size, size) uint8, bilinear with antialiasing."""
    return F.interpolate(crops, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def crop_boxes(frames: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Crop frame t around boxes[t] = (x0, y0, x1, y1) pixels and resize to (T, size, size, 3) uint8.

    Each box is widened to a square of side max(width, height) about its centre (capped at the
    frame's shorter side) and moved inside the frame, so faces keep their aspect ratio.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3), got {frames.shape}")
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.shape != (len(frames), 4):
        raise ValueError(f"boxes must be ({len(frames)}, 4) for {len(frames)} frames, got {boxes.shape}")
    if not np.isfinite(boxes).all() or (boxes[:, 2] <= boxes[:, 0]).any() or (boxes[:, 3] <= boxes[:, 1]).any():
        raise ValueError("every box needs finite x0 < x1 and y0 < y1")
    _, height, width, _ = frames.shape
    side = np.clip(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]), 1, min(height, width))
    side = np.round(side).astype(int)
    left = np.round((boxes[:, 0] + boxes[:, 2]) / 2 - side / 2).astype(int)
    top = np.round((boxes[:, 1] + boxes[:, 3]) / 2 - side / 2).astype(int)
    left, top = np.clip(left, 0, width - side), np.clip(top, 0, height - side)
    out = np.empty((len(frames), size, size, 3), dtype=np.uint8)
    # Boxes differ in size, so each frame is resized alone (torch has no ragged batch resize for uint8).
    for index, (x, y, s) in enumerate(zip(left.tolist(), top.tolist(), side.tolist())):
        crop = torch.from_numpy(np.ascontiguousarray(frames[index : index + 1, y : y + s, x : x + s]))
        out[index] = _resize(crop.permute(0, 3, 1, 2), size).permute(0, 2, 3, 1).numpy()[0]
    return out


def read_boxes(path: Path | str, n_frames: int) -> np.ndarray:
    """Per-frame face boxes (n_frames, 4) x0 y0 x1 y1 in pixels, one per output frame at 25 fps.

    The file is a .npy array (T, 4) or text with four numbers per line (commas or spaces, `#`
    comments); T may exceed n_frames (the utterance was cut to the shorter stream), never fall short.
    """
    path = Path(path)
    try:
        boxes = np.load(path, allow_pickle=False) if path.suffix == ".npy" else _box_rows(path, path.read_text())
    except MediaError:
        raise
    except (OSError, ValueError) as error:
        raise MediaError(f"{path}: cannot read face boxes: {error}") from error
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise MediaError(f"{path}: face boxes must be an array (T, 4), got shape {boxes.shape}")
    if len(boxes) < n_frames:
        raise MediaError(f"{path}: {len(boxes)} face boxes for {n_frames} video frames")
    boxes = boxes[:n_frames].astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(boxes).all(1) | (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))
    if len(bad):
        raise MediaError(f"{path}: box {bad[0]} is not x0 < x1, y0 < y1: {boxes[bad[0]].tolist()}")
    return boxes


def _box_rows(path: Path, text: str) -> np.ndarray:
    """(T, 4) boxes from text lines of four numbers; a bad line is a MediaError naming file:line."""
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].replace(",", " ").strip()
        if not line:
            continue
        try:
            values = [float(value) for value in line.split()]
        except ValueError:
            values = []
        if len(values) != 4:
            raise MediaError(f"{path}:{number}: expected 4 numbers 'x0 y0 x1 y1', got {line!r}")
        rows.append(values)
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


def face_crops(
    frames: np.ndarray, size: int, crop_fraction: float = 1.0, boxes_path: Path | str | None = None
) -> np.ndarray:
    """(T, size, size, 3) face crops: by the per-frame boxes in `boxes_path` when given, else centre crops."""
    if boxes_path is None:
        return centre_crop_resize(frames, crop_fraction, size)
    return crop_boxes(frames, read_boxes(boxes_path, len(frames)), size)
