"""The tables and plots of the sweep and protocol reports: mean ± std, number formatting, relative change,
the λ chosen by validation accuracy, Markdown tables, CSV rows and metric-against-λ plots. The stages read
their runs into rows and write the report files; what the rows become lives here."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from pipeline.cells import BASELINE, METRICS

Stat = tuple[float, float, int]  # (mean, sample std, n)
MISSING = "—"


def mean_std(values: list[float | None]) -> Stat | None:
    """(mean, sample std, n), ignoring missing values; None when there are none."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    return float(np.mean(present)), float(np.std(present, ddof=1)) if len(present) > 1 else 0.0, len(present)


def stat_dict(stat: Stat | None) -> dict | None:
    """A stat as summary.json holds it."""
    return None if stat is None else {"mean": stat[0], "std": stat[1], "n": stat[2]}


def mean_of(stat: Stat | None) -> float | None:
    return None if stat is None else stat[0]


def format_stat(stat: Stat | None, percent: bool = True, unit: str = "") -> str:
    """'mean ± std' (the mean alone for one value): percentages to 0.1, other numbers to 0.001."""
    if stat is None:
        return MISSING
    scale = 100 if percent else 1
    digits = 1 if percent else 3
    mean, std, n = stat
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}{unit}" if n > 1 else f"{mean * scale:.{digits}f}{unit}"


def format_percent(value: float | None) -> str:
    return MISSING if value is None else f"{100 * value:.1f}"


def relative_change(value: float | None, reference: float | None) -> float | None:
    """(value − reference) / |reference|; None where either is missing or the reference is 0."""
    if value is None or reference is None or reference == 0:
        return None
    return (value - reference) / abs(reference)


def format_change(change: float | None) -> str:
    return MISSING if change is None else f"{100 * change:+.1f}%"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """The lines of a Markdown table."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(cells) + " |" for cells in rows)]


def write_markdown(path: Path, title: str, paragraphs: list[str], notes: list[str], sections: dict[str, list[str]],
                   closing: list[str]) -> Path:
    """A report.md: the title, paragraphs, notes as block quotes, titled sections (their lines as given), closing
    lines."""
    lines = [f"# {title}", ""]
    for paragraph in paragraphs:
        lines += [paragraph, ""]
    lines += [f"> {note}\n" for note in notes]
    for heading, body in sections.items():
        lines += [f"## {heading}", "", *body]
    path.write_text("\n".join([*lines, *closing, ""]))
    return path


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def plot_against_lambda(path: Path, lines: dict[str, list[tuple[float, Stat | None]]], ylabel: str, title: str,
                        scale: float = 100, teacher: float | None = None, teacher_label: str = "video teacher",
                        expected_n: int | None = None) -> None:
    """A metric against λ, one line per `lines` entry (label → [(λ, stat)]; missing stats are left out), error
    bars = std; a point averaging fewer than `expected_n` values says so; `teacher` adds a dashed line."""
    # imported only when plotting: matplotlib is slow to import, and its backend must be chosen before pyplot
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3.6))
    for label, points in lines.items():
        points = [(lam, stat) for lam, stat in points if stat is not None]
        if not points:
            continue
        axis.errorbar([lam for lam, _ in points], [scale * s[0] for _, s in points],
                      yerr=[scale * s[1] for _, s in points], marker="o", capsize=3, label=label)
        for lam, stat in points:
            if expected_n is not None and stat[2] < expected_n:
                axis.annotate(f"n={stat[2]}", (lam, scale * stat[0]), textcoords="offset points", xytext=(4, 4),
                              fontsize=7)
    if teacher is not None:
        axis.axhline(scale * teacher, color="grey", linestyle="--", linewidth=1, label=teacher_label)
    axis.set_xlabel("λ")
    axis.set_ylabel(ylabel)
    axis.set_title(title, fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def best_lambda(val_accuracy: dict[float, Stat | None]) -> float | None:
    """The λ > 0 with the highest mean validation accuracy (the smaller λ on a tie), so no test number picks it."""
    candidates = [(stat[0], -lam, lam) for lam, stat in val_accuracy.items() if lam > 0 and stat is not None]
    return max(candidates)[2] if candidates else None


# ---------------------------------------------------------------- a λ sweep: mean ± std over seeds

PLOTTED = ("top1", "ua", "eer")  # the metrics plotted against λ, with their change against λ = 0 in the grid table


def summarise(cfg, rows: list[dict]) -> dict:
    """Mean/std over seeds for every (arch, level, method, λ) of a sweep (`cfg`: its SweepConfig); λ = 0 of every
    method is the shared baseline of its (arch, level)."""
    summary = {}
    for arch in cfg.archs:
        for level in cfg.levels:
            line = [r for r in rows if (r["arch"], r["level"]) == (arch, level)]
            baseline = [r for r in line if r["method"] == BASELINE]
            for method in cfg.methods:
                for lam in cfg.lambdas:
                    chosen = baseline if lam == 0 else [r for r in line if (r["method"], r["lambda"]) == (method, lam)]
                    entry = {key: mean_std([r[key] for r in chosen])
                             for key in (*(m[1] for m in METRICS), "val_accuracy")}
                    entry["seeds"] = sorted(r["seed"] for r in chosen)
                    summary[(arch, level, method, lam)] = entry
    return summary


def has_metric(summary: dict, key: str) -> bool:
    return any(entry[key] is not None for entry in summary.values())


def sweep_lines(cfg) -> list[tuple[str, str, str]]:
    """(arch, level, method) of every line of a sweep's tables and plots, in grid order."""
    return [(arch, level, method) for arch in cfg.archs for level in cfg.levels for method in cfg.methods]


def _change(stat: Stat | None, reference: Stat | None) -> str:
    return format_change(relative_change(mean_of(stat), mean_of(reference)))


def paper_tables(cfg, summary: dict, teacher_accuracy: float | None) -> list[str]:
    """Tables in the shape of the paper's Tables 4-7: teacher, student without and with distillation, change."""
    lines = []
    for _, key, label, higher_better in METRICS:
        if key == "top5" or not has_metric(summary, key):
            continue
        direction = "higher is better" if higher_better else "lower is better; a negative change is an improvement"
        teacher_column = key == "top1"
        header = ["student", *(["level"] if cfg.shows_level else []), "method"] + (
            ["video teacher"] if teacher_column else []) + [
            "without distillation (λ = 0)", "with distillation", "λ (by val acc)", "relative change"]
        rows = []
        for arch, level, method in sweep_lines(cfg):
            lam = best_lambda({lam: summary[(arch, level, method, lam)]["val_accuracy"] for lam in cfg.lambdas})
            without = summary[(arch, level, method, 0.0)][key] if 0.0 in cfg.lambdas else None
            with_ = summary[(arch, level, method, lam)][key] if lam is not None else None
            cells = [arch, *([level] if cfg.shows_level else []), method]
            if teacher_column:
                cells.append(format_percent(teacher_accuracy))
            cells += [format_stat(without, key != "min_dcf"), format_stat(with_, key != "min_dcf"),
                      MISSING if lam is None else f"{lam:g}", _change(with_, without)]
            rows.append(cells)
        lines += [f"### {label} ({direction})", "", *markdown_table(header, rows), ""]
    return lines


def grid_table(cfg, summary: dict) -> list[str]:
    """Every (arch, level, method, λ): mean ± std over seeds and the relative change against λ = 0."""
    keys = [(key, label) for _, key, label, _ in METRICS if has_metric(summary, key)]
    header = ["student", *(["level"] if cfg.shows_level else []), "method", "λ", "seeds"]
    for key, label in keys:
        header += [label] + (["Δ vs λ=0"] if key in PLOTTED else [])
    header.append("val accuracy")
    rows = []
    for arch, level, method in sweep_lines(cfg):
        for lam in cfg.lambdas:
            entry = summary[(arch, level, method, lam)]
            reference = summary.get((arch, level, method, 0.0))
            cells = [arch, *([level] if cfg.shows_level else []), method, f"{lam:g}", str(len(entry["seeds"]))]
            for key, _ in keys:
                cells.append(format_stat(entry[key], key != "min_dcf"))
                if key in PLOTTED:
                    cells.append(MISSING if lam == 0 or reference is None else _change(entry[key], reference[key]))
            cells.append(format_stat(entry["val_accuracy"]))
            rows.append(cells)
    return markdown_table(header, rows)


# ---------------------------------------------------------------- a protocol: mean ± std over folds

# (metrics.json key, label) of the student metrics the protocol's tables hold; WA equals top-1 accuracy
REPORTED = (("top1", "WA (top-1)"), ("ua", "UA"))
FOLD_CSV_COLUMNS = ["fold", "test_speakers", "val_speakers", "lambda", "method", "level", "arch", "seed", "top1", "wa",
                    "ua", "val_accuracy", "teacher_accuracy", "teacher_ua", "teacher_fingerprint", "cache_keys",
                    "test_keys_in_cache", "train_seconds"]


def lambda_statistics(records: list[dict], lambdas: tuple[float, ...]) -> dict[float, dict[str, Stat | None]]:
    """Each λ's student WA, UA and validation accuracy, mean ± std over the folds where it has finished."""
    return {lam: {key: mean_std([r["students"][lam][key] for r in records if lam in r["students"]])
                  for key in ("top1", "ua", "val_accuracy")} for lam in lambdas}


def fold_rows(records: list[dict], lam: float | None) -> list[dict]:
    """Per fold: teacher accuracy, student without (λ = 0) and with (λ) distillation, relative change."""
    rows = []
    for record in records:
        row = {"fold": record["fold"], "test": " ".join(record["speakers"]["test"]),
               "val": " ".join(record["speakers"]["val"]),
               "teacher": record["teacher"]["accuracy"] if record["teacher"] else None,
               "teacher_ua": record["teacher"].get("ua") if record["teacher"] else None}
        without, with_ = record["students"].get(0.0), record["students"].get(lam)
        for key, _ in REPORTED:
            row[f"without_{key}"] = without[key] if without else None
            row[f"with_{key}"] = with_[key] if with_ else None
            row[f"change_{key}"] = relative_change(row[f"with_{key}"], row[f"without_{key}"])
        rows.append(row)
    return rows


def fold_statistics(rows: list[dict]) -> dict[str, Stat | None]:
    """Each per-fold column (teacher; without, with and change of every reported metric), mean ± std over folds."""
    names = ("teacher", "teacher_ua",
             *(f"{part}_{key}" for part in ("without", "with", "change") for key, _ in REPORTED))
    return {name: mean_std([row[name] for row in rows]) for name in names}


def fold_tables(headline: dict, rows: list[dict], by_lambda: dict, lam: float | None) -> dict[str, list[str]]:
    """The protocol's tables by title: the mean over folds, one row per fold, and every λ."""
    header = ["fold", "test subjects", "val subjects", "video teacher (WA)", "video teacher (UA)"]
    for _, label in REPORTED:
        header += [f"{label} λ = 0", f"{label} λ = {MISSING if lam is None else f'{lam:g}'}", f"{label} change"]
    per_fold = []
    for row in rows:
        cells = [str(row["fold"]), row["test"], row["val"], format_percent(row["teacher"]),
                 format_percent(row["teacher_ua"])]
        for key, _ in REPORTED:
            cells += [format_percent(row[f"without_{key}"]), format_percent(row[f"with_{key}"]),
                      format_change(row[f"change_{key}"])]
        per_fold.append(cells)
    mean = [[label, format_stat(headline["teacher" if key == "top1" else "teacher_ua"]),
             format_stat(headline[f"without_{key}"]), format_stat(headline[f"with_{key}"]),
             format_stat(headline[f"change_{key}"], unit="%")] for key, label in REPORTED]
    every_lambda = [[f"{value:g}", str(max((stat[2] for stat in entry.values() if stat is not None), default=0)),
                     *(format_stat(entry[key]) for key in ("top1", "ua", "val_accuracy"))]
                    for value, entry in by_lambda.items()]
    return {
        "Mean over folds": markdown_table(["metric", "video teacher", "without distillation (λ = 0)",
                                           "with distillation", "relative change"], mean),
        "Per fold": markdown_table(header, per_fold),
        "Every λ": markdown_table(["λ", "folds", "WA (top-1)", "UA", "val accuracy"], every_lambda),
    }


def fold_csv_rows(cfg, records: list[dict]) -> list[dict]:
    """One results.csv row per fold and finished λ of a protocol (`cfg`: its ProtocolConfig)."""
    return [{"fold": record["fold"], "test_speakers": " ".join(record["speakers"]["test"]),
             "val_speakers": " ".join(record["speakers"]["val"]), "lambda": value,
             "method": BASELINE if value == 0 else cfg.method, "level": cfg.level, "arch": cfg.arch,
             "seed": cfg.seed, **{key: student[key] for key in ("top1", "wa", "ua", "val_accuracy")},
             "teacher_accuracy": record["teacher"] and record["teacher"]["accuracy"],
             "teacher_ua": record["teacher"] and record["teacher"].get("ua"),
             "teacher_fingerprint": record["teacher"] and record["teacher"]["fingerprint"],
             "cache_keys": record["cache"] and record["cache"]["cache_keys"],
             "test_keys_in_cache": record["cache"] and record["cache"]["test_keys_in_cache"],
             "train_seconds": student["train_seconds"]}
            for record in records for value, student in sorted(record["students"].items())]


def fold_summary(records: list[dict], rows: list[dict], headline: dict, by_lambda: dict) -> dict:
    """What summary.json holds besides the config: the means over folds, every λ, and each fold's row and record."""
    return {
        "mean_over_folds": {name: stat_dict(stat) for name, stat in headline.items()},
        "by_lambda": [{"lambda": value, **{key: stat_dict(stat) for key, stat in entry.items()}}
                      for value, entry in by_lambda.items()],
        "per_fold": [{**row, "speakers": record["speakers"], "utterances": record["utterances"],
                      "teacher_fingerprint": record["teacher"] and record["teacher"]["fingerprint"],
                      "cache": record["cache"], "lambdas_finished": sorted(record["students"])}
                     for row, record in zip(rows, records)],
    }
