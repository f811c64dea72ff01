"""results/benchmark/: report.md (per-corpus teacher and baseline, the paper-shaped tables, every grid point with
its paired change, the controls, a verdict per claim), metric-against-λ PNGs, results.csv and summary.json.

Every comparison is paired by seed (same initial weights and batches, with and without the change) and given
with its 95 % t interval (pipeline/evidence/stats.py); "with distillation" is the λ > 0 with the best mean
validation accuracy, so no test number picks it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pipeline import runs
from pipeline.cells import BASELINE, METRICS
from pipeline.evidence.claims import claims
from pipeline.evidence.spec import BenchmarkSpec, StudySpec
from pipeline.evidence.stats import format_paired, paired
from pipeline.report import (
    MISSING,
    best_lambda,
    format_change,
    format_stat,
    markdown_table,
    mean_of,
    mean_std,
    plot_against_lambda,
    relative_change,
    stat_dict,
    write_csv,
    write_markdown,
)

CSV_COLUMNS = ["study", "condition", "cell", "method", "level", "arch", "lambda", "seed", "temperature",
               *(m[1] for m in METRICS), "val_accuracy", "train_seconds", "parameters", "teacher_fingerprint"]
PLOTTED = {"main": "correlated corpus, Fig. 4 shape", "null": "null corpus: nothing shared but the label",
           "weak-teacher": "weak teacher, Fig. 6 shape", "emotion": "emotion, leave-one-speaker-out, Fig. 5 shape"}


def by_seed(rows: list[dict], method: str, lam: float, key: str, level: str | None = None) -> dict[int, float]:
    """seed → metric of the cells at (method, λ) (λ = 0: the shared baseline cells)."""
    chosen = BASELINE if lam == 0 else method
    return {r["seed"]: r[key] for r in rows if r["method"] == chosen and r["lambda"] == lam
            and (level is None or r["level"] == level) and r[key] is not None}


class Results:
    """What the report reads: every study's finished rows (name → sweep rows; an emotion study's seed is its
    fold), every corpus's teacher metrics and the temperatures chosen (stages/benchmark_studies.read_results)."""

    def __init__(self, spec: BenchmarkSpec, rows: dict[str, list[dict]], teachers: dict[str, dict],
                 temperatures: dict[str, float | None]) -> None:
        self.spec, self.rows, self.teachers, self.temperatures = spec, rows, teachers, temperatures
        self.reported: dict[str, Path] = {}  # study → the earlier report its rows were taken from

    def folds(self, study: StudySpec) -> list[int]:
        """An emotion study's folds (its paired units): those it names, else one per actor of its corpus."""
        named = study.protocol.get("folds")
        actors = self.spec.corpora[study.corpus].synth.get("speakers", 0)
        return list(named) if named else list(range(1, actors + 1)) or sorted({r["seed"] for r in self.rows[study.name]})

    def teacher_accuracy(self, corpus: str) -> float | None:
        return (self.teachers[corpus].get("test") or {}).get("utterance_accuracy")

    def values(self, study: StudySpec, method: str, lam: float, key: str, level: str | None = None) -> dict:
        """seed → `key` at (method, λ); λ = 0 of a study with a baseline study is that study's audio-only student
        (the same student: same corpus, stage 0 and seed, no teacher)."""
        if lam == 0 and study.baseline:
            return by_seed(self.rows[study.baseline], method, 0.0, key)
        return by_seed(self.rows[study.name], method, lam, key, level)

    def stat(self, study: StudySpec, method: str, lam: float, key: str, level: str | None = None):
        return mean_std(list(self.values(study, method, lam, key, level).values()))

    def chosen_lambda(self, study: StudySpec, method: str, lambdas=None, level: str | None = None) -> float | None:
        """The λ > 0 with the best mean validation accuracy (among `lambdas`, default the study's)."""
        return best_lambda({lam: self.stat(study, method, lam, "val_accuracy", level)
                            for lam in (lambdas or study.lambdas)})

    def change(self, study: StudySpec, method: str, lam: float, key: str, level: str | None = None):
        """Paired change of `key` at (method, λ) against the audio-only student of the same seeds."""
        return paired(self.values(study, method, lam, key, level), self.values(study, method, 0.0, key, level))

    def condition_values(self, study: StudySpec, condition: str, key: str) -> dict[int, float]:
        """seed → `key` of a multi-teacher study's condition."""
        return {r["seed"]: r[key] for r in self.rows[study.name]
                if r.get("condition") == condition and r[key] is not None}


def shown_lambdas(study: StudySpec) -> tuple[float, ...]:
    """The study's λ, with the λ = 0 its baseline study supplies."""
    return ((0.0,) if study.baseline else ()) + study.lambdas


def _lines(results: Results, study: StudySpec, key: str) -> dict:
    return {f"{method}" + (f", {level}" if level != "non-sequential" else ""):
            [(lam, results.stat(study, method, lam, key, level)) for lam in shown_lambdas(study)]
            for method in study.methods for level in study.levels}


def paper_table(results: Results, study: StudySpec, key: str, higher_is_better: bool) -> list[str]:
    """Teacher / without / with (λ chosen on validation) / relative change / paired change with its interval."""
    teacher = results.teacher_accuracy(study.corpus) if key in ("top1", "ua") else None
    rows = []
    for method in study.methods:
        for level in study.levels:
            lam = results.chosen_lambda(study, method, level=level)
            without, with_ = results.stat(study, method, 0.0, key, level), (
                results.stat(study, method, lam, key, level) if lam is not None else None)
            change = relative_change(mean_of(with_), mean_of(without))
            if change is not None and not higher_is_better:
                change = -change  # EER: the paper reports the relative decrease
            scale = 1 if key == "min_dcf" else 100
            rows.append([method + (f" ({level})" if level != "non-sequential" else ""),
                         MISSING if teacher is None else f"{100 * teacher:.1f}", format_stat(without),
                         format_stat(with_), MISSING if lam is None else f"{lam:g}", format_change(change),
                         format_paired(results.change(study, method, lam, key, level=level), scale)
                         if lam is not None else MISSING])
    change_name = "relative change" if higher_is_better else "relative decrease"
    return markdown_table(["method", "teacher", "without (λ = 0)", "with", "λ (val)", change_name,
                           "paired Δ (points) [95 % CI]"], rows)


def grid_table(results: Results, study: StudySpec, key: str) -> list[str]:
    """Every λ of every method: mean ± std and the paired change against λ = 0."""
    rows = []
    for method in study.methods:
        for level in study.levels:
            for lam in shown_lambdas(study):
                if lam == 0 and method != study.methods[0]:
                    continue
                name = "audio only" if lam == 0 else method + (f" ({level})" if level != "non-sequential" else "")
                rows.append([name, f"{lam:g}", format_stat(results.stat(study, method, lam, key, level)),
                             MISSING if lam == 0 else format_paired(results.change(study, method, lam, key,
                                                                                   level=level))])
    return markdown_table(["method", "λ", f"{key} (mean ± std, %)", "paired Δ vs λ = 0 [95 % CI]"], rows)


def controls_table(results: Results) -> list[str]:
    """Each control (and the real targets) at its λ: change against the audio-only student, and real − control."""
    rows = []
    for control in results.spec.by_role("control"):
        main = results.spec.study(control.baseline)
        for lam in control.lambdas:
            real = results.values(main, "proposed", lam, "top1")
            fake = results.values(control, "proposed", lam, "top1")
            rows.append([control.options.get("control", control.name), f"{lam:g}",
                         format_stat(mean_std(list(fake.values()))),
                         format_paired(results.change(control, "proposed", lam, "top1")),
                         format_paired(paired(real, fake))])
    return markdown_table(["targets", "λ", "top-1 (mean ± std, %)", "Δ vs audio only [95 % CI]",
                           "real targets − this [95 % CI]"], rows)


def _targets_text(targets: tuple[dict, ...]) -> str:
    return " + ".join(f"{t['lam']:g}·{t['teacher']}" + (f" [{t['layer']}]" if t.get("layer") else "")
                      for t in targets) or "none (λ = 0)"


def multi_teacher_table(results: Results, study: StudySpec) -> list[str]:
    """Each condition's top-1 and EER, and its paired change against the condition without targets."""
    reference = next(name for name, targets in study.conditions if not targets)
    rows = []
    for name, targets in study.conditions:
        cells = [name, _targets_text(targets)]
        for key in ("top1", "eer"):
            values = results.condition_values(study, name, key)
            cells += [format_stat(mean_std(list(values.values()))),
                      MISSING if not targets else format_paired(paired(
                          values, results.condition_values(study, reference, key)))]
        rows.append(cells)
    return markdown_table(["condition", "targets (λ_i · teacher [layer])", "top-1 (mean ± std, %)",
                           "Δ top-1 vs audio only [95 % CI]", "EER (%)", "Δ EER [95 % CI]"], rows)


def multi_teacher_preface(results: Results, study: StudySpec) -> str:
    teachers = ", ".join(f"{name} ({results.spec.corpora[name].teacher.get('arch')}): "
                         + (MISSING if (acc := results.teacher_accuracy(name)) is None else f"{100 * acc:.1f} %")
                         for name in study.teachers())
    degrade = study.options.get("degrade")
    return (f"Students hear {'degraded audio (`--degrade ' + degrade + '`)' if degrade else 'the stored audio'}; "
            f"the teachers computed their caches from the clean recordings. Teachers' test accuracy: {teachers}. "
            "Every condition is paired by seed with the one without targets.")


def corpus_table(results: Results) -> list[str]:
    rows = []
    for study in results.spec.studies:
        if study.role == "multi-teacher":
            reference = next(name for name, targets in study.conditions if not targets)
            values = results.condition_values(study, reference, "top1")
            teacher = results.teacher_accuracy(study.corpus)
            rows.append([study.corpus, f"{study.name} (degraded audio)",
                         MISSING if teacher is None else f"{100 * teacher:.1f}",
                         format_stat(mean_std(list(values.values()))), str(len(values))])
            continue
        if study.role == "temperature" or 0.0 not in study.lambdas:
            continue  # no audio-only student of its own
        teacher = results.teacher_accuracy(study.corpus)
        rows.append([study.corpus, study.name, MISSING if teacher is None else f"{100 * teacher:.1f}",
                     format_stat(results.stat(study, study.methods[0], 0.0, "top1")),
                     str(len(results.values(study, study.methods[0], 0.0, "top1")))])
    return markdown_table(["corpus", "study", "teacher test accuracy (%)", "audio-only top-1 (%)", "seeds"], rows)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_report(out: Path, results: Results, elapsed: float, spec_text: str = "") -> Path:
    """Every file of the report; summary.json records the sha256 of results.csv and of `spec_text` (the
    benchmark.toml the caller writes beside it), so a report whose files come from different invocations (one
    stopped halfway) is recognised by `--reported`."""
    spec = results.spec
    out.mkdir(parents=True, exist_ok=True)
    all_rows = [{"study": name, **row} for name, rows in results.rows.items() for row in rows]
    write_csv(out / "results.csv", CSV_COLUMNS, [{"temperature": None, "condition": None, **row} for row in all_rows])
    verdicts = claims(results)
    plots = []
    for study in spec.studies:
        if study.role not in PLOTTED:
            continue
        keys = (("ua", "UA (%)"),) if study.role == "emotion" else (("top1", "top-1 accuracy (%)"), ("eer", "EER (%)"))
        for key, label in keys:
            lines = _lines(results, study, key)
            if not any(stat is not None for points in lines.values() for _, stat in points):
                continue  # nothing finished yet
            path = out / f"{study.name}_{key}_vs_lambda.png"
            plot_against_lambda(path, lines, label,
                                f"{study.name} ({PLOTTED[study.role]})\n{label} against λ, mean ± std over "
                                f"{'folds' if study.role == 'emotion' else 'seeds'}", 100,
                                results.teacher_accuracy(study.corpus) if key in ("top1", "ua") else None,
                                expected_n=len(study.seeds))
            plots.append(path)
    runs.write_json(out / "summary.json", {
        "temperatures": results.temperatures, "teachers": {c: results.teacher_accuracy(c) for c in spec.corpora},
        "verdicts": [verdict.as_dict() for verdict in verdicts],
        "reported_from": {name: str(path) for name, path in results.reported.items()},
        "results_sha256": digest(out / "results.csv"),
        "spec_sha256": hashlib.sha256(spec_text.encode()).hexdigest(),
        "studies": {s.name: [{"method": m, "level": lv, "lambda": lam,
                              **{k: stat_dict(results.stat(s, m, lam, k, lv)) for k in ("top1", "eer", "val_accuracy")}}
                             for m in s.methods for lv in s.levels for lam in s.lambdas]
                    for s in spec.studies if s.role != "multi-teacher"},
        "multi_teacher": {s.name: {name: {k: stat_dict(mean_std(list(results.condition_values(s, name, k).values())))
                                          for k in ("top1", "eer")} for name, _ in s.conditions}
                          for s in spec.by_role("multi-teacher")}})

    sections = {"Verdicts": markdown_table(["claim", "verdict", "evidence"],
                                           [[v.claim, f"**{v.verdict}**", v.evidence] for v in verdicts]) + [""],
                "Corpora: teacher and audio-only student": corpus_table(results) + [""]}
    for role, title in (("main", "Table 4 shape: identification top-1, main corpus"),
                        ("weak-teacher", "Table 7 shape: weak teacher (IEMOCAP's situation), top-1"),
                        ("null", "Null corpus (face and voice share nothing but the label), top-1"),
                        ("sequential", "Sequential level (aggregator targets), top-1")):
        for study in spec.by_role(role):
            sections[f"{title} — {study.name}"] = paper_table(results, study, "top1", True) + [""]
    for study in spec.by_role("emotion"):
        sections[f"Table 6 shape: emotion UA, leave-one-speaker-out (paired over folds) — {study.name}"] = \
            paper_table(results, study, "ua", True) + [""]
    for study in spec.by_role("main"):
        sections[f"Table 5 shape: verification EER — {study.name}"] = paper_table(results, study, "eer", False) + [""]
    for study in spec.by_role("multi-teacher"):
        sections[f"Several teachers and layers: students on degraded audio — {study.name}"] = \
            [multi_teacher_preface(results, study), ""] + multi_teacher_table(results, study) + [""]
    if spec.by_role("control"):
        sections["Controls (main corpus, proposed method)"] = controls_table(results) + [""]
    for study in spec.studies:
        if study.role not in ("temperature", "control", "multi-teacher"):
            sections[f"Every grid point — {study.name}"] = grid_table(
                results, study, "ua" if study.role == "emotion" else "top1") + [""]
    sections["Plots"] = [f"![{path.stem}]({path.name})\n" for path in plots]
    expected = sum(len(s.seeds) * len(s.conditions) if s.role == "multi-teacher" else
                   len(s.seeds if s.role != "emotion" else results.folds(s)) * len(s.levels)
                   * ((0.0 in s.lambdas) + len(s.methods) * sum(lam > 0 for lam in s.lambdas))
                   * max(1, len(s.temperatures)) for s in spec.studies)
    notes = [] if len(all_rows) >= expected else [
        f"**{expected - len(all_rows)} of {expected} cells have not finished**; every table holds what has, and "
        "a verdict without enough pairs says so. Run `avl benchmark` again to continue."]
    if results.reported:
        sources = sorted({str(path) for path in results.reported.values()})
        notes.append(f"Studies {', '.join(results.reported)} are taken from the earlier report in "
                     f"{', '.join(f'`{source}`' for source in sources)}: the work directory holds none of their cells, "
                     "and that report's spec defines each of them (settings, corpora, teachers, the studies they rest "
                     "on) exactly as this one. Their teachers' accuracy comes from there where the work directory "
                     "has no teacher of their corpus (an emotion study's always).")
    temperatures = ", ".join(f"{name}: T = {t:g}" if t is not None else f"{name}: not chosen yet"
                             for name, t in results.temperatures.items())
    settings = (f"Students `{spec.arch}`{' (tiny)' if spec.tiny else ''}, {spec.epochs} epochs, batch "
                f"{spec.batch_size}, {spec.crop_seconds} s crops, other stage-3 settings {spec.student}; seeds "
                f"{', '.join(map(str, spec.seeds))}. Soft-label temperature chosen on validation accuracy "
                f"({temperatures}). The spec: `benchmark.toml`.")
    how = ("Numbers are test-split percentages, mean ± sample std over seeds. Δ is the paired difference (same seed, "
           "with − without) in points with its 95 % Student-t interval over seeds. \"with\" is the λ > 0 with the "
           "best mean validation accuracy. EER: lower is better; its Δ is with − without, so negative is better.")
    return write_markdown(out / "report.md", "LUPI benchmark: does the video teacher help the audio student?",
                          [settings, how], notes, sections,
                          [f"Cells finished: {len(all_rows)} of {expected}; the last invocation took {elapsed:.0f} s. "
                           "Per-cell numbers: `results.csv`; aggregates and verdicts: `summary.json`."])
