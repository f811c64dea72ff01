"""`avl export-model`: every registered student, non-sequential and sequential, as TorchScript and ONNX, gives what
`avl embed` gives on real audio of two lengths through the same exported model."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import checkpoints
from pipeline import config as config_io
from pipeline.errors import RunExistsError
from pipeline.export import FORMATS, load_exported
from pipeline.features import SpectrogramParams
from pipeline.media import decode_audio
from pipeline.models.spec import ModelSpec
from pipeline.models.students import STUDENTS, build_student
from stages import export_model, infer

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real test data not found at {SHARED_DATA}")
REAL_WAV = SHARED_DATA / "voxceleb1" / "wav" / "id10001" / "1zcIwhmdeo4" / "00001.wav"  # 8.1 s of real speech
# two lengths: one and three 1 s segments for a sequential student, neither the two the export traced
CUTS = ((0.5, 1.8), (2.0, 5.1))
CLASSES = ["anger", "joy", "calm"]


def _save_student(directory: Path, arch: str, sequential: bool) -> Path:
    """An untrained tiny student.pt (a fixed seed): export reproduces weights, whatever they learned."""
    torch.manual_seed(0)
    model = build_student(ModelSpec(arch, tiny=True, num_classes=len(CLASSES), sequential=sequential))
    directory.mkdir(parents=True)
    return checkpoints.save_student(directory / checkpoints.STUDENT_FILE, model, CLASSES, SpectrogramParams().to_dict(),
                                    {"method": "proposed", "level": "encoder" if sequential else "non-sequential",
                                     "lambda": 0.0, "teacher_fingerprint": None})


@pytest.fixture(scope="module")
def real_clips(tmp_path_factory) -> list[Path]:
    """Two cuts of a real VoxCeleb1 recording as 16-bit wav files (exactly the samples decode_audio gives back)."""
    audio = decode_audio(REAL_WAV, sample_rate=16000)
    folder = tmp_path_factory.mktemp("real-clips")
    paths = []
    for start, end in CUTS:
        path = folder / f"cut-{start:g}-{end:g}.wav"
        with wave.open(str(path), "wb") as handle:
            handle.setnchannels(1)
            handle.setsampwidth(2)
            handle.setframerate(16000)
            samples = np.round(audio[round(start * 16000) : round(end * 16000)] * 32768)
            handle.writeframes(np.clip(samples, -32768, 32767).astype("<i2").tobytes())
        paths.append(path)
    return paths


@needs_shared
@pytest.mark.slow
@pytest.mark.parametrize("sequential", [False, True], ids=["non-sequential", "sequential"])
@pytest.mark.parametrize("arch", sorted(STUDENTS))
def test_exported_student_matches_avl_embed_on_real_audio(tmp_path: Path, real_clips: list[Path], arch: str,
                                                           sequential: bool) -> None:
    student_dir = tmp_path / "students" / f"{arch}-{sequential}"
    _save_student(student_dir, arch, sequential)
    embeddings_file = infer.embed(config_io.build(infer.EmbedConfig, {
        "model": student_dir, "files": tuple(real_clips), "out": tmp_path / "embeddings.npy"}))
    expected_embeddings = np.load(embeddings_file)
    head = checkpoints.load_student(student_dir).model.head  # the logits are the head of the embedding
    with torch.no_grad():
        expected_logits = head(torch.from_numpy(expected_embeddings)).numpy()
    waveforms = [decode_audio(path, sample_rate=16000) for path in real_clips]
    assert len({len(waveform) for waveform in waveforms}) == 2

    for fmt in FORMATS:
        out = export_model.run(config_io.build(export_model.ExportModelConfig, {"model": student_dir, "format": fmt}))
        assert out == student_dir / f"student{FORMATS[fmt]}"
        description = json.loads(export_model.description_path(out).read_text())
        assert description["class_names"] == CLASSES and description["student"]["sequential"] == sequential
        assert description["input"]["sample_rate"] == 16000 and description["parity"]["max_abs_difference"] < 1e-3
        run_exported = load_exported(out)  # one loaded model, two input lengths
        worst = 0.0
        for waveform, embedding, logits in zip(waveforms, expected_embeddings, expected_logits):
            got_embedding, got_logits = run_exported(waveform)
            assert got_embedding.shape == embedding.shape and got_logits.shape == logits.shape
            np.testing.assert_allclose(got_embedding, embedding, rtol=1e-3, atol=1e-4)
            np.testing.assert_allclose(got_logits, logits, rtol=1e-3, atol=1e-4)
            worst = max(worst, float(np.abs(got_embedding - embedding).max()), float(np.abs(got_logits - logits).max()))
        print(f"export parity {arch} {'sequential' if sequential else 'non-sequential'} {fmt}: max |Δ| {worst:.2e}")


def test_export_refuses_to_overwrite_and_unknown_formats(tmp_path: Path) -> None:
    student_dir = tmp_path / "student"
    _save_student(student_dir, sorted(STUDENTS)[0], sequential=False)
    first = export_model.run(config_io.build(export_model.ExportModelConfig, {"model": student_dir}))
    assert first.name == "student.torchscript.pt" and (student_dir / checkpoints.STUDENT_FILE).is_file()
    with pytest.raises(RunExistsError, match="--overwrite"):
        export_model.run(config_io.build(export_model.ExportModelConfig, {"model": student_dir}))
    with pytest.raises(config_io.ConfigError, match="format"):
        config_io.build(export_model.ExportModelConfig, {"model": student_dir, "format": "tflite"})
    with pytest.raises(RunExistsError, match="checkpoint itself"):
        export_model.run(config_io.build(export_model.ExportModelConfig, {
            "model": student_dir, "out": student_dir / checkpoints.STUDENT_FILE, "overwrite": True}))
