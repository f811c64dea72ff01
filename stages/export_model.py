"""`avl export-model`: a saved student as a TorchScript or ONNX model (waveform → embedding, logits) plus a JSON
description of its input, outputs, classes and spectrogram, checked against the student before it is kept."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline import checkpoints, inference, runs
from pipeline import config as config_io
from pipeline.errors import RunExistsError
from pipeline.export import (
    FORMATS,
    MIN_SECONDS,
    ONNX_OPSET,
    ExportError,
    export_student,
    load_exported,
    probe_waveform,
)

# parity is checked on two lengths that are not the traced one (2.2 s), one and three 1 s segments for a sequential
# student, so a length baked into the graph shows
CHECK_SECONDS = (1.37, 3.11)
TOLERANCE = 1e-3  # × max(1, the largest output magnitude): float rounding, never a different model


@dataclass(frozen=True)
class ExportModelConfig:
    """`avl export-model` settings."""

    model: Path = field(metadata={
        "help": "A student checkpoint (student.pt) or the students/<name>/ folder holding it.", "argument": True})
    format: str = field(default="torchscript", metadata={
        "help": "torchscript (torch.jit.load) or onnx (onnxruntime; pip install 'avl[export]').", "choices": FORMATS})
    out: Path | None = field(default=None, metadata={
        "help": "Model file (default: student.pt's folder / student.<format suffix>); its description goes to "
                "<out>.json."})
    overwrite: bool = field(default=False, metadata={"help": "Replace the output if it exists."})

    def validate(self) -> None:
        if self.format not in FORMATS:
            raise config_io.ConfigError(f"export-model: format must be one of {sorted(FORMATS)}, got {self.format!r}")


def description_path(model_path: Path) -> Path:
    """The JSON written beside an exported model."""
    return model_path.with_name(model_path.name + ".json")


def parity(student: checkpoints.LoadedStudent, exported: Path, waveforms: list[np.ndarray]) -> tuple[float, float]:
    """(largest absolute difference between the exported model's outputs and `avl embed`'s, embedding and logits;
    the largest absolute output of the student)."""
    run_exported = load_exported(exported)
    front_end = inference.AudioFrontEnd(student.spectrogram_params)
    worst, scale = 0.0, 0.0
    for waveform in waveforms:
        expected = inference.run_student(student, front_end.from_audio(waveform))
        for want, got in zip(expected, run_exported(waveform)):
            worst = max(worst, float(np.abs(np.asarray(got) - want).max()))
            scale = max(scale, float(np.abs(want).max()))
    return worst, scale


def run(cfg: ExportModelConfig) -> Path:
    """Export, check parity on two lengths, then write the description; a model that disagrees is removed."""
    student = checkpoints.load_student(cfg.model, "cpu")
    source = Path(student.info["checkpoint"])
    out = cfg.out or source.with_name(f"student{FORMATS[cfg.format]}")
    if out.resolve() == source.resolve():
        raise RunExistsError(f"{out}: is the student checkpoint itself; pass another --out")
    for path in (out, description_path(out)):
        if path.exists() and not cfg.overwrite:
            raise RunExistsError(f"{path}: already exists; pass --overwrite to replace it")
    export_student(student, cfg.format, out)
    rate = student.spectrogram_params.sample_rate
    checks = [probe_waveform(round(seconds * rate), seed=index + 1) for index, seconds in enumerate(CHECK_SECONDS)]
    difference, scale = parity(student, out, checks)
    allowed = TOLERANCE * max(1.0, scale)
    if not difference <= allowed:
        out.unlink()
        raise ExportError(f"{out}: the exported model differs from the student by up to {difference:.2e} "
                          f"(allowed {allowed:.1e}); it was not kept")
    spec = student.model.spec
    runs.write_json(description_path(out), {
        "format": cfg.format,
        "file": out.name,
        "input": {"name": "waveform", "shape": ["samples"], "dtype": "float32", "sample_rate": rate,
                  "channels": 1, "range": [-1.0, 1.0], "min_samples": round(MIN_SECONDS * rate),
                  "note": "one utterance, full length; mono at this rate (resample first); at least 1 s"},
        "outputs": {"embedding": {"shape": [spec.embed_dim], "dtype": "float32"},
                    "logits": {"shape": [spec.num_classes], "dtype": "float32",
                               "note": "class scores before softmax, in class_names order"}},
        "class_names": student.class_names,
        "spectrogram": {**student.spectrogram_params.to_dict(), "inside_model": True, "centre": True,
                        "pad_mode": "reflect", "log_floor": 1e-5, "rounded_to": "float16"},
        "student": {"arch": spec.arch, "tiny": spec.tiny, "sequential": spec.sequential, **student.info},
        "checkpoint_sha256": runs.file_sha256(source),
        "parity": {"max_abs_difference": difference, "seconds": list(CHECK_SECONDS),
                   "against": "avl embed / avl predict on the same waveform"},
        "torch": torch.__version__,
        **({"onnx_opset": ONNX_OPSET} if cfg.format == "onnx" else {}),
    })
    tqdm.write(f"export-model: {spec.arch}{' sequential' if spec.sequential else ''} student → {out} "
               f"({cfg.format}; max difference from the student {difference:.1e}) and {description_path(out).name}")
    return out
