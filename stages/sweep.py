"""`avl sweep`: stage 3 over a grid of λ × method × level × architecture × seed, resumable, then a report.

Every cell is one `stages.train_student.run` in the same run directory, so the prepared data, the
teacher and its embedding cache are made once and shared. A cell whose metrics.json exists is done
and never retrained; one that stopped part-way (last.pt) is resumed. λ = 0 is the audio-only
baseline: it does not depend on the method, so it is trained once per (architecture, level, seed) and is
the λ = 0 point of every method's line. The report (report.md, PNG plots, results.csv,
summary.json) is rebuilt from whatever cells have finished.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import tomllib
from tqdm import tqdm

from pipeline import config as config_io
from pipeline import runs
from pipeline.manifest import read_manifest
from pipeline.training import FINISHED_MARKER, INCIDENTAL_SETTINGS, LAST_CHECKPOINT
from stages import train_student

BASELINE = "none"  # the method label of the shared λ = 0 cells
DEFAULT_LEVEL = "non-sequential"  # named in cell ids and report tables only when a sweep has another level
# Stage-3 keys the grid or the sweep itself sets; `student_options` may not set them.
SWEEP_KEYS = ("lam", "method", "level", "arch", "seed", "name", "run_dir", "dataset", "tiny", "epochs", "batch_size",
              "crop_seconds", "num_workers", "device", "resume", "overwrite")
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
PLOTTED = ("top1", "ua", "eer")


@dataclass(frozen=True)
class SweepConfig:
    """Sweep settings: the grid, the training settings every cell shares, and where it all goes."""

    run_dir: Path | None = None  # a run with stage 0 (and, for λ > 0, stages 1-2) done
    dataset: str = "voxceleb"
    name: str = "sweep"  # cells go to RUN_DIR/students/NAME/<cell>, the report to RUN_DIR/sweeps/NAME/
    lambdas: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    methods: tuple[str, ...] = ("proposed",)
    # distillation levels (stage 3's `level`): encoder and aggregator need a sequential teacher's cache
    levels: tuple[str, ...] = (DEFAULT_LEVEL,)
    archs: tuple[str, ...] = ("resnet",)
    seeds: tuple[int, ...] = (0, 1, 2)
    tiny: bool = False
    epochs: int = 50
    batch_size: int = 32
    crop_seconds: int = 5
    # any other stage-3 setting, the same for every cell, as "key=value" with a TOML value ("lr_max=2e-3")
    student_options: tuple[str, ...] = ()
    num_workers: int = 2
    device: str = "auto"
    report_only: bool = False  # write the report from the cells finished so far; train nothing

    def validate(self) -> None:
        for axis in ("lambdas", "methods", "levels", "archs", "seeds"):
            values = getattr(self, axis)
            if not values:
                raise config_io.ConfigError(f"sweep: {axis} is empty")
            if len(set(values)) != len(values):
                raise config_io.ConfigError(f"sweep: {axis} has repeated values: {list(values)}")
        if any(not 0.0 <= lam <= 1.0 for lam in self.lambdas):
            raise config_io.ConfigError(f"sweep: every λ must lie in [0, 1], got {list(self.lambdas)}")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise config_io.ConfigError(f"sweep: name must be a plain folder name, got {self.name!r}")
        options = parse_student_options(self.student_options)
        if taken := sorted(set(options) & set(SWEEP_KEYS)):
            raise config_io.ConfigError(f"sweep: student_options may not set {taken}; they are sweep settings")

    @property
    def resolved_run_dir(self) -> Path:
        return self.run_dir or runs.default_run_dir(self.dataset)

    @property
    def report_dir(self) -> Path:
        return self.resolved_run_dir / "sweeps" / self.name

    @property
    def shows_level(self) -> bool:
        """Whether tables and plots name the level: only when the sweep has another than the default."""
        return self.levels != (DEFAULT_LEVEL,)


def parse_student_options(options: tuple[str, ...], what: str = "sweep: student option") -> dict:
    """'key=value' strings → {key: value}; a value is read as TOML (2e-3, true, 'text'), else as plain text.
    `what` names the options in errors."""
    parsed = {}
    for option in options:
        key, equals, raw = option.partition("=")
        key, raw = key.strip(), raw.strip()
        if not equals or not key:
            raise config_io.ConfigError(f"{what} {option!r} is not key=value")
        try:
            parsed[key] = tomllib.loads(f"value = {raw}")["value"]
        except tomllib.TOMLDecodeError:
            parsed[key] = raw
    return parsed


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


def grid(cfg: SweepConfig) -> list[Cell]:
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


def cell_config(cfg: SweepConfig, cell: Cell) -> train_student.StudentConfig:
    """The stage-3 config of a cell; stage 3's own validation rejects an unknown method, arch or key."""
    values = {
        **parse_student_options(cfg.student_options),
        "run_dir": cfg.resolved_run_dir, "dataset": cfg.dataset, "name": f"{cfg.name}/{cell.cell_id}",
        # λ = 0 trains no distillation whatever the method: the first one listed is as good as any
        "method": cfg.methods[0] if cell.method == BASELINE else cell.method,
        "level": cell.level, "arch": cell.arch, "lam": cell.lam, "seed": cell.seed, "tiny": cfg.tiny, "epochs": cfg.epochs,
        "batch_size": cfg.batch_size, "crop_seconds": cfg.crop_seconds, "num_workers": cfg.num_workers,
        "device": cfg.device,
    }
    return config_io.build(train_student.StudentConfig, values, source=f"sweep cell {cell.cell_id}")


def cell_dir(cfg: SweepConfig, cell: Cell) -> Path:
    return runs.students_dir(cfg.resolved_run_dir) / cfg.name / cell.cell_id


def check_finished_run(out: Path, expected, remedy: str) -> None:
    """A finished stage output (its saved config.toml) is reused only if it was made with `expected`'s settings;
    `remedy` says what to do otherwise."""
    saved = out / "config.toml"
    if not saved.exists():
        return
    before = tomllib.loads(saved.read_text())
    now = config_io.to_dict(expected)
    changed = sorted(key for key in set(before) | set(now)
                     if key not in INCIDENTAL_KEYS and before.get(key) != now.get(key))
    if changed:
        raise config_io.ConfigError(f"{out}: this finished run was made with other settings ({changed}); {remedy}")


def _check_finished_cell(out: Path, expected: train_student.StudentConfig) -> None:
    """A finished cell is reused only if it was trained with this sweep's settings."""
    check_finished_run(out, expected, "give the sweep another --name, or remove the cell to retrain it")


def run(cfg: SweepConfig) -> Path:
    """Train every unfinished cell, then write the report; returns the report directory."""
    started = time.perf_counter()
    cells = grid(cfg)
    configs = {cell: cell_config(cfg, cell) for cell in cells}  # every cell checked before any trains
    read_manifest(runs.prepare_dir(cfg.resolved_run_dir))  # no stage 0: fails here, saying so
    report_dir = cfg.report_dir
    report_dir.mkdir(parents=True, exist_ok=True)
    config_io.save(cfg, report_dir / "sweep.toml")
    trained = 0
    for index, cell in enumerate(cells, 1):
        out = cell_dir(cfg, cell)
        if (out / FINISHED_MARKER).exists():
            _check_finished_cell(out, configs[cell])
            continue
        if cfg.report_only:
            continue
        resume = (out / LAST_CHECKPOINT).exists()
        tqdm.write(f"sweep {cfg.name}: cell {index}/{len(cells)} {cell.cell_id}" + (" (resuming)" if resume else ""))
        train_student.run(replace(configs[cell], resume=resume))
        trained += 1
    report = write_report(cfg, cells, time.perf_counter() - started, trained)
    tqdm.write(f"sweep {cfg.name}: {trained} cells trained this time; report → {report}")
    return report_dir


# ---------------------------------------------------------------- report


def _metric_value(metrics: dict, section: str, key: str) -> float | None:
    value = (metrics.get(section) or {}).get(key)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def collect(cfg: SweepConfig, cells: list[Cell]) -> list[dict]:
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


def _stats(values: list[float | None]) -> tuple[float, float, int] | None:
    """(mean, sample std, n) over seeds, ignoring missing values; None when there are none."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    return float(np.mean(present)), float(np.std(present, ddof=1)) if len(present) > 1 else 0.0, len(present)


def summarise(cfg: SweepConfig, rows: list[dict]) -> dict:
    """Mean/std over seeds for every (arch, level, method, λ); λ = 0 of every method is the shared baseline
    of its (arch, level)."""
    summary = {}
    for arch in cfg.archs:
        for level in cfg.levels:
            line = [r for r in rows if (r["arch"], r["level"]) == (arch, level)]
            baseline = [r for r in line if r["method"] == BASELINE]
            for method in cfg.methods:
                for lam in cfg.lambdas:
                    chosen = baseline if lam == 0 else [r for r in line if (r["method"], r["lambda"]) == (method, lam)]
                    entry = {key: _stats([r[key] for r in chosen])
                             for key in (*(m[1] for m in METRICS), "val_accuracy")}
                    entry["seeds"] = sorted(r["seed"] for r in chosen)
                    summary[(arch, level, method, lam)] = entry
    return summary


def _stats_dict(stat: tuple[float, float, int] | None) -> dict | None:
    return None if stat is None else {"mean": stat[0], "std": stat[1], "n": stat[2]}


def _fmt(stat: tuple[float, float, int] | None, percent: bool = True) -> str:
    if stat is None:
        return "—"
    scale = 100 if percent else 1
    digits = 1 if percent else 3
    mean, std, n = stat
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}" if n > 1 else f"{mean * scale:.{digits}f}"


def _relative(stat, reference) -> str:
    if stat is None or reference is None or reference[0] == 0:
        return "—"
    return f"{100 * (stat[0] - reference[0]) / abs(reference[0]):+.1f}%"


def _present(summary: dict, key: str) -> bool:
    return any(entry[key] is not None for entry in summary.values())


def best_lambda(cfg: SweepConfig, summary: dict, arch: str, level: str, method: str) -> float | None:
    """λ > 0 with the highest mean validation accuracy: chosen without looking at the test metrics."""
    candidates = [(summary[(arch, level, method, lam)]["val_accuracy"], lam) for lam in cfg.lambdas if lam > 0]
    candidates = [(stat[0], lam) for stat, lam in candidates if stat is not None]
    return max(candidates, key=lambda c: (c[0], -c[1]))[1] if candidates else None


def _teacher(run_dir: Path) -> dict:
    path = runs.teacher_dir(run_dir) / "metrics.json"
    return runs.read_json(path) if path.exists() else {}


def _has_val_split(run_dir: Path) -> bool:
    return any(entry.split == "val" for entry in read_manifest(runs.prepare_dir(run_dir)))


def paper_tables(cfg: SweepConfig, summary: dict, teacher_accuracy: float | None) -> list[str]:
    """Tables in the shape of the paper's Tables 4-7: teacher, student without and with distillation, change."""
    lines = []
    for _, key, label, higher_better in METRICS:
        if key == "top5" or not _present(summary, key):
            continue
        direction = "higher is better" if higher_better else "lower is better; a negative change is an improvement"
        lines += [f"### {label} ({direction})", ""]
        teacher_column = key == "top1"
        header = ["student", *(["level"] if cfg.shows_level else []), "method"] + (
            ["video teacher"] if teacher_column else []) + [
            "without distillation (λ = 0)", "with distillation", "λ (by val acc)", "relative change"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for arch, level, method in _lines(cfg):
            lam = best_lambda(cfg, summary, arch, level, method)
            without = summary[(arch, level, method, 0.0)][key] if 0.0 in cfg.lambdas else None
            with_ = summary[(arch, level, method, lam)][key] if lam is not None else None
            cells = [arch, *([level] if cfg.shows_level else []), method]
            if teacher_column:
                cells.append("—" if teacher_accuracy is None else f"{100 * teacher_accuracy:.1f}")
            cells += [_fmt(without, key != "min_dcf"), _fmt(with_, key != "min_dcf"),
                      "—" if lam is None else f"{lam:g}", _relative(with_, without)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _lines(cfg: SweepConfig) -> list[tuple[str, str, str]]:
    """(arch, level, method) of every line of the tables and plots, in grid order."""
    return [(arch, level, method) for arch in cfg.archs for level in cfg.levels for method in cfg.methods]


def grid_table(cfg: SweepConfig, summary: dict) -> list[str]:
    """Every (arch, level, method, λ): mean ± std over seeds and the relative change against λ = 0."""
    keys = [(key, label) for _, key, label, _ in METRICS if _present(summary, key)]
    header = ["student", *(["level"] if cfg.shows_level else []), "method", "λ", "seeds"]
    for key, label in keys:
        header += [label] + (["Δ vs λ=0"] if key in PLOTTED else [])
    header.append("val accuracy")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arch, level, method in _lines(cfg):
        for lam in cfg.lambdas:
            entry = summary[(arch, level, method, lam)]
            reference = summary.get((arch, level, method, 0.0))
            cells = [arch, *([level] if cfg.shows_level else []), method, f"{lam:g}", str(len(entry["seeds"]))]
            for key, _ in keys:
                cells.append(_fmt(entry[key], key != "min_dcf"))
                if key in PLOTTED:
                    cells.append("—" if lam == 0 or reference is None else _relative(entry[key], reference[key]))
            cells.append(_fmt(entry["val_accuracy"]))
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def plot_against_lambda(cfg: SweepConfig, summary: dict, key: str, label: str, arch: str, path: Path,
                        teacher_accuracy: float | None) -> None:
    """Metric against λ, one line per (method, level), error bars = std over seeds (the paper's Figs. 4-6)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = 1 if key == "min_dcf" else 100
    figure, axis = plt.subplots(figsize=(5, 3.6))
    for _, level, method in (line for line in _lines(cfg) if line[0] == arch):
        points = [(lam, summary[(arch, level, method, lam)][key]) for lam in cfg.lambdas]
        points = [(lam, stat) for lam, stat in points if stat is not None]
        if points:
            label = f"{method}, {level}" if cfg.shows_level else method
            axis.errorbar([lam for lam, _ in points], [scale * s[0] for _, s in points],
                          yerr=[scale * s[1] for _, s in points], marker="o", capsize=3, label=label)
            for lam, stat in points:
                if stat[2] < len(cfg.seeds):  # a point that averages fewer seeds than asked for says so
                    axis.annotate(f"n={stat[2]}", (lam, scale * stat[0]), textcoords="offset points",
                                  xytext=(4, 4), fontsize=7)
    if key == "top1" and teacher_accuracy is not None:
        axis.axhline(scale * teacher_accuracy, color="grey", linestyle="--", linewidth=1, label="video teacher")
    axis.set_xlabel("λ")
    axis.set_ylabel(f"{label} (%)" if scale == 100 else label)
    axis.set_title(f"{label} against λ — {arch}{' (tiny)' if cfg.tiny else ''}; mean ± std over seeds", fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(cfg: SweepConfig, cells: list[Cell], elapsed: float, trained: int) -> Path:
    """report.md with the tables and plots, results.csv (one row per cell) and summary.json."""
    run_dir, out = cfg.resolved_run_dir, cfg.report_dir
    rows = collect(cfg, cells)
    summary = summarise(cfg, rows)
    teacher = _teacher(run_dir)
    teacher_accuracy = (teacher.get("test") or {}).get("utterance_accuracy")

    with open(out / "results.csv", "w", newline="") as handle:
        columns = ["cell", "method", "level", "arch", "lambda", "seed", *(m[1] for m in METRICS), "val_accuracy",
                   "train_seconds", "parameters", "teacher_fingerprint"]
        writer = csv.DictWriter(handle, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    runs.write_json(out / "summary.json", {
        "config": config_io.to_dict(cfg), "teacher_accuracy": teacher_accuracy,
        "teacher_fingerprint": teacher.get("teacher_fingerprint"),
        "cells": [{"arch": arch, "level": level, "method": method, "lambda": lam, "seeds": entry["seeds"],
                   **{key: _stats_dict(stat) for key, stat in entry.items() if key != "seeds"}}
                  for (arch, level, method, lam), entry in summary.items()],
    })

    plots = []
    for arch in cfg.archs:
        for _, key, label, _ in METRICS:
            if key in PLOTTED and _present(summary, key):
                path = out / f"{key}_vs_lambda_{arch}.png"
                plot_against_lambda(cfg, summary, key, label, arch, path, teacher_accuracy)
                plots.append(path)

    fingerprints = sorted({r["teacher_fingerprint"] for r in rows if r["teacher_fingerprint"]})
    notes = []
    # Cells of one (arch, level, method) must be the same network; a count that differs means the code behind
    # the architecture's name changed between invocations.
    for arch, level, method in sorted({(r["arch"], r["level"], r["method"]) for r in rows}):
        counts = sorted({r["parameters"] for r in rows
                         if (r["arch"], r["level"], r["method"]) == (arch, level, method) and r["parameters"]})
        if len(counts) > 1:
            what = f"{method} {arch}" + (f" {level}" if cfg.shows_level else "")
            notes.append(f"**{what} cells have different parameter counts** ({counts}): the architecture "
                         "changed between runs, so they are not comparable; retrain under a new sweep name.")
    if len(rows) < len(cells):
        notes.append(f"**{len(cells) - len(rows)} of {len(cells)} cells have not finished**; the tables hold "
                     "what has. Run the same `avl sweep` again to continue.")
    if len(fingerprints) > 1:
        notes.append(f"**The distilled cells used {len(fingerprints)} different teachers** ({fingerprints}); "
                     "their results are not comparable.")
    if not _has_val_split(run_dir):
        notes.append("**This run has no validation split**: stage 3's validation accuracy is measured on the test "
                     "split, so the λ chosen below was chosen on test data and the 'with distillation' column is "
                     "optimistic.")
    seeds = ", ".join(str(s) for s in cfg.seeds)
    text = [
        f"# λ sweep `{cfg.name}`",
        "",
        f"Run directory `{run_dir}`; students `{', '.join(cfg.archs)}`{' (tiny)' if cfg.tiny else ''}; "
        f"methods {', '.join(cfg.methods)}"
        + (f"; levels {', '.join(cfg.levels)}" if cfg.shows_level else "")
        + f"; λ ∈ {{{', '.join(f'{lam:g}' for lam in cfg.lambdas)}}}; seeds {seeds}; "
        f"{cfg.epochs} epochs, batch {cfg.batch_size}, {cfg.crop_seconds} s crops"
        + (f"; other settings: {', '.join(cfg.student_options)}" if cfg.student_options else "") + ".",
        f"Teacher `{(teacher.get('teacher_fingerprint') or '—')[:12]}` ({teacher.get('arch', '—')}), test utterance "
        f"accuracy {'—' if teacher_accuracy is None else f'{100 * teacher_accuracy:.1f}%'}.",
        "",
        "Numbers are test-split percentages (minDCF: p_target 0.01, C_miss = C_fa = 1, normalised), mean ± sample "
        "standard deviation over seeds. Verification uses cosine scores of full-length utterances. λ = 0 is the "
        "audio-only student, trained once per architecture, level and seed and shared by every method. "
        "\"With distillation\" is the λ > 0 with the best mean *validation* accuracy, so no test number picks it.",
        "",
        *(f"> {note}\n" for note in notes),
        "## Students without and with distillation",
        "",
        *paper_tables(cfg, summary, teacher_accuracy),
        "## Every grid point",
        "",
        *grid_table(cfg, summary),
        "",
        "## Plots",
        "",
        *(f"![{path.stem}]({path.name})\n" for path in plots),
        f"Cells finished: {len(rows)} of {len(cells)} ({trained} trained by the last invocation, which took "
        f"{elapsed:.0f} s). Per-cell numbers: `results.csv`; aggregates: `summary.json`; each cell's run: "
        f"`{runs.students_dir(run_dir) / cfg.name}/<cell>/`.",
        "",
    ]
    report = out / "report.md"
    report.write_text("\n".join(text))
    return report
