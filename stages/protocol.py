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

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from cache import locks
from cache.schema import TeacherCacheSpec
from cache.store import open_store
from pipeline import cells
from pipeline import config as config_io
from pipeline import runs
from pipeline.datasets.options import EmotionCorpusOptions
from pipeline.datasets.registry import dataset_crop_seconds, open_dataset
from pipeline.distill import LEVELS, METHODS
from pipeline.folds import prepare_fold, stores_complete
from pipeline.manifest import manifest_hash, read_manifest
from pipeline.models.students import STUDENTS
from pipeline.models.teachers import TEACHER_ARCHS
from pipeline.report import (
    FOLD_CSV_COLUMNS,
    REPORTED,
    best_lambda,
    fold_csv_rows,
    fold_rows,
    fold_statistics,
    fold_summary,
    fold_tables,
    lambda_statistics,
    mean_of,
    plot_against_lambda,
    write_csv,
    write_markdown,
)
from pipeline.training import FINISHED_MARKER
from stages import export_embeddings, prepare, sweep, train_student, train_teacher

FOLD_DATASETS = ("ravdess", "iemocap")  # the adapters with subject-independent folds (their `folds()`)
EXPORTED_SPLITS = ("train", "val")  # what a fold's cache holds: what its student may see
SWEEP_NAME = "protocol"  # each fold's students: RUN_DIR/fold-K/students/protocol/<cell>
# Settings the protocol sets itself; the *_options lists may not set them.
PREPARE_KEYS = ("root", "dataset", "run_dir", "fold", "classes", "include_song", "include_scripted", "split", "seed",
                "audio_only_ok", "num_workers", "overwrite")
TEACHER_KEYS = ("run_dir", "dataset", "arch", "tiny", "epochs", "seed", "sequential", "window_seconds",
                "num_workers", "device", "resume", "overwrite")
STUDENT_KEYS = (*cells.SWEEP_KEYS, "cache", "expect_teacher")


@dataclass(frozen=True)
class ProtocolConfig(EmotionCorpusOptions):
    """Protocol settings: the corpus, its options and its folds, the stage settings every fold shares, and where."""

    dataset: str = field(default="ravdess", metadata={
        "help": "ravdess (leave-one-actor-out) or iemocap (leave-one-session-out).", "choices": FOLD_DATASETS})
    root: Path | None = field(default=None, metadata={"help": "Dataset root in its published layout."})
    run_dir: Path | None = field(default=None, metadata={
        "help": "Holds shared/, fold-K/ and protocol/ (default: runs/<dataset>-protocol)."})
    folds: tuple[int, ...] = field(default=(), metadata={
        "help": "Folds: the test actor (RAVDESS) or session (IEMOCAP) of each, or all (default: every one present).",
        "words": {"all": ()}})
    lambdas: tuple[float, ...] = field(default=(0.0, 0.4), metadata={
        "help": "λ values; λ = 0 (the audio-only student) is trained whether listed or not."})
    method: str = field(default="proposed", metadata={"help": "Distillation method.", "choices": METHODS})
    level: str = field(default=cells.DEFAULT_LEVEL, metadata={
        "help": "Distillation level: encoder and aggregator train a sequential teacher on crop-length windows.",
        "choices": LEVELS})
    arch: str = field(default="resnet", metadata={"help": "Student architecture.", "choices": STUDENTS})
    teacher_arch: str = field(default="resnet34", metadata={"help": "Teacher architecture.", "choices": TEACHER_ARCHS})
    tiny: bool = field(default=False, metadata={"help": "Small teacher and student variants that train on a CPU."})
    epochs: int = field(default=50, metadata={
        "help": "Student epochs (and teacher epochs unless --teacher-epochs).", "min": 1})
    teacher_epochs: int | None = field(default=None, metadata={
        "help": "Teacher epochs (default: --epochs).", "min": 1})
    batch_size: int = field(default=32, metadata={
        "help": "Student batch size, and the teacher's unless --teacher-set sets it.", "min": 1})
    crop_seconds: int | None = field(default=None, metadata={
        "help": "Training crop length in whole seconds, and a sequential teacher's window (default: the dataset's, "
                "as the paper: 4 s for RAVDESS and IEMOCAP).", "min": 1})
    seed: int = field(default=0, metadata={"help": "Random seed."})
    # any other stage setting, the same for every fold, as "key=value" with a TOML value ("lr_max=2e-3")
    student_options: tuple[str, ...] = field(default=(), metadata={
        "help": "Any other stage-3 setting, KEY=VALUE; repeatable.", "flag": "--set", "repeatable": True})
    teacher_options: tuple[str, ...] = field(default=(), metadata={
        "help": "Any other stage-1 setting, KEY=VALUE; repeatable.", "flag": "--teacher-set", "repeatable": True})
    prepare_options: tuple[str, ...] = field(default=(), metadata={
        "help": "Any other stage-0 setting, KEY=VALUE; repeatable.", "flag": "--prepare-set", "repeatable": True})
    num_workers: int = field(default=2, metadata={"help": "DataLoader worker processes.", "min": 0})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N or auto."})

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
        for name, taken, stage in (("student_options", STUDENT_KEYS, train_student.StudentConfig),
                                   ("teacher_options", TEACHER_KEYS, train_teacher.TeacherConfig),
                                   ("prepare_options", PREPARE_KEYS, prepare.PrepareConfig)):
            options = config_io.parse_options(getattr(self, name), f"protocol: {name}")
            if clash := sorted(key for key in options if config_io.field_name(stage, key) in taken):
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
        return self.level != cells.DEFAULT_LEVEL


def shared_dir(cfg: ProtocolConfig) -> Path:
    """The run directory whose prepare/ every fold shares."""
    return cfg.resolved_run_dir / "shared"


def fold_dir(cfg: ProtocolConfig, fold: int) -> Path:
    """Fold K's run directory: prepare/ (its manifest, linked stores), teacher/, embeddings/, students/."""
    return cfg.resolved_run_dir / f"fold-{fold}"


def open_adapter(cfg: ProtocolConfig, fold: int | None):
    """The dataset adapter with the protocol's options, for fold `fold` (None: every utterance "train")."""
    return open_dataset(cfg.dataset, cfg.root, fold=fold, **cfg.corpus_options())


def resolve_folds(cfg: ProtocolConfig) -> list[int]:
    """The folds to run: those asked for, each of which the corpus must have, or every one it has."""
    present = open_adapter(cfg, None).folds()
    absent = [fold for fold in cfg.folds if fold not in present]
    if absent:
        raise config_io.ConfigError(f"{cfg.root}: has no fold(s) {absent} (no usable utterance of that subject); "
                                    f"folds present: {present}")
    return list(cfg.folds) or present


def prepare_config(cfg: ProtocolConfig) -> prepare.PrepareConfig:
    values = {**config_io.parse_options(cfg.prepare_options, "protocol: prepare option"),
              "root": cfg.root, "dataset": cfg.dataset, "run_dir": shared_dir(cfg), **cfg.corpus_options(),
              "num_workers": cfg.num_workers}
    # as stage 0 records it, so a finished shared prepare/ compares equal
    return prepare.resolve_boxes_dir(config_io.build(
        prepare.PrepareConfig, {k: v for k, v in values.items() if v is not None}, source="protocol prepare"))


def teacher_config(cfg: ProtocolConfig, fold: int) -> train_teacher.TeacherConfig:
    values = {"batch_size": cfg.batch_size,
              **config_io.parse_options(cfg.teacher_options, "protocol: teacher option"),
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


def prepare_shared(cfg: ProtocolConfig) -> Path:
    """Decode the corpus once (every utterance; splits come per fold); a finished one is reused."""
    prepare_cfg = prepare_config(cfg)
    out = runs.prepare_dir(shared_dir(cfg))
    if (out / "prepare.json").exists() and stores_complete(out):
        cells.check_finished_run(out, prepare_cfg, f"use another --run-dir, or remove {out} to decode again")
        tqdm.write(f"protocol {cfg.dataset}: reusing the prepared corpus in {out}")
        return out
    return prepare.run(prepare_cfg)


def write_fold_prepare(cfg: ProtocolConfig, fold: int, shared: Path) -> Path:
    """Fold K's prepare directory: the shared manifest re-split by the adapter's fold K, links to the stores."""
    return prepare_fold(fold_dir(cfg, fold), open_adapter(cfg, fold), shared)


def _finished_cache(path: Path, fingerprint: str, prepared: Path) -> bool:
    """Whether `path` is a complete cache of this teacher, manifest and exported splits."""
    if not path.exists():
        return False
    expected = TeacherCacheSpec(teacher_fingerprint=fingerprint, manifest_sha256=manifest_hash(prepared),
                                splits=EXPORTED_SPLITS)
    with open_store(path, require_complete=False) as reader:
        return reader.complete and not expected.problems(reader)


def check_cache(path: Path, prepared: Path) -> dict:
    """Refuse a cache holding any test-fold utterance, or lacking a training one; returns what it holds."""
    entries = read_manifest(prepared)
    test = [entry.key for entry in entries if entry.split == "test"]
    with open_store(path) as reader:
        TeacherCacheSpec().check(path, reader, training_keys=[entry.key for entry in entries if entry.split == "train"],
                                 test_keys=test)
        return {"cache": str(path), "cache_keys": len(reader), "cache_splits": reader.attrs.get("splits"),
                "test_keys": len(test), "test_keys_in_cache": 0}


def run_fold(cfg: ProtocolConfig, fold: int, label: str) -> None:
    """Teacher, cache and students of one fold; each step skipped when finished, resumed when interrupted.
    `label` starts each progress line."""
    def say(text: str) -> None:
        tqdm.write(f"{label}: {text}")

    directory = fold_dir(cfg, fold)
    prepared = runs.prepare_dir(directory)
    teacher_out = train_teacher.run_or_reuse(
        teacher_config(cfg, fold), f"remove {directory} to redo the fold, or use another --run-dir", label)
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


# two protocols in one run directory would train the same folds: the second is refused
@runs.one_writer(lambda cfg: locks.inside(cfg.resolved_run_dir))
def run(cfg: ProtocolConfig) -> Path:
    """Prepare once, then every fold's teacher, cache and students, then the report; returns the report directory."""
    started = time.perf_counter()
    folds = resolve_folds(cfg)
    for fold in folds:  # every fold's settings checked before anything is decoded or trained
        teacher_config(cfg, fold)
        export_config(cfg, fold)
        fold_sweep = sweep_config(cfg, fold, None)
        for cell in cells.grid(fold_sweep):
            config_io.build(train_student.StudentConfig, cells.cell_settings(fold_sweep, cell),
                            source=f"sweep cell {cell.cell_id}")
    cfg.report_dir.mkdir(parents=True, exist_ok=True)
    shared = prepare_shared(cfg)
    cfg = replace(cfg, crop_seconds=cfg.crop_seconds or dataset_crop_seconds(shared))
    config_io.save(cfg, cfg.report_dir / "protocol.toml")  # with the crop every fold trains with
    for fold in folds:  # every fold's manifest before any training: a fold without validation stops here
        write_fold_prepare(cfg, fold, shared)
    for index, fold in enumerate(folds, 1):
        label = f"protocol {cfg.dataset} fold {fold} ({index}/{len(folds)})"
        run_fold(cfg, fold, label)
        report = write_report(cfg, folds, time.perf_counter() - started)
        tqdm.write(f"{label}: done; report → {report}")
    return cfg.report_dir


# ---------------------------------------------------------------- report


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
                                 "accuracy": teacher["test"]["utterance_accuracy"],
                                 "ua": teacher["test"].get("utterance_ua")}  # None: a teacher from before UA
            cache = export_config(cfg, fold).resolved_out
            if _finished_cache(cache, teacher["teacher_fingerprint"], prepared):
                record["cache"] = check_cache(cache, prepared)  # the report re-checks: no leaked result is shown
        fold_sweep = sweep_config(cfg, fold, None)
        for row in cells.collect(fold_sweep, cells.grid(fold_sweep)):
            record["students"][row["lambda"]] = row
        records.append(record)
    return records


def write_report(cfg: ProtocolConfig, folds: list[int], elapsed: float) -> Path:
    """report.md (per-fold rows, mean ± std over folds), results.csv (one row per fold and λ), summary.json, plot."""
    out = cfg.report_dir
    out.mkdir(parents=True, exist_ok=True)
    records = collect(cfg, folds)
    by_lambda = lambda_statistics(records, cfg.student_lambdas)
    # "with distillation": the λ > 0 with the best validation accuracy over folds, so no test fold picks it
    lam = best_lambda({value: entry["val_accuracy"] for value, entry in by_lambda.items()})
    rows = fold_rows(records, lam)
    headline = fold_statistics(rows)

    write_csv(out / "results.csv", FOLD_CSV_COLUMNS, fold_csv_rows(cfg, records))
    runs.write_json(out / "summary.json", {
        "config": config_io.to_dict(cfg), "folds": folds, "lambda_with_distillation": lam,
        **fold_summary(records, rows, headline, by_lambda)})
    plot = out / "accuracy_vs_lambda.png"
    if any(record["students"] for record in records):
        plot_against_lambda(
            plot, {label: [(value, entry[key]) for value, entry in by_lambda.items()] for key, label in REPORTED},
            "test fold (%)",
            f"{cfg.dataset}, {cfg.method} {cfg.arch}{' (tiny)' if cfg.tiny else ''}: mean ± std over "
            f"{len(records)} folds", teacher=mean_of(headline["teacher"]), teacher_label="video teacher (WA)")

    finished = [r for r in records if len(r["students"]) == len(cfg.student_lambdas)]
    notes = []
    if len(finished) < len(folds):
        notes.append(f"**{len(folds) - len(finished)} of {len(folds)} folds have not finished**; the tables hold "
                     "what has. Run the same `avl protocol` again to continue.")
    subject = "actor" if cfg.dataset == "ravdess" else "session"
    settings = (
        f"Run directory `{cfg.resolved_run_dir}`; folds {', '.join(map(str, folds))}; teacher {cfg.teacher_arch}, "
        f"student {cfg.arch}{' (tiny)' if cfg.tiny else ''}, method {cfg.method}, level {cfg.level}; "
        f"λ ∈ {{{', '.join(f'{value:g}' for value in cfg.student_lambdas)}}}; seed {cfg.seed}; "
        f"{cfg.teacher_epochs or cfg.epochs} teacher and {cfg.epochs} student epochs, batch {cfg.batch_size}, "
        f"{cfg.crop_seconds} s crops"
        + "".join(f"; {name.split('_')[0]} settings: {', '.join(getattr(cfg, name))}"
                  for name in ("prepare_options", "teacher_options", "student_options") if getattr(cfg, name)) + ".")
    how_to_read = (
        f"Every fold ran the whole pipeline: its teacher trained on the fold's training {subject}s only, its "
        f"embedding cache holds the {' and '.join(EXPORTED_SPLITS)} utterances only (checked: no test-fold key in "
        f"it), and its students trained on the training {subject}s. Numbers are test-fold percentages, mean ± "
        "sample standard deviation over folds; WA is the top-1 accuracy, UA the unweighted average recall. "
        "\"With distillation\" is the λ > 0 with the best validation accuracy averaged over folds, so no test "
        "number picks it; the relative change is computed per fold, then averaged.")
    tables = {title: [*table, ""] for title, table in fold_tables(headline, rows, by_lambda, lam).items()}
    closing = [*([f"![accuracy against λ]({plot.name})", ""] if plot.exists() else []),
               f"Folds finished: {len(finished)} of {len(folds)} (the last invocation took {elapsed:.0f} s). Per fold "
               f"and λ: `results.csv`; aggregates and each fold's subjects and cache check: `summary.json`; each "
               f"fold's run: `{cfg.resolved_run_dir}/fold-<K>/`."]
    return write_markdown(out / "report.md", f"{cfg.dataset} protocol: leave-one-{subject}-out",
                          [settings, how_to_read], notes, tables, closing)
