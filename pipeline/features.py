"""Spectrograms, the audio/video time grid, training crops and repeat-padding (no video decoding here)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torchaudio

VIDEO_FPS = 25
SPEC_FRAMES_PER_SECOND = 100
SPEC_FRAMES_PER_VIDEO_FRAME = SPEC_FRAMES_PER_SECOND // VIDEO_FPS  # 4
SEGMENT_SECONDS = 1
SEGMENT_VIDEO_FRAMES = SEGMENT_SECONDS * VIDEO_FPS  # 25
SEGMENT_SPEC_FRAMES = SEGMENT_SECONDS * SPEC_FRAMES_PER_SECOND  # 100
NORMALISATIONS = ("utterance", "frequency-bin")
PCM_SCALE = 32768.0  # stage 0's waveform store holds 16-bit PCM: sample / PCM_SCALE lies in [-1, 1)


def from_pcm16(samples: np.ndarray) -> np.ndarray:
    """Stage 0's stored 16-bit PCM samples as float32 in [-1, 1)."""
    return samples.astype(np.float32) / np.float32(PCM_SCALE)


@dataclass(frozen=True)
class SpectrogramParams:
    """Everything needed to recompute a spectrogram exactly; stored with every shard and student."""

    sample_rate: int = 16000
    n_fft: int = 512
    win_length: int = 400  # 25 ms at 16 kHz
    hop_length: int = 160  # 10 ms at 16 kHz
    window: str = "hamming"
    scaling: str = "log-magnitude"
    # "utterance": subtract the utterance's mean log-magnitude and divide by its std (keeps the spectral
    # envelope, i.e. the vocal tract); "frequency-bin": per-bin mean/std over time, as VGGVox does.
    normalisation: str = "utterance"

    @property
    def n_freq(self) -> int:
        return self.n_fft // 2 + 1

    def to_dict(self) -> dict:
        return asdict(self)


class LogSpectrogram(torch.nn.Module):
    """Log-magnitude STFT normalised over the utterance: (n,) → (F, n_freq)."""

    def __init__(self, params: SpectrogramParams = SpectrogramParams()):  # noqa: B008 — frozen, shared safely
        super().__init__()
        if params.sample_rate != 16000 or params.hop_length * SPEC_FRAMES_PER_SECOND != params.sample_rate:
            raise ValueError(f"spectrogram hop must give {SPEC_FRAMES_PER_SECOND} frames/s: {params}")
        if params.normalisation not in NORMALISATIONS:
            raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {params.normalisation!r}")
        self.per_bin = params.normalisation == "frequency-bin"
        self.stft = torchaudio.transforms.Spectrogram(
            n_fft=params.n_fft,
            win_length=params.win_length,
            hop_length=params.hop_length,
            window_fn=torch.hamming_window,
            power=1.0,
            center=True,
        )

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        n_frames = audio.shape[-1] // self.stft.hop_length  # drop the trailing centre-padded frame
        magnitude = self.stft(audio)[..., :n_frames]  # (n_freq, F)
        log_magnitude = torch.log(magnitude.clamp_min(1e-5))
        dims = (-1,) if self.per_bin else (-2, -1)
        mean = log_magnitude.mean(dim=dims, keepdim=True)
        n_values = log_magnitude.shape[-1] if self.per_bin else log_magnitude.numel()
        std = log_magnitude.std(dim=dims, keepdim=True) if n_values > 1 else torch.ones_like(mean)
        return ((log_magnitude - mean) / std.clamp_min(1e-5)).T.contiguous()  # (F, n_freq)


def n_segments(n_video_frames: int) -> int:
    """Number of 1 s segments of an utterance; a partial last segment counts (mean of what it has)."""
    return math.ceil(n_video_frames / SEGMENT_VIDEO_FRAMES)


def segment_means(frame_embeddings: np.ndarray) -> np.ndarray:
    """Eq. 6: mean of the frame embeddings inside each 1 s segment: (T, D) → (S, D)."""
    n_frames, dim = frame_embeddings.shape
    out = np.empty((n_segments(n_frames), dim), dtype=np.float32)
    for segment in range(out.shape[0]):
        rows = frame_embeddings[segment * SEGMENT_VIDEO_FRAMES : (segment + 1) * SEGMENT_VIDEO_FRAMES]
        out[segment] = rows.astype(np.float32).mean(axis=0)
    return out


@dataclass(frozen=True)
class Crop:
    """A training crop on the 1 s grid, in segments, with its spectrogram and video frame ranges."""

    start_segment: int
    n_segments: int

    @property
    def spec_range(self) -> tuple[int, int]:
        start = self.start_segment * SEGMENT_SPEC_FRAMES
        return start, start + self.n_segments * SEGMENT_SPEC_FRAMES

    @property
    def video_range(self) -> tuple[int, int]:
        start = self.start_segment * SEGMENT_VIDEO_FRAMES
        return start, start + self.n_segments * SEGMENT_VIDEO_FRAMES


def random_crop(n_video_frames: int, crop_seconds: int, generator: torch.Generator | None = None) -> Crop:
    """A crop starting on the 1 s grid and lying inside the utterance; start 0 when it is too short."""
    crop_segments = crop_seconds // SEGMENT_SECONDS
    whole_segments = n_video_frames // SEGMENT_VIDEO_FRAMES
    last_start = max(0, whole_segments - crop_segments)
    start = int(torch.randint(0, last_start + 1, (1,), generator=generator))
    return Crop(start, crop_segments)


def repeat_pad(rows: np.ndarray, length: int) -> np.ndarray:
    """Tile rows along axis 0 to exactly `length` rows (utterances shorter than the crop)."""
    if len(rows) == 0:
        raise ValueError("cannot repeat-pad an empty utterance")
    if len(rows) >= length:
        return rows[:length]
    repeats = math.ceil(length / len(rows))
    return np.concatenate([rows] * repeats, axis=0)[:length]
