"""RAVDESS adapter: the seven-field filename code, audio/video pairing across modalities, 7 or 8 classes, LOSO folds.

A RAVDESS file is named MM-VV-EE-II-SS-RR-AA.ext: modality (01 full-AV mp4, 02 video-only mp4,
03 audio-only wav), vocal channel (01 speech, 02 song), emotion (01-08), intensity (01 normal,
02 strong), statement (01, 02), repetition (01, 02), actor (01-24). The same performance exists once
per modality, so an utterance is the code without its modality field: its video comes from the 01 or
02 mp4 and its audio from the 03 wav (else from the 01 mp4). The published zips unpack to
`Actor_AA/` folders, optionally under a per-zip folder; any nesting under the root is read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
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

MODALITIES = {"01": "full-AV", "02": "video-only", "03": "audio-only"}
VOCAL_CHANNELS = {"01": "speech", "02": "song"}
EMOTIONS = {
    "01": "neutral",
    "02": "calm",
    "03": "happy",
    "04": "sad",
    "05": "angry",
    "06": "fearful",
    "07": "disgust",
    "08": "surprised",
}
INTENSITIES = {"01": "normal", "02": "strong"}
STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
REPETITIONS = {"01": "1st", "02": "2nd"}
ACTORS = {f"{number:02d}" for number in range(1, 25)}
_EXTENSIONS = {"01": ".mp4", "02": ".mp4", "03": ".wav"}
_SONG_EMOTIONS = {"neutral", "calm", "happy", "sad", "angry", "fearful"}  # song has no disgust or surprise
# The paper's 7 classes merge calm into neutral; "8" keeps every RAVDESS emotion.
CLASS_SETS = {
    "7": ["neutral", "happy", "sad", "angry", "fearful", "disgust", "surprised"],
    "8": list(EMOTIONS.values()),
}
_LOOKS_LIKE_CODE = re.compile(r"[0-9]+(-[0-9]+)+")
_ACTOR_FOLDER = re.compile(r"Actor_(\d+)")


@dataclass(frozen=True)
class RavdessCode:
    """The fields of one RAVDESS filename, as their two-digit codes."""

    modality: str
    channel: str
    emotion: str
    intensity: str
    statement: str
    repetition: str
    actor: str

    @property
    def key(self) -> str:
        """The utterance key: actor folder plus the code without its modality (shared by 01/02/03 files)."""
        fields = (self.channel, self.emotion, self.intensity, self.statement, self.repetition, self.actor)
        return f"Actor_{self.actor}/" + "-".join(fields)


def parse_filename(path: Path) -> RavdessCode:
    """The code of a file named MM-VV-EE-II-SS-RR-AA.(mp4|wav), or a DatasetError naming the file and field."""
    path = Path(path)
    fields = path.stem.split("-")
    if len(fields) != 7 or not all(len(field) == 2 and field.isdigit() for field in fields):
        raise DatasetError(f"{path}: name is not seven two-digit fields MM-VV-EE-II-SS-RR-AA")
    code = RavdessCode(*fields)
    for name, value, known in (
        ("modality", code.modality, MODALITIES),
        ("vocal channel", code.channel, VOCAL_CHANNELS),
        ("emotion", code.emotion, EMOTIONS),
        ("intensity", code.intensity, INTENSITIES),
        ("statement", code.statement, STATEMENTS),
        ("repetition", code.repetition, REPETITIONS),
        ("actor", code.actor, ACTORS),
    ):
        if value not in known:
            raise DatasetError(f"{path}: {name} code {value} is not one of {', '.join(sorted(known))}")
    if code.emotion == "01" and code.intensity == "02":
        raise DatasetError(f"{path}: neutral (emotion 01) has no strong intensity (02) in RAVDESS")
    if code.channel == "02" and EMOTIONS[code.emotion] not in _SONG_EMOTIONS:
        raise DatasetError(f"{path}: song (vocal channel 02) has no {EMOTIONS[code.emotion]} clips in RAVDESS")
    if path.suffix.lower() != _EXTENSIONS[code.modality]:
        expected = _EXTENSIONS[code.modality]
        modality = f"{code.modality} ({MODALITIES[code.modality]})"
        raise DatasetError(f"{path}: modality {modality} should be a {expected} file")
    folder = _ACTOR_FOLDER.fullmatch(path.parent.name)
    if folder and int(folder.group(1)) != int(code.actor):
        raise DatasetError(f"{path}: file of actor {code.actor} inside folder {path.parent.name}")
    return code


@dataclass
class _Scan:
    """Everything found under the root, before options pick what is listed."""

    files: dict[str, dict[str, Path]]  # utterance key -> modality -> file
    codes: dict[str, RavdessCode]  # utterance key -> its code (modality of the first file seen)
    ignored: list[Path]  # media files whose names are not RAVDESS codes


def scan_ravdess(root: Path) -> _Scan:
    """Find every RAVDESS clip under `root`; duplicate files for one (utterance, modality) are an error."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: RAVDESS root is not a directory")
    files: dict[str, dict[str, Path]] = {}
    codes: dict[str, RavdessCode] = {}
    ignored: list[Path] = []
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in (".mp4", ".wav") or is_hidden(path, root) or not path.is_file():
            continue
        if not _LOOKS_LIKE_CODE.fullmatch(path.stem):
            ignored.append(path)
            continue
        code = parse_filename(path)
        by_modality = files.setdefault(code.key, {})
        if code.modality in by_modality:
            raise DatasetError(
                f"{path}: duplicate of {by_modality[code.modality]} (both are modality {code.modality} "
                f"of utterance {code.key})"
            )
        by_modality[code.modality] = path
        codes.setdefault(code.key, code)
    if not files:
        raise DatasetError(f"{root}: no RAVDESS clips found (looked for **/MM-VV-EE-II-SS-RR-AA.mp4 and .wav)")
    return _Scan(files, codes, ignored)


class Ravdess(FoldedCorpus):
    """RAVDESS emotion corpus: labels from filenames, leave-one-actor-out folds.

    fold: the actor (1-24) held out as test; val is the next actor present, cyclically, when at least
    three actors are present; every other actor trains. None: every utterance is "train".
    By default as the paper: speech and song, 7 classes (calm merged into neutral).
    """

    name = "ravdess"
    options = ("fold", "classes", "include_song", "audio_only_ok", "boxes_dir")
    title = "RAVDESS"
    fold_protocol = "leave-one-actor-out folds"
    fold_unit = "actor"
    fold_numbers = range(1, 25)
    scan_root = staticmethod(scan_ravdess)
    crop_seconds = 4  # the paper's clip length: a 4 s clip is used whole, others cut or repeat-padded

    def __init__(
        self,
        root: Path,
        split_file: Path | None = None,
        trials_file: Path | None = None,
        fold: int | None = None,
        classes: str = "7",
        include_song: bool = True,  # the paper uses speech and song: 2,452 clips
        audio_only_ok: bool = False,
        boxes_dir: Path | None = None,
    ):
        super().__init__(root, split_file, trials_file, fold, audio_only_ok, boxes_dir)
        classes = str(classes)
        if classes not in CLASS_SETS:
            raise DatasetError(f"RAVDESS classes must be one of {sorted(CLASS_SETS)}, got {classes!r}")
        self.class_set = classes
        self.include_song = include_song

    def classes(self) -> list[str]:
        """The protocol's class names in a fixed order (classes absent from the files included)."""
        return list(CLASS_SETS[self.class_set])

    def class_of(self, emotion: str) -> str:
        """The class of an emotion: itself, or neutral for calm in the 7-class protocol."""
        return "neutral" if self.class_set == "7" and emotion == "calm" else emotion

    def _pairs(self) -> tuple[list[Utterance], dict[str, list[str]]]:
        """Every utterance the options keep (split not yet set), and the keys each problem excluded."""
        scan = self._scanned()
        kept, excluded = [], {"song": [], "audio_only": [], "video_only_without_audio": []}
        for key in sorted(scan.files):
            by_modality, code = scan.files[key], scan.codes[key]
            if code.channel == "02" and not self.include_song:
                excluded["song"].append(key)
                continue
            video = by_modality.get("01", by_modality.get("02"))
            audio = by_modality.get("03", by_modality.get("01"))
            if audio is None:
                excluded["video_only_without_audio"].append(key)
                continue
            if video is None:
                excluded["audio_only"].append(key)
                if not self.audio_only_ok:
                    continue
            label = self.class_of(EMOTIONS[code.emotion])
            kept.append(Utterance(key, label, "train", video, audio, speaker=f"Actor_{code.actor}"))
        return kept, excluded

    def _fold_actors(self, actors: list[str]) -> tuple[list[str], list[str]]:
        """(test actors, val actors) of the fold among the actors present."""
        if self.fold is None:
            return [], []
        test = f"Actor_{self.fold:02d}"
        if test not in actors:
            raise DatasetError(
                f"{self.root}: fold {self.fold} holds out {test}, which has no usable clips; "
                f"actors present: {', '.join(actors)}"
            )
        if len(actors) < 3:
            return [test], []  # with two actors, a validation actor would leave nothing to train on
        return [test], [next_in_cycle(actors, test)]

    def folds(self) -> list[int]:
        """The folds this corpus has: every actor with a usable clip (the number of its `Actor_NN` folder)."""
        return sorted({int(u.speaker.removeprefix("Actor_")) for u in self._pairs()[0]})

    def utterances(self) -> list[Utterance]:
        """Every utterance of the protocol, sorted by key (actor, then code), with its fold split."""
        if self._utterances is None:
            kept, excluded = self._pairs()
            if not kept:
                if excluded["audio_only"]:
                    count = len(excluded["audio_only"])
                    raise no_video_error(self.root, count, "audio-only clips (modality 03)", "modality 01/02")
                problems = ", ".join(f"{len(keys)} {name}" for name, keys in excluded.items() if keys)
                raise DatasetError(f"{self.root}: no usable RAVDESS utterances ({problems})")
            test, val = self._fold_actors(sorted({u.speaker for u in kept}))
            kept = [replace(u, split="test" if u.speaker in test else "val" if u.speaker in val else "train")
                    for u in kept]
            self._utterances = attach_boxes(kept, self.boxes_dir)
        return self._utterances

    def _protocol_summary(self) -> dict:
        """Protocol, fold, class mapping, options, files found and what is missing or excluded."""
        _, excluded = self._pairs()
        scan = self._scanned()
        return {
            "protocol": "leave-one-actor-out" if self.fold is not None else "no fold: all train",
            "fold": self.fold,
            "classes": self.classes(),
            "class_mapping": {emotion: self.class_of(emotion) for emotion in EMOTIONS.values()},
            "include_song": self.include_song,
            "crop_seconds": self.crop_seconds,
            "audio_only_ok": self.audio_only_ok,
            "files": {MODALITIES[m]: sum(m in by_modality for by_modality in scan.files.values()) for m in MODALITIES},
            "excluded_song": len(excluded["song"]),
            # audio-only clips are listed (with no video) only when audio_only_ok
            "missing": {"no_video": len(excluded["audio_only"]), "no_audio": len(excluded["video_only_without_audio"])},
            "ignored_files": {"count": len(scan.ignored), "examples": [str(path) for path in scan.ignored[:5]]},
        }

    def _counts(self, utterances: list[Utterance]) -> dict:
        """The fold's test and val actors and the counts by split, class and actor."""
        test, val = self._fold_actors(sorted({u.speaker for u in utterances}))
        return {
            "test_actors": test,
            "val_actors": val,
            "counts": {
                "utterances": len(utterances),
                "with_video": sum(u.video_path is not None for u in utterances),
                "by_split": count_by(u.split for u in utterances),
                "by_class": count_by(u.label for u in utterances),
                "by_actor": count_by(u.speaker for u in utterances),
            },
        }
