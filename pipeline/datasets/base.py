"""What every dataset adapter hands to stage 0: utterances with labels and splits, and trials.

Every adapter in `registry.DATASETS` is a class built as `Adapter(root, split_file=None,
trials_file=None, **options)` (the options it accepts are its `options` tuple) with:
`name`, `crop_seconds` (the paper's training crop for the corpus), `utterances()`, `trials()`, `classes()`
(the protocol's class names in a fixed order), `describe()` (a JSON-ready summary: protocol, fold, class
mapping, counts, what is missing) and `headline(summary)` (its counts in one line).
`Adapter` and `FoldedCorpus` below hold what the adapters share.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from pipeline.errors import UserError

SPLITS = ("train", "val", "test", "none")
Group = TypeVar("Group")


class DatasetError(UserError, ValueError):
    """A dataset file is missing or malformed; the message names the file (and line) and the problem."""


@dataclass(frozen=True)
class Utterance:
    """One labelled utterance; `key` identifies it uniquely within the dataset (a relative path, no extension)."""

    key: str  # e.g. "id10001/1zcIwhmdeo4/00001"
    label: str  # class name (speaker id for VoxCeleb, emotion for RAVDESS and IEMOCAP)
    split: str  # "train" | "val" | "test" | "none" (not part of the identification split)
    video_path: Path | None
    audio_path: Path | None  # same file as video_path when the audio is embedded
    # [start, end) seconds within video_path (and within audio_path when it is the same file): IEMOCAP
    # turns are cut from whole-dialog videos. None: from the beginning / to the end.
    start: float | None = None
    end: float | None = None
    boxes_path: Path | None = None  # per-frame face boxes (media.read_boxes); None: centre crop
    speaker: str | None = None  # who speaks (actor, session speaker); the label for speaker datasets


@dataclass(frozen=True)
class Trial:
    """One verification trial: 1 = same speaker, 0 = different."""

    label: int
    enrol: str  # utterance key
    test: str  # utterance key


def is_hidden(path: Path, root: Path) -> bool:
    """Whether a file under `root` is hidden or inside a hidden folder (macOS `._*` copies, `.DS_Store`)."""
    return any(part.startswith(".") for part in Path(path).relative_to(root).parts)


def no_video_error(root: Path, count: int, what: str, video: str) -> DatasetError:
    """The error for a tree whose items all lack video while the teacher needs it."""
    return DatasetError(
        f"{root}: {count} {what} and no video ({video}): video is required for the teacher; "
        "pass audio_only_ok to list them for audio-only stages"
    )


def attach_boxes(utterances: list[Utterance], boxes_dir: Path | None) -> list[Utterance]:
    """Point each utterance at `boxes_dir/<key>.npy` (or `.txt`); every utterance with video must have one."""
    if boxes_dir is None:
        return utterances
    boxes_dir = Path(boxes_dir)
    out, missing = [], []
    for utterance in utterances:
        found = next((path for path in (boxes_dir / f"{utterance.key}.npy", boxes_dir / f"{utterance.key}.txt")
                      if path.is_file()), None)
        if found is None and utterance.video_path is not None:
            missing.append(utterance.key)
        out.append(replace(utterance, boxes_path=found))
    if missing:
        raise DatasetError(
            f"{boxes_dir}: no face boxes (<key>.npy or <key>.txt) for {len(missing)} of {len(utterances)} "
            f"utterances, first: {missing[0]}"
        )
    return out


def count_by(values: Iterable[str]) -> dict[str, int]:
    """{value: count} sorted by value, for describe() summaries."""
    return dict(sorted(Counter(values).items()))


def next_in_cycle(present: Sequence[Group], held_out: Group) -> Group:
    """The group after `held_out` among those present, wrapping around: a fold's validation group."""
    return present[(present.index(held_out) + 1) % len(present)]


class Adapter:
    """The describe() every adapter shares: options and gaps are reported even when utterances() fails."""

    name: str
    options: tuple[str, ...]
    crop_seconds: int
    root: Path

    def describe(self) -> dict:
        """Protocol, options, counts and what is missing; works even when utterances() would fail."""
        summary = {"dataset": self.name, "root": str(self.root), **self._protocol_summary()}
        try:
            utterances = self.utterances()
        except DatasetError as error:
            summary["error"] = str(error)
            return summary
        summary.update(self._counts(utterances))
        return summary

    def _protocol_summary(self) -> dict:
        """The protocol, the options and what is missing, before any utterance is listed."""
        raise NotImplementedError

    def headline(self, summary: dict) -> str:
        """One line of describe()'s counts for stage 0 to print."""
        counts = summary["counts"]
        by_split = ", ".join(f"{split} {count}" for split, count in counts["by_split"].items())
        return f"{counts['utterances']} utterances ({by_split}), {len(self.classes())} classes"

    def _counts(self, utterances: list[Utterance]) -> dict:
        """What describe() adds once utterances() succeeds: the counts (and a fold's held-out groups)."""
        raise NotImplementedError


class FoldedCorpus(Adapter):
    """A corpus whose splits are folds over held-out speakers (RAVDESS actors, IEMOCAP sessions).

    It takes no split or trials file, has no verification trials, and scans its root once.
    """

    title: str  # the corpus's name in messages, e.g. "RAVDESS"
    fold_protocol: str  # what its splits are, e.g. "leave-one-actor-out folds"
    fold_unit: str  # what a fold holds out, e.g. "actor"
    fold_numbers: Sequence[int]  # the folds of the full corpus, consecutive
    scan_root: Callable[[Path], Any]  # a staticmethod that reads the root; `_scanned()` keeps its result

    def __init__(
        self,
        root: Path,
        split_file: Path | None,
        trials_file: Path | None,
        fold: int | None,
        audio_only_ok: bool,
        boxes_dir: Path | None,
    ):
        for given, what in ((split_file, "split_file"), (trials_file, "trials_file")):
            if given is not None:
                raise DatasetError(f"{given}: {self.title} takes no {what}; its splits are {self.fold_protocol}")
        if fold is not None and int(fold) not in self.fold_numbers:
            first, last = self.fold_numbers[0], self.fold_numbers[-1]
            raise DatasetError(f"{self.title} fold is the held-out {self.fold_unit}, {first}-{last}; got {fold}")
        self.root = Path(root)
        self.fold = None if fold is None else int(fold)
        self.audio_only_ok = audio_only_ok
        self.boxes_dir = boxes_dir
        self._scan: Any = None
        self._utterances: list[Utterance] | None = None

    def trials(self) -> list[Trial]:
        """Emotion corpora have no verification trials."""
        return []

    def _scanned(self) -> Any:
        """What `scan_root` found under the root, read on first use."""
        if self._scan is None:
            self._scan = self.scan_root(self.root)
        return self._scan
