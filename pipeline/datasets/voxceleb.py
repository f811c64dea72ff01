"""VoxCeleb1 layout adapter: the mp4/wav/aac trees, iden_split.txt and veri_test.txt."""

from __future__ import annotations

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


def split_per_speaker(utterances: list[Utterance], seed: int = 0) -> list[Utterance]:
    """The paper's 70/10/20 train/val/test split of each speaker's utterances, shuffled by `seed`.

    Each speaker is shuffled by its own seeded generator, so adding speakers never moves another's
    utterances; test and val get round(20%) and round(10%) of a speaker's utterances, train the rest.
    """
    by_speaker: dict[str, list[Utterance]] = {}
    for utterance in utterances:
        by_speaker.setdefault(utterance.label, []).append(utterance)
    splits: dict[str, str] = {}
    for speaker, own in by_speaker.items():
        keys = sorted(utterance.key for utterance in own)
        random.Random(f"{seed}:{speaker}").shuffle(keys)
        n_test, n_val = round(0.2 * len(keys)), round(0.1 * len(keys))
        for position, key in enumerate(keys):
            splits[key] = "test" if position < n_test else "val" if position < n_test + n_val else "train"
    return [replace(utterance, split=splits[utterance.key]) for utterance in utterances]


class VoxCeleb(Adapter):
    """VoxCeleb1-style dataset: utterances from the media trees, splits and trials from the official lists.

    split "official": iden_split.txt (split_file, else <root>/iden_split.txt; without one every
    utterance is "none"); "70-10-20": the paper's per-speaker split, shuffled by `seed`.
    Utterances with audio but no video are listed (video_path None) only with audio_only_ok.
    """

    name = "voxceleb"
    options = ("split", "seed", "audio_only_ok", "boxes_dir")

    def __init__(
        self,
        root: Path,
        split_file: Path | None = None,
        trials_file: Path | None = None,
        split: str = "official",
        seed: int = 0,
        audio_only_ok: bool = False,
        boxes_dir: Path | None = None,
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
        self._scanned: list[Utterance] | None = None
        self._utterances: list[Utterance] | None = None

    def _scan(self) -> list[Utterance]:
        """Every utterance under the root with the official splits, audio-only ones included (scanned once)."""
        if self._scanned is None:
            split_file = self.split_file if self.split == "official" else None
            scanned = scan_voxceleb(self.root, split_file)
            if self.split == "70-10-20":
                scanned = [replace(utterance, split="train") for utterance in scanned]
            self._scanned = [replace(utterance, speaker=utterance.label) for utterance in scanned]
        return self._scanned

    def utterances(self) -> list[Utterance]:
        """Every utterance the options keep, sorted by key."""
        if self._utterances is None:
            scanned = self._scan()
            kept = scanned if self.audio_only_ok else [u for u in scanned if u.video_path is not None]
            if not kept:
                raise no_video_error(self.root, len(scanned), "utterances with audio only", "mp4/**/*.mp4")
            if self.split == "70-10-20":
                kept = split_per_speaker(kept, self.seed)
            self._utterances = attach_boxes(kept, self.boxes_dir)
        return self._utterances

    def classes(self) -> list[str]:
        """The speakers of the identification splits, sorted."""
        return sorted({u.label for u in self.utterances() if u.split in ("train", "val", "test")})

    def trials(self) -> list[Trial]:
        """The verification trials; every key they name must be a listed utterance."""
        if self.trials_file is None:
            return []
        listed = {utterance.key for utterance in self.utterances()}
        scanned = {utterance.key for utterance in self._scan()}
        speakers = {key.split("/", 1)[0] for key in scanned}
        numbered = _read_numbered_trials(self.trials_file)
        for number, trial in numbered:
            for key in (trial.enrol, trial.test):
                if key in listed:
                    continue
                where = f"{self.trials_file}:{number}"
                if key in scanned:
                    raise DatasetError(f"{where}: utterance {key} has audio but no video; pass audio_only_ok to use it")
                speaker = key.split("/", 1)[0]
                if speaker not in speakers:
                    raise DatasetError(f"{where}: unknown speaker {speaker}: no utterances of it under {self.root}")
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
            "split_file": str(split_file) if self.split == "official" and split_file else None,
            "seed": self.seed if self.split == "70-10-20" else None,
            "trials_file": str(self.trials_file) if self.trials_file else None,
            "audio_only_ok": self.audio_only_ok,
            "missing": {"no_video": sum(u.video_path is None for u in scanned)},
        }

    def _counts(self, utterances: list[Utterance]) -> dict:
        """Counts of utterances, speakers, classes and splits."""
        return {
            "counts": {
                "utterances": len(utterances),
                "speakers": len({u.label for u in utterances}),
                "classes": len(self.classes()),
                "by_split": count_by(u.split for u in utterances),
            }
        }
