"""`avl protocol`: the whole pipeline once per fold of a subject-independent protocol, then mean and spread.

RAVDESS is leave-one-actor-out and IEMOCAP leave-one-session-out. The corpus is decoded once, into
RUN_DIR/shared/prepare. Fold K gets RUN_DIR/fold-K/prepare/: the shared manifest with its split column
re-assigned by the adapter's fold K (test = the held-out subject, val = the adapter's validation
subject), and links to the shared stores. Then, in RUN_DIR/fold-K, the usual stages: a teacher trained
on fold K's training subjects only, its cache of the train and val utterances only (no test-fold target
is ever computed, and the cache is checked for none), and students at λ = 0 and at each λ as a
one-method sweep (stages/sweep.py). A finished step is never redone (teacher metrics.json, a complete
cache of that teacher, student metrics.json) and an interrupted one resumes, so the same command
finishes a stopped protocol. RUN_DIR/protocol/ gets report.md (a row per fold, mean ± std over folds),
results.csv, summary.json and a plot, rewritten after every fold.
"""

from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cache.store import StoreError, open_store
from pipeline import config as config_io
from pipeline import runs
from pipeline.datasets.base import DatasetError
from pipeline.datasets.registry import open_dataset
from pipeline.manifest import Entry, manifest_hash, read_classes, read_manifest, read_trials, write_manifest
from pipeline.training import FINISHED_MARKER, LAST_CHECKPOINT
from stages import export_embeddings, prepare, sweep, train_teacher

FOLD_DATASETS = ("ravdess", "iemocap")  # the adapters with subject-independent folds (their `folds()`)
EXPORTED_SPLITS = ("train", "val")  # what a fold's cache holds: what its student may see
SWEEP_NAME = "protocol"  # each fold's students: RUN_DIR/fold-K/students/protocol/<cell>
STORES = ("spectrograms", "faces")  # stage 0 stores every fold links to
# Settings the protocol sets itself; the *_options lists may not set them.
PREPARE_KEYS = ("root", "dataset", "run_dir", "fold", "classes", "include_song", "include_scripted", "split", "seed",
                "audio_only_ok", "num_workers", "overwrite")
TEACHER_KEYS = ("run_dir", "dataset", "arch", "tiny", "epochs", "seed", "sequential", "window_seconds",
                "num_workers", "device", "resume", "overwrite")
STUDENT_KEYS = (*sweep.SWEEP_KEYS, "cache", "expect_teacher")
# (metrics.json key, label) of the student metrics the report tables hold; WA equals top-1 accuracy
REPORTED = (("top1", "WA (top-1)"), ("ua", "UA"))


@dataclass(frozen=True)
class ProtocolConfig:
    """Protocol settings: the corpus and its folds, the stage settings every fold shares, and where it all goes."""

    dataset: str = "ravdess"  # ravdess (leave-one-actor-out) or iemocap (leave-one-session-out)
    root: Path | None = None
    run_dir: Path | None = None  # shared/, fold-K/ and protocol/ go here; default runs/<dataset>-protocol
    folds: tuple[int, ...] = ()  # test actor (RAVDESS) or session (IEMOCAP) of each fold; empty: every one present
    # the dataset's protocol options, the same for every fold (None: the adapter's default)
    classes: str | None = None  # RAVDESS: "7" or "8"
    include_song: bool | None = None  # RAVDESS
    include_scripted: bool | None = None  # IEMOCAP
    lambdas: tuple[float, ...] = (0.0, 0.4)  # λ = 0 (the audio-only student) is trained whether listed or not
    method: str = "proposed"
    level: str = sweep.DEFAULT_LEVEL  # encoder and aggregator train a sequential teacher on crop-length windows
    arch: str = "resnet"  # student
    teacher_arch: str = "resnet34"
    tiny: bool = False
    epochs: int = 50  # student epochs
    teacher_epochs: int | None = None  # default: epochs
    batch_size: int = 32  # student, and teacher unless teacher_options set it
    crop_seconds: int = 5
    seed: int = 0
    # any other stage setting, the same for every fold, as "key=value" with a TOML value ("lr_max=2e-3")
    student_options: tuple[str, ...] = ()
    teacher_options: tuple[str, ...] = ()
    prepare_options: tuple[str, ...] = ()
    num_workers: int = 2
    device: str = "auto"

    def validate(self) -> None:
        if self.dataset not in FOLD_DATASETS:
            raise config_io.ConfigError(f"protocol: dataset must be one of {list(FOLD_DATASETS)} (the corpora with "
                                        f"subject folds), got {self.dataset!r}")
        if self.root is None:
            raise config_io.ConfigError("protocol: 'root' (the dataset directory) is required")
        for axis in ("folds", "lambdas"):
            values = getattr(self, axis)
            if len(set(values)) != len(values):
                raise config_io.ConfigError(f"protocol: {axis} has repeated values: {list(values)}")
        if any(not 0.0 <= lam <= 1.0 for lam in self.lambdas):
            raise config_io.ConfigError(f"protocol: every λ must lie in [0, 1], got {list(self.lambdas)}")
        if self.teacher_epochs is not None and self.teacher_epochs < 1:
            raise config_io.ConfigError(f"protocol: teacher_epochs must be >= 1, got {self.teacher_epochs}")
        for name, taken in (("student_options", STUDENT_KEYS), ("teacher_options", TEACHER_KEYS),
                            ("prepare_options", PREPARE_KEYS)):
            options = sweep.parse_student_options(getattr(self, name), f"protocol: {name}")
            if clash := sorted(set(options) & set(taken)):
                raise config_io.ConfigError(f"protocol: {name} may not set {clash}; they are protocol settings")

    @property
    def resolved_run_dir(self) -> Path:
        return self.run_dir or Path("runs") / f"{self.dataset}-protocol"

    @property
    def report_dir(self) -> Path:
        return self.resolved_run_dir / "protocol"

    @property
    def student_lambdas(self) -> tuple[float, ...]:
        """λ = 0 first, then the requested λ > 0 in order."""
        return (0.0, *(lam for lam in self.lambdas if lam > 0))

    @property
    def sequential(self) -> bool:
        return self.level != sweep.DEFAULT_LEVEL


def shared_dir(cfg: ProtocolConfig) -> Path:
    """The run directory whose prepare/ every fold shares."""
    return cfg.resolved_run_dir / "shared"


def fold_dir(cfg: ProtocolConfig, fold: int) -> Path:
    """Fold K's run directory: prepare/ (its manifest, linked stores), teacher/, embeddings/, students/."""
    return cfg.resolved_run_dir / f"fold-{fold}"


def open_adapter(cfg: ProtocolConfig, fold: int | None):
    """The dataset adapter with the protocol's options, for fold `fold` (None: every utterance "train")."""
    return open_dataset(cfg.dataset, cfg.root, fold=fold, classes=cfg.classes, include_song=cfg.include_song,
                        include_scripted=cfg.include_scripted)


def resolve_folds(cfg: ProtocolConfig) -> list[int]:
    """The folds to run: those asked for, each of which the corpus must have, or every one it has."""
    present = open_adapter(cfg, None).folds()
    absent = [fold for fold in cfg.folds if fold not in present]
    if absent:
        raise config_io.ConfigError(f"{cfg.root}: has no fold(s) {absent} (no usable utterance of that subject); "
                                    f"folds present: {present}")
    return list(cfg.folds) or present


def prepare_config(cfg: ProtocolConfig) -> prepare.PrepareConfig:
    values = {**sweep.parse_student_options(cfg.prepare_options, "protocol: prepare option"),
              "root": cfg.root, "dataset": cfg.dataset, "run_dir": shared_dir(cfg), "classes": cfg.classes,
              "include_song": cfg.include_song, "include_scripted": cfg.include_scripted,
              "num_workers": cfg.num_workers}
    return config_io.build(prepare.PrepareConfig, {k: v for k, v in values.items() if v is not None},
                           source="protocol prepare")


def teacher_config(cfg: ProtocolConfig, fold: int) -> train_teacher.TeacherConfig:
    values = {"batch_size": cfg.batch_size,
              **sweep.parse_student_options(cfg.teacher_options, "protocol: teacher option"),
              "run_dir": fold_dir(cfg, fold), "dataset": cfg.dataset, "arch": cfg.teacher_arch, "tiny": cfg.tiny,
              "epochs": cfg.teacher_epochs or cfg.epochs, "seed": cfg.seed, "sequential": cfg.sequential,
              "num_workers": cfg.num_workers, "device": cfg.device}
    if cfg.sequential:  # the cache's aggregator windows must be the student's crops
        values["window_seconds"] = cfg.crop_seconds
    return config_io.build(train_teacher.TeacherConfig, values, source=f"protocol fold {fold} teacher")


def export_config(cfg: ProtocolConfig, fold: int) -> export_embeddings.ExportConfig:
    return config_io.build(export_embeddings.ExportConfig, {
        "run_dir": fold_dir(cfg, fold), "dataset": cfg.dataset, "store": prepare_config(cfg).store,
        "splits": EXPORTED_SPLITS, "num_workers": cfg.num_workers, "device": cfg.device,
    }, source=f"protocol fold {fold} export")


def sweep_config(cfg: ProtocolConfig, fold: int, teacher_fingerprint: str | None) -> sweep.SweepConfig:
    """Fold K's students as a one-method sweep; with the fingerprint, a cell refuses any other teacher's cache."""
    pinned = (f"expect_teacher='{teacher_fingerprint}'",) if teacher_fingerprint else ()
    student_options = cfg.student_options + pinned
    return config_io.build(sweep.SweepConfig, {
        "run_dir": fold_dir(cfg, fold), "dataset": cfg.dataset, "name": SWEEP_NAME, "lambdas": cfg.student_lambdas,
        "methods": (cfg.method,), "levels": (cfg.level,), "archs": (cfg.arch,), "seeds": (cfg.seed,),
        "tiny": cfg.tiny, "epochs": cfg.epochs, "batch_size": cfg.batch_size, "crop_seconds": cfg.crop_seconds,
        "student_options": student_options, "num_workers": cfg.num_workers, "device": cfg.device,
    }, source=f"protocol fold {fold} students")


def _stores_complete(directory: Path) -> bool:
    for stem in STORES:
        try:
            reader = open_store(runs.find_store(directory, stem), require_complete=False)
        except FileNotFoundError:
            return False
        reader.close()
        if not reader.complete:
            return False
    return True


def prepare_shared(cfg: ProtocolConfig) -> Path:
    """Decode the corpus once (every utterance; splits come per fold); a finished one is reused."""
    prepare_cfg = prepare_config(cfg)
    out = runs.prepare_dir(shared_dir(cfg))
    if (out / "prepare.json").exists() and _stores_complete(out):
        sweep.check_finished_run(out, prepare_cfg, f"use another --run-dir, or remove {out} to decode again")
        tqdm.write(f"protocol {cfg.dataset}: reusing the prepared corpus in {out}")
        return out
    return prepare.run(prepare_cfg)


def fold_entries(entries: list[Entry], adapter) -> list[Entry]:
    """The shared manifest's entries with the split the adapter's fold gives each; refuses a key it does not list."""
    splits = {utterance.key: utterance.split for utterance in adapter.utterances()}
    unknown = [entry.key for entry in entries if entry.key not in splits]
    if unknown:
        raise DatasetError(f"{adapter.root}: {len(unknown)} prepared utterances are not in the corpus's fold "
                           f"{adapter.fold} listing, e.g. {unknown[:3]}; the corpus changed since it was prepared: "
                           "remove RUN_DIR/shared and run again")
    return [replace(entry, split=splits[entry.key]) for entry in entries]


def _speakers_by_split(adapter, entries: list[Entry]) -> dict[str, list[str]]:
    speaker = {utterance.key: utterance.speaker for utterance in adapter.utterances()}
    return {split: sorted({speaker[e.key] for e in entries if e.split == split}) for split in ("train", "val", "test")}


def _link(link: Path, target: Path) -> None:
    """A relative symlink `link` → `target` (the run directory can move); an existing other file is an error."""
    relative = os.path.relpath(target, link.parent)
    if link.is_symlink() and os.readlink(link) == relative:
        return
    if link.exists() or link.is_symlink():
        raise FileExistsError(f"{link}: exists and is not a link to {target}; remove it to let the protocol link "
                              "the shared store")
    link.symlink_to(relative, target_is_directory=target.is_dir())


def write_fold_prepare(cfg: ProtocolConfig, fold: int, shared: Path) -> Path:
    """Fold K's prepare directory: the shared manifest re-split for the fold, classes, trials, links to the stores.

    Unchanged when it already holds this manifest; a different one is refused once the fold's teacher exists
    (its results would belong to another split)."""
    adapter = open_adapter(cfg, fold)
    entries = fold_entries(read_manifest(shared), adapter)
    speakers = _speakers_by_split(adapter, entries)
    for split in ("train", "val", "test"):
        if not speakers[split]:
            raise DatasetError(f"{cfg.root}: fold {fold} has no {split} utterances (subjects by split: {speakers}); "
                               "the protocol needs a validation subject to choose λ without the test fold, so "
                               "RAVDESS needs at least 3 actors and IEMOCAP 2 sessions")
    if set(speakers["test"]) & set(speakers["train"] + speakers["val"]):
        raise DatasetError(f"{cfg.root}: fold {fold} puts test subjects {speakers['test']} in train or val too")
    out = runs.prepare_dir(fold_dir(cfg, fold))
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.tsv"
    if not manifest.exists() or read_manifest(out) != entries:
        teacher = runs.teacher_dir(fold_dir(cfg, fold))
        if manifest.exists() and teacher.exists():
            raise DatasetError(f"{manifest}: differs from fold {fold} of the prepared corpus, and {teacher} was "
                               "trained on it; remove the fold's directory to redo the fold")
        write_manifest(out, entries, read_classes(shared), read_trials(shared))
    for stem in STORES:
        store = runs.find_store(shared, stem)
        _link(out / store.name, store)
    runs.write_json(out / "dataset.json", {**adapter.describe(), "shared_prepare": str(shared)})
    runs.write_json(out / "fold.json", {
        "fold": fold, "speakers": speakers,
        "utterances": {split: sum(e.split == split for e in entries) for split in ("train", "val", "test", "none")},
        "manifest_sha256": manifest_hash(out), "shared_manifest_sha256": manifest_hash(shared),
    })
    return out


def _finished_cache(path: Path, fingerprint: str, prepared: Path) -> bool:
    """Whether `path` is a complete cache of this teacher, manifest and exported splits."""
    if not path.exists():
        return False
    reader = open_store(path, require_complete=False)
    reader.close()
    return (reader.complete and reader.attrs.get("teacher_fingerprint") == fingerprint
            and reader.attrs.get("manifest_sha256") == manifest_hash(prepared)
            and reader.attrs.get("splits") == list(EXPORTED_SPLITS))


def check_cache(path: Path, prepared: Path) -> dict:
    """Refuse a cache holding any test-fold utterance, or lacking a training one; returns what it holds."""
    entries = read_manifest(prepared)
    reader = open_store(path)
    keys, splits = set(reader.keys), reader.attrs.get("splits")
    reader.close()
    test = {entry.key for entry in entries if entry.split == "test"}
    if leaked := sorted(test & keys):
        raise StoreError(f"{path}: holds {len(leaked)} test-fold utterances of {prepared / 'manifest.tsv'}, e.g. "
                         f"{leaked[:3]}; training on it would leak the test fold: remove it and run again")
    missing = [entry.key for entry in entries if entry.split == "train" and entry.key not in keys]
    if missing:
        raise StoreError(f"{path}: lacks {len(missing)} training utterances, e.g. {missing[:3]}")
    return {"cache": str(path), "cache_keys": len(keys), "cache_splits": splits, "test_keys": len(test),
            "test_keys_in_cache": 0}


def run_fold(cfg: ProtocolConfig, fold: int, label: str) -> None:
    """Teacher, cache and students of one fold; each step skipped when finished, resumed when interrupted.
    `label` starts each progress line."""
    def say(text: str) -> None:
        tqdm.write(f"{label}: {text}")

    directory = fold_dir(cfg, fold)
    prepared = runs.prepare_dir(directory)
    teacher_cfg = teacher_config(cfg, fold)
    teacher_out = runs.teacher_dir(directory)
    if (teacher_out / FINISHED_MARKER).exists():
        sweep.check_finished_run(teacher_out, teacher_cfg,
                                 f"remove {directory} to redo the fold, or use another --run-dir")
        say("teacher finished earlier, reused")
    else:
        resume = (teacher_out / LAST_CHECKPOINT).exists()
        say("training the teacher" + (" (resuming)" if resume else ""))
        train_teacher.run(replace(teacher_cfg, resume=resume))
    fingerprint = runs.read_json(teacher_out / FINISHED_MARKER)["teacher_fingerprint"]

    export_cfg = export_config(cfg, fold)
    if _finished_cache(export_cfg.resolved_out, fingerprint, prepared):
        say(f"cache of teacher {fingerprint[:12]} finished earlier, reused")
    else:
        say(f"exporting the {' and '.join(EXPORTED_SPLITS)} utterances' teacher targets")
        export_embeddings.run(export_cfg)
    held = check_cache(export_cfg.resolved_out, prepared)
    say(f"cache holds {held['cache_keys']} utterances, none of the {held['test_keys']} test-fold ones")
    sweep.run(sweep_config(cfg, fold, fingerprint))


def run(cfg: ProtocolConfig) -> Path:
    """Prepare once, then every fold's teacher, cache and students, then the report; returns the report directory."""
    started = time.perf_counter()
    folds = resolve_folds(cfg)
    for fold in folds:  # every fold's settings checked before anything is decoded or trained
        teacher_config(cfg, fold)
        export_config(cfg, fold)
        fold_sweep = sweep_config(cfg, fold, None)
        for cell in sweep.grid(fold_sweep):
            sweep.cell_config(fold_sweep, cell)
    cfg.report_dir.mkdir(parents=True, exist_ok=True)
    config_io.save(cfg, cfg.report_dir / "protocol.toml")
    shared = prepare_shared(cfg)
    for fold in folds:  # every fold's manifest before any training: a fold without validation stops here
        write_fold_prepare(cfg, fold, shared)
    for index, fold in enumerate(folds, 1):
        label = f"protocol {cfg.dataset} fold {fold} ({index}/{len(folds)})"
        run_fold(cfg, fold, label)
        report = write_report(cfg, folds, time.perf_counter() - started)
        tqdm.write(f"{label}: done; report → {report}")
    return cfg.report_dir


# ---------------------------------------------------------------- report


def _mean_std(values: list[float | None]) -> tuple[float, float, int] | None:
    """(mean, sample std, n) over folds, ignoring missing values; None when there are none."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    return float(np.mean(present)), float(np.std(present, ddof=1)) if len(present) > 1 else 0.0, len(present)


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def _fmt(stat: tuple[float, float, int] | None, unit: str = "") -> str:
    if stat is None:
        return "—"
    mean, std, n = stat
    return f"{100 * mean:.1f} ± {100 * std:.1f}{unit}" if n > 1 else f"{100 * mean:.1f}{unit}"


def _relative(with_: float | None, without: float | None) -> float | None:
    """Relative change of a fold's metric with distillation against without (None where undefined)."""
    if with_ is None or without is None or without == 0:
        return None
    return (with_ - without) / abs(without)


def collect(cfg: ProtocolConfig, folds: list[int]) -> list[dict]:
    """One record per fold that has a manifest: its subjects, teacher, cache and finished students (by λ)."""
    records = []
    for fold in folds:
        directory = fold_dir(cfg, fold)
        prepared = runs.prepare_dir(directory)
        if not (prepared / "fold.json").exists():
            continue
        record = {"fold": fold, **runs.read_json(prepared / "fold.json"), "teacher": None, "cache": None,
                  "students": {}}
        teacher_metrics = runs.teacher_dir(directory) / FINISHED_MARKER
        if teacher_metrics.exists():
            teacher = runs.read_json(teacher_metrics)
            record["teacher"] = {"fingerprint": teacher["teacher_fingerprint"], "arch": teacher["arch"],
                                 "accuracy": teacher["test"]["utterance_accuracy"]}
            cache = export_config(cfg, fold).resolved_out
            if _finished_cache(cache, teacher["teacher_fingerprint"], prepared):
                record["cache"] = check_cache(cache, prepared)  # the report re-checks: no leaked result is shown
        fold_sweep = sweep_config(cfg, fold, None)
        for row in sweep.collect(fold_sweep, sweep.grid(fold_sweep)):
            record["students"][row["lambda"]] = row
        records.append(record)
    return records


def choose_lambda(cfg: ProtocolConfig, records: list[dict]) -> float | None:
    """λ > 0 with the highest mean validation accuracy over folds: chosen without looking at a test fold."""
    candidates = []
    for lam in cfg.student_lambdas[1:]:
        stat = _mean_std([r["students"][lam]["val_accuracy"] for r in records if lam in r["students"]])
        if stat is not None:
            candidates.append((stat[0], -lam, lam))
    return max(candidates)[2] if candidates else None


def fold_rows(records: list[dict], lam: float | None) -> list[dict]:
    """Per fold: teacher accuracy, student without (λ = 0) and with (λ) distillation, relative change."""
    rows = []
    for record in records:
        row = {"fold": record["fold"], "test": " ".join(record["speakers"]["test"]),
               "val": " ".join(record["speakers"]["val"]),
               "teacher": record["teacher"]["accuracy"] if record["teacher"] else None}
        without, with_ = record["students"].get(0.0), record["students"].get(lam)
        for key, _ in REPORTED:
            row[f"without_{key}"] = without[key] if without else None
            row[f"with_{key}"] = with_[key] if with_ else None
            row[f"change_{key}"] = _relative(row[f"with_{key}"], row[f"without_{key}"])
        rows.append(row)
    return rows


def plot_against_lambda(cfg: ProtocolConfig, records: list[dict], path: Path, teacher: tuple | None) -> None:
    """WA and UA against λ, error bars = std over folds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3.6))
    for key, label in REPORTED:
        points = [(lam, _mean_std([r["students"][lam][key] for r in records if lam in r["students"]]))
                  for lam in cfg.student_lambdas]
        points = [(lam, stat) for lam, stat in points if stat is not None]
        if points:
            axis.errorbar([lam for lam, _ in points], [100 * s[0] for _, s in points],
                          yerr=[100 * s[1] for _, s in points], marker="o", capsize=3, label=label)
    if teacher is not None:
        axis.axhline(100 * teacher[0], color="grey", linestyle="--", linewidth=1, label="video teacher (WA)")
    axis.set_xlabel("λ")
    axis.set_ylabel("test fold (%)")
    axis.set_title(f"{cfg.dataset}, {cfg.method} {cfg.arch}{' (tiny)' if cfg.tiny else ''}: mean ± std over "
                   f"{len(records)} folds", fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(cfg: ProtocolConfig, folds: list[int], elapsed: float) -> Path:
    """report.md (per-fold rows, mean ± std over folds), results.csv (one row per fold and λ), summary.json, plot."""
    out = cfg.report_dir
    out.mkdir(parents=True, exist_ok=True)
    records = collect(cfg, folds)
    lam = choose_lambda(cfg, records)
    rows = fold_rows(records, lam)
    names = ("teacher", *(f"{part}_{key}" for part in ("without", "with", "change") for key, _ in REPORTED))
    headline = {name: _mean_std([row[name] for row in rows]) for name in names}
    by_lambda = {value: {key: _mean_std([r["students"][value][key] for r in records if value in r["students"]])
                         for key in ("top1", "ua", "val_accuracy")}
                 for value in cfg.student_lambdas}

    with open(out / "results.csv", "w", newline="") as handle:
        columns = ["fold", "test_speakers", "val_speakers", "lambda", "method", "level", "arch", "seed", "top1", "wa",
                   "ua", "val_accuracy", "teacher_accuracy", "teacher_fingerprint", "cache_keys",
                   "test_keys_in_cache", "train_seconds"]
        writer = csv.DictWriter(handle, columns, lineterminator="\n")
        writer.writeheader()
        for record in records:
            for value, student in sorted(record["students"].items()):
                writer.writerow({
                    "fold": record["fold"], "test_speakers": " ".join(record["speakers"]["test"]),
                    "val_speakers": " ".join(record["speakers"]["val"]), "lambda": value,
                    "method": sweep.BASELINE if value == 0 else cfg.method, "level": cfg.level, "arch": cfg.arch,
                    "seed": cfg.seed, **{key: student[key] for key in ("top1", "wa", "ua", "val_accuracy")},
                    "teacher_accuracy": record["teacher"] and record["teacher"]["accuracy"],
                    "teacher_fingerprint": record["teacher"] and record["teacher"]["fingerprint"],
                    "cache_keys": record["cache"] and record["cache"]["cache_keys"],
                    "test_keys_in_cache": record["cache"] and record["cache"]["test_keys_in_cache"],
                    "train_seconds": student["train_seconds"]})

    def stats(stat):
        return None if stat is None else {"mean": stat[0], "std": stat[1], "n": stat[2]}

    runs.write_json(out / "summary.json", {
        "config": config_io.to_dict(cfg), "folds": folds, "lambda_with_distillation": lam,
        "mean_over_folds": {name: stats(stat) for name, stat in headline.items()},
        "by_lambda": [{"lambda": value, **{key: stats(stat) for key, stat in entry.items()}}
                      for value, entry in by_lambda.items()],
        "per_fold": [{**row, "speakers": record["speakers"], "utterances": record["utterances"],
                      "teacher_fingerprint": record["teacher"] and record["teacher"]["fingerprint"],
                      "cache": record["cache"], "lambdas_finished": sorted(record["students"])}
                     for row, record in zip(rows, records)],
    })
    plot = out / "accuracy_vs_lambda.png"
    if any(record["students"] for record in records):
        plot_against_lambda(cfg, records, plot, headline["teacher"])

    finished = [r for r in records if len(r["students"]) == len(cfg.student_lambdas)]
    notes = []
    if len(finished) < len(folds):
        notes.append(f"**{len(folds) - len(finished)} of {len(folds)} folds have not finished**; the tables hold "
                     "what has. Run the same `avl protocol` again to continue.")
    header = ["fold", "test subjects", "val subjects", "video teacher (WA)"]
    for _, label in REPORTED:
        header += [f"{label} λ = 0", f"{label} λ = {'—' if lam is None else f'{lam:g}'}", f"{label} change"]
    per_fold = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [str(row["fold"]), row["test"], row["val"], _percent(row["teacher"])]
        for key, _ in REPORTED:
            change = row[f"change_{key}"]
            cells += [_percent(row[f"without_{key}"]), _percent(row[f"with_{key}"]),
                      "—" if change is None else f"{100 * change:+.1f}%"]
        per_fold.append("| " + " | ".join(cells) + " |")
    summary_table = ["| metric | video teacher | without distillation (λ = 0) | with distillation | relative change |",
                     "|---|---|---|---|---|"]
    for key, label in REPORTED:
        summary_table.append(" | ".join([
            f"| {label}", _fmt(headline["teacher"]) if key == "top1" else "—", _fmt(headline[f"without_{key}"]),
            _fmt(headline[f"with_{key}"]), _fmt(headline[f"change_{key}"], "%")]) + " |")
    grid = ["| λ | folds | WA (top-1) | UA | val accuracy |", "|---|---|---|---|---|"]
    for value, entry in by_lambda.items():
        n = max((stat[2] for stat in entry.values() if stat is not None), default=0)
        cells = [f"{value:g}", str(n), *(_fmt(entry[key]) for key in ("top1", "ua", "val_accuracy"))]
        grid.append("| " + " | ".join(cells) + " |")
    subject = "actor" if cfg.dataset == "ravdess" else "session"
    text = [
        f"# {cfg.dataset} protocol: leave-one-{subject}-out",
        "",
        f"Run directory `{cfg.resolved_run_dir}`; folds {', '.join(map(str, folds))}; teacher {cfg.teacher_arch}, "
        f"student {cfg.arch}{' (tiny)' if cfg.tiny else ''}, method {cfg.method}, level {cfg.level}; "
        f"λ ∈ {{{', '.join(f'{value:g}' for value in cfg.student_lambdas)}}}; seed {cfg.seed}; "
        f"{cfg.teacher_epochs or cfg.epochs} teacher and {cfg.epochs} student epochs, batch {cfg.batch_size}, "
        f"{cfg.crop_seconds} s crops"
        + "".join(f"; {name.split('_')[0]} settings: {', '.join(getattr(cfg, name))}"
                  for name in ("prepare_options", "teacher_options", "student_options") if getattr(cfg, name)) + ".",
        "",
        f"Every fold ran the whole pipeline: its teacher trained on the fold's training {subject}s only, its "
        f"embedding cache holds the {' and '.join(EXPORTED_SPLITS)} utterances only (checked: no test-fold key in "
        f"it), and its students trained on the training {subject}s. Numbers are test-fold percentages, mean ± "
        "sample standard deviation over folds; WA is the top-1 accuracy, UA the unweighted average recall. "
        "\"With distillation\" is the λ > 0 with the best validation accuracy averaged over folds, so no test "
        "number picks it; the relative change is computed per fold, then averaged.",
        "",
        *(f"> {note}\n" for note in notes),
        "## Mean over folds",
        "",
        *summary_table,
        "",
        "## Per fold",
        "",
        *per_fold,
        "",
        "## Every λ",
        "",
        *grid,
        "",
        *([f"![accuracy against λ]({plot.name})", ""] if plot.exists() else []),
        f"Folds finished: {len(finished)} of {len(folds)} (the last invocation took {elapsed:.0f} s). Per fold and λ: "
        f"`results.csv`; aggregates and each fold's subjects and cache check: `summary.json`; each fold's run: "
        f"`{cfg.resolved_run_dir}/fold-<K>/`.",
        "",
    ]
    report = out / "report.md"
    report.write_text("\n".join(text))
    return report
