"""`prepare --audio-only` on real corpora without video (RAVDESS audio release, VoxCeleb1 wavs): spectrograms and a
manifest, no face store; a λ = 0 student trains and evaluates on it, `avl cache verify` and `avl verify` accept it,
and distillation is refused naming the utterances that have no target."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline import config as config_io
from pipeline import stores
from pipeline.audio_only import NoTargetsError
from pipeline.manifest import read_manifest
from pipeline.media import MediaError, decode_audio
from stages import infer, prepare, train_student

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real test data not found at {SHARED_DATA}")
VOXCELEB_WAV = SHARED_DATA / "voxceleb1" / "wav"
FIRST_TRIAL = "1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav\n"  # veri_test.txt's first line


def _prepare(root: Path, run_dir: Path, **settings) -> Path:
    return prepare.run(config_io.build(prepare.PrepareConfig, {
        "root": root, "run_dir": run_dir, "num_workers": 0, "audio_only": True, **settings}))


def _student(run_dir: Path, lam: float) -> Path:
    return train_student.run(config_io.build(train_student.StudentConfig, {
        "run_dir": run_dir, "lam": lam, "arch": "vggvox", "tiny": True, "epochs": 1, "batch_size": 2,
        "max_steps_per_epoch": 2, "crop_seconds": 2, "num_workers": 0, "device": "cpu"}))


@pytest.fixture(scope="module")
def voxceleb_root(tmp_path_factory) -> Path:
    """The real VoxCeleb1 wavs in their published layout, with an identification split of two speakers and the
    official list's first trial (its speaker, id10270, stays out of the identification splits)."""
    root = tmp_path_factory.mktemp("voxceleb-audio")
    (root / "wav").symlink_to(VOXCELEB_WAV, target_is_directory=True)
    splits = [f"{'3' if name == '00003' else '1'} {speaker}/{video}/{name}.wav"
              for speaker, video in (("id10001", "1zcIwhmdeo4"), ("id10002", "xTV-jFAUKcw"))
              for name in ("00001", "00002", "00003")]
    (root / "iden_split.txt").write_text("\n".join(splits) + "\n")
    (root / "veri_test.txt").write_text(FIRST_TRIAL)
    return root


@needs_shared
@pytest.mark.slow
def test_voxceleb_wavs_prepare_train_at_lambda_0_and_verify(voxceleb_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    prepared = _prepare(voxceleb_root, run_dir)
    assert not list(prepared.glob("faces*")) and not (prepared / prepare.CONTACT_SHEET).exists()
    entries = {entry.key: entry for entry in read_manifest(prepared)}
    assert len(entries) == 8 and {entry.split for entry in entries.values()} == {"train", "test", "none"}
    for entry in entries.values():  # whole 40 ms video frames of the real audio, from the wav itself
        samples = len(decode_audio(entry.source))
        assert entry.source.endswith(".wav") and entry.n_video_frames == samples // 640
    assert json.loads((prepared / "prepare.json").read_text())["faces"] is None
    assert stores.verify(prepared / "spectrograms.zarr", prepared) == []  # what `avl cache verify` prints

    student = _student(run_dir, lam=0.0)
    metrics = json.loads((student / "metrics.json").read_text())
    assert metrics["identification"]["top1"] is not None and metrics["cache"] is None

    trials = tmp_path / "trials.txt"
    trials.write_text(FIRST_TRIAL)
    scores = infer.verify(config_io.build(infer.VerifyConfig, {
        "model": student, "trials": trials, "root": VOXCELEB_WAV, "out": tmp_path / "scores.tsv"}))
    rows = scores.read_text().splitlines()
    assert len(rows) == 2 and np.isfinite(float(rows[1].split("\t")[0]))


@needs_shared
def test_distillation_on_audio_only_utterances_is_refused_naming_them(tmp_path: Path) -> None:
    root = tmp_path / "ravdess"
    for actor in ("Actor_01", "Actor_02"):
        (root / actor).mkdir(parents=True)
        for path in sorted((SHARED_DATA / "ravdess" / actor).glob("*.wav"))[:4]:
            (root / actor / path.name).symlink_to(path)
    prepared = _prepare(root, tmp_path / "run", dataset="ravdess", fold=1)
    entries = read_manifest(prepared)
    assert len(entries) == 8 and not list(prepared.glob("faces*"))
    # 48 kHz wavs resampled to 16 kHz: a 3-5 s clip is 75-125 video frames
    assert all(75 <= entry.n_video_frames <= 126 for entry in entries)
    assert stores.verify(prepared / "spectrograms.zarr", prepared) == []
    training = [entry.key for entry in entries if entry.split == "train"]
    with pytest.raises(NoTargetsError, match="--lambda 0") as refused:
        _student(tmp_path / "run", lam=0.4)
    assert all(key in str(refused.value) for key in training) and f"these {len(training)} training" in str(refused.value)
    assert not list((tmp_path / "run").rglob("student.pt"))


@needs_shared
def test_audio_only_corpus_without_the_flag_names_it(tmp_path: Path) -> None:
    root = tmp_path / "ravdess" / "Actor_01"
    root.mkdir(parents=True)
    clip = sorted((SHARED_DATA / "ravdess" / "Actor_01").glob("*.wav"))[0]
    (root / clip.name).symlink_to(clip)
    with pytest.raises(MediaError, match="--audio-only"):
        prepare.run(config_io.build(prepare.PrepareConfig, {
            "root": root.parent, "dataset": "ravdess", "run_dir": tmp_path / "run", "num_workers": 0,
            "audio_only_ok": True}))


@pytest.mark.parametrize("settings", [{"faces": "detect"}, {"boxes_dir": "boxes"}])
def test_audio_only_takes_no_face_options(tmp_path: Path, settings: dict) -> None:
    with pytest.raises(config_io.ConfigError, match="--audio-only"):
        config_io.build(prepare.PrepareConfig, {"root": tmp_path, "audio_only": True, **settings})
