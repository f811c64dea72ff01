"""IEMOCAP adapter: EmoEvaluation label blocks, sentence wavs, turns cut from the dialog videos, 5 session folds.

Published layout (IEMOCAP_full_release/):
  SessionN/dialog/EmoEvaluation/<dialog>.txt    label blocks, one per turn
  SessionN/sentences/wav/<dialog>/<turn>.wav    the turn's audio
  SessionN/dialog/avi/DivX/<dialog>.avi         the whole dialog's video, cut by the turn's [start - end]
A label block opens with `[start - end]<TAB>turn<TAB>emotion<TAB>[v, a, d]`, followed by one line per
annotator (`C-E2:<TAB>Neutral;<TAB>()`, `A-E3:<TAB>val 3; act 2; dom  2;<TAB>()`). Turn names are
Ses0N{F|M}_<dialog part>_{F|M}NNN: the last letter is the speaking actor's gender, and each session has
one female and one male actor, so session + gender names the speaker.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.datasets.base import (
    DatasetError,
    FoldedCorpus,
    Utterance,
    attach_boxes,
    count_by,
    is_hidden,
    next_in_cycle,
    no_video_error,
)

EMOTION_CODES = {
    "neu": "neutral",
    "hap": "happiness",
    "exc": "excited",
    "ang": "anger",
    "sad": "sadness",
    "fru": "frustration",
    "sur": "surprise",
    "fea": "fear",
    "dis": "disgust",
    "oth": "other",
    "xxx": "no agreement",
}
# The usual 4-class protocol: happy and excited merged, every other code dropped.
CLASSES = ["neutral", "happy", "angry", "sad"]
CLASS_OF_CODE = {"neu": "neutral", "hap": "happy", "exc": "happy", "ang": "angry", "sad": "sad"}
SESSIONS = (1, 2, 3, 4, 5)

_NUMBER = r"-?\d+(?:\.\d*)?"
_TURN_LINE = re.compile(
    rf"\[\s*(?P<start>{_NUMBER})\s*-\s*(?P<end>{_NUMBER})\s*\]\s+(?P<turn>\S+)\s+(?P<emotion>\S+)"
    rf"\s+\[\s*{_NUMBER}\s*,\s*{_NUMBER}\s*,\s*{_NUMBER}\s*\]"
)
_ANNOTATOR_LINE = re.compile(r"[A-Za-z]+-[A-Za-z0-9]+:.*")
_TURN_NAME = re.compile(r"(?P<dialog>Ses0(?P<session>\d)[FM]_\w+)_(?P<gender>[FM])\d+")


@dataclass(frozen=True)
class Turn:
    """One labelled turn of an EmoEvaluation file."""

    name: str  # e.g. "Ses01F_impro01_F000"
    dialog: str  # e.g. "Ses01F_impro01"
    session: int
    speaker: str  # session and gender, e.g. "Ses01F"
    emotion: str  # the three-letter code
    start: float
    end: float
    where: str  # "<file>:<line>", for messages


def read_emo_evaluation(path: Path, session: int | None = None) -> list[Turn]:
    """Parse one EmoEvaluation file; a malformed line is a DatasetError naming file:line."""
    path = Path(path)
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        raise DatasetError(f"{path}: cannot read: {error}") from error
    turns = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        where = f"{path}:{number}"
        if not line or line.startswith("%") or _ANNOTATOR_LINE.fullmatch(line):
            continue
        match = _TURN_LINE.fullmatch(line)
        if match is None:
            raise DatasetError(
                f"{where}: expected '[start - end]<TAB>turn<TAB>emotion<TAB>[v, a, d]' or an annotator line: {line!r}"
            )
        turns.append(_turn(match, path, session, where, line))
    return turns


def _turn(match: re.Match, path: Path, session: int | None, where: str, line: str) -> Turn:
    """Validate one turn line's fields against its file and session."""
    name, emotion = match["turn"], match["emotion"]
    start, end = float(match["start"]), float(match["end"])
    parts = _TURN_NAME.fullmatch(name)
    if parts is None:
        raise DatasetError(f"{where}: turn name {name!r} is not Ses0N[FM]_<dialog>_[FM]NNN: {line!r}")
    if parts["dialog"] != path.stem:
        raise DatasetError(f"{where}: turn {name} does not belong to dialog {path.stem}: {line!r}")
    if session is not None and int(parts["session"]) != session:
        raise DatasetError(f"{where}: turn {name} is not from Session{session}: {line!r}")
    if emotion not in EMOTION_CODES:
        raise DatasetError(f"{where}: emotion {emotion!r} is not one of {', '.join(EMOTION_CODES)}: {line!r}")
    if not 0 <= start < end:
        raise DatasetError(f"{where}: turn {name} has an empty or negative time range [{start} - {end}]")
    session_number = int(parts["session"])
    speaker = f"Ses{session_number:02d}{parts['gender']}"
    return Turn(name, parts["dialog"], session_number, speaker, emotion, start, end, where)


def _dialog_video(session_dir: Path, dialog: str) -> Path | None:
    """The dialog's avi (published under dialog/avi/DivX/; dialog/avi/ also accepted), or None."""
    for folder in ("avi/DivX", "avi"):
        path = session_dir / "dialog" / folder / f"{dialog}.avi"
        if path.is_file():
            return path
    return None


@dataclass
class _Scan:
    turns: list[Turn]  # every labelled turn, every emotion
    sessions: list[int]  # sessions present
    videos: dict[str, Path | None]  # dialog -> its avi, None when absent
    audio: dict[str, Path]  # turn -> its sentence wav (the expected path, which may not exist)


def scan_iemocap(root: Path) -> _Scan:
    """Read every session's EmoEvaluation files; duplicate turns are an error naming both places."""
    root = Path(root)
    sessions = [number for number in SESSIONS if (root / f"Session{number}").is_dir()]
    if not sessions:
        raise DatasetError(f"{root}: no Session1..Session5 folders (the IEMOCAP_full_release layout)")
    turns: list[Turn] = []
    seen: dict[str, Turn] = {}
    videos: dict[str, Path | None] = {}
    audio: dict[str, Path] = {}
    for number in sessions:
        session_dir = root / f"Session{number}"
        label_dir = session_dir / "dialog" / "EmoEvaluation"
        label_files = sorted(
            path for path in label_dir.glob("*.txt") if path.is_file() and not is_hidden(path, label_dir)
        )
        if not label_files:
            raise DatasetError(f"{label_dir}: no EmoEvaluation label files (*.txt)")
        for label_file in label_files:
            for turn in read_emo_evaluation(label_file, number):
                if turn.name in seen:
                    raise DatasetError(f"{turn.where}: duplicate turn {turn.name}, first at {seen[turn.name].where}")
                seen[turn.name] = turn
                turns.append(turn)
                if turn.dialog not in videos:
                    videos[turn.dialog] = _dialog_video(session_dir, turn.dialog)
                audio[turn.name] = session_dir / "sentences" / "wav" / turn.dialog / f"{turn.name}.wav"
    return _Scan(turns, sessions, videos, audio)


class Iemocap(FoldedCorpus):
    """IEMOCAP, 4 classes (neutral, happy+excited, angry, sad), 5 folds by session.

    fold: the session (1-5) held out as test. Validation is one speaker of the next session present,
    cyclically: its female actor for odd folds, its male actor for even folds (speaker-independent, and
    both genders over the five folds); the rest trains. None: every utterance is "train".
    Turns whose dialog has no video are listed with video_path None only with audio_only_ok.
    """

    name = "iemocap"
    options = ("fold", "include_scripted", "audio_only_ok", "boxes_dir")
    title = "IEMOCAP"
    fold_protocol = "folds by session"
    fold_unit = "session"
    fold_numbers = SESSIONS
    scan_root = staticmethod(scan_iemocap)
    crop_seconds = 4  # the paper's crop: longer turns cut, shorter ones repeat-padded

    def __init__(
        self,
        root: Path,
        split_file: Path | None = None,
        trials_file: Path | None = None,
        fold: int | None = None,
        include_scripted: bool = True,
        audio_only_ok: bool = False,
        boxes_dir: Path | None = None,
    ):
        super().__init__(root, split_file, trials_file, fold, audio_only_ok, boxes_dir)
        self.include_scripted = include_scripted

    def classes(self) -> list[str]:
        """The 4 protocol classes in a fixed order."""
        return list(CLASSES)

    def _kept_turns(self) -> list[Turn]:
        """Turns of the 4 classes (and of the chosen dialog kinds)."""
        return [
            turn
            for turn in self._scanned().turns
            if turn.emotion in CLASS_OF_CODE and (self.include_scripted or "_script" not in turn.dialog)
        ]

    def folds(self) -> list[int]:
        """The folds this corpus has: every session with a labelled 4-class turn."""
        return sorted({turn.session for turn in self._kept_turns()})

    def fold_speakers(self) -> tuple[list[int], list[str]]:
        """(test sessions, val speakers) of the fold among the sessions present."""
        if self.fold is None:
            return [], []
        sessions = self._scanned().sessions
        if self.fold not in sessions:
            present = ", ".join(f"Session{number}" for number in sessions)
            raise DatasetError(
                f"{self.root}: fold {self.fold} holds out Session{self.fold}, which is absent; present: {present}"
            )
        if len(sessions) < 2:
            return [self.fold], []
        following = next_in_cycle(sessions, self.fold)
        return [self.fold], [f"Ses{following:02d}{'F' if self.fold % 2 else 'M'}"]

    def utterances(self) -> list[Utterance]:
        """Every 4-class turn, sorted by key (dialog/turn), with its fold split."""
        if self._utterances is None:
            scan = self._scanned()
            turns = self._kept_turns()
            if not turns:
                codes = ", ".join(CLASS_OF_CODE)
                raise DatasetError(f"{self.root}: no turns labelled {codes} in the EmoEvaluation files")
            with_video = [turn for turn in turns if scan.videos[turn.dialog] is not None]
            if not self.audio_only_ok:
                if not with_video:
                    raise no_video_error(self.root, len(turns), "labelled turns", "dialog/avi/DivX/*.avi")
                turns = with_video
            test, val = self.fold_speakers()
            utterances = [
                Utterance(
                    key=f"{turn.dialog}/{turn.name}",
                    label=CLASS_OF_CODE[turn.emotion],
                    split="test" if turn.session in test else "val" if turn.speaker in val else "train",
                    video_path=scan.videos[turn.dialog],
                    audio_path=scan.audio[turn.name],
                    start=turn.start,
                    end=turn.end,
                    speaker=turn.speaker,
                )
                for turn in turns
            ]
            utterances.sort(key=lambda utterance: utterance.key)
            self._utterances = attach_boxes(utterances, self.boxes_dir)
        return self._utterances

    def _protocol_summary(self) -> dict:
        """Protocol, fold, class mapping, options, sessions and what is missing or dropped."""
        scan = self._scanned()
        kept = self._kept_turns()
        return {
            "protocol": "leave-one-session-out (5 folds)" if self.fold is not None else "no fold: all train",
            "fold": self.fold,
            "classes": self.classes(),
            "class_mapping": dict(CLASS_OF_CODE),
            "include_scripted": self.include_scripted,
            "crop_seconds": self.crop_seconds,
            "audio_only_ok": self.audio_only_ok,
            "sessions": [f"Session{number}" for number in scan.sessions],
            "labelled_turns": len(scan.turns),
            "dropped_by_emotion": count_by(turn.emotion for turn in scan.turns if turn.emotion not in CLASS_OF_CODE),
            "missing": {
                "dialog_videos": sorted(dialog for dialog, video in scan.videos.items() if video is None),
                "turns_without_video": sum(scan.videos[turn.dialog] is None for turn in kept),
                "turns_without_audio": sum(not scan.audio[turn.name].is_file() for turn in kept),
            },
        }

    def _counts(self, utterances: list[Utterance]) -> dict:
        """The fold's test sessions and val speakers and the counts by split, class and speaker."""
        test, val = self.fold_speakers()
        return {
            "test_sessions": [f"Session{number}" for number in test],
            "val_speakers": val,
            "counts": {
                "utterances": len(utterances),
                "by_split": count_by(u.split for u in utterances),
                "by_class": count_by(u.label for u in utterances),
                "by_speaker": count_by(u.speaker for u in utterances),
            },
        }
