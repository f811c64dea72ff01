"""VoxCeleb1 lists and layouts: the real trial list, malformed lines, mp4 + parallel audio trees."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from pipeline.datasets.base import DatasetError, Trial
from pipeline.datasets.registry import DATASETS
from pipeline.datasets.voxceleb import VoxCeleb, read_iden_split, read_trials, scan_voxceleb

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
VERI_TEST = SHARED_DATA / "voxceleb1" / "veri_test.txt"


@pytest.mark.skipif(not VERI_TEST.is_file(), reason=f"official trial list not found at {VERI_TEST}")
def test_real_trial_list() -> None:
    start = time.perf_counter()
    trials = read_trials(VERI_TEST)
    assert time.perf_counter() - start < 1.0
    assert len(trials) == 37720
    assert trials[0] == Trial(1, "id10270/x6uYqmx31kE/00001", "id10270/8jEAjG6SegY/00008")
    speakers = {key.split("/")[0] for trial in trials for key in (trial.enrol, trial.test)}
    assert len(speakers) == 40
    assert sum(trial.label for trial in trials) == 37720 // 2


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


def _tree(root: Path, speakers: dict[str, int]) -> None:
    """`count` empty mp4s per speaker (scanning never opens them)."""
    for speaker, count in speakers.items():
        _touch(root, *(f"mp4/{speaker}/vid{index % 3}/{index:05d}.mp4" for index in range(count)))


def test_70_10_20_split_per_speaker_is_seeded(tmp_path: Path) -> None:
    _tree(tmp_path, {"id10001": 20, "id10002": 10, "id10003": 1})
    (tmp_path / "iden_split.txt").write_text("3 id10001/vid0/00000.wav\n")  # ignored by this protocol
    dataset = VoxCeleb(tmp_path, split="70-10-20", seed=3)
    utterances = dataset.utterances()
    counts = Counter((u.label, u.split) for u in utterances)
    assert (counts[("id10001", "train")], counts[("id10001", "val")], counts[("id10001", "test")]) == (14, 2, 4)
    assert (counts[("id10002", "train")], counts[("id10002", "val")], counts[("id10002", "test")]) == (7, 1, 2)
    assert counts[("id10003", "train")] == 1
    assert dataset.classes() == ["id10001", "id10002", "id10003"]
    assert [u.split for u in VoxCeleb(tmp_path, split="70-10-20", seed=3).utterances()] == [u.split for u in utterances]
    assert [u.split for u in VoxCeleb(tmp_path, split="70-10-20", seed=4).utterances()] != [u.split for u in utterances]
    # A new speaker leaves the others' splits as they were.
    _tree(tmp_path, {"id10004": 5})
    again = {u.key: u.split for u in VoxCeleb(tmp_path, split="70-10-20", seed=3).utterances()}
    assert all(again[u.key] == u.split for u in utterances)

    summary = dataset.describe()
    assert summary["split"] == "70-10-20" and summary["seed"] == 3 and summary["split_file"] is None
    assert summary["counts"]["by_split"] == {"test": 6, "train": 22, "val": 3}


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
