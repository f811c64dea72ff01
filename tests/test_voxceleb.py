"""VoxCeleb1 lists and layouts: the real trial list, malformed lines, mp4 + parallel audio trees."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline import config as config_io
from pipeline import runs
from pipeline.cli import app
from pipeline.datasets.base import DatasetError, Trial
from pipeline.datasets.registry import DATASETS
from pipeline.datasets.synthetic import SynthConfig, synthesize
from pipeline.trial_speakers import TrialSpeakersInTrainingError, check_prepared
from pipeline.datasets.voxceleb import (
    VoxCeleb,
    read_iden_split,
    read_trials,
    scan_voxceleb,
    speaker_of,
    video_of,
    videos_per_split,
)
from pipeline.manifest import read_classes, read_manifest
from pipeline.manifest import read_trials as manifest_trials
from stages import train_student

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
VERI_TEST = SHARED_DATA / "voxceleb1" / "veri_test.txt"


@pytest.mark.skipif(not VERI_TEST.is_file(), reason=f"official trial list not found at {VERI_TEST}")
def test_real_trial_list() -> None:
    trials = read_trials(VERI_TEST)
    assert len(trials) == 37720
    assert trials[0] == Trial(1, "id10270/x6uYqmx31kE/00001", "id10270/8jEAjG6SegY/00008")
    assert trials[-1] == Trial(0, "id10309/0cYFdtyWVds/00005", "id10296/Y-qKARMSO7k/00001")
    speakers = {speaker_of(key) for trial in trials for key in (trial.enrol, trial.test)}
    # VoxCeleb1's test speakers: the 40 that identification must leave out (1,251 - 40 = 1,211)
    assert speakers == {f"id{number}" for number in range(10270, 10310)}
    assert sum(trial.label for trial in trials) == 37720 // 2
    assert all((speaker_of(t.enrol) == speaker_of(t.test)) == bool(t.label) for t in trials)
    assert all(len(key.split("/")) == 3 for trial in trials for key in (trial.enrol, trial.test))


@pytest.mark.skipif(not VERI_TEST.is_file(), reason=f"real VoxCeleb1 sample not found at {SHARED_DATA}")
def test_real_wav_sample_scans_as_audio_only() -> None:
    utterances = scan_voxceleb(SHARED_DATA / "voxceleb1")
    assert len(utterances) == 8
    assert all(u.video_path is None and u.audio_path.suffix == ".wav" and u.split == "none" for u in utterances)
    assert {u.label for u in utterances} == {"id10001", "id10002", "id10270"}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("1 id10001/abc/00001.wav\n4 id10001/abc/00002.wav\n", "set must be 1, 2 or 3"),
        ("1 id10001/abc/00001.wav extra\n", "expected 2 fields"),
        ("1 speaker/abc/00001.wav\n", "idXXXXX"),
        ("1 id10001/00001.wav\n", "idXXXXX"),
        ("1 id10001/abc/00001.wav\n\n2 id10001/abc/00001.wav\n", "duplicate key"),
    ],
)
def test_malformed_split_lines(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "iden_split.txt"
    path.write_text(text)
    bad_line = len(text.rstrip("\n").split("\n"))  # the last line is the bad one in every case
    with pytest.raises(DatasetError, match=problem) as error:
        read_iden_split(path)
    assert str(error.value).startswith(f"{path}:{bad_line}:")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("2 id10001/a/00001.wav id10002/b/00001.wav\n", "label must be 0 or 1"),
        ("1 id10001/a/00001.wav\n", "expected 3 fields"),
        ("1 id10001/a/00001.wav id10002/b\n", "idXXXXX"),
    ],
)
def test_malformed_trial_lines(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "veri_test.txt"
    path.write_text("0 id10001/a/00002.wav id10002/b/00001.wav\n" + text)
    with pytest.raises(DatasetError, match=problem) as error:
        read_trials(path)
    assert str(error.value).startswith(f"{path}:2:")


def _touch(root: Path, *relative: str) -> None:
    for name in relative:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")


def test_scan_pairs_video_with_parallel_audio(tmp_path: Path) -> None:
    _touch(
        tmp_path,
        "mp4/id10001/vidA/00001.mp4",
        "mp4/id10001/vidA/00002.mp4",
        "wav/id10001/vidA/00001.wav",  # paired with the mp4: audio comes from the wav
        "aac/id10001/vidA/00001.m4a",  # wav wins over m4a
        "aac/id10002/vidB/00001.m4a",  # audio only
    )
    (tmp_path / "iden_split.txt").write_text("1 id10001/vidA/00001.wav\n3 id10002/vidB/00001.wav\n")
    utterances = {u.key: u for u in scan_voxceleb(tmp_path)}
    assert list(utterances) == ["id10001/vidA/00001", "id10001/vidA/00002", "id10002/vidB/00001"]

    paired = utterances["id10001/vidA/00001"]
    assert paired.video_path == tmp_path / "mp4/id10001/vidA/00001.mp4"
    assert paired.audio_path == tmp_path / "wav/id10001/vidA/00001.wav"
    assert (paired.label, paired.split) == ("id10001", "train")

    embedded = utterances["id10001/vidA/00002"]
    assert embedded.audio_path == embedded.video_path and embedded.split == "none"

    audio_only = utterances["id10002/vidB/00001"]
    assert audio_only.video_path is None and audio_only.audio_path.suffix == ".m4a"
    assert audio_only.split == "test"


def test_scan_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no media found") as error:
        scan_voxceleb(tmp_path)
    assert str(tmp_path) in str(error.value) and "mp4/**/*.mp4" in str(error.value)

    _touch(tmp_path, "mp4/id10001/vidA/00001.mp4")
    split = tmp_path / "custom_split.txt"
    split.write_text("1 id10001/vidA/00001.wav\n2 id10001/vidA/00009.wav\n")
    with pytest.raises(DatasetError, match="id10001/vidA/00009") as error:
        scan_voxceleb(tmp_path, split)
    assert str(split) in str(error.value)


def test_adapter_checks_trial_keys(tmp_path: Path) -> None:
    _touch(tmp_path, "mp4/id10001/vidA/00001.mp4", "mp4/id10002/vidB/00001.mp4")
    (tmp_path / "veri_test.txt").write_text(
        "0 id10001/vidA/00001.wav id10002/vidB/00001.wav\n1 id10001/vidA/00001.wav id10001/vidA/00007.wav\n"
    )
    dataset = DATASETS["voxceleb"](tmp_path)
    assert isinstance(dataset, VoxCeleb) and dataset.name == "voxceleb"
    assert len(dataset.utterances()) == 2
    with pytest.raises(DatasetError, match="id10001/vidA/00007") as error:
        dataset.trials()
    assert str(error.value).startswith(f"{tmp_path / 'veri_test.txt'}:2:")

    (tmp_path / "veri_test.txt").unlink()
    assert VoxCeleb(tmp_path).trials() == []


def _tree(root: Path, videos: dict[str, int], per_video: int = 2) -> None:
    """`per_video` empty mp4s in each of a speaker's `videos` video folders (scanning never opens them)."""
    for speaker, count in videos.items():
        _touch(root, *(f"mp4/{speaker}/vid{video:02d}/{index:05d}.mp4"
                       for video in range(count) for index in range(1, per_video + 1)))


def _videos_by_split(utterances) -> dict[str, set[str]]:
    by_split: dict[str, set[str]] = {}
    for utterance in utterances:
        by_split.setdefault(utterance.split, set()).add(video_of(utterance.key))
    return by_split


def test_70_10_20_split_assigns_whole_videos_per_speaker(tmp_path: Path) -> None:
    _tree(tmp_path, {"id10001": 20, "id10002": 10, "id10003": 3, "id10004": 2, "id10005": 1})
    (tmp_path / "iden_split.txt").write_text("3 id10001/vid00/00001.wav\n")  # ignored by this protocol
    dataset = VoxCeleb(tmp_path, split="70-10-20", seed=3)
    utterances = dataset.utterances()
    by_split = _videos_by_split(utterances)
    for one, other in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not by_split[one] & by_split[other], (one, other)  # no video in two splits
    videos = Counter((video_of(u.key).split("/")[0], u.split) for u in utterances)  # utterances, 2 per video
    assert [videos[("id10001", split)] // 2 for split in ("train", "val", "test")] == [14, 2, 4]
    assert [videos[("id10002", split)] // 2 for split in ("train", "val", "test")] == [7, 1, 2]
    # few videos: at least one train video; two videos give train + test, three train + val + test
    assert [videos[("id10003", split)] // 2 for split in ("train", "val", "test")] == [1, 1, 1]
    assert [videos[("id10004", split)] // 2 for split in ("train", "val", "test")] == [1, 0, 1]
    assert [videos[("id10005", split)] // 2 for split in ("train", "val", "test")] == [1, 0, 0]
    assert [videos_per_split(n) for n in (1, 2, 3, 4, 5, 10, 20, 100)] == [
        (0, 0), (1, 0), (1, 1), (1, 1), (1, 1), (2, 1), (4, 2), (20, 10)]
    assert dataset.classes() == ["id10001", "id10002", "id10003", "id10004", "id10005"]
    assert [u.split for u in VoxCeleb(tmp_path, split="70-10-20", seed=3).utterances()] == [u.split for u in utterances]
    assert [u.split for u in VoxCeleb(tmp_path, split="70-10-20", seed=4).utterances()] != [u.split for u in utterances]
    # A new speaker leaves the others' splits as they were.
    _tree(tmp_path, {"id10006": 5})
    again = {u.key: u.split for u in VoxCeleb(tmp_path, split="70-10-20", seed=3).utterances()}
    assert all(again[u.key] == u.split for u in utterances)

    summary = dataset.describe()
    assert summary["split"] == "70-10-20" and summary["seed"] == 3 and summary["split_file"] is None
    assert summary["split_unit"] == "video" and summary["crop_seconds"] == 5
    assert summary["identification"]["videos"] == {"train": 24, "val": 4, "test": 8}
    assert summary["identification"]["utterances"] == {"train": 48, "val": 8, "test": 16}
    assert summary["identification"]["speakers_without"] == {"train": 0, "val": 2, "test": 1}


def _with_trials(root: Path) -> None:
    """Identification speakers id10001-id10003 and trial speakers id10008-id10009, all in iden_split.txt (as in
    VoxCeleb1, whose official split lists its 40 test speakers too)."""
    _tree(root, {"id10001": 5, "id10002": 5, "id10003": 5, "id10008": 2, "id10009": 2})
    keys = sorted(path.relative_to(root / "mp4").with_suffix("").as_posix() for path in root.rglob("*.mp4"))
    (root / "iden_split.txt").write_text("".join(f"{1 + index % 3} {key}.wav\n" for index, key in enumerate(keys)))
    (root / "veri_test.txt").write_text("1 id10008/vid00/00001.wav id10008/vid01/00002.wav\n"
                                        "0 id10008/vid00/00001.wav id10009/vid00/00001.wav\n"
                                        "1 id10009/vid01/00001.wav id10009/vid00/00002.wav\n")


@pytest.mark.parametrize("split", ["official", "70-10-20"])
def test_trial_speakers_are_left_out_of_identification(tmp_path: Path, split: str) -> None:
    _with_trials(tmp_path)
    dataset = VoxCeleb(tmp_path, split=split)
    utterances = dataset.utterances()
    assert dataset.trial_speakers() == ["id10008", "id10009"]
    assert {u.label for u in utterances if u.split != "none"} == {"id10001", "id10002", "id10003"}
    assert {u.split for u in utterances if u.label in ("id10008", "id10009")} == {"none"}
    assert dataset.classes() == ["id10001", "id10002", "id10003"]
    assert len(dataset.trials()) == 3
    summary = dataset.describe()
    assert summary["allow_trial_speakers_in_training"] is False
    assert summary["identification"]["speakers"] == 3
    assert summary["verification"] == {"speakers": 2, "trials": 3, "utterances": 5, "left_out_of_identification": 2,
                                       "left_out_first": ["id10008", "id10009"], "in_training": 0,
                                       "in_training_first": []}
    assert dataset.headline(summary).startswith("identification 3 speakers, ")
    assert "verification 2 speakers, 3 trials over 5 utterances; 2 trial speaker(s) left out" in dataset.headline(summary)


def test_trial_speakers_stay_in_training_only_when_allowed(tmp_path: Path) -> None:
    _with_trials(tmp_path)
    dataset = VoxCeleb(tmp_path, allow_trial_speakers_in_training=True)
    splits = {u.key: u.split for u in dataset.utterances()}
    assert splits == read_iden_split(tmp_path / "iden_split.txt")  # the split file as it is
    assert dataset.classes() == ["id10001", "id10002", "id10003", "id10008", "id10009"]
    summary = dataset.describe()
    assert summary["allow_trial_speakers_in_training"] is True
    assert summary["verification"]["in_training"] == 2 and summary["verification"]["left_out_of_identification"] == 0
    assert "2 trial speaker(s) IN TRAINING" in dataset.headline(summary)
    assert "allow_trial_speakers_in_training" in DATASETS["voxceleb"].options

    (tmp_path / "veri_test.txt").write_text("".join(
        f"0 {a}/vid00/00001.wav {b}/vid00/00001.wav\n" for a, b in (("id10001", "id10002"), ("id10003", "id10008"),
                                                                     ("id10009", "id10001"))))
    with pytest.raises(DatasetError, match="names every one of the 5 speakers") as error:
        VoxCeleb(tmp_path).utterances()
    assert str(error.value).startswith(str(tmp_path / "veri_test.txt")) and "allow-trial-speakers" in str(error.value)


def test_split_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="split must be one of official, 70-10-20"):
        VoxCeleb(tmp_path, split="80-20")
    with pytest.raises(DatasetError, match="applies to split='official' only"):
        VoxCeleb(tmp_path, split_file=tmp_path / "iden_split.txt", split="70-10-20")


def test_audio_only_utterances_need_audio_only_ok(tmp_path: Path) -> None:
    _touch(tmp_path, "wav/id10001/vidA/00001.wav", "wav/id10001/vidA/00002.wav")
    with pytest.raises(DatasetError, match="2 utterances with audio only and no video") as error:
        VoxCeleb(tmp_path).utterances()
    assert str(error.value).startswith(str(tmp_path)) and "audio_only_ok" in str(error.value)
    assert len(VoxCeleb(tmp_path, audio_only_ok=True).utterances()) == 2
    _touch(tmp_path, "mp4/id10001/vidA/00003.mp4")
    dataset = VoxCeleb(tmp_path)
    assert [u.key for u in dataset.utterances()] == ["id10001/vidA/00003"]  # audio-only ones left out, counted
    assert dataset.describe()["missing"] == {"no_video": 2}


@pytest.mark.skipif(not VERI_TEST.is_file(), reason=f"real VoxCeleb1 sample not found at {SHARED_DATA}")
def test_real_wav_sample_through_the_adapter() -> None:
    with pytest.raises(DatasetError, match="8 utterances with audio only"):
        VoxCeleb(SHARED_DATA / "voxceleb1").utterances()
    dataset = VoxCeleb(SHARED_DATA / "voxceleb1", audio_only_ok=True, split="70-10-20")
    assert len(dataset.utterances()) == 8 and dataset.describe()["missing"] == {"no_video": 8}
    with pytest.raises(DatasetError, match="veri_test.txt:2: unknown speaker"):
        dataset.trials()  # the real list names 40 speakers; the sample holds the first trial only


# 3 identification and 2 verification speakers, 4 videos each (one utterance per video), 1-1.4 s of real mp4
SMALL_CORPUS = SynthConfig(n_speakers=3, n_verification_speakers=2, utterances_per_speaker=4, videos_per_speaker=4,
                           min_seconds=1.0, max_seconds=1.4, frame_size=32, n_trials=8)


@pytest.fixture(scope="module")
def voxceleb_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A VoxCeleb-layout corpus of real mp4 files whose iden_split.txt lists the trial speakers too (as VoxCeleb1's)."""
    root = synthesize(tmp_path_factory.mktemp("voxceleb") / "corpus", SMALL_CORPUS, progress=False)
    keys = sorted(path.relative_to(root / "mp4").with_suffix("").as_posix() for path in root.rglob("*.mp4"))
    (root / "iden_split.txt").write_text("".join(f"{1 + index % 3} {key}.wav\n" for index, key in enumerate(keys)))
    return root


def _prepare(root: Path, run_dir: Path, *options: str) -> Path:
    result = CliRunner().invoke(app, ["stage", "prepare", "--root", str(root), "--run-dir", str(run_dir),
                                      "--num-workers", "0", *options])
    assert result.exit_code == 0, (result.output, result.exception)
    return run_dir / "prepare"


def test_stage0_video_split_keeps_trial_speakers_out_of_every_split(voxceleb_corpus: Path, tmp_path: Path) -> None:
    prepared = _prepare(voxceleb_corpus, tmp_path / "run", "--split", "70-10-20", "--seed", "1")
    entries = read_manifest(prepared)
    trials = manifest_trials(prepared)
    trial_speakers = {speaker_of(key) for trial in trials for key in (trial.enrol, trial.test)}
    assert trial_speakers == {"id10004", "id10005"} and len(trials) == 8
    split_of_video: dict[str, set[str]] = {}
    for entry in entries:
        split_of_video.setdefault(video_of(entry.key), set()).add(entry.split)
    assert all(len(splits) == 1 for splits in split_of_video.values())  # no video in two splits
    assert not {e.label for e in entries if e.split in ("train", "val", "test")} & trial_speakers
    assert {e.split for e in entries if e.label in trial_speakers} == {"none"}
    assert {e.key for e in entries if e.split == "none"} == {k for t in trials for k in (t.enrol, t.test)}
    assert read_classes(prepared) == ["id10001", "id10002", "id10003"]
    summary = runs.read_json(prepared / "dataset.json")
    assert summary["identification"]["speakers"] == 3 and summary["identification"]["videos"] == {
        "train": 6, "val": 3, "test": 3}  # 4 videos a speaker: 2 / 1 / 1
    assert summary["verification"]["speakers"] == 2 and summary["verification"]["trials"] == 8
    assert check_prepared(prepared) == []


def test_trial_speakers_in_training_are_refused_unless_asked_for(voxceleb_corpus: Path, tmp_path: Path) -> None:
    prepared = _prepare(voxceleb_corpus, tmp_path / "run", "--allow-trial-speakers-in-training")
    entries = read_manifest(prepared)
    assert {e.label for e in entries if e.split == "train"} >= {"id10004", "id10005"}  # asked for: kept, recorded
    assert runs.read_json(prepared / "dataset.json")["allow_trial_speakers_in_training"] is True
    assert check_prepared(prepared) == ["id10004", "id10005"]

    # The same run without the recorded request, as a run prepared before trial speakers were left out
    summary = runs.read_json(prepared / "dataset.json")
    runs.write_json(prepared / "dataset.json", {**summary, "allow_trial_speakers_in_training": False})
    with pytest.raises(TrialSpeakersInTrainingError, match=r"2 speaker\(s\) of the trial list are in the train or "
                                                           r"val split \(id10004, id10005\)") as error:
        check_prepared(prepared)
    assert str(error.value).startswith(str(prepared / "trials.tsv"))
    student = config_io.build(train_student.StudentConfig, {"run_dir": tmp_path / "run", "tiny": True, "epochs": 1,
                                                            "num_workers": 0, "device": "cpu"})
    with pytest.raises(TrialSpeakersInTrainingError, match="--allow-trial-speakers-in-training"):
        train_student.run(student)
    assert not (student.out_dir / "config.toml").exists()  # refused before the run was started
