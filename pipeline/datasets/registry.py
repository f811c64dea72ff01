"""Dataset adapters by name; CLI choices come from these keys."""

from __future__ import annotations

from pipeline.datasets.voxceleb import VoxCeleb

DATASETS = {"voxceleb": VoxCeleb}
