"""Dataset adapters by name; CLI choices come from these keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.datasets.base import DatasetError
from pipeline.datasets.iemocap import Iemocap
from pipeline.datasets.ravdess import Ravdess
from pipeline.datasets.voxceleb import VoxCeleb

DATASETS = {"voxceleb": VoxCeleb, "ravdess": Ravdess, "iemocap": Iemocap}
# a prepared run without a dataset.json (written by hand, or by `avl bench`) gets the VoxCeleb crop
DEFAULT_CROP_SECONDS = VoxCeleb.crop_seconds


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


def dataset_crop_seconds(prepared: Path) -> int:
    """The paper's training crop for the dataset of a prepare directory, from its dataset.json."""
    path = Path(prepared) / "dataset.json"
    if not path.is_file():
        return DEFAULT_CROP_SECONDS
    summary = json.loads(path.read_text())
    if "crop_seconds" in summary:
        return int(summary["crop_seconds"])
    adapter = DATASETS.get(summary.get("dataset"))  # a dataset.json written before it recorded the crop
    return adapter.crop_seconds if adapter else DEFAULT_CROP_SECONDS
