"""What every dataset adapter hands to stage 0: utterances with labels and splits, and trials."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class DatasetError(ValueError):
    """A dataset file is missing or malformed; the message names the file (and line) and the problem."""


@dataclass(frozen=True)
class Utterance:
    """One labelled utterance; `key` is its path relative to the dataset root, without extension."""

    key: str  # e.g. "id10001/1zcIwhmdeo4/00001"
    label: str  # class name (speaker id for VoxCeleb)
    split: str  # "train" | "val" | "test" | "none" (not part of the identification split)
    video_path: Path | None
    audio_path: Path | None  # same file as video_path when the audio is embedded


@dataclass(frozen=True)
class Trial:
    """One verification trial: 1 = same speaker, 0 = different."""

    label: int
    enrol: str  # utterance key
    test: str  # utterance key
