"""`avl sweep`: stage 3 over a grid of λ × method × level × architecture × seed, resumable, then a report.

Every cell is one `stages.train_student.run` in the same run directory, so the prepared data, the
teacher and its embedding cache are made once and shared. A cell whose metrics.json exists is done
and never retrained; one that stopped part-way (last.pt) is resumed. λ = 0 is the audio-only
baseline: it does not depend on the method, so it is trained once per (architecture, level, seed) and is
the λ = 0 point of every method's line. The report (report.md, PNG plots, results.csv,
summary.json) is rebuilt from whatever cells have finished.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from cache import locks
from pipeline import config as config_io
from pipeline import runs
from pipeline.cells import (
    DEFAULT_LEVEL,
    METRICS,
    SWEEP_KEYS,
    Cell,
    cell_dir,
    cell_settings,
    check_finished_run,
    collect,
    grid,
)
from pipeline.datasets.registry import dataset_crop_seconds
from pipeline.distill import LEVELS, METHODS
from pipeline.manifest import read_manifest
from pipeline.models.students import STUDENTS
from pipeline.report import (
    PLOTTED,
    grid_table,
    has_metric,
    paper_tables,
    plot_against_lambda,
    stat_dict,
    summarise,
    sweep_lines,
    write_csv,
    write_markdown,
)
from pipeline.training import FINISHED_MARKER, LAST_CHECKPOINT
from stages import train_student

REPORT_WAIT_SECONDS = 600.0  # another sweep of this name writing its report: wait for it, as it takes seconds


@dataclass(frozen=True)
class SweepConfig:
    """Sweep settings: the grid, the training settings every cell shares, and where it all goes."""

    run_dir: Path | None = field(default=None, metadata={
        "help": "A run with stage 0 (and, for λ > 0, stages 1-2) done (default: runs/<dataset>)."})
    dataset: str = field(default="voxceleb", metadata={"help": "Dataset the run was prepared from."})
    name: str = field(default="sweep", metadata={
        "help": "Sweep name: cells in RUN_DIR/students/NAME/, report in RUN_DIR/sweeps/NAME/.", "plain_name": True})
    lambdas: tuple[float, ...] = field(default=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0), metadata={"help": "λ values."})
    methods: tuple[str, ...] = field(default=("proposed",), metadata={
        "help": "Distillation methods.", "choices": METHODS})
    levels: tuple[str, ...] = field(default=(DEFAULT_LEVEL,), metadata={
        "help": "Distillation levels (stage 3's --level): encoder and aggregator need a sequential teacher's cache.",
        "choices": LEVELS})
    archs: tuple[str, ...] = field(default=("resnet",), metadata={
        "help": "Student architectures.", "choices": STUDENTS})
    seeds: tuple[int, ...] = field(default=(0, 1, 2), metadata={"help": "Seeds."})
    tiny: bool = field(default=False, metadata={"help": "Small student variants that train on a CPU."})
    epochs: int = field(default=50, metadata={"help": "Training epochs.", "min": 1})
    batch_size: int = field(default=32, metadata={"help": "Utterances per batch.", "min": 1})
    crop_seconds: int | None = field(default=None, metadata={
        "help": "Training crop length in whole seconds (default: the dataset's, as the paper: VoxCeleb 5, RAVDESS "
                "and IEMOCAP 4).", "min": 1})
    student_options: tuple[str, ...] = field(default=(), metadata={
        "help": "Any other stage-3 setting for every cell, KEY=VALUE with a TOML value (lr_max=2e-3); repeatable.",
        "flag": "--set", "repeatable": True})
    num_workers: int = field(default=2, metadata={"help": "DataLoader worker processes.", "min": 0})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N or auto."})
    report_only: bool = field(default=False, metadata={
        "help": "Only rebuild the report from the cells finished so far; train nothing."})

    def validate(self) -> None:
        for axis in ("lambdas", "methods", "levels", "archs", "seeds"):
            values = getattr(self, axis)
            if not values:
                raise config_io.ConfigError(f"sweep: {axis} is empty")
            if len(set(values)) != len(values):
                raise config_io.ConfigError(f"sweep: {axis} has repeated values: {list(values)}")
        if any(not 0.0 <= lam <= 1.0 for lam in self.lambdas):
            raise config_io.ConfigError(f"sweep: every λ must lie in [0, 1], got {list(self.lambdas)}")
        options = config_io.parse_options(self.student_options, "sweep: student option")
        if taken := sorted(key for key in options
                           if config_io.field_name(train_student.StudentConfig, key) in SWEEP_KEYS):
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


def cell_config(cfg: SweepConfig, cell: Cell) -> train_student.StudentConfig:
    """The stage-3 config of a cell; stage 3's own validation rejects an unknown method, arch or key."""
    return config_io.build(train_student.StudentConfig, cell_settings(cfg, cell), source=f"sweep cell {cell.cell_id}")


def run(cfg: SweepConfig) -> Path:
    """Train every unfinished cell, then write the report; returns the report directory."""
    started = time.perf_counter()
    # resolved once, so every cell, sweep.toml and the report name the crop the cells train with
    cfg = replace(cfg, crop_seconds=cfg.crop_seconds or dataset_crop_seconds(runs.prepare_dir(cfg.resolved_run_dir)))
    cells = grid(cfg)
    configs = {cell: cell_config(cfg, cell) for cell in cells}  # every cell checked before any trains
    read_manifest(runs.prepare_dir(cfg.resolved_run_dir))  # no stage 0: fails here, saying so
    report_dir = cfg.report_dir
    with locks.hold(locks.inside(report_dir), wait_seconds=REPORT_WAIT_SECONDS):
        config_io.save(cfg, report_dir / "sweep.toml")
    trained, busy = 0, {}
    for index, cell in enumerate(cells, 1):
        trained += train_cell(cfg, cell, configs[cell], f"cell {index}/{len(cells)}", busy)
    # a second sweep of this name trains other cells meanwhile; what it held is picked up once it has let go
    for cell in list(busy):
        del busy[cell]
        trained += train_cell(cfg, cell, configs[cell], "cell held earlier", busy)
    for cell, holder in busy.items():
        tqdm.write(f"sweep {cfg.name}: {cell.cell_id} is still being trained by another process "
                   f"({locks.describe_holder(holder)}); run the sweep again once it has finished to report it")
    with locks.hold(locks.inside(report_dir), wait_seconds=REPORT_WAIT_SECONDS):  # one report writer at a time
        report = write_report(cfg, cells, time.perf_counter() - started, trained)
    tqdm.write(f"sweep {cfg.name}: {trained} cells trained this time; report → {report}")
    return report_dir


def train_cell(cfg: SweepConfig, cell: Cell, cell_cfg: train_student.StudentConfig, label: str,
               busy: dict[Cell, dict]) -> int:
    """Train `cell` unless it is finished (then check it was made with these settings) or another process holds
    it (then add it to `busy` with the holder); returns 1 if it trained here.

    The cell's lock is held from the look at its directory to the end of training, so two sweeps of one name
    share the cells and never train one together."""
    out = cell_dir(cfg, cell)
    if cfg.report_only and not (out / FINISHED_MARKER).exists():
        return 0
    try:
        with locks.hold(locks.inside(out)):
            if (out / FINISHED_MARKER).exists():
                check_finished_run(out, cell_cfg, "give the sweep another --name, or remove the cell to retrain it")
                return 0
            if cfg.report_only:
                return 0
            resume = (out / LAST_CHECKPOINT).exists()
            tqdm.write(f"sweep {cfg.name}: {label} {cell.cell_id}" + (" (resuming)" if resume else ""))
            train_student.run(replace(cell_cfg, resume=resume))
            return 1
    except locks.LockedError as refusal:
        busy[cell] = refusal.holder
        tqdm.write(f"sweep {cfg.name}: {cell.cell_id} is being trained by another process "
                   f"({locks.describe_holder(refusal.holder)}); skipped for now")
        return 0


# ---------------------------------------------------------------- report


def _teacher(run_dir: Path) -> dict:
    path = runs.teacher_dir(run_dir) / "metrics.json"
    return runs.read_json(path) if path.exists() else {}


def _has_val_split(run_dir: Path) -> bool:
    return any(entry.split == "val" for entry in read_manifest(runs.prepare_dir(run_dir)))


def plot_metric(cfg: SweepConfig, summary: dict, key: str, label: str, arch: str, path: Path,
                teacher_accuracy: float | None) -> None:
    """Metric against λ, one line per (method, level), error bars = std over seeds (the paper's Figs. 4-6)."""
    scale = 1 if key == "min_dcf" else 100
    lines = {f"{method}, {level}" if cfg.shows_level else method:
             [(lam, summary[(arch, level, method, lam)][key]) for lam in cfg.lambdas]
             for line_arch, level, method in sweep_lines(cfg) if line_arch == arch}
    plot_against_lambda(path, lines, f"{label} (%)" if scale == 100 else label,
                        f"{label} against λ — {arch}{' (tiny)' if cfg.tiny else ''}; mean ± std over seeds", scale,
                        teacher_accuracy if key == "top1" else None, expected_n=len(cfg.seeds))


def write_report(cfg: SweepConfig, cells: list[Cell], elapsed: float, trained: int) -> Path:
    """report.md with the tables and plots, results.csv (one row per cell) and summary.json."""
    run_dir, out = cfg.resolved_run_dir, cfg.report_dir
    rows = collect(cfg, cells)
    summary = summarise(cfg, rows)
    teacher = _teacher(run_dir)
    teacher_accuracy = (teacher.get("test") or {}).get("utterance_accuracy")

    write_csv(out / "results.csv", ["cell", "method", "level", "arch", "lambda", "seed", *(m[1] for m in METRICS),
                                    "val_accuracy", "train_seconds", "parameters", "teacher_fingerprint"], rows)
    runs.write_json(out / "summary.json", {
        "config": config_io.to_dict(cfg), "teacher_accuracy": teacher_accuracy,
        "teacher_fingerprint": teacher.get("teacher_fingerprint"),
        "cells": [{"arch": arch, "level": level, "method": method, "lambda": lam, "seeds": entry["seeds"],
                   **{key: stat_dict(stat) for key, stat in entry.items() if key != "seeds"}}
                  for (arch, level, method, lam), entry in summary.items()],
    })

    plots = []
    for arch in cfg.archs:
        for _, key, label, _ in METRICS:
            if key in PLOTTED and has_metric(summary, key):
                path = out / f"{key}_vs_lambda_{arch}.png"
                plot_metric(cfg, summary, key, label, arch, path, teacher_accuracy)
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
    settings = (
        f"Run directory `{run_dir}`; students `{', '.join(cfg.archs)}`{' (tiny)' if cfg.tiny else ''}; "
        f"methods {', '.join(cfg.methods)}"
        + (f"; levels {', '.join(cfg.levels)}" if cfg.shows_level else "")
        + f"; λ ∈ {{{', '.join(f'{lam:g}' for lam in cfg.lambdas)}}}; seeds {seeds}; "
        f"{cfg.epochs} epochs, batch {cfg.batch_size}, {cfg.crop_seconds} s crops"
        + (f"; other settings: {', '.join(cfg.student_options)}" if cfg.student_options else "") + ".\n"
        f"Teacher `{(teacher.get('teacher_fingerprint') or '—')[:12]}` ({teacher.get('arch', '—')}), test utterance "
        f"accuracy {'—' if teacher_accuracy is None else f'{100 * teacher_accuracy:.1f}%'}.")
    how_to_read = (
        "Numbers are test-split percentages (minDCF: p_target 0.01, C_miss = C_fa = 1, normalised), mean ± sample "
        "standard deviation over seeds. Verification uses cosine scores of full-length utterances. λ = 0 is the "
        "audio-only student, trained once per architecture, level and seed and shared by every method. "
        "\"With distillation\" is the λ > 0 with the best mean *validation* accuracy, so no test number picks it.")
    return write_markdown(out / "report.md", f"λ sweep `{cfg.name}`", [settings, how_to_read], notes, {
        "Students without and with distillation": paper_tables(cfg, summary, teacher_accuracy),
        "Every grid point": [*grid_table(cfg, summary), ""],
        "Plots": [f"![{path.stem}]({path.name})\n" for path in plots],
    }, [f"Cells finished: {len(rows)} of {len(cells)} ({trained} trained by the last invocation, which took "
        f"{elapsed:.0f} s). Per-cell numbers: `results.csv`; aggregates: `summary.json`; each cell's run: "
        f"`{runs.students_dir(run_dir) / cfg.name}/<cell>/`."])
