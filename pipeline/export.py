"""A trained student as a standalone model: 16 kHz mono waveform → (embedding, class logits), as TorchScript or ONNX.

The exported model takes the waveform, not the spectrogram, so a deployment needs no feature code of its own: the
spectrogram stage 0 stores (log-magnitude STFT, normalised per utterance, rounded to float16 as stored) is inside
it. Its parameters still go beside the model in JSON, to document it. The STFT is written as a strided convolution
with a windowed DFT basis because neither exporter takes torch.stft's complex output with an LSTM behind it: the
TorchScript-based ONNX exporter refuses complex STFT, and torch.export's cannot lower a BiLSTM over a sequence of
symbolic length (the sequential students' segments). Both formats are traced from one module; the traced graph
keeps the input length symbolic, and `export_student` checks that by running two different lengths.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.checkpoints import LoadedStudent
from pipeline.errors import UserError
from pipeline.features import NORMALISATIONS, SEGMENT_SPEC_FRAMES, SpectrogramParams

FORMATS = {"torchscript": ".torchscript.pt", "onnx": ".onnx"}  # the file suffix of each
ONNX_OPSET = 17
# The shortest input: `avl embed` repeat-pads a spectrogram under 1 s, which a traced graph cannot branch into.
MIN_SECONDS = SEGMENT_SPEC_FRAMES / 100


class ExportError(UserError, RuntimeError):
    """A student cannot be exported, or the exported model does not reproduce it."""


class DftLogSpectrogram(nn.Module):
    """`features.LogSpectrogram` without complex numbers: (n,) → (n // hop, n_freq), the same numbers to float
    rounding (torchaudio's centred, reflect-padded, one-sided STFT magnitude; log; per-utterance normalisation)."""

    def __init__(self, params: SpectrogramParams):
        super().__init__()
        if params.window != "hamming" or params.scaling != "log-magnitude" or params.normalisation not in NORMALISATIONS:
            raise ExportError(f"cannot export spectrogram parameters {params.to_dict()}")
        self.n_fft, self.hop = params.n_fft, params.hop_length
        self.per_bin = params.normalisation == "frequency-bin"
        window = torch.zeros(params.n_fft, dtype=torch.float64)
        left = (params.n_fft - params.win_length) // 2  # torch.stft centres a shorter window in n_fft
        window[left : left + params.win_length] = torch.hamming_window(params.win_length, dtype=torch.float64)
        phase = 2 * math.pi * torch.outer(torch.arange(params.n_freq, dtype=torch.float64),
                                          torch.arange(params.n_fft, dtype=torch.float64)) / params.n_fft
        basis = torch.cat([torch.cos(phase), -torch.sin(phase)]) * window  # (2·n_freq, n_fft): real, imaginary
        self.register_buffer("basis", basis.float()[:, None, :])

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        n_frames = waveform.shape[-1] // self.hop  # drop the trailing centre-padded frame, as LogSpectrogram does
        padded = F.pad(waveform[None, None], (self.n_fft // 2, self.n_fft // 2), mode="reflect")
        parts = F.conv1d(padded, self.basis, stride=self.hop)[0, :, :n_frames]  # (2·n_freq, F)
        real, imaginary = parts.chunk(2)
        log_magnitude = torch.log(torch.sqrt(real * real + imaginary * imaginary).clamp_min(1e-5))
        if self.per_bin:
            mean, std = log_magnitude.mean(dim=-1, keepdim=True), log_magnitude.std(dim=-1, keepdim=True)
        else:
            mean, std = log_magnitude.mean(), log_magnitude.std()
        return ((log_magnitude - mean) / std.clamp_min(1e-5)).T  # (F, n_freq)


class WaveformStudent(nn.Module):
    """(n,) float32 16 kHz mono waveform, n ≥ 16000 → (embedding (D,), logits (C,)): what `avl embed` and
    `avl predict` compute for a file, spectrogram included."""

    def __init__(self, student: nn.Module, params: SpectrogramParams):
        super().__init__()
        self.spectrogram = DftLogSpectrogram(params)
        self.student = student

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # stage 0 stores float16 and `avl embed` rounds the same way, so the exported model does too
        spectrogram = self.spectrogram(waveform).half().float()
        embedding, logits = self.student(spectrogram[None])  # (1, D), (1, C)
        return embedding[0], logits[0]


def _quiet_trace(function, *args, **kwargs):
    """Run a tracer without its warnings: tracing is this module's design (see its docstring), not a mistake."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def export_student(student: LoadedStudent, fmt: str, out: Path, example_seconds: float = 2.2) -> Path:
    """Write the student as `fmt` (FORMATS) to `out`; traced on `example_seconds` of noise.

    The example must hold at least two 1 s segments: traced on one, a sequential student's `max(1, segments)`
    returns the constant 1 and the segment count is baked into the graph."""
    model = WaveformStudent(student.model.cpu(), student.spectrogram_params).eval()
    rate = student.spectrogram_params.sample_rate
    example = torch.from_numpy(probe_waveform(round(example_seconds * rate), seed=0))
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        if fmt == "torchscript":
            traced = _quiet_trace(torch.jit.trace, model, example, check_trace=False)
            traced.save(str(out))
        elif fmt == "onnx":
            _quiet_trace(torch.onnx.export, model, (example,), str(out), input_names=["waveform"],
                         output_names=["embedding", "logits"], dynamic_axes={"waveform": {0: "samples"}},
                         opset_version=ONNX_OPSET, dynamo=False)
        else:
            raise ExportError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")
    return out


def load_exported(path: Path):
    """A callable (n,) float32 numpy waveform → (embedding, logits) numpy arrays, from either format."""
    path = Path(path)
    if path.suffix == FORMATS["onnx"]:
        try:
            import onnxruntime
        except ImportError as error:
            raise ExportError("running an ONNX model needs onnxruntime: pip install 'avl[export]'") from error
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda waveform: tuple(session.run(None, {"waveform": np.asarray(waveform, np.float32)}))
    module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(waveform: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            embedding, logits = module(torch.from_numpy(np.asarray(waveform, np.float32)))
        return embedding.numpy(), logits.numpy()

    return run


def probe_waveform(n_samples: int, seed: int) -> np.ndarray:
    """Speech-level noise with a slow envelope: an input that exercises every layer, for tracing and checking."""
    rng = np.random.default_rng(seed)
    envelope = 0.5 + 0.5 * np.sin(np.linspace(0, 6 * np.pi, n_samples))
    return (0.1 * envelope * rng.standard_normal(n_samples)).astype(np.float32)
