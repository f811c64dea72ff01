"""The emotion corpora's protocol options, declared once for every config that passes them to an adapter."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class EmotionCorpusOptions:
    """RAVDESS and IEMOCAP options as config fields (None: the adapter's default; one the dataset lacks: an error)."""

    classes: str | None = field(default=None, metadata={
        "help": "RAVDESS: 7 (calm merged into neutral) or 8 classes."})
    include_song: bool | None = field(default=None, metadata={
        "help": "RAVDESS: the sung clips (default: included, as the paper).", "flag": "--include-song/--no-song"})
    include_scripted: bool | None = field(default=None, metadata={
        "help": "IEMOCAP: scripted turns.", "flag": "--include-scripted/--no-scripted"})

    def corpus_options(self) -> dict[str, Any]:
        """These fields as `open_dataset` keyword arguments."""
        return {option.name: getattr(self, option.name) for option in fields(EmotionCorpusOptions)}
