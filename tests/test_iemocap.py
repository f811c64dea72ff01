"""IEMOCAP: EmoEvaluation blocks in their real format, sentence wavs, turns cut from dialog avis, session folds."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from media_files import mux_audio, mux_grey_frames, write_wav

from pipeline.datasets.base import DatasetError
from pipeline.datasets.iemocap import Iemocap, read_emo_evaluation
from pipeline.datasets.registry import DATASETS
from pipeline.media import load_audio_visual

HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
ANNOTATIONS = (
    "C-E2:\tNeutral;\t()\nC-E3:\tNeutral; Frustration;\t()\nC-F1:\tNeutral;\t(curious)\n"
    "A-E3:\tval 3; act 2; dom  2;\t()\nA-F1:\tval 3; act 2; dom  1;\t(mildly aggravated)\n"
)
# (turn suffix, emotion, start, end) of every dialog: 4 kept turns (neu, exc→happy, ang, sad) and 2 dropped.
TURNS = [
    ("F000", "neu", 0.2, 0.9),
    ("M000", "exc", 1.0, 1.52),
    ("F001", "fru", 1.6, 1.9),
    ("M001", "ang", 2.0, 2.6),
    ("F002", "xxx", 2.6, 2.8),
    ("M002", "sad", 2.9, 3.6),
]
DIALOG_SECONDS, SOURCE_FPS = 4.0, 30


def block(start: float, end: float, turn: str, emotion: str) -> str:
    return f"[{start:.4f} - {end:.4f}]\t{turn}\t{emotion}\t[2.5000, 3.0000, 2.0000]\n{ANNOTATIONS}\n"


def _write_dialog_avi(path: Path) -> Path:
    """A 4 s dialog video like IEMOCAP's: MPEG-4 part 2 at 30 fps in avi, grey level 2 * frame index, PCM audio."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="avi") as container:
        sound = container.add_stream("pcm_s16le", rate=16000, layout="mono")
        video = container.add_stream("mpeg4", rate=SOURCE_FPS)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        times = np.arange(round(DIALOG_SECONDS * 16000)) / 16000
        mux_audio(container, sound, (0.2 * np.sin(2 * np.pi * 300 * times) * 32767).astype(np.int16), 16000)
        levels = [2 * index for index in range(round(DIALOG_SECONDS * SOURCE_FPS))]
        mux_grey_frames(container, video, levels, SOURCE_FPS)
    return path


def write_session(root: Path, session: int, dialogs: tuple[str, ...] = ("impro01",), video: bool = True) -> None:
    """One session in the published layout: label files, sentence wavs and (optionally) dialog avis."""
    for part in dialogs:
        dialog = f"Ses{session:02d}F_{part}"
        text = HEADER + "".join(block(s, e, f"{dialog}_{suffix}", emotion) for suffix, emotion, s, e in TURNS)
        labels = root / f"Session{session}" / "dialog" / "EmoEvaluation" / f"{dialog}.txt"
        labels.parent.mkdir(parents=True, exist_ok=True)
        labels.write_text(text)
        for suffix, _, start, end in TURNS:
            wav = root / f"Session{session}" / "sentences" / "wav" / dialog / f"{dialog}_{suffix}.wav"
            wav.parent.mkdir(parents=True, exist_ok=True)
            write_wav(wav, seconds=end - start, sample_rate=16000, channels=1)
        if video:
            _write_dialog_avi(root / f"Session{session}" / "dialog" / "avi" / "DivX" / f"{dialog}.avi")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("IEMOCAP_full_release")
    for session in (1, 2, 3):
        write_session(root, session, ("impro01", "script01_1") if session == 1 else ("impro01",))
    # Things a real copy has that are not labels: subfolders and macOS `._` files.
    categorical = root / "Session1" / "dialog" / "EmoEvaluation" / "Categorical"
    categorical.mkdir()
    (categorical / "Ses01F_impro01_e2_cat.txt").write_text(":Neutral state; ()\n")
    (root / "Session1" / "dialog" / "EmoEvaluation" / "._Ses01F_impro01.txt").write_bytes(b"\0\5\26\7junk")
    return root


def test_reads_the_real_label_format(tree: Path) -> None:
    path = tree / "Session1" / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt"
    turns = read_emo_evaluation(path, 1)
    assert [turn.emotion for turn in turns] == ["neu", "exc", "fru", "ang", "xxx", "sad"]
    first = turns[0]
    assert (first.name, first.dialog, first.speaker, first.start, first.end) == (
        "Ses01F_impro01_F000", "Ses01F_impro01", "Ses01F", 0.2, 0.9)
    assert first.where == f"{path}:3"


def test_four_classes_and_media_paths(tree: Path) -> None:
    dataset = DATASETS["iemocap"](tree)
    assert dataset.classes() == ["neutral", "happy", "angry", "sad"]
    utterances = {u.key: u for u in dataset.utterances()}
    assert len(utterances) == 4 * 4  # 4 dialogs, fru and xxx dropped
    turn = utterances["Ses01F_script01_1/Ses01F_script01_1_M000"]
    assert (turn.label, turn.speaker, turn.start, turn.end, turn.split) == ("happy", "Ses01M", 1.0, 1.52, "train")
    assert turn.video_path == tree / "Session1/dialog/avi/DivX/Ses01F_script01_1.avi"
    assert turn.audio_path == tree / "Session1/sentences/wav/Ses01F_script01_1/Ses01F_script01_1_M000.wav"
    assert len(Iemocap(tree, include_scripted=False).utterances()) == 3 * 4


def test_turn_video_is_cut_from_the_dialog_and_aligned(tree: Path) -> None:
    turn = {u.key: u for u in Iemocap(tree).utterances()}["Ses02F_impro01/Ses02F_impro01_M000"]
    audio, frames = load_audio_visual(turn.video_path, turn.audio_path, start=turn.start, end=turn.end)
    assert len(frames) == 13 and len(audio) == 13 * 640  # 0.52 s: 13 frames at 25 fps
    with av.open(str(turn.video_path)) as container:
        source = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    for index, frame in enumerate(frames):  # the 30 fps frame on screen at start + i/25
        assert np.array_equal(frame, source[int((turn.start + index / 25) * SOURCE_FPS + 1e-9)])


def test_session_folds(tree: Path) -> None:
    for fold, val in ((1, "Ses02F"), (2, "Ses03M"), (3, "Ses01F")):
        utterances = Iemocap(tree, fold=fold).utterances()
        by_split = {split: {u.speaker for u in utterances if u.split == split} for split in ("train", "val", "test")}
        assert by_split["test"] == {f"Ses{fold:02d}F", f"Ses{fold:02d}M"} and by_split["val"] == {val}
        assert not by_split["train"] & (by_split["test"] | by_split["val"])
    with pytest.raises(DatasetError, match="fold 4 holds out Session4, which is absent"):
        Iemocap(tree, fold=4).utterances()


def test_describe(tree: Path) -> None:
    summary = Iemocap(tree, fold=1).describe()
    json.dumps(summary)
    assert summary["class_mapping"] == {"neu": "neutral", "hap": "happy", "exc": "happy", "ang": "angry", "sad": "sad"}
    assert summary["dropped_by_emotion"] == {"fru": 4, "xxx": 4} and summary["labelled_turns"] == 24
    assert summary["counts"]["by_split"] == {"test": 8, "train": 7, "val": 1}  # Ses02F speaks 1 kept turn
    assert summary["missing"]["dialog_videos"] == [] and summary["val_speakers"] == ["Ses02F"]
    assert summary["crop_seconds"] == 4  # the paper's crop, which stages 1 and 3 default to


def test_missing_videos(tmp_path: Path) -> None:
    write_session(tmp_path, 1, video=False)
    with pytest.raises(DatasetError) as error:
        Iemocap(tmp_path).utterances()
    assert str(tmp_path) in str(error.value) and "4 labelled turns and no video" in str(error.value)
    assert all(u.video_path is None for u in Iemocap(tmp_path, audio_only_ok=True).utterances())
    assert Iemocap(tmp_path).describe()["missing"]["dialog_videos"] == ["Ses01F_impro01"]
