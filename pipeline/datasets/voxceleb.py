"""VoxCeleb1 layout adapter: the mp4/wav/aac trees, iden_split.txt and veri_test.txt."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.datasets.base import DatasetError, Trial, Utterance

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


class VoxCeleb:
    """VoxCeleb1-style dataset: utterances from the media trees, splits and trials from the official lists."""

    name = "voxceleb"

    def __init__(self, root: Path, split_file: Path | None = None, trials_file: Path | None = None):
        self.root = Path(root)
        self.split_file = split_file
        if trials_file is None and (self.root / "veri_test.txt").is_file():
            trials_file = self.root / "veri_test.txt"
        self.trials_file = trials_file
        self._utterances: list[Utterance] | None = None

    def utterances(self) -> list[Utterance]:
        """Every utterance under the root, sorted by key (scanned once)."""
        if self._utterances is None:
            self._utterances = scan_voxceleb(self.root, self.split_file)
        return self._utterances

    def trials(self) -> list[Trial]:
        """The verification trials; every key they name must be a scanned utterance."""
        if self.trials_file is None:
            return []
        known = {utterance.key for utterance in self.utterances()}
        numbered = _read_numbered_trials(self.trials_file)
        for number, trial in numbered:
            for key in (trial.enrol, trial.test):
                if key not in known:
                    raise DatasetError(f"{self.trials_file}:{number}: key {key} is not an utterance under {self.root}")
        return [trial for _, trial in numbered]
