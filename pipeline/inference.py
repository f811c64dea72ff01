"""Audio-only inference with a saved student: load it, embed/classify any audio or video file, score trials.

Needs only the student checkpoint (`pipeline.checkpoints.load_student`: weights, spec, class names,
spectrogram parameters): no teacher, no video decoding, no run directory. Files are decoded by PyAV's
audio path (`decode_audio`), so an mp4's audio track works as well as a wav.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline import metrics as metric_fns
from pipeline.checkpoints import LoadedStudent
from pipeline.datasets.base import DatasetError
from pipeline.evaluate import embed_spectrogram
from pipeline.features import LogSpectrogram, SpectrogramParams
from pipeline.media import decode_audio


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


def run_student(student: LoadedStudent, spectrogram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(embedding (D,), logits (C,)) of one full-length utterance, as stage 3 evaluates it."""
    return embed_spectrogram(student.model, spectrogram, student.device)


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
