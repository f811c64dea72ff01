"""Video teachers: per-frame face encoders giving an embedding and class logits (stage 1 and 2 only).

Non-sequential: frame → trunk → pooled → embedding (Eq. 2) → FC head. Sequential: the same frame encoder, the
aggregator of Table 3 (2×BiLSTM, two FC+ReLU, attention) over the frame embeddings of a window (Eq. 5), FC head.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.aggregator import Aggregator
from pipeline.models.audio_teachers import INPUTS as AUDIO_TEACHERS
from pipeline.models.audio_teachers import AudioTeacher, build_audio_teacher, from_torchaudio_names
from pipeline.models.resnet import TrunkSpec
from pipeline.models.spec import ModelSpec, Trunks, trunk_for
from pipeline.models.vgg import Vgg16Spec

# Face crops arrive as uint8 RGB; the teacher normalises them itself so every caller feeds raw frames.
PIXEL_MEAN = (0.5, 0.5, 0.5)
PIXEL_STD = (0.25, 0.25, 0.25)


class FrameTeacher(nn.Module):
    """Face crop → trunk → pooled → embedding (Eq. 2) → FC head; (B, H, W, 3) uint8 → (B, D), (B, C).

    With `spec.sequential`, the head reads the aggregator's output over a window's frame embeddings instead.
    """

    def __init__(self, spec: ModelSpec, trunk):
        super().__init__()
        self.spec = spec
        self.trunk = trunk.build()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embedding = nn.Linear(trunk.out_channels, spec.embed_dim)
        self.aggregator = Aggregator(spec.embed_dim) if spec.sequential else None
        self.head = nn.Linear(spec.embed_dim, spec.num_classes)
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, H, W)
        x = (x - self.pixel_mean) / self.pixel_std
        pooled = self.pool(self.trunk(x)).flatten(1)  # (B, C_trunk)
        return self.embedding(pooled)  # (B, D)

    def aggregate(self, frame_embeddings: torch.Tensor) -> torch.Tensor:
        """Sequential teachers only: (B, T, D) frame embeddings of windows → (B, D) aggregator embeddings (Eq. 5)."""
        return self.aggregator(frame_embeddings)

    def frame_logits(self, embedding: torch.Tensor) -> torch.Tensor:
        """Class logits from single frames; a sequential teacher reads each frame as a one-step sequence."""
        if self.aggregator is None:
            return self.head(embedding)
        return self.head(self.aggregator(embedding[:, None]))

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per frame: (B, H, W, 3) → embedding (B, D), logits (B, C)."""
        embedding = self.embed(frames)
        return embedding, self.frame_logits(embedding)

    def forward_window(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequential: (B, T, H, W, 3), the T frames of each window in time order → aggregator embedding (B, D),
        logits (B, C)."""
        batch, n_frames = frames.shape[:2]
        embeddings = self.embed(frames.flatten(0, 1)).view(batch, n_frames, -1)  # (B, T, D)
        aggregate = self.aggregate(embeddings)
        return aggregate, self.head(aggregate)


TEACHERS = {
    "vgg16": Trunks(Vgg16Spec(), Vgg16Spec((16, "M", 32, "M", 64, "M", 128, "M"))),
    "resnet34": Trunks(TrunkSpec("basic", (3, 4, 6, 3), (64, 128, 256, 512)),
                       TrunkSpec("basic", (1, 1, 1, 1), (16, 32, 64, 128))),
    # ResNet34 with torchvision.ops.SqueezeExcitation in every block
    "seresnet34": Trunks(TrunkSpec("se-basic", (3, 4, 6, 3), (64, 128, 256, 512)),
                         TrunkSpec("se-basic", (1, 1, 1, 1), (16, 32, 64, 128))),
}


# every teacher architecture: the video teachers above, and the audio teachers of pipeline/models/audio_teachers.py
TEACHER_ARCHS = (*TEACHERS, *AUDIO_TEACHERS)


def is_audio_teacher(arch: str) -> bool:
    return arch in AUDIO_TEACHERS


def build_teacher(spec: ModelSpec) -> FrameTeacher | AudioTeacher:
    """A teacher from its spec; unknown architectures name the registered ones."""
    if is_audio_teacher(spec.arch):
        return build_audio_teacher(spec)
    return FrameTeacher(spec, trunk_for(TEACHERS, spec, "teacher"))


def _from_torchvision_names(state: dict) -> dict:
    """Rename torchvision `resnet*` (conv1, bn1, layerN) and `vgg*_bn` (features) keys to this trunk's names."""
    renamed = {}
    for key, value in state.items():
        if key.startswith("features."):
            key = "trunk." + key.removeprefix("features.")
        elif key.startswith(("conv1.", "bn1.")):
            key = ("trunk.stem.0." if key.startswith("conv1.") else "trunk.stem.1.") + key.split(".", 1)[1]
        elif key.startswith("layer") and key[5].isdigit():
            key = f"trunk.stages.{int(key[5]) - 1}." + key.split(".", 1)[1]
        renamed[key] = value
    return renamed


def load_initial_weights(model: FrameTeacher | AudioTeacher, state: dict) -> dict[str, list[str]]:
    """Initialise from a local weights file (an avl teacher, a torchvision checkpoint, or for an audio teacher a
    torchaudio wav2vec2/HuBERT state dict); returns what was loaded, missing, or skipped (unknown names or other
    shapes, e.g. a head for other classes)."""
    state = state.get("state_dict", state)
    state = from_torchaudio_names(state) if isinstance(model, AudioTeacher) else _from_torchvision_names(state)
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(usable, strict=False)
    return {"loaded": sorted(usable), "missing": sorted(set(own) - set(usable)),
            "skipped": sorted(set(state) - set(usable))}
