"""What every dataset adapter hands to stage 0: utterances with labels and splits, and trials.

Every adapter in `registry.DATASETS` is a class built as `Adapter(root, split_file=None,
trials_file=None, **options)` (the options it accepts are its `options` tuple) with:
`name`, `utterances()`, `trials()`, `classes()` (the protocol's class names in a fixed order) and
`describe()` (a JSON-ready summary: protocol, fold, class mapping, counts, what is missing).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

SPLITS = ("train", "val", "test", "none")


class DatasetError(ValueError):
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
