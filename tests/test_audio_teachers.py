"""Audio teachers on clean audio, stage 0's waveform store, and students trained on degraded audio (issue 17 item 2).

One tiny corpus prepared with `--waveforms`; a video teacher, an audio-resnet teacher on the spectrogram and a tiny
wav2vec2 teacher on the waveform are trained for an epoch and exported; a student distils from two of those caches
while hearing degraded audio.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio

from cache.layers import cached_layers, layer_field
from cache.schema import WaveformStoreSpec
from cache.store import open_store
from pipeline import config as config_io
from pipeline import degraded_audio as degrade
from pipeline.config import ConfigError
from pipeline.datasets.synthetic import SynthConfig, synthesize
from pipeline.errors import MissingInputError
from pipeline.features import PCM_SCALE, LogSpectrogram, SpectrogramParams
from pipeline.manifest import read_manifest
from pipeline.models.audio_teachers import TINY_WAV2VEC2
from pipeline.models.spec import ModelSpec
from pipeline.models.teachers import build_teacher, load_initial_weights
from stages import export_embeddings, prepare, train_student, train_teacher

CORPUS = SynthConfig(n_speakers=3, n_verification_speakers=0, utterances_per_speaker=6, videos_per_speaker=2,
                     min_seconds=1.2, max_seconds=3.0, frame_size=64, n_trials=0)
LAYERS = {"audio-resnet": ("backbone.stages.1",),
          "wav2vec2": ("backbone.feature_extractor.conv_layers.6", "backbone.encoder.transformer.layers.0")}


def _teacher(run: Path, arch: str, out: Path) -> Path:
    """Train `arch` for one epoch into RUN/teacher and move it to `out` (one run holds one teacher at a time)."""
    train_teacher.run(config_io.build(train_teacher.TeacherConfig, {
        "run_dir": run, "arch": arch, "tiny": True, "embed_dim": 24, "epochs": 1, "batch_size": 4,
        "num_workers": 0, "device": "cpu"}))
    (run / "teacher").rename(out)
    return out / "teacher.pt"


@pytest.fixture(scope="module")
def audio_run(tmp_path_factory, one_torch_thread) -> Path:
    work = tmp_path_factory.mktemp("audio-teachers")
    root = synthesize(work / "corpus", CORPUS)
    run = work / "run"
    prepare.run(config_io.build(prepare.PrepareConfig, {"root": root, "run_dir": run, "num_workers": 0,
                                                        "waveforms": True}))
    for arch in ("resnet34", "audio-resnet", "wav2vec2"):
        checkpoint = _teacher(run, arch, work / f"teacher-{arch}")
        export_embeddings.run(config_io.build(export_embeddings.ExportConfig, {
            "run_dir": run, "teacher": checkpoint, "out": work / f"cache-{arch}.zarr", "num_workers": 0,
            "device": "cpu", "layers": LAYERS.get(arch)}))
    return work


def test_waveform_store_is_aligned_with_the_spectrograms(audio_run):
    prepared = audio_run / "run" / "prepare"
    entries = read_manifest(prepared)
    spectrogram = LogSpectrogram(SpectrogramParams())
    with open_store(prepared / "waveforms.zarr") as waveforms, open_store(prepared / "spectrograms.zarr") as spectra:
        assert waveforms.attrs["sample_rate"] == 16000 and waveforms.attrs["kind"] == "waveforms"
        for entry in entries[:4]:
            samples = waveforms.read(entry.key, "waveform")
            assert samples.dtype == np.int16 and len(samples) == 640 * entry.n_video_frames
            recomputed = spectrogram(torch.from_numpy(samples.astype(np.float32) / PCM_SCALE)).numpy()
            stored = spectra.read(entry.key, "spectrogram").astype(np.float32)
            assert recomputed.shape == stored.shape
            # 16-bit rounding of the samples and float16 storage of the spectrogram: both tiny next to unit variance
            assert np.abs(recomputed - stored).mean() < 0.01


def test_degradation_steps_are_parsed_and_refused_with_their_text():
    steps = degrade.parse("noise=10,bandpass=300-3400,mulaw=8")
    assert [step.name for step in steps] == ["noise", "bandpass", "mulaw"]
    for bad, said in (("noise", "noise="), ("echo=3", "echo=3"), ("bandpass=3400-300", "LOW < HIGH"),
                      ("lowpass=9000", "(0, 8000]"), ("mulaw=7.5", "whole bits"), ("noise=loud", "'loud'")):
        with pytest.raises(ConfigError, match=said.replace("(", r"\(").replace("]", r"\]")):
            degrade.parse(bad)


def test_degradations_do_what_they_say_and_are_reproducible():
    rng = np.random.default_rng(0)
    t = np.arange(32000) / 16000
    clean = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)

    noisy = degrade.apply(degrade.parse("noise=10"), clean, degrade.utterance_generator(0, "a"))
    snr = 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean((noisy - clean).astype(np.float64) ** 2))
    assert abs(snr - 10) < 0.3
    same = degrade.apply(degrade.parse("noise=10"), clean, degrade.utterance_generator(0, "a"))
    other_key = degrade.apply(degrade.parse("noise=10"), clean, degrade.utterance_generator(0, "b"))
    other_seed = degrade.apply(degrade.parse("noise=10"), clean, degrade.utterance_generator(1, "a"))
    assert np.array_equal(noisy, same) and not np.allclose(noisy, other_key) and not np.allclose(noisy, other_seed)

    band = degrade.apply(degrade.parse("bandpass=300-3400"), clean, degrade.utterance_generator(0, "a"))
    spectrum, frequencies = np.abs(np.fft.rfft(band)) ** 2, np.fft.rfftfreq(len(band), 1 / 16000)
    outside = spectrum[(frequencies < 290) | (frequencies > 3410)].sum()
    assert outside < 1e-6 * spectrum.sum()

    coded = degrade.apply(degrade.parse("mulaw=8"), clean, degrade.utterance_generator(0, "a"))
    error = np.abs(coded - clean)
    assert 0 < error.mean() < 0.01  # 256 µ-law levels: a small, nonzero quantisation error


def test_audio_teachers_cache_every_frame_and_their_layers(audio_run):
    entries = {e.key: e for e in read_manifest(audio_run / "run" / "prepare")}
    for arch in ("audio-resnet", "wav2vec2"):
        with open_store(audio_run / f"cache-{arch}.zarr") as cache:
            assert cache.attrs["teacher_arch"] == arch and cache.attrs["face_size"] is None
            layers = cached_layers(cache)
            assert list(layers) == list(LAYERS[arch]) and all(dim > 0 for dim in layers.values())
            for key in cache.keys:
                n_frames = entries[key].n_video_frames
                assert cache.read(key, "frames").shape == (n_frames, 24)
                assert cache.length(key, "segments") == -(-n_frames // 25)
                for layer, dim in layers.items():
                    assert cache.read(key, layer_field(layer, "frames")).shape == (n_frames, dim)
        metrics = (audio_run / f"teacher-{arch}" / "metrics.json").read_text()
        assert '"modality": "audio"' in metrics


def test_wav2vec2_teacher_takes_a_torchaudio_state_dict(tmp_path):
    source = torchaudio.models.wav2vec2_model(**TINY_WAV2VEC2)  # random weights, as a local file would hold
    teacher = build_teacher(ModelSpec("wav2vec2", True, 3, 24))
    report = load_initial_weights(teacher, source.state_dict())
    assert len(report["loaded"]) == len(source.state_dict()) and not report["skipped"]
    assert set(report["missing"]) == {"embedding.weight", "embedding.bias", "head.weight", "head.bias"}
    for name, value in source.state_dict().items():
        assert torch.equal(teacher.state_dict()[f"backbone.{name}"], value)


def test_teachers_and_students_without_waveforms_are_told_to_prepare_them(tiny_run, tmp_path):
    with pytest.raises(MissingInputError, match="prepare --waveforms"):
        train_teacher.run(config_io.build(train_teacher.TeacherConfig, {
            "run_dir": tiny_run / "run", "arch": "wav2vec2", "tiny": True, "epochs": 1, "num_workers": 0,
            "device": "cpu"}))
    with pytest.raises(MissingInputError, match="prepare --waveforms"):
        train_student.run(config_io.build(train_student.StudentConfig, {
            "run_dir": tiny_run / "run", "tiny": True, "epochs": 1, "lam": 0.0, "num_workers": 0, "device": "cpu",
            "degrade": "noise=10", "crop_seconds": 1}))
    with pytest.raises(ConfigError, match="sequential"):
        config_io.build(train_teacher.TeacherConfig, {"arch": "hubert", "sequential": True})


def test_student_hears_degraded_audio_and_distils_two_teachers_of_two_modalities(audio_run):
    run = audio_run / "run"
    out = train_student.run(config_io.build(train_student.StudentConfig, {
        "run_dir": run, "tiny": True, "epochs": 1, "batch_size": 4, "num_workers": 0, "device": "cpu",
        "crop_seconds": 1, "degrade": "noise=5,bandpass=300-3400,mulaw=8", "degrade_seed": 3,
        "distil": (f"lam=0.3,cache={audio_run / 'cache-resnet34.zarr'},teacher={audio_run / 'teacher-resnet34/teacher.pt'}",
                   f"lam=0.3,cache={audio_run / 'cache-wav2vec2.zarr'},teacher={audio_run / 'teacher-wav2vec2/teacher.pt'},"
                   "layer=backbone.encoder.transformer.layers.0")}))
    assert "degraded" in out.name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["degrade"] == {"steps": "noise=5,bandpass=300-3400,mulaw=8", "seed": 3}
    assert [t["teacher_fingerprint"][:8] for t in metrics["distil"]["targets"]][0] != \
        [t["teacher_fingerprint"][:8] for t in metrics["distil"]["targets"]][1]

    # what the student heard: the same degraded copy on every read, not the clean stored spectrogram
    prepared = run / "prepare"
    key = read_manifest(prepared)[0].key
    reader = degrade.DegradedSpectrograms(prepared / "waveforms.zarr", "noise=5,bandpass=300-3400,mulaw=8", 3,
                                          SpectrogramParams())
    again = degrade.DegradedSpectrograms(prepared / "waveforms.zarr", "noise=5,bandpass=300-3400,mulaw=8", 3,
                                         SpectrogramParams())
    with open_store(prepared / "spectrograms.zarr") as clean:
        stored = clean.read(key, "spectrogram")
    assert np.array_equal(reader.read(key, "spectrogram"), again.read(key, "spectrogram", 0, None))
    assert reader.read(key, "spectrogram").shape == stored.shape
    assert np.abs(reader.read(key, "spectrogram").astype(np.float32) - stored.astype(np.float32)).mean() > 0.1


def test_waveforms_can_be_added_to_a_prepared_run(tmp_path, one_torch_thread):
    small = SynthConfig(n_speakers=2, n_verification_speakers=0, utterances_per_speaker=4, videos_per_speaker=2,
                        min_seconds=1.2, max_seconds=1.6, frame_size=48, n_trials=0)
    root = synthesize(tmp_path / "corpus", small)
    settings = {"root": root, "run_dir": tmp_path / "run", "num_workers": 0}
    prepare.run(config_io.build(prepare.PrepareConfig, settings))
    prepared = tmp_path / "run" / "prepare"
    before = (prepared / "manifest.tsv").read_text()
    with open_store(prepared / "spectrograms.zarr") as spectra:
        spectrogram = spectra.read(spectra.keys[0], "spectrogram")
    prepare.run(config_io.build(prepare.PrepareConfig, {**settings, "waveforms": True}))
    assert (prepared / "manifest.tsv").read_text() == before
    with open_store(prepared / "spectrograms.zarr") as spectra, open_store(prepared / "waveforms.zarr") as waveforms:
        assert np.array_equal(spectra.read(spectra.keys[0], "spectrogram"), spectrogram)  # kept, not rewritten
        assert set(waveforms.keys) == set(spectra.keys) and waveforms.attrs["manifest_sha256"]


def test_a_waveform_store_at_another_sample_rate_is_refused_by_name(tmp_path):
    path = tmp_path / "waveforms.zarr"
    writer = WaveformStoreSpec(dataset="voxceleb", dataset_root="/data", video_fps=25, sample_rate=8000).create(path)
    writer.write("a", {"waveform": np.zeros(320, dtype=np.int16)})
    writer.mark_complete()
    writer.close()
    reader = degrade.DegradedSpectrograms(path, "noise=10", 0, SpectrogramParams())
    with pytest.raises(ConfigError, match=r"waveforms.zarr: holds 8000 Hz audio"):
        reader.read("a", "spectrogram")
