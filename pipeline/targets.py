"""What the teacher cache holds, computed from the teacher's outputs (stage 2): Eq. 4, 5 and 6 per utterance;
and the frames of a sequential teacher's window, which its training (stage 1) reads too."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from cache.layers import layer_field
from pipeline.layers import captured
from pipeline.training import autocast, autocast_dtype
from pipeline.features import SEGMENT_SECONDS, SEGMENT_VIDEO_FRAMES, VIDEO_FPS, n_segments, segment_means


def teacher_outputs(teacher: torch.nn.Module, frames: torch.Tensor, batch_frames: int,
                    device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Stage 2's teacher pass: (T, D) embeddings and (T, C) class probabilities of (T, H, W, 3) frames, in batches of
    `batch_frames`, under inference mode and the device's autocast (bf16 on CUDA), back on the host as float32."""
    embeddings, probabilities, _ = teacher_layer_outputs(teacher, frames, batch_frames, device, {})
    return embeddings, probabilities


def teacher_layer_outputs(teacher: torch.nn.Module, frames: torch.Tensor, batch_frames: int, device: torch.device,
                          layers: Mapping[str, torch.nn.Module]) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """`teacher_outputs` and, for each of `layers` (name → module of the teacher), its output averaged over its
    spatial axes, (T, C_layer) float32 (`pipeline.layers.pooled`)."""
    embeddings, probabilities = [], []
    layer_rows: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    with torch.inference_mode(), autocast(autocast_dtype("auto", device), device), captured(dict(layers)) as outputs:
        for start in range(0, len(frames), batch_frames):
            embedding, logits = teacher(frames[start : start + batch_frames].to(device, non_blocking=True))
            embeddings.append(embedding.float().cpu())
            probabilities.append(logits.float().softmax(dim=1).cpu())
            for name in layers:
                layer_rows[name].append(outputs[name].float().cpu())
    return (torch.cat(embeddings).numpy(), torch.cat(probabilities).numpy(),
            {name: torch.cat(rows).numpy() for name, rows in layer_rows.items()})


def utterance_targets(embeddings: np.ndarray, probabilities: np.ndarray,
                      layers: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Every cached quantity of one utterance from its per-frame teacher outputs (T, D) and (T, C), and of each
    teacher layer's per-frame rows (T, C_layer) the same per-frame, per-segment and peak-frame rows."""
    frame_prob = probabilities.max(axis=1)
    peak_frame = int(frame_prob.argmax())  # Eq. 4: the frame the teacher is most confident about
    targets = {
        "frames": embeddings,
        "frame_prob": frame_prob,
        "frame_pred": probabilities.argmax(axis=1).astype(np.int32),
        "segments": segment_means(embeddings),  # Eq. 6
        "peak": embeddings[peak_frame],
        "soft": probabilities.mean(axis=0),
    }
    for name, rows in (layers or {}).items():  # cache/layers.py: the embedding's rows, for an inner layer
        targets[layer_field(name, "frames")] = rows
        targets[layer_field(name, "segments")] = segment_means(rows)
        targets[layer_field(name, "peak")] = rows[peak_frame]
    return targets


def window_segments(n_video_frames: int, window_seconds: int) -> list[tuple[int, int]]:
    """Segment ranges [first, stop) of the training windows of an utterance, in start order."""
    window = window_seconds // SEGMENT_SECONDS
    whole = n_video_frames // SEGMENT_VIDEO_FRAMES
    if whole < window:  # shorter than one window: one window over what exists, a partial second included
        return [(0, n_segments(n_video_frames))]
    return [(start, start + window) for start in range(whole - window + 1)]


def window_frames(n_video_frames: int, start_segment: int, window_seconds: int) -> np.ndarray:
    """Frame indices (window_seconds · 25,) of the window starting at `start_segment`, in time order. An utterance
    shorter than the window repeats its frames, as a student's crop of it repeats its spectrogram rows."""
    first = start_segment * SEGMENT_VIDEO_FRAMES
    frames = np.arange(first, min(first + window_seconds * VIDEO_FPS, n_video_frames))
    return np.resize(frames, window_seconds * VIDEO_FPS)  # np.resize tiles cyclically


WINDOWS_PER_BATCH = 64  # windows of one utterance sent through the aggregator at once (bounds its memory)


def window_targets(teacher, frame_embeddings: np.ndarray, window_seconds: int, device) -> dict[str, np.ndarray]:
    """`aggregator` (W, D) and `window_soft` (W, C) of a sequential teacher over each training window's frame
    embeddings (Eq. 5); `frame_embeddings` is the utterance's (T, D), windows as `window_segments`."""
    n_frames = len(frame_embeddings)
    indices = np.stack([window_frames(n_frames, first, window_seconds)
                        for first, _ in window_segments(n_frames, window_seconds)])  # (W, L)
    embeddings = torch.from_numpy(frame_embeddings).to(device)
    aggregates = []
    for start in range(0, len(indices), WINDOWS_PER_BATCH):
        rows = torch.from_numpy(indices[start : start + WINDOWS_PER_BATCH]).to(device)
        aggregates.append(teacher.aggregate(embeddings[rows]))  # (w, L, D) → (w, D)
    aggregate = torch.cat(aggregates)
    return {"aggregator": aggregate.float().cpu().numpy(),
            "window_soft": teacher.head(aggregate).float().softmax(dim=1).cpu().numpy()}
