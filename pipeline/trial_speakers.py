"""The guard against verification on trained speakers: no speaker of a trial list in a training or validation split.

Stage 0 leaves trial speakers out of identification unless told otherwise (VoxCeleb's
`allow_trial_speakers_in_training`, recorded in dataset.json); a prepared run whose manifest still trains
on them (made before that rule, or by hand) is refused by stage 3 with the speakers named.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from pipeline.datasets.base import DatasetError, Trial
from pipeline.manifest import MANIFEST, TRIALS, read_manifest, read_trials

ALLOW_OPTION = "allow_trial_speakers_in_training"  # the adapter option, and its key in dataset.json
TRAINING_SPLITS = ("train", "val")


class TrialSpeakersInTrainingError(DatasetError):
    """A trial list names speakers that a training or validation split holds; the message names them."""


def trial_speakers_in_training(rows: Iterable, trials: list[Trial]) -> list[str]:
    """The speakers (labels) of the trial keys that also label a train or val row; `rows` have key, label, split."""
    rows = list(rows)
    label_of = {row.key: row.label for row in rows}
    in_trials = {label_of[key] for trial in trials for key in (trial.enrol, trial.test) if key in label_of}
    return sorted(in_trials & {row.label for row in rows if row.split in TRAINING_SPLITS})


def refuse_trial_speakers_in_training(rows: Iterable, trials: list[Trial], allowed: bool, where: str) -> list[str]:
    """The trial speakers in training (see above); any is an error naming the first few, unless `allowed`."""
    overlap = trial_speakers_in_training(rows, trials)
    if overlap and not allowed:
        shown = ", ".join(overlap[:5]) + (", ..." if len(overlap) > 5 else "")
        raise TrialSpeakersInTrainingError(
            f"{where}: {len(overlap)} speaker(s) of the trial list are in the train or val split ({shown}); "
            "verification on them would score speakers the model was trained to classify. Prepare the run again "
            "(stage 0 leaves trial speakers out of identification), or prepare it with "
            "--allow-trial-speakers-in-training to train on them on purpose"
        )
    return overlap


def allowed_in(prepared: Path) -> bool:
    """Whether stage 0 was told to keep trial speakers in training (its dataset.json records the option)."""
    path = Path(prepared) / "dataset.json"
    return path.is_file() and bool(json.loads(path.read_text()).get(ALLOW_OPTION, False))


def check_prepared(prepared: Path) -> list[str]:
    """Refuse a prepared run whose trial speakers are in its train or val rows, unless it was made allowing it;
    returns the trial speakers in training (empty unless allowed)."""
    prepared = Path(prepared)
    return refuse_trial_speakers_in_training(read_manifest(prepared), read_trials(prepared), allowed_in(prepared),
                                             f"{prepared / TRIALS} against {prepared / MANIFEST}")
