"""Sweep cells: the grid of stage-3 runs a λ sweep trains, each cell's settings, directory and results, and the
check that a finished run is reused only with the settings it was made with.

`cfg` below is a sweep's config (`stages.sweep.SweepConfig`): its grid axes, shared training settings and name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from pipeline import config as config_io
from pipeline import runs
from pipeline.training import FINISHED_MARKER, INCIDENTAL_SETTINGS

BASELINE = "none"  # the method label of the shared λ = 0 cells
DEFAULT_LEVEL = "non-sequential"  # named in cell ids and report tables only when a sweep has another level
# Stage-3 keys the grid or the sweep itself sets; `student_options` may not set them.
SWEEP_KEYS = ("lam", "method", "level", "arch", "seed", "name", "sweep", "run_dir", "dataset", "tiny", "epochs",
              "batch_size", "crop_seconds", "num_workers", "device", "resume", "overwrite")
# Settings that do not change what a run computes: a finished cell (or prepared store) is reused whatever they were.
INCIDENTAL_KEYS = INCIDENTAL_SETTINGS | {"commit_seconds"}
# (metrics.json section, key, label, higher is better)
METRICS = (
    ("identification", "top1", "top-1 accuracy", True),
    ("identification", "top5", "top-5 accuracy", True),
    ("identification", "ua", "UA", True),
    ("identification", "wa", "WA", True),
    ("verification", "eer", "EER", False),
    ("verification", "min_dcf", "minDCF", False),
)


@dataclass(frozen=True)
class Cell:
    """One point of the grid: a stage-3 run named `name` under students/."""

    method: str  # BASELINE for the shared λ = 0 cells
    arch: str
    lam: float
    seed: int
    level: str = DEFAULT_LEVEL

    @property
    def cell_id(self) -> str:
        """`method-arch[-level]-lambdaλ-seedS`: the default level is left out, so older cell names stay valid."""
        level = [self.level] if self.level != DEFAULT_LEVEL else []
        return "-".join([self.method, self.arch, *level, f"lambda{self.lam:g}", f"seed{self.seed}"])


def grid(cfg) -> list[Cell]:
    """Every cell, seed by seed (a sweep stopped early has whole curves for its first seeds); λ = 0 once per
    (arch, level, seed), before that level's distilled cells of that seed."""
    cells = []
    for seed in cfg.seeds:
        for arch in cfg.archs:
            for level in cfg.levels:
                cells += [Cell(BASELINE, arch, 0.0, seed, level)] if 0.0 in cfg.lambdas else []
                cells += [Cell(method, arch, lam, seed, level)
                          for method in cfg.methods for lam in cfg.lambdas if lam > 0]
    return cells


def cell_settings(cfg, cell: Cell) -> dict:
    """The stage-3 settings of a cell, for `config_io.build(StudentConfig, ...)` (which checks them)."""
    return {
        **config_io.parse_options(cfg.student_options, "sweep: student option"),
        "run_dir": cfg.resolved_run_dir, "dataset": cfg.dataset, "sweep": cfg.name, "name": cell.cell_id,
        # λ = 0 trains no distillation whatever the method: the first one listed is as good as any
        "method": cfg.methods[0] if cell.method == BASELINE else cell.method,
        "level": cell.level, "arch": cell.arch, "lam": cell.lam, "seed": cell.seed, "tiny": cfg.tiny, "epochs": cfg.epochs,
        "batch_size": cfg.batch_size, "crop_seconds": cfg.crop_seconds, "num_workers": cfg.num_workers,
        "device": cfg.device,
    }


def cell_dir(cfg, cell: Cell) -> Path:
    return runs.students_dir(cfg.resolved_run_dir) / cfg.name / cell.cell_id


def check_finished_run(out: Path, expected, remedy: str) -> None:
    """A finished stage output (its saved config.toml) is reused only if it was made with `expected`'s settings;
    `remedy` says what to do otherwise."""
    saved = out / "config.toml"
    if not saved.exists():
        return
    before = config_io.saved_settings(type(expected), saved)  # as written now, whatever version wrote it
    now = config_io.to_dict(expected)
    changed = sorted(key for key in set(before) | set(now)
                     if key not in INCIDENTAL_KEYS and before.get(key) != now.get(key))
    if changed:
        raise config_io.ConfigError(f"{out}: this finished run was made with other settings ({changed}); {remedy}")


def _metric_value(metrics: dict, section: str, key: str) -> float | None:
    value = (metrics.get(section) or {}).get(key)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def collect(cfg, cells: list[Cell]) -> list[dict]:
    """One row per finished cell: its grid point and metrics (None where a metric was not computed)."""
    rows = []
    for cell in cells:
        path = cell_dir(cfg, cell) / FINISHED_MARKER
        if not path.exists():
            continue
        metrics = runs.read_json(path)
        history = metrics.get("history") or [{}]
        row = {"cell": cell.cell_id, "method": cell.method, "level": cell.level, "arch": cell.arch, "lambda": cell.lam,
               "seed": cell.seed,
               "val_accuracy": history[-1].get("val_accuracy"), "train_seconds": metrics.get("train_seconds"),
               "teacher_fingerprint": metrics.get("teacher_fingerprint"), "parameters": metrics.get("parameters")}
        for section, key, _, _ in METRICS:
            row[key] = _metric_value(metrics, section, key)
        rows.append(row)
    return rows
