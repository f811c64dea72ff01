"""Runs prepared with `--audio-only`: spectrograms and a manifest, no face store, so no teacher and no cached
targets. A λ = 0 student and evaluation need nothing more; distillation is refused, naming the utterances."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pipeline.errors import UserError
from pipeline.manifest import Entry
from pipeline.runs import STORE_SUFFIX

NAMED = 10  # utterances named in a refusal; the count says how many more


class NoTargetsError(UserError, ValueError):
    """A distillation run on utterances that have no cached teacher target."""


def has_faces(prepared: Path) -> bool:
    """Whether stage 0 wrote a face store into `prepared` (any backend): False for an --audio-only run."""
    return any((prepared / f"faces{suffix}").exists() for suffix in STORE_SUFFIX.values())


def refuse_distillation_without_faces(prepared: Path, training: Sequence[Entry], lam: float) -> None:
    """Refuse λ > 0 on a prepare directory without faces: none of its training utterances can have a target."""
    if lam <= 0 or has_faces(prepared) or not training:
        return
    keys = [entry.key for entry in training]
    more = f" and {len(keys) - NAMED} more" if len(keys) > NAMED else ""
    raise NoTargetsError(
        f"{prepared}: λ = {lam:g} distils cached teacher targets, but these {len(keys)} training utterances have "
        f"none (prepared --audio-only: no video, no face store, no teacher): {', '.join(keys[:NAMED])}{more}; "
        "train them with --lambda 0, or prepare a corpus with video for distillation")
