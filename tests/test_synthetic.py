"""The synthetic corpus: real decodable mp4s in the VoxCeleb1 layout, valid lists, deterministic content."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import ConfigError
from pipeline.datasets.synthetic import SynthConfig, synthesize, synthesize_or_reuse
from pipeline.datasets.synthetic.voice import HOP, N_FFT, istft, stft
from pipeline.datasets.voxceleb import VoxCeleb, read_iden_split, read_trials
from pipeline.media import decode_audio, load_audio_visual, probe

TINY = SynthConfig(
    n_speakers=3,
    n_verification_speakers=2,
    utterances_per_speaker=4,
    videos_per_speaker=2,
    min_seconds=1.0,
    max_seconds=2.0,
    frame_size=64,
    n_trials=10,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize(tmp_path_factory.mktemp("synth") / "corpus", TINY, progress=False)


def test_layout(corpus: Path) -> None:
    files = sorted(corpus.glob("mp4/*/*/*.mp4"))
    assert len(files) == 5 * 4
    speakers = sorted({f.parent.parent.name for f in files})
    assert speakers == ["id10001", "id10002", "id10003", "id10004", "id10005"]
    for file in files:
        assert len(file.parent.name) == 11 and file.stem.isdigit() and len(file.stem) == 5
    assert {len({f.parent.name for f in files if f.parent.parent.name == s}) for s in speakers} == {2}
    assert not list(corpus.rglob("*.part"))  # no temporary file left behind
    assert (corpus / "speakers.json").is_file()


def test_streams_and_alignment(corpus: Path) -> None:
    path = sorted(corpus.glob("mp4/*/*/*.mp4"))[0]
    info = probe(path)
    assert (info.video_codec, info.video_fps, info.width, info.height) == ("h264", 25.0, 64, 64)
    assert (info.audio_codec, info.audio_rate, info.audio_channels) == ("aac", 16000, 1)
    audio, frames = load_audio_visual(path)
    assert frames.shape[1:] == (64, 64, 3)
    assert len(audio) == 640 * len(frames)
    assert 1.0 <= len(frames) / 25 <= 2.0
    assert 0.02 < np.sqrt(np.mean(audio**2)) < 0.5


def test_mouth_follows_the_audio(corpus: Path) -> None:
    """Frames change most where the speech is loud: the streams are genuinely linked."""
    for path in sorted(corpus.glob("mp4/*/*/*.mp4")):
        audio, frames = load_audio_visual(path)
        loudness = np.sqrt(np.mean(audio.reshape(len(frames), 640) ** 2, axis=1))
        darkness = -frames[:, 36:52, 20:44].astype(float).mean(axis=(1, 2, 3))  # the open mouth is dark
        assert np.corrcoef(loudness, darkness)[0, 1] > 0.3, path


def test_lists_parse(corpus: Path) -> None:
    splits = read_iden_split(corpus / "iden_split.txt")
    assert {key.split("/")[0] for key in splits} == {"id10001", "id10002", "id10003"}
    for speaker in ("id10001", "id10002", "id10003"):
        sets = [split for key, split in splits.items() if key.startswith(speaker)]
        assert sets.count("test") >= 2 and sets.count("val") >= 1 and sets.count("train") >= 1

    trials = read_trials(corpus / "veri_test.txt")
    assert len(trials) == 10 and sum(t.label for t in trials) == 5
    for trial in trials:
        assert trial.enrol != trial.test
        assert trial.enrol.split("/")[0] in ("id10004", "id10005")
        assert (trial.enrol.split("/")[0] == trial.test.split("/")[0]) == bool(trial.label)
    assert len({(t.enrol, t.test) for t in trials}) == 10

    dataset = VoxCeleb(corpus)
    assert len(dataset.utterances()) == 20 and len(dataset.trials()) == 10
    assert sum(u.split == "none" for u in dataset.utterances()) == 8  # verification speakers


def test_deterministic(corpus: Path, tmp_path: Path) -> None:
    config = SynthConfig(**{**TINY.__dict__, "n_speakers": 1, "n_verification_speakers": 0, "n_trials": 0})
    again = synthesize(tmp_path / "again", config, progress=False)
    first = sorted(corpus.glob("mp4/id10001/*/*.mp4"))[0]
    second = again / first.relative_to(corpus)
    assert np.array_equal(decode_audio(first), decode_audio(second))
    ours = json.loads((corpus / "speakers.json").read_text())["speakers"]["id10001"]
    theirs = json.loads((again / "speakers.json").read_text())["speakers"]["id10001"]
    assert ours == theirs


def test_speakers_json_documents_the_truth(corpus: Path) -> None:
    truth = json.loads((corpus / "speakers.json").read_text())
    assert truth["config"]["n_speakers"] == 3
    voice = truth["speakers"]["id10004"]["voice"]
    assert truth["speakers"]["id10004"]["role"] == "verification"
    assert 80 <= voice["f0"] <= 230 and len(voice["formants"]) == 3


def test_a_corpus_is_reused_only_with_the_settings_it_was_made_with(corpus: Path) -> None:
    written = (corpus / "speakers.json").stat().st_mtime_ns
    assert synthesize_or_reuse(corpus, TINY, "test") == corpus
    with pytest.raises(ConfigError, match=f"{corpus}: holds a corpus made with other settings"):
        synthesize_or_reuse(corpus, replace(TINY, seed=TINY.seed + 1), "test")
    assert (corpus / "speakers.json").stat().st_mtime_ns == written  # neither call wrote anything


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="utterances_per_speaker"):
        SynthConfig(utterances_per_speaker=3)
    with pytest.raises(ValueError, match="n_trials"):
        SynthConfig(n_verification_speakers=1, n_trials=10)


@pytest.mark.parametrize("length", [N_FFT, 16000, 16000 + 77])
def test_torch_stft_reconstructs_perfectly(length: int) -> None:
    """The voice filters rely on stft -> istft being the identity and on one frame per hop (centred frames)."""
    signal = np.random.default_rng(length).standard_normal(length)
    spectrum = stft(signal)
    assert spectrum.shape == (N_FFT // 2 + 1, length // HOP + 1)
    assert np.abs(istft(spectrum, length) - signal).max() < 1e-10


def test_stft_gain_shapes_the_spectrum_as_intended() -> None:
    """A gain over (frequency, frame) scales what it should: low-pass keeps 300 Hz, drops 3 kHz, per frame."""
    rate = 16000
    times = np.arange(rate) / rate
    low, high = np.sin(2 * np.pi * 300 * times), np.sin(2 * np.pi * 3000 * times)
    spectrum = stft(np.stack([low + high]))[0]
    frequencies = np.fft.rfftfreq(N_FFT, 1.0 / rate)
    low_pass = (frequencies < 1000)[:, None] * np.ones(spectrum.shape[1])
    interior = slice(N_FFT, -N_FFT)  # reflect padding adds broadband content within a frame of either end
    assert np.abs((istft(spectrum * low_pass, rate) - low)[interior]).max() < 1e-3
    halved = np.full(spectrum.shape, 0.5)
    assert np.abs(istft(spectrum * halved, rate) - 0.5 * (low + high)).max() < 1e-10
