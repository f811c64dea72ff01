"""Dataset adapters by name; CLI choices come from these keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.datasets.base import DatasetError
from pipeline.datasets.iemocap import Iemocap
from pipeline.datasets.ravdess import Ravdess
from pipeline.datasets.voxceleb import VoxCeleb

DATASETS = {"voxceleb": VoxCeleb, "ravdess": Ravdess, "iemocap": Iemocap}


def open_dataset(
    name: str, root: Path, split_file: Path | None = None, trials_file: Path | None = None, **options: Any
) -> VoxCeleb | Ravdess | Iemocap:
    """The adapter `name` with the options that are set (not None); one it does not take is an error naming it.

    Lets a stage hold every dataset's options as None-defaulted config fields and pass them all.
    """
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    adapter = DATASETS[name]
    given = {key: value for key, value in options.items() if value is not None}
    foreign = sorted(set(given) - set(adapter.options))
    if foreign:
        raise DatasetError(
            f"dataset {name!r} takes no option(s) {', '.join(foreign)}; it takes: {', '.join(adapter.options)}"
        )
    return adapter(root, split_file=split_file, trials_file=trials_file, **given)
