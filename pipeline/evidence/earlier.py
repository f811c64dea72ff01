"""An earlier benchmark report read back (`avl benchmark --reported DIR`): its results.csv rows, teachers and chosen
temperatures, and the studies of a new report that can be taken from it because its spec defines them as the new
one does and the work directory holds none of their cells."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from pipeline import runs
from pipeline.errors import UserError
from pipeline.evidence import spec as spec_io
from pipeline.evidence.report import CSV_COLUMNS, Results, digest

_CSV_TYPES = {"condition": str, "cell": str, "method": str, "level": str, "arch": str, "seed": int, "parameters": int,
              "teacher_fingerprint": str}  # the rest are floats


@dataclass(frozen=True)
class Earlier:
    """An earlier report: where it is, its spec, rows by study, and its teachers' accuracy and temperatures."""

    directory: Path
    spec: spec_io.BenchmarkSpec
    rows: dict[str, list[dict]]
    teachers: dict[str, float | None]
    temperatures: dict[str, float | None]


def read_rows(path: Path) -> dict[str, list[dict]]:
    """An earlier report's results.csv as study name → rows, typed as the rows it was written from."""
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [column for column in CSV_COLUMNS if column not in (reader.fieldnames or [])]
            if missing:
                raise UserError(f"{path}: not a benchmark results table: no column {', '.join(missing)}")
            records = list(reader)
    except OSError as error:
        raise UserError(f"{path}: cannot read the earlier report's results: {error}") from error
    rows: dict[str, list[dict]] = {}
    for line, record in enumerate(records, start=2):
        if None in record or None in record.values():  # csv's marks of a line with more or fewer fields
            raise UserError(f"{path}, line {line}: not {len(reader.fieldnames)} fields as the header has")
        row = {}
        for key in CSV_COLUMNS[1:]:
            try:
                row[key] = None if record[key] == "" else _CSV_TYPES.get(key, float)(record[key])
            except ValueError:
                raise UserError(f"{path}, line {line}: column {key} holds {record[key]!r}") from None
        rows.setdefault(record["study"], []).append(row)
    return rows


def read_earlier(directory: Path) -> Earlier:
    """The report in `directory` (benchmark.toml, results.csv, summary.json), refused with the file named when one is
    missing or damaged, or when its files come from different invocations (summary.json's digests)."""
    paths = {name: directory / name for name in ("benchmark.toml", "results.csv", "summary.json")}
    for path in paths.values():
        if not path.is_file():
            raise UserError(f"{path}: missing; --reported takes a report directory written by `avl benchmark`")
    try:
        summary = runs.read_json(paths["summary.json"])
        teachers, temperatures = summary.get("teachers") or {}, summary.get("temperatures") or {}
    except (ValueError, AttributeError) as error:
        raise UserError(f"{paths['summary.json']}: not a benchmark summary: {error}") from None
    for name, key in (("results.csv", "results_sha256"), ("benchmark.toml", "spec_sha256")):
        if key in summary and digest(paths[name]) != summary[key]:  # reports before the digests: taken as they are
            raise UserError(f"{paths[name]}: not the file {paths['summary.json']} was written with (a report stopped "
                            "halfway, or edited); rebuild that report with `avl benchmark --report-only` first")
    return Earlier(directory, spec_io.load(paths["benchmark.toml"]), read_rows(paths["results.csv"]), teachers,
                   temperatures)


def take_reported(results: Results, earlier: Earlier) -> None:
    """Fill in the studies of which the work directory holds no finished cell from `earlier`: their rows, and the
    teachers and temperatures they rest on. A study is taken only where the earlier spec defines it exactly as this
    one does (BenchmarkSpec.definition: its settings, corpora, shared student settings and the studies it rests on),
    and where the soft-label temperature it trained with is the one this report shows, so a changed study is trained
    again, never silently reused. Taken studies are listed in `results.reported`."""
    spec = results.spec
    earlier_names = {study.name for study in earlier.spec.studies}
    for study in spec.studies:  # in spec order: a temperature study is decided before the studies that use its T
        if results.rows[study.name] or study.name not in earlier_names or not earlier.rows.get(study.name):
            continue
        source, why = study.temperature_from, None
        if earlier.spec.definition(study.name) != spec.definition(study.name):
            why = "its spec there defines it otherwise"
        elif source and earlier.temperatures.get(source) != results.temperatures.get(source):
            why = (f"it trained at T = {earlier.temperatures.get(source)}, this report's {source} study chose "
                   f"T = {results.temperatures.get(source)}")
        if why:
            tqdm.write(f"benchmark: study {study.name} is not taken from {earlier.directory}: {why}")
            continue
        results.rows[study.name] = earlier.rows[study.name]
        results.reported[study.name] = earlier.directory
        for corpus in spec.corpora_of(study):  # its definition equal, so the same teacher
            accuracy = earlier.teachers.get(corpus)
            # an emotion study's teachers are its folds': the work directory's may be a partial set
            if accuracy is not None and (study.role == "emotion" or not results.teachers.get(corpus)):
                results.teachers[corpus] = {"test": {"utterance_accuracy": accuracy}}
        if study.role == "temperature" and results.temperatures.get(study.name) is None:
            results.temperatures[study.name] = earlier.temperatures.get(study.name)
