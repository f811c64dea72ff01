"""What the teacher cache holds, computed from the teacher's outputs (stage 2): Eq. 4, 5 and 6 per utterance."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.features import SEGMENT_SECONDS, SEGMENT_VIDEO_FRAMES, n_segments, segment_means


def utterance_targets(embeddings: np.ndarray, probabilities: np.ndarray) -> dict[str, np.ndarray]:
    """Every cached quantity of one utterance from its per-frame teacher outputs (T, D) and (T, C)."""
    frame_prob = probabilities.max(axis=1)
    peak_frame = int(frame_prob.argmax())  # Eq. 4: the frame the teacher is most confident about
    return {
        "frames": embeddings,
        "frame_prob": frame_prob,
        "frame_pred": probabilities.argmax(axis=1).astype(np.int32),
        "segments": segment_means(embeddings),  # Eq. 6
        "peak": embeddings[peak_frame],
        "soft": probabilities.mean(axis=0),
    }


def window_segments(n_video_frames: int, window_seconds: int) -> list[tuple[int, int]]:
    """Segment ranges [first, stop) of the training windows of an utterance, in start order."""
    window = window_seconds // SEGMENT_SECONDS
    whole = n_video_frames // SEGMENT_VIDEO_FRAMES
    if whole < window:  # shorter than one window: one window over what exists, a partial second included
        return [(0, n_segments(n_video_frames))]
    return [(start, start + window) for start in range(whole - window + 1)]


def window_targets(teacher, segments: np.ndarray, windows: list[tuple[int, int]], device) -> dict[str, np.ndarray]:
    """`aggregator` (W, D) and `window_soft` (W, C) of a sequential teacher over each window's segment means (Eq. 5)."""
    segments = torch.from_numpy(segments).to(device)
    stacked = torch.stack([segments[first:stop] for first, stop in windows])  # (W, S, D): windows share a length
    aggregate = teacher.aggregate(stacked)
    return {"aggregator": aggregate.float().cpu().numpy(),
            "window_soft": teacher.head(aggregate).float().softmax(dim=1).cpu().numpy()}
