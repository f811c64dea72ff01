"""Audio-only inference with a saved student: load it, embed/classify any audio or video file, score trials.

Needs only the student checkpoint (weights, spec, class names, spectrogram parameters): no teacher,
no video decoding, no run directory. Files are decoded by PyAV's audio path (`decode_audio`), so an
mp4's audio track works as well as a wav.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline import metrics as metric_fns
from pipeline.datasets.base import DatasetError
from pipeline.features import (
    SEGMENT_SPEC_FRAMES,
    LogSpectrogram,
    SpectrogramParams,
    repeat_pad,
)
from pipeline.media import decode_audio
from pipeline.models.students import StudentSpec, build_student

STUDENT_FILE = "student.pt"


class CheckpointError(ValueError):
    """A file is not a usable student checkpoint; the message names the file and what does not fit."""


@dataclass
class LoadedStudent:
    """A student ready to run on audio, with what it was trained on."""

    model: torch.nn.Module
    class_names: list[str]
    spectrogram_params: SpectrogramParams
    device: torch.device
    info: dict  # method, λ, teacher fingerprint, checkpoint path: what a report should name

    @property
    def embed_dim(self) -> int:
        return self.model.spec.embed_dim


def _known_fields(cls, values: dict) -> dict:
    """The entries of `values` that are fields of dataclass `cls` (a newer checkpoint may record more)."""
    names = {field.name for field in fields(cls)}
    return {key: value for key, value in values.items() if key in names}


def load_student(path: Path | str, device: str | torch.device = "cpu") -> LoadedStudent:
    """Load a student checkpoint (the file, or the students/<name>/ directory holding student.pt)."""
    path = Path(path)
    if path.is_dir():
        path = path / STUDENT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no student checkpoint (train one with `avl stage train-student`)")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    missing = [key for key in ("spec", "class_names", "spectrogram", "state_dict") if key not in checkpoint]
    if missing:
        raise CheckpointError(f"{path}: not a student checkpoint (missing {missing})")
    spec = StudentSpec(**checkpoint["spec"])
    model = build_student(spec)
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        # The checkpoint names its architecture; the layers behind that name are this code's.
        first = str(error).splitlines()[0:2]
        raise CheckpointError(
            f"{path}: its weights do not fit this code's {spec.arch!r}{' (tiny)' if spec.tiny else ''} student; "
            f"it was saved by a version with another architecture definition ({' '.join(first).strip()})") from None
    device = torch.device(device)
    model.to(device).eval()
    info = {key: checkpoint.get(key) for key in ("method", "level", "lambda", "teacher_fingerprint")}
    info.update(checkpoint=str(path), arch=spec.arch, tiny=spec.tiny)
    params = SpectrogramParams(**_known_fields(SpectrogramParams, checkpoint["spectrogram"]))
    return LoadedStudent(model, list(checkpoint["class_names"]), params, device, info)


class AudioFrontEnd:
    """File → the spectrogram stage 0 would have stored for it: (F, n_freq) float32."""

    def __init__(self, params: SpectrogramParams):
        self.params = params
        self.spectrogram = LogSpectrogram(params)

    def __call__(self, path: Path | str) -> np.ndarray:
        return self.from_audio(decode_audio(path, sample_rate=self.params.sample_rate))

    def from_audio(self, audio: np.ndarray) -> np.ndarray:
        """(n,) float32 samples at the student's sample rate → (F, n_freq)."""
        with torch.inference_mode():
            spectrogram = self.spectrogram(torch.from_numpy(audio))
        # Stage 0 stores float16 and stage 3 evaluates on that; rounding the same way gives the same numbers.
        return spectrogram.numpy().astype(np.float16).astype(np.float32)


@torch.inference_mode()
def run_student(student: LoadedStudent, spectrogram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(embedding (D,), logits (C,)) of one full-length utterance; under 1 s it is repeat-padded to 1 s."""
    spectrogram = repeat_pad(spectrogram, SEGMENT_SPEC_FRAMES)  # as stage 3 evaluates
    embedding, logits = student.model(torch.from_numpy(np.ascontiguousarray(spectrogram))[None].to(student.device))
    return embedding[0].float().cpu().numpy(), logits[0].float().cpu().numpy()


def run_files(student: LoadedStudent, paths: Iterable[Path | str]) -> Iterator[tuple[Path, np.ndarray, np.ndarray]]:
    """(path, embedding, logits) for each file, full length, in order."""
    front_end = AudioFrontEnd(student.spectrogram_params)
    for path in paths:
        embedding, logits = run_student(student, front_end(path))
        yield Path(path), embedding, logits


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials / exponentials.sum(axis=-1, keepdims=True)


def predictions(student: LoadedStudent, logits: np.ndarray, top_k: int) -> list[list[tuple[str, float]]]:
    """The top-k (class name, probability) pairs of each row of (N, C) logits, most probable first."""
    probabilities = softmax(np.atleast_2d(logits))
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
    return [[(student.class_names[c], float(row[c])) for c in columns] for row, columns in zip(probabilities, order)]


@dataclass(frozen=True)
class FileTrial:
    """One line of a veri_test.txt-format list: label (1 = same speaker), two paths relative to a root."""

    label: int
    enrol: str
    test: str


def read_file_trials(path: Path) -> list[FileTrial]:
    """Parse `<label> <enrol path> <test path>` lines; a bad line is a DatasetError naming file:line."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as error:
        raise DatasetError(f"{path}: cannot read: {error}") from error
    trials = []
    for number, line in enumerate(lines, 1):
        columns = line.split()
        if not columns:
            continue
        if len(columns) != 3 or columns[0] not in ("0", "1"):
            raise DatasetError(f"{path}:{number}: expected '<0|1> <enrol path> <test path>', got {line.strip()!r}")
        trials.append(FileTrial(int(columns[0]), columns[1], columns[2]))
    if not trials:
        raise DatasetError(f"{path}: no trials")
    return trials


def score_trials(student: LoadedStudent, trials: list[FileTrial], root: Path) -> np.ndarray:
    """Cosine score of every trial; each distinct file is embedded once, at full length."""
    names = sorted({name for trial in trials for name in (trial.enrol, trial.test)})
    outputs = tqdm(run_files(student, (root / name for name in names)), total=len(names), desc="embed", unit="file",
                   leave=False)
    embeddings = {name: embedding for name, (_, embedding, _) in zip(names, outputs)}
    return metric_fns.cosine_scores(embeddings, [(trial.enrol, trial.test) for trial in trials])
