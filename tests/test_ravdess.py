"""RAVDESS: filename codes, pairing of video-only mp4 with audio-only wav, classes, LOSO folds, real clips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from media_files import write_mp4, write_wav
from typer.testing import CliRunner

from pipeline import config as config_io
from pipeline import runs
from pipeline.cli import app
from pipeline.data import Crops
from pipeline.datasets.base import DatasetError
from pipeline.datasets.ravdess import CLASS_SETS, Ravdess, RavdessCode, parse_filename
from pipeline.datasets.registry import DATASETS, dataset_crop_seconds, open_dataset
from pipeline.manifest import Entry, read_classes, read_manifest
from pipeline.media import decode_audio, load_audio_visual
from stages import train_student

SHARED_RAVDESS = Path(__file__).resolve().parents[2] / "shared" / "data" / "ravdess"
needs_shared = pytest.mark.skipif(not SHARED_RAVDESS.is_dir(), reason=f"real RAVDESS not found at {SHARED_RAVDESS}")


def _clip(root: Path, modality: str, channel: str, emotion: str, actor: str, repetition: str = "01") -> Path:
    """Write one clip in the published layout: a real mp4 (modality 01: with 48 kHz AAC; 02: silent) or wav (03)."""
    path = root / f"Actor_{actor}" / f"{modality}-{channel}-{emotion}-01-01-{repetition}-{actor}"
    path.parent.mkdir(parents=True, exist_ok=True)
    if modality == "03":
        return write_wav(path.with_suffix(".wav"), seconds=1.0, sample_rate=48000, channels=1)
    return write_mp4(path.with_suffix(".mp4"), seconds=1.0, sample_rate=48000 if modality == "01" else None)


@pytest.fixture(scope="module")
def av_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three actors: full-AV clips, video-only + audio-only pairs, a song clip, an audio-only clip, junk files."""
    root = tmp_path_factory.mktemp("ravdess")
    for actor in ("01", "02", "03"):
        _clip(root, "01", "01", "03", actor)  # full AV, happy
        _clip(root, "02", "01", "02", actor)  # calm: video-only ...
        _clip(root, "03", "01", "02", actor)  # ... paired with its audio-only wav
    _clip(root, "01", "02", "04", "01")  # song, sad
    _clip(root, "03", "01", "05", "02")  # angry, audio only: no video at all
    (root / "Actor_01" / "._01-01-03-01-01-01-01.mp4").write_bytes(b"\0AppleDouble")  # macOS copy junk
    (root / "README.wav").write_bytes(b"")  # not a RAVDESS name: ignored
    return root


def test_parse_filename_fields() -> None:
    code = parse_filename(Path("Actor_12/02-01-06-01-02-01-12.mp4"))
    assert code == RavdessCode("02", "01", "06", "01", "02", "01", "12")
    assert code.key == "Actor_12/01-06-01-02-01-12"


def test_pairs_video_only_mp4_with_audio_only_wav(av_tree: Path) -> None:
    dataset = DATASETS["ravdess"](av_tree)
    utterances = {u.key: u for u in dataset.utterances()}
    assert len(utterances) == 7  # song included by default (as the paper), audio-only not listed
    assert utterances["Actor_01/02-04-01-01-01-01"].label == "sad"  # the song clip
    assert len(Ravdess(av_tree, include_song=False).utterances()) == 6
    assert list(utterances) == sorted(utterances)
    full = utterances["Actor_01/01-03-01-01-01-01"]
    assert full.video_path == full.audio_path == av_tree / "Actor_01/01-01-03-01-01-01-01.mp4"
    paired = utterances["Actor_02/01-02-01-01-01-02"]
    assert paired.video_path == av_tree / "Actor_02/02-01-02-01-01-01-02.mp4"
    assert paired.audio_path == av_tree / "Actor_02/03-01-02-01-01-01-02.wav"
    assert (paired.label, paired.speaker, paired.split) == ("neutral", "Actor_02", "train")  # calm → neutral

    for utterance in (full, paired):
        audio, frames = load_audio_visual(utterance.video_path, utterance.audio_path)
        assert len(frames) == 25 and len(audio) == 25 * 640  # 48 kHz resampled to 16 kHz, aligned to 25 fps


def test_classes_song_and_audio_only_options(av_tree: Path) -> None:
    dataset = Ravdess(av_tree, classes="8", include_song=True, audio_only_ok=True)
    assert dataset.classes() == ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
    labels = {u.key: u.label for u in dataset.utterances()}
    assert labels["Actor_01/02-04-01-01-01-01"] == "sad" and labels["Actor_03/01-02-01-01-01-03"] == "calm"
    audio_only = [u for u in dataset.utterances() if u.video_path is None]
    assert [u.key for u in audio_only] == ["Actor_02/01-05-01-01-01-02"]
    assert Ravdess(av_tree).classes() == ["neutral", "happy", "sad", "angry", "fearful", "disgust", "surprised"]


def test_leave_one_actor_out_folds(av_tree: Path) -> None:
    for fold, val in ((1, "Actor_02"), (3, "Actor_01")):  # val: the next actor, cyclically
        splits = {u.speaker: u.split for u in Ravdess(av_tree, fold=fold).utterances()}
        test = f"Actor_{fold:02d}"
        assert splits[test] == "test" and splits[val] == "val"
        assert [split for speaker, split in splits.items() if speaker not in (test, val)] == ["train"]
    with pytest.raises(DatasetError, match="fold 7 holds out Actor_07"):
        Ravdess(av_tree, fold=7).utterances()
    with pytest.raises(DatasetError, match="1-24"):
        Ravdess(av_tree, fold=25)


def test_describe_counts_and_what_is_missing(av_tree: Path) -> None:
    summary = Ravdess(av_tree, fold=2).describe()
    json.dumps(summary)  # written into run dirs
    assert summary["protocol"] == "leave-one-actor-out" and summary["test_actors"] == ["Actor_02"]
    assert summary["class_mapping"]["calm"] == "neutral"
    assert summary["files"] == {"full-AV": 4, "video-only": 3, "audio-only": 4}
    assert summary["missing"] == {"no_video": 1, "no_audio": 0} and summary["excluded_song"] == 0
    assert summary["include_song"] is True and summary["crop_seconds"] == 4  # the paper's protocol by default
    assert summary["counts"]["by_split"] == {"test": 2, "train": 3, "val": 2}
    assert Ravdess(av_tree, fold=2, include_song=False).describe()["excluded_song"] == 1
    assert summary["ignored_files"]["count"] == 1  # README.wav; the ._ file is hidden, not ignored


@needs_shared
def test_real_audio_only_clips_need_audio_only_ok() -> None:
    with pytest.raises(DatasetError) as error:
        Ravdess(SHARED_RAVDESS).utterances()
    message = str(error.value)
    assert str(SHARED_RAVDESS) in message and "120 audio-only clips (modality 03)" in message
    assert "no video (modality 01/02)" in message and "audio_only_ok" in message
    assert Ravdess(SHARED_RAVDESS).describe()["missing"]["no_video"] == 120


@needs_shared
def test_real_clips_list_for_audio_only_stages() -> None:
    dataset = Ravdess(SHARED_RAVDESS, audio_only_ok=True, fold=2)
    utterances = dataset.utterances()
    assert len(utterances) == 120 and all(u.video_path is None for u in utterances)
    counts = dataset.describe()["counts"]
    # Per actor: neutral has only normal intensity (4 clips) and calm 8, merged into 12; the others 8 each.
    assert counts["by_class"] == {"angry": 16, "disgust": 16, "fearful": 16, "happy": 16, "neutral": 24, "sad": 16,
                                  "surprised": 16}
    assert counts["by_split"] == {"test": 60, "train": 60}  # two actors: no validation actor
    assert counts["by_actor"] == {"Actor_01": 60, "Actor_02": 60}
    audio = decode_audio(utterances[0].audio_path)  # 48 kHz → 16 kHz
    assert 3 * 16000 <= len(audio) <= 5 * 16000 and np.abs(audio).max() > 0.01


def test_boxes_dir_points_each_utterance_at_its_face_boxes(av_tree: Path, tmp_path: Path) -> None:
    keys = [u.key for u in Ravdess(av_tree).utterances()]
    for key in keys[:-1]:
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        np.save(tmp_path / f"{key}.npy", np.tile([4.0, 4.0, 28.0, 28.0], (25, 1)))
    with pytest.raises(DatasetError, match=f"no face boxes .* for 1 of 7 utterances, first: {keys[-1]}"):
        Ravdess(av_tree, boxes_dir=tmp_path).utterances()
    (tmp_path / f"{keys[-1]}.txt").write_text("4 4 28 28\n" * 25)
    utterances = Ravdess(av_tree, boxes_dir=tmp_path).utterances()
    assert [u.boxes_path.suffix for u in utterances] == [".npy"] * 6 + [".txt"]


def test_open_dataset_passes_only_the_options_that_are_set(av_tree: Path) -> None:
    options = {"fold": 2, "classes": "8", "split": None, "seed": None, "include_scripted": None}
    dataset = open_dataset("ravdess", av_tree, **options)
    assert isinstance(dataset, Ravdess) and dataset.fold == 2 and len(dataset.classes()) == 8
    with pytest.raises(DatasetError, match="'ravdess' takes no option\\(s\\) split; it takes: fold, classes"):
        open_dataset("ravdess", av_tree, split="70-10-20")
    with pytest.raises(DatasetError, match="unknown dataset 'crema'"):
        open_dataset("crema", av_tree)


def test_stage0_records_the_papers_protocol_and_stage3_crops_4_s(av_tree: Path, tmp_path: Path) -> None:
    for options, n_clips in (((), 7), (("--no-song",), 6)):
        run_dir = tmp_path / f"run{n_clips}"
        result = CliRunner().invoke(app, ["stage", "prepare", "--dataset", "ravdess", "--root", str(av_tree),
                                          "--run-dir", str(run_dir), "--num-workers", "0", *options])
        assert result.exit_code == 0, (result.output, result.exception)
        summary = runs.read_json(run_dir / "prepare" / "dataset.json")
        assert summary["include_song"] is (n_clips == 7) and len(read_manifest(run_dir / "prepare")) == n_clips
        assert summary["crop_seconds"] == dataset_crop_seconds(run_dir / "prepare") == 4
        assert read_classes(run_dir / "prepare") == CLASS_SETS["7"]
    student = train_student.resolve_crop(config_io.build(train_student.StudentConfig, {"run_dir": tmp_path / "run7"}))
    assert student.crop_seconds == 4  # recorded in the run's config.toml, which is written from this config
    explicit = config_io.build(train_student.StudentConfig, {"run_dir": tmp_path / "run7", "crop_seconds": 2})
    assert train_student.resolve_crop(explicit).crop_seconds == 2


class _Rows:
    """A spectrogram store holding one utterance."""

    def __init__(self, rows: np.ndarray):
        self.rows = rows

    def read(self, key: str, field: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self.rows[start:stop]


@pytest.mark.parametrize("seconds", [3, 4, 5])
def test_a_4_s_crop_uses_a_4_s_clip_whole_cuts_longer_and_repeats_shorter(seconds: int) -> None:
    rows = np.arange(seconds * 100 * 2, dtype=np.float16).reshape(-1, 2)  # 100 spectrogram frames a second
    entry = Entry("Actor_01/01-01-01-01-01-01", "neutral", "train", seconds * 25, float(seconds), "")
    crops = Crops([entry], [0], _Rows(rows), None, 4, None)
    for _ in range(5):
        spectrogram = crops[0][0].numpy()
        assert spectrogram.shape == (400, 2)
        if seconds == 4:
            np.testing.assert_array_equal(spectrogram, rows)  # no crop, no pad
        elif seconds == 5:  # a 4 s window of the clip, starting on the 1 s grid
            start = int(spectrogram[0, 0]) // 2
            assert start in (0, 100)
            np.testing.assert_array_equal(spectrogram, rows[start : start + 400])
        else:  # repeat-padded: the clip, then its start again
            np.testing.assert_array_equal(spectrogram, np.concatenate([rows, rows[:100]]))
