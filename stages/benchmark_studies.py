"""`avl benchmark`'s studies as stage configs: a study as `avl sweep` configs (or, for an emotion study, an `avl
protocol` config), its finished students as rows, the soft-label temperature a temperature study chooses on
validation accuracy, and everything the report reads (pipeline/evidence/report.py's Results), from the work directory
and, for studies it holds nothing of, from an earlier report."""

from __future__ import annotations

from pathlib import Path

from pipeline import config as config_io
from pipeline import runs
from pipeline.cells import collect, grid
from pipeline.evidence.earlier import read_earlier, take_reported
from pipeline.evidence.report import Results
from pipeline.evidence.spec import BenchmarkSpec, StudySpec
from pipeline.report import mean_std
from stages import protocol
from stages.sweep import SweepConfig


def corpus_root(work: Path, name: str) -> Path:
    return work / name / "corpus"


def run_dir(work: Path, name: str) -> Path:
    return work / name / "run"


def _options(settings: dict) -> tuple[str, ...]:
    """Stage-3 settings as the sweep's KEY=VALUE options (TOML values)."""
    def toml_value(value) -> str:
        return f'"{value}"' if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else repr(value)
    return tuple(f"{key}={toml_value(value)}" for key, value in sorted(settings.items()))


def teacher_cache(work: Path, study: StudySpec, teacher: str) -> Path:
    """Where a multi-teacher study's run holds the cache of corpus entry `teacher`'s teacher."""
    return run_dir(work, study.corpus) / "embeddings" / f"{teacher}.zarr"


def teacher_checkpoint(work: Path, teacher: str) -> Path:
    return runs.teacher_checkpoint(run_dir(work, teacher))


def distil_option(work: Path, study: StudySpec, targets: tuple[dict, ...]) -> list[str]:
    """A condition's targets as stage 3's `--distil` values: each names the cache and the teacher that made it."""
    def one(target: dict) -> str:
        extra = {key: target[key] for key in ("layer", "distance", "target") if target.get(key)}
        return ",".join([f"lam={float(target['lam']):g}", f"cache={teacher_cache(work, study, target['teacher'])}",
                         f"teacher={teacher_checkpoint(work, target['teacher'])}",
                         *(f"{key}={value}" for key, value in extra.items())])
    return [one(target) for target in targets]


def study_sweeps(work: Path, spec: BenchmarkSpec, study: StudySpec, device: str, temperature: float | None):
    """The sweeps of a study: one per temperature for a temperature study, one per condition for a multi-teacher
    study (in its order), else one (soft-label at `temperature` when the study takes it from a temperature study;
    None there means "not chosen yet" and yields a placeholder T only good for checking settings)."""
    def make(name: str, extra: dict, lambdas: tuple[float, ...] = study.lambdas) -> SweepConfig:
        return SweepConfig(
            run_dir=run_dir(work, study.corpus), dataset="voxceleb", name=name, lambdas=lambdas,
            methods=study.methods, levels=study.levels, archs=(spec.arch,), seeds=study.seeds, tiny=spec.tiny,
            epochs=spec.epochs, batch_size=spec.batch_size, crop_seconds=spec.crop_seconds,
            student_options=_options({**spec.student, **study.options, **extra}), num_workers=0, device=device)

    if study.role == "temperature":
        return [make(f"{study.name}-T{t:g}", {"temperature": t}) for t in study.temperatures]
    if study.role == "multi-teacher":
        return [make(f"{study.name}-{name}", {"distil": distil_option(work, study, targets)} if targets else {},
                     (round(sum(float(t["lam"]) for t in targets), 6),))
                for name, targets in study.conditions]
    extra = {"temperature": temperature if temperature is not None else 2.0} if study.temperature_from else {}
    return [make(study.name, extra)]


def protocol_config(work: Path, spec: BenchmarkSpec, study: StudySpec, device: str):
    """An emotion study's `avl protocol` config: the benchmark's student settings, the study's λ and method, and
    its `protocol` table (folds, teacher_epochs, stage options)."""
    root = corpus_root(work, study.corpus)
    settings = dict(study.protocol)
    student_options = tuple(settings.pop("student_options", ())) + _options(spec.student)
    return config_io.build(protocol.ProtocolConfig, {
        "dataset": "ravdess", "root": root, "run_dir": work / study.corpus / "protocol", "lambdas": study.lambdas,
        "method": study.methods[0], "arch": spec.arch, "tiny": spec.tiny, "epochs": spec.epochs,
        "batch_size": spec.batch_size, "crop_seconds": spec.crop_seconds, "student_options": student_options,
        "num_workers": 0, "device": device, **settings},
        source=f"benchmark study {study.name}: protocol")


def _protocol_rows(work: Path, spec: BenchmarkSpec, study: StudySpec) -> tuple[list[dict], list[dict]]:
    """An emotion study's finished students as rows whose seed is the fold, and each fold's teacher."""
    cfg = protocol_config(work, spec, study, "cpu")
    if not (work / study.corpus / "protocol").exists():
        return [], []
    records = protocol.collect(cfg, protocol.resolve_folds(cfg))
    rows = [{**row, "seed": record["fold"]} for record in records for row in record["students"].values()]
    return rows, [record["teacher"] for record in records if record["teacher"]]


def protocol_teachers(work: Path, spec: BenchmarkSpec, study: StudySpec) -> list[dict]:
    return _protocol_rows(work, spec, study)[1]


def study_rows(work: Path, spec: BenchmarkSpec, study: StudySpec, temperature: float | None = None) -> list[dict]:
    """Every finished cell of a study (cells.collect rows; a temperature study's rows carry their T; an emotion
    study's rows are its folds, each fold's number as the seed)."""
    if study.role == "emotion":
        return _protocol_rows(work, spec, study)[0]
    rows = []
    sweeps = study_sweeps(work, spec, study, "cpu", temperature)
    conditions = [name for name, _ in study.conditions] or [None] * len(sweeps)
    for sweep_cfg, condition in zip(sweeps, conditions):
        trained_with = config_io.parse_options(sweep_cfg.student_options, f"sweep {sweep_cfg.name}: student option")
        for row in collect(sweep_cfg, grid(sweep_cfg)):
            if study.role == "temperature":  # the soft-label T its students trained with
                row["temperature"] = float(trained_with["temperature"])
            if condition is not None:
                row["condition"] = condition
            rows.append(row)
    return rows


def temperature_choice(work: Path, spec: BenchmarkSpec, study: StudySpec, device: str = "cpu") -> float | None:
    """The temperature with the best mean validation accuracy over the study's seeds (the lower T on a tie);
    None until every cell of the study has finished."""
    rows = study_rows(work, spec, study)
    expected = len(study.temperatures) * len(study.seeds) * len(study.lambdas)
    if len(rows) < expected:
        return None
    scores = {t: mean_std([r["val_accuracy"] for r in rows if r["temperature"] == t]) for t in study.temperatures}
    return max((stat[0], -t, t) for t, stat in scores.items() if stat is not None)[2]


def read_results(work: Path, spec: BenchmarkSpec, reported: Path | None = None) -> Results:
    """Every study's finished rows, every corpus's teacher (an emotion study's: the mean of its folds') and the
    temperatures chosen so far; with `reported`, what earlier.take_reported fills in from that earlier report."""
    temperatures = {s.name: temperature_choice(work, spec, s) for s in spec.by_role("temperature")}
    rows = {s.name: study_rows(work, spec, s, temperatures.get(s.temperature_from) if s.temperature_from else None)
            for s in spec.studies}
    teachers = {}
    for name in spec.corpora:
        path = runs.teacher_dir(run_dir(work, name)) / "metrics.json"
        teachers[name] = runs.read_json(path) if path.exists() else {}
    for study in spec.by_role("emotion"):  # a teacher per fold: their mean UA (the paper's Table 6 column)
        folds = protocol_teachers(work, spec, study)
        values = [fold["ua"] if fold.get("ua") is not None else fold["accuracy"] for fold in folds]
        if values:
            teachers[study.corpus] = {"test": {"utterance_accuracy": sum(values) / len(values)}, "folds": len(values)}
    results = Results(spec, rows, teachers, temperatures)
    if reported is not None:
        take_reported(results, read_earlier(reported))
    return results
