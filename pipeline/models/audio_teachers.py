"""Audio teachers: a second modality to distil from, run on the clean audio stage 0 stored (stages 1 and 2 only).

An audio teacher maps a whole utterance to a sequence at its own rate, then onto the video teacher's 25 fps grid by
adaptive average pooling (each grid frame averages the steps that cover it, or repeats the one it falls in), so
stage 2 caches its per-frame, per-segment and peak-frame rows exactly as a video teacher's:
- `audio-resnet`: the paper's ResNet student trunk on the log-spectrogram (100 frames/s → 1/32 of that after its
  five 2×2 pools), the C·F' features of each step → FC → embedding, per step;
- `wav2vec2`, `hubert`: torchaudio's wav2vec 2.0 / HuBERT base architectures on the 16 kHz waveform (50 steps/s),
  the last transformer layer → FC → embedding. Their weights come from a local file (`train-teacher
  --init-weights`); nothing is downloaded. The two share one architecture in torchaudio (they differ in how they
  were pre-trained), and their tiny variants are the same small configuration.
Each grid frame's logits come from the head on its embedding; CE is taken on every frame of a training crop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from pipeline.features import SPEC_FRAMES_PER_VIDEO_FRAME
from pipeline.models.spec import ModelSpec

SAMPLES_PER_VIDEO_FRAME = 640  # 40 ms at 16 kHz
INPUTS = {"audio-resnet": "spectrogram", "wav2vec2": "waveform", "hubert": "waveform"}  # what each one reads
# wav2vec2_model arguments of the tiny variant: 7 strided convolutions (320 samples per step) of 32 channels, two
# transformer layers of width 64: ~0.1 M parameters, trains on a CPU.
TINY_WAV2VEC2 = dict(
    extractor_mode="group_norm", extractor_conv_layer_config=[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2,
    extractor_conv_bias=False, encoder_embed_dim=64, encoder_projection_dropout=0.0, encoder_pos_conv_kernel=16,
    encoder_pos_conv_groups=4, encoder_num_layers=2, encoder_num_heads=4, encoder_attention_dropout=0.0,
    encoder_ff_interm_features=128, encoder_ff_interm_dropout=0.0, encoder_dropout=0.0,
    encoder_layer_norm_first=False, encoder_layer_drop=0.0, aux_num_out=None)


def to_grid(sequence: torch.Tensor, n_frames: int) -> torch.Tensor:
    """(B, T', C) steps at any rate → (B, n_frames, C) on the 25 fps grid (adaptive average pooling over time)."""
    return F.adaptive_avg_pool1d(sequence.transpose(1, 2).float(), n_frames).transpose(1, 2)


class AudioTeacher(nn.Module):
    """Clean audio → per-grid-frame embeddings (B, T, D) and logits (B, T, C). `input_kind` says what it reads:
    a (B, F, n_freq) spectrogram (T = F / 4) or a (B, n) waveform (T = n / 640)."""

    aggregator = None  # never sequential: a frame's embedding already sees the utterance around it

    def __init__(self, spec: ModelSpec, backbone: nn.Module, width: int, input_kind: str):
        super().__init__()
        self.spec, self.backbone, self.input_kind = spec, backbone, input_kind
        self.embedding = nn.Linear(width, spec.embed_dim)
        self.head = nn.Linear(spec.embed_dim, spec.num_classes)

    def n_frames(self, inputs: torch.Tensor) -> int:
        per_frame = SPEC_FRAMES_PER_VIDEO_FRAME if self.input_kind == "spectrogram" else SAMPLES_PER_VIDEO_FRAME
        return max(1, inputs.shape[1] // per_frame)

    def sequence(self, inputs: torch.Tensor) -> torch.Tensor:
        """The backbone's steps at its own rate, (B, T', width)."""
        if self.input_kind == "spectrogram":
            features = self.backbone(inputs.transpose(1, 2).unsqueeze(1))  # (B, C, F', T')
            return features.permute(0, 3, 1, 2).flatten(2)  # (B, T', C·F'): every frequency row, as the students
        return self.backbone(inputs)[0]  # (B, T', width): the last transformer layer

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.embedding(to_grid(self.sequence(inputs), self.n_frames(inputs)))  # (B, T, D)
        return embedding, self.head(embedding)

    def layer_rows(self, name: str, output, n_frames: int) -> torch.Tensor:
        """A hooked inner layer's output → (B, n_frames, C) on the grid: a trunk's (B, C, F', T') averaged over
        frequency; wav2vec2's feature extractor (B, C, T'); its transformer layers (B, T', C) (or their tuples)."""
        if isinstance(output, tuple):
            output = output[0]
        if not isinstance(output, torch.Tensor):
            raise ValueError(f"layer {name!r} returns {type(output).__name__}, not a tensor; name another layer")
        if output.ndim == 4:
            output = output.mean(dim=2)  # (B, C, T')
        if output.ndim != 3:
            raise ValueError(f"layer {name!r} gives shape {tuple(output.shape)}, not a sequence over time")
        time_major = name.startswith("backbone.encoder")  # the transformer's (B, T', C); everything else (B, C, T')
        return to_grid(output if time_major else output.transpose(1, 2), n_frames)


def _spectrogram_backbone(spec: ModelSpec) -> tuple[nn.Module, int]:
    from pipeline.models.students import N_FREQ, STUDENTS  # the students' registry: the same trunks

    trunk = STUDENTS["resnet"].tiny if spec.tiny else STUDENTS["resnet"].full
    return trunk.build(), trunk.out_channels * trunk.out_frequency(N_FREQ)


def _wav2vec2_backbone(spec: ModelSpec) -> tuple[nn.Module, int]:
    if spec.tiny:
        return torchaudio.models.wav2vec2_model(**TINY_WAV2VEC2), TINY_WAV2VEC2["encoder_embed_dim"]
    build = torchaudio.models.hubert_base if spec.arch == "hubert" else torchaudio.models.wav2vec2_base
    return build(), 768


BACKBONES = {"audio-resnet": _spectrogram_backbone, "wav2vec2": _wav2vec2_backbone, "hubert": _wav2vec2_backbone}


def build_audio_teacher(spec: ModelSpec) -> AudioTeacher:
    if spec.sequential:
        raise ValueError(f"{spec.arch} is an audio teacher: it has no sequential (aggregator) variant")
    backbone, width = BACKBONES[spec.arch](spec)
    return AudioTeacher(spec, backbone, width, INPUTS[spec.arch])


def from_torchaudio_names(state: dict) -> dict:
    """A torchaudio wav2vec2/HuBERT state dict (`feature_extractor.*`, `encoder.*`, as `bundle.get_model()` saves
    it) → this teacher's names (`backbone.*`); an avl audio teacher's own file passes through."""
    return {key if key.startswith(("backbone.", "embedding.", "head.")) else f"backbone.{key}": value
            for key, value in state.items()}
