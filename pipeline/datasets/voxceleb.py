"""VoxCeleb1 layout adapter: the mp4/wav/aac trees, iden_split.txt and veri_test.txt."""

from __future__ import annotations

import math
import random
import re
from dataclasses import replace
from pathlib import Path

from pipeline.datasets.base import (
    Adapter,
    DatasetError,
    Trial,
    Utterance,
    attach_boxes,
    count_by,
    no_video_error,
)

# Official list paths: speaker/video/utterance.ext, e.g. "id10001/1zcIwhmdeo4/00001.wav".
_LIST_PATH = re.compile(r"(id\d{5})/([A-Za-z0-9_-]+)/([^/\s]+)\.([A-Za-z0-9]+)")
_SPLITS = {"1": "train", "2": "val", "3": "test"}
# Media trees under the dataset root: (folder, extension); the first is the video, the others audio.
_VIDEO_TREE = ("mp4", ".mp4")
_AUDIO_TREES = (("wav", ".wav"), ("aac", ".m4a"))


def _list_key(path: str, where: str, line: str) -> str:
    """The key (path without extension) of a path in an official list, or a DatasetError."""
    if not _LIST_PATH.fullmatch(path):
        raise DatasetError(f"{where}: path is not idXXXXX/<video>/<name>.<ext>: {line!r}")
    return path.rsplit(".", 1)[0]


def _lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, stripped line) for every non-blank line of a text file."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise DatasetError(f"{path}: cannot read: {error}") from error
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def read_iden_split(path: Path) -> dict[str, str]:
    """Parse iden_split.txt (`<set> <path>` with set 1/2/3) into key -> "train" | "val" | "test"."""
    splits: dict[str, str] = {}
    for number, line in _lines(path):
        where = f"{path}:{number}"
        fields = line.split()
        if len(fields) != 2:
            raise DatasetError(f"{where}: expected 2 fields '<set> <path>', got {len(fields)}: {line!r}")
        if fields[0] not in _SPLITS:
            raise DatasetError(f"{where}: set must be 1, 2 or 3: {line!r}")
        key = _list_key(fields[1], where, line)
        if key in splits:
            raise DatasetError(f"{where}: duplicate key {key}: {line!r}")
        splits[key] = _SPLITS[fields[0]]
    return splits


def _read_numbered_trials(path: Path) -> list[tuple[int, Trial]]:
    """Parse veri_test.txt keeping each trial's line number for later error messages."""
    trials = []
    for number, line in _lines(path):
        where = f"{path}:{number}"
        fields = line.split()
        if len(fields) != 3:
            raise DatasetError(f"{where}: expected 3 fields '<label> <enrol> <test>', got {len(fields)}: {line!r}")
        if fields[0] not in ("0", "1"):
            raise DatasetError(f"{where}: label must be 0 or 1: {line!r}")
        trial = Trial(int(fields[0]), _list_key(fields[1], where, line), _list_key(fields[2], where, line))
        trials.append((number, trial))
    return trials


def read_trials(path: Path) -> list[Trial]:
    """Parse a verification list (`<label> <enrol path> <test path>`, label 1 = same speaker)."""
    return [trial for _, trial in _read_numbered_trials(path)]


def _media_files(root: Path, folder: str, extension: str) -> dict[str, Path]:
    """key -> file for every file with `extension` under root/folder."""
    tree = root / folder
    if not tree.is_dir():
        return {}
    return {path.relative_to(tree).with_suffix("").as_posix(): path for path in tree.rglob(f"*{extension}")}


def scan_voxceleb(root: Path, split_file: Path | None = None) -> list[Utterance]:
    """Find mp4 (and parallel wav/m4a) utterances under `root`, label them by speaker, split them; sorted by key."""
    root = Path(root)
    videos = _media_files(root, *_VIDEO_TREE)
    audio: dict[str, Path] = {}
    for folder, extension in reversed(_AUDIO_TREES):  # wav is applied last, so it wins over m4a
        audio.update(_media_files(root, folder, extension))
    keys = sorted(videos.keys() | audio.keys())
    if not keys:
        looked = ", ".join(f"{folder}/**/*{extension}" for folder, extension in (_VIDEO_TREE, *_AUDIO_TREES))
        raise DatasetError(f"{root}: no media found (looked for {looked})")

    if split_file is None and (root / "iden_split.txt").is_file():
        split_file = root / "iden_split.txt"
    splits = read_iden_split(split_file) if split_file is not None else {}
    missing = sorted(splits.keys() - set(keys))
    if missing:
        raise DatasetError(
            f"{split_file}: {len(missing)} listed key(s) have no media under {root}, first: {missing[0]}"
        )

    utterances = []
    for key in keys:
        if "/" not in key:
            raise DatasetError(f"{root}: media file {key} is not inside a speaker folder (idXXXXX/...)")
        video = videos.get(key)
        utterances.append(Utterance(key, key.split("/", 1)[0], splits.get(key, "none"), video, audio.get(key, video)))
    return utterances


SPLIT_PROTOCOLS = ("official", "70-10-20")
IDENTIFICATION_SPLITS = ("train", "val", "test")


def speaker_of(key: str) -> str:
    """The `idXXXXX` speaker folder of an utterance key."""
    return key.split("/", 1)[0]


def video_of(key: str) -> str:
    """The `idXXXXX/<video>` folder of an utterance key: what the 70-10-20 split assigns, whole."""
    return key.rsplit("/", 1)[0]


def videos_per_split(n_videos: int) -> tuple[int, int]:
    """(test, val) video counts of a speaker with `n_videos`: 20 % and 10 % rounded half up.

    A speaker with few videos keeps at least one train video: with one video it is train only, with two
    it gets one test video and no val; from three on it gets at least one test and one val video.
    """
    if n_videos < 2:
        return 0, 0
    n_test = max(1, math.floor(0.2 * n_videos + 0.5))
    n_val = max(1, math.floor(0.1 * n_videos + 0.5)) if n_videos >= 3 else 0
    return n_test, n_val


def split_by_video(utterances: list[Utterance], speakers: set[str], seed: int = 0) -> list[Utterance]:
    """The paper's 70/10/20 train/val/test split of each of `speakers`' videos (whole `<video>` folders),
    shuffled by `seed`; every other utterance gets split "none".

    Each speaker is shuffled by its own seeded generator, so adding speakers never moves another's videos.
    """
    videos: dict[str, set[str]] = {}
    for utterance in utterances:
        if utterance.label in speakers:
            videos.setdefault(utterance.label, set()).add(video_of(utterance.key))
    split_of: dict[str, str] = {}
    for speaker, own in videos.items():
        order = sorted(own)
        random.Random(f"{seed}:{speaker}").shuffle(order)
        n_test, n_val = videos_per_split(len(order))
        for position, video in enumerate(order):
            split_of[video] = "test" if position < n_test else "val" if position < n_test + n_val else "train"
    return [replace(utterance, split=split_of.get(video_of(utterance.key), "none")) for utterance in utterances]


def _first(names: list[str], count: int = 5) -> str:
    """The first few of a sorted list and how many there are, for messages."""
    more = f", ... ({len(names)} in all)" if len(names) > count else ""
    return ", ".join(names[:count]) + more


class VoxCeleb(Adapter):
    """VoxCeleb1-style dataset: utterances from the media trees, splits and trials from the official lists.

    split "official": iden_split.txt (split_file, else <root>/iden_split.txt; without one every
    utterance is "none"); "70-10-20": the paper's split of each speaker's videos, shuffled by `seed`.
    The speakers of the trial list are left out of identification (split "none": they are used through
    the trials only), so identification runs over the others (VoxCeleb1: 1,251 - 40 = 1,211 speakers);
    allow_trial_speakers_in_training keeps them in the splits instead, and says so in describe().
    Utterances with audio but no video are listed (video_path None) only with audio_only_ok.
    """

    name = "voxceleb"
    options = ("split", "seed", "audio_only_ok", "boxes_dir", "allow_trial_speakers_in_training")
    crop_seconds = 5  # the paper's training crop for VoxCeleb

    def __init__(
        self,
        root: Path,
        split_file: Path | None = None,
        trials_file: Path | None = None,
        split: str = "official",
        seed: int = 0,
        audio_only_ok: bool = False,
        boxes_dir: Path | None = None,
        allow_trial_speakers_in_training: bool = False,
    ):
        if split not in SPLIT_PROTOCOLS:
            raise DatasetError(f"VoxCeleb split must be one of {', '.join(SPLIT_PROTOCOLS)}, got {split!r}")
        if split != "official" and split_file is not None:
            raise DatasetError(f"{split_file}: a split file applies to split='official' only, not {split!r}")
        self.root = Path(root)
        self.split_file = split_file
        if trials_file is None and (self.root / "veri_test.txt").is_file():
            trials_file = self.root / "veri_test.txt"
        self.trials_file = trials_file
        self.split = split
        self.seed = seed
        self.audio_only_ok = audio_only_ok
        self.boxes_dir = boxes_dir
        self.allow_trial_speakers_in_training = allow_trial_speakers_in_training
        self._scanned: list[Utterance] | None = None
        self._numbered_trials: list[tuple[int, Trial]] | None = None
        self._utterances: list[Utterance] | None = None
        self._left_out: list[str] = []  # trial speakers the split would have put in identification

    def _scan(self) -> list[Utterance]:
        """Every utterance under the root with the official splits, audio-only ones included (scanned once)."""
        if self._scanned is None:
            split_file = self.split_file if self.split == "official" else None
            scanned = scan_voxceleb(self.root, split_file)
            self._scanned = [replace(utterance, speaker=utterance.label) for utterance in scanned]
        return self._scanned

    def _read_trials(self) -> list[tuple[int, Trial]]:
        """The trial list's trials with their line numbers (read once); none without a trials file."""
        if self._numbered_trials is None:
            self._numbered_trials = _read_numbered_trials(self.trials_file) if self.trials_file else []
        return self._numbered_trials

    def trial_speakers(self) -> list[str]:
        """The speakers the trial list names, sorted."""
        return sorted({speaker_of(key) for _, trial in self._read_trials() for key in (trial.enrol, trial.test)})

    def utterances(self) -> list[Utterance]:
        """Every utterance the options keep, sorted by key; trial speakers are in no identification split."""
        if self._utterances is None:
            scanned = self._scan()
            kept = scanned if self.audio_only_ok else [u for u in scanned if u.video_path is not None]
            if not kept:
                raise no_video_error(self.root, len(scanned), "utterances with audio only", "mp4/**/*.mp4")
            trial_speakers = set(self.trial_speakers())  # read even when allowed: a bad list fails here
            held_out = set() if self.allow_trial_speakers_in_training else trial_speakers
            if self.split == "70-10-20":
                candidates = {u.label for u in kept}
                kept = split_by_video(kept, candidates - held_out, self.seed)
            else:
                candidates = {u.label for u in kept if u.split in IDENTIFICATION_SPLITS}
                kept = [replace(u, split="none") if u.label in held_out else u for u in kept]
            self._left_out = sorted(candidates & held_out)
            if candidates and candidates <= held_out:
                raise DatasetError(
                    f"{self.trials_file}: names every one of the {len(candidates)} speakers the {self.split} split "
                    "would identify, so none is left to train on; give a trial list over other speakers, or pass "
                    "allow_trial_speakers_in_training (--allow-trial-speakers-in-training) to train on them"
                )
            self._utterances = attach_boxes(kept, self.boxes_dir)
        return self._utterances

    def classes(self) -> list[str]:
        """The speakers of the identification splits, sorted."""
        return sorted({u.label for u in self.utterances() if u.split in IDENTIFICATION_SPLITS})

    def trials(self) -> list[Trial]:
        """The verification trials; every key they name must be a listed utterance."""
        if self.trials_file is None:
            return []
        listed = {utterance.key for utterance in self.utterances()}
        scanned = {utterance.key for utterance in self._scan()}
        speakers = {speaker_of(key) for key in scanned}
        numbered = self._read_trials()
        for number, trial in numbered:
            for key in (trial.enrol, trial.test):
                if key in listed:
                    continue
                where = f"{self.trials_file}:{number}"
                if key in scanned:
                    raise DatasetError(f"{where}: utterance {key} has audio but no video; pass audio_only_ok to use it")
                if speaker_of(key) not in speakers:
                    raise DatasetError(f"{where}: unknown speaker {speaker_of(key)}: no utterances of it under {self.root}")
                raise DatasetError(f"{where}: key {key} is not an utterance under {self.root}")
        return [trial for _, trial in numbered]

    def _protocol_summary(self) -> dict:
        """Protocol, split and trial files, options and what is missing."""
        scanned = self._scan()
        split_file = self.split_file
        if split_file is None and (self.root / "iden_split.txt").is_file():
            split_file = self.root / "iden_split.txt"
        return {
            "protocol": "identification + verification",
            "split": self.split,
            "split_unit": "video" if self.split == "70-10-20" else "split file",
            "split_file": str(split_file) if self.split == "official" and split_file else None,
            "seed": self.seed if self.split == "70-10-20" else None,
            "trials_file": str(self.trials_file) if self.trials_file else None,
            "allow_trial_speakers_in_training": self.allow_trial_speakers_in_training,
            "crop_seconds": self.crop_seconds,
            "audio_only_ok": self.audio_only_ok,
            "missing": {"no_video": sum(u.video_path is None for u in scanned)},
        }

    def _counts(self, utterances: list[Utterance]) -> dict:
        """Counts of utterances, speakers, classes and splits; identification and verification apart."""
        identification = [u for u in utterances if u.split in IDENTIFICATION_SPLITS]
        trial_speakers = self.trial_speakers()
        in_training = sorted({u.label for u in identification if u.split in ("train", "val")} & set(trial_speakers))
        return {
            "counts": {
                "utterances": len(utterances),
                "speakers": len({u.label for u in utterances}),
                "classes": len(self.classes()),
                "by_split": count_by(u.split for u in utterances),
            },
            "identification": {
                "speakers": len({u.label for u in identification}),
                "utterances": {split: sum(u.split == split for u in identification) for split in IDENTIFICATION_SPLITS},
                "videos": {split: len({video_of(u.key) for u in identification if u.split == split})
                           for split in IDENTIFICATION_SPLITS},
                "speakers_without": {split: len({u.label for u in identification} -
                                                {u.label for u in identification if u.split == split})
                                     for split in IDENTIFICATION_SPLITS},
            },
            "verification": {
                "speakers": len(trial_speakers),
                "trials": len(self._read_trials()),
                "utterances": len({key for _, trial in self._read_trials() for key in (trial.enrol, trial.test)}),
                "left_out_of_identification": len(self._left_out),
                "left_out_first": self._left_out[:5],
                "in_training": len(in_training),
                "in_training_first": in_training[:5],
            },
        }

    def headline(self, summary: dict) -> str:
        """Identification and verification speakers, utterances per split and trials, in one line."""
        identification, verification = summary["identification"], summary["verification"]
        by_split = "/".join(str(identification["utterances"][split]) for split in IDENTIFICATION_SPLITS)
        line = (f"identification {identification['speakers']} speakers, {by_split} train/val/test utterances"
                + (f" ({'/'.join(str(identification['videos'][s]) for s in IDENTIFICATION_SPLITS)} videos)"
                   if self.split == "70-10-20" else "")
                + f"; verification {verification['speakers']} speakers, {verification['trials']} trials over "
                f"{verification['utterances']} utterances")
        if verification["left_out_of_identification"]:
            line += (f"; {verification['left_out_of_identification']} trial speaker(s) left out of identification "
                     f"({_first(self._left_out)})")
        if verification["in_training"]:
            line += (f"; {verification['in_training']} trial speaker(s) IN TRAINING "
                     "(--allow-trial-speakers-in-training): verification is not on unseen speakers")
        return line
