"""Teacher and student checkpoints: what each file holds, written and read back in one place.

A checkpoint is self-contained: the model's spec, its weights and what it was trained on, so a later stage
(or `avl predict`) needs nothing else. The weights saved are the uncompiled model's, on the CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn

from pipeline import runs
from pipeline.errors import MissingInputError, UserError
from pipeline.features import SpectrogramParams
from pipeline.models.spec import ModelSpec
from pipeline.models.students import build_student

STUDENT_FILE = "student.pt"
# how a student was trained: recorded in its checkpoint so a report can name it
STUDENT_TRAINING = ("method", "level", "lambda", "teacher_fingerprint")


class CheckpointError(UserError, ValueError):
    """A file is not a usable checkpoint; the message names the file and what does not fit."""


class OutdatedCheckpointError(CheckpointError):
    """A checkpoint saved before avl's networks followed the paper (ARCHITECTURES); it must be trained again."""


# Recorded in every checkpoint. 2: the paper's students (Tables 1, 2) and the aggregator of Table 3, which a
# sequential teacher runs over frame embeddings (Eq. 5). A checkpoint without it was saved before.
ARCHITECTURES = 2
# what the student names meant before ARCHITECTURES 2, under the names those networks have now
RENAMED_STUDENTS = {"vgg": "vggvox", "resnet": "resnet-strided", "seresnet": "seresnet-strided"}


def read_file(path: Path, kind: str = "checkpoint") -> dict:
    """torch.load of weights only; a file torch cannot read that way (a raw pickle, damaged bytes, not a torch file)
    is a CheckpointError naming it."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise MissingInputError(f"{path}: no such {kind} file") from None
    except Exception as error:  # noqa: BLE001 — torch raises pickle, zip, EOF and runtime errors for such files
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise CheckpointError(f"{path}: not a readable {kind} ({type(error).__name__}: "
                              f"{lines[0] if lines else 'unreadable'}); avl reads tensors and plain values only, "
                              "never arbitrary pickled objects") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: not a {kind} (holds a {type(checkpoint).__name__}, not a dict)")
    return checkpoint


def _read(path: Path, required: tuple[str, ...], kind: str) -> dict:
    checkpoint = read_file(path, f"{kind} checkpoint")
    missing = [key for key in required if key not in checkpoint]
    if missing:
        raise CheckpointError(f"{path}: not a {kind} checkpoint (missing {missing})")
    return checkpoint


def _load_weights(model: nn.Module, checkpoint: dict, path: Path, kind: str) -> None:
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        # The checkpoint names its architecture; the layers behind that name are this code's.
        first = str(error).splitlines()[0:2]
        spec = model.spec
        message = (f"{path}: its weights do not fit this code's {spec.arch!r}{' (tiny)' if spec.tiny else ''} {kind}; "
                   f"it was saved by a version with another architecture definition ({' '.join(first).strip()})")
        if "architectures" in checkpoint:
            raise CheckpointError(message) from None
        older = (f"; that network is now registered as {RENAMED_STUDENTS[spec.arch]!r}"
                 if kind == "student" and spec.arch in RENAMED_STUDENTS else "")
        raise OutdatedCheckpointError(
            f"{message}. It records no architectures version, so it predates the paper's networks (Tables 1-3: "
            f"stride-1 students that keep the frequency axis, the aggregator's two FC+ReLU layers){older}; train "
            f"the {kind} again") from None


def _cpu_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.cpu() for name, tensor in model.state_dict().items()}


def _known_fields(cls, values: dict) -> dict:
    """The entries of `values` that are fields of dataclass `cls` (a newer checkpoint may record more)."""
    names = {field.name for field in fields(cls)}
    return {key: value for key, value in values.items() if key in names}


def save_teacher(path: Path, model: nn.Module, class_names: list[str], face_size: int,
                 window_seconds: int | None) -> Path:
    """Write teacher.pt: spec, class names, the face size it saw, a sequential teacher's training window."""
    return runs.save_checkpoint(
        {"spec": asdict(model.spec), "architectures": ARCHITECTURES, "class_names": class_names,
         "face_size": face_size, "window_seconds": window_seconds, "state_dict": _cpu_weights(model)},
        path,
    )


@dataclass
class LoadedTeacher:
    """A frozen teacher in eval mode on its device, with what it was trained on."""

    model: nn.Module
    class_names: list[str]
    face_size: int | None
    window_seconds: int | None  # a sequential teacher's training window


def load_teacher(path: Path | str, device: str | torch.device = "cpu") -> LoadedTeacher:
    """Load teacher.pt for inference: no gradients, eval mode, on `device`."""
    # imported here so that loading a student never imports teacher code (stage 3 and `avl predict` check it)
    from pipeline.models.teachers import build_teacher

    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: no teacher checkpoint; run `avl stage train-teacher` first")
    checkpoint = _read(path, ("spec", "class_names", "state_dict"), "teacher")
    spec = ModelSpec(**checkpoint["spec"])
    if spec.sequential and "architectures" not in checkpoint:
        # refused even where the weights might fit by name: the old aggregator read 1 s segment means, not frames
        raise OutdatedCheckpointError(
            f"{path}: a sequential teacher saved before avl followed Table 3 and Eq. 5: its aggregator has no "
            "FC+ReLU layers and pooled 1 s segment means, where the aggregator now runs over the window's frame "
            "embeddings; its weights cannot be used. Train the teacher again (`avl stage train-teacher "
            "--sequential`) and export its cache again")
    model = build_teacher(spec)
    _load_weights(model, checkpoint, path, "teacher")
    model.to(device).eval().requires_grad_(False)
    return LoadedTeacher(model, list(checkpoint["class_names"]), checkpoint.get("face_size"),
                         checkpoint.get("window_seconds"))


def save_student(path: Path, model: nn.Module, class_names: list[str], spectrogram: dict, training: dict) -> Path:
    """Write student.pt: spec, class names, spectrogram parameters, how it was trained (STUDENT_TRAINING)."""
    return runs.save_checkpoint(
        {"spec": asdict(model.spec), "architectures": ARCHITECTURES, "class_names": class_names,
         "spectrogram": spectrogram, **{key: training[key] for key in STUDENT_TRAINING},
         "state_dict": _cpu_weights(model)},
        path,
    )


@dataclass
class LoadedStudent:
    """A student ready to run on audio, with what it was trained on."""

    model: nn.Module
    class_names: list[str]
    spectrogram_params: SpectrogramParams
    device: torch.device
    info: dict  # method, λ, teacher fingerprint, checkpoint path: what a report should name

    @property
    def embed_dim(self) -> int:
        return self.model.spec.embed_dim


def load_student(path: Path | str, device: str | torch.device = "cpu") -> LoadedStudent:
    """Load a student checkpoint (the file, or the students/<name>/ directory holding student.pt)."""
    path = Path(path)
    if path.is_dir():
        path = path / STUDENT_FILE
    if not path.is_file():
        raise MissingInputError(f"{path}: no student checkpoint (train one with `avl stage train-student`)")
    checkpoint = _read(path, ("spec", "class_names", "spectrogram", "state_dict"), "student")
    spec = ModelSpec(**checkpoint["spec"])
    model = build_student(spec)
    _load_weights(model, checkpoint, path, "student")
    device = torch.device(device)
    model.to(device).eval()
    info = {key: checkpoint.get(key) for key in STUDENT_TRAINING}
    info.update(checkpoint=str(path), arch=spec.arch, tiny=spec.tiny)
    params = SpectrogramParams(**_known_fields(SpectrogramParams, checkpoint["spectrogram"]))
    return LoadedStudent(model, list(checkpoint["class_names"]), params, device, info)
