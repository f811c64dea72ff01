"""`avl demo`: synthesise a small corpus, run stages 0–3 at each λ and seed, and print a results table.

The small (default) corpus is the benchmark's kind (version 2: face and voice share part of each speaker's latent
and an arousal track), smaller: 8 speakers, 48 utterances of 2-3 s each over 8 videos, split by video. It runs in
about 10 minutes on 2 CPU cores; two seeds are too few for a claim, which results/benchmark/ makes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from pipeline import config as config_io
from pipeline import runs
from pipeline.datasets.synthetic import SynthConfig, synthesize_or_reuse
from pipeline.report import MISSING, markdown_table, mean_std
from stages import export_embeddings, prepare, train_student, train_teacher

# Sizes: "small" is the demo (version 2 corpus, the benchmark's audio settings); "tiny" (version 1) is for tests.
SIZES = {
    "small": {
        "synth": {"preset": "correlated", "n_speakers": 8, "n_verification_speakers": 2, "utterances_per_speaker": 48,
                  "videos_per_speaker": 8, "test_share": 0.25, "val_share": 0.125, "min_seconds": 2.0,
                  "max_seconds": 3.0, "n_trials": 200, "audio_noise": 0.3, "audio_nuisance": 0.5},
        "prepare": {"split": "official", "faces": "boxes"},  # the corpus's split of whole videos; true face boxes
        "teacher": {"epochs": 4, "frames_per_utterance": 8, "batch_size": 16},
        "student": {"epochs": 12, "batch_size": 16, "crop_seconds": 2, "lr_max": 2e-3},
    },
    "tiny": {
        "synth": {"n_speakers": 4, "n_verification_speakers": 2, "utterances_per_speaker": 8,
                  "videos_per_speaker": 2, "min_seconds": 1.2, "max_seconds": 3.0, "audio_noise": 0.1,
                  "frame_size": 64, "n_trials": 20},
        "teacher": {"epochs": 6, "frames_per_utterance": 8, "batch_size": 4, "lr_max": 3e-3},
        "student": {"epochs": 12, "batch_size": 4, "crop_seconds": 2, "lr_max": 2e-3},
    },
}


@dataclass(frozen=True)
class DemoConfig:
    """Demo settings."""

    work: Path = field(default=Path("runs/demo"), metadata={"help": "Work directory: the corpus and the run."})
    lambdas: tuple[float, ...] = field(default=(0.0, 0.4), metadata={"help": "λ values to train students at."})
    seeds: tuple[int, ...] = field(default=(0, 1), metadata={
        "help": "Student seeds at each λ (the table gives mean ± std over them)."})
    size: str = field(default="small", metadata={
        "help": "Corpus and training size: small (the demo, 10-20 minutes on 2 cores) or tiny (for tests).", "choices": SIZES})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N or auto."})
    num_workers: int = field(default=2, metadata={"help": "DataLoader worker processes."})
    seed: int = field(default=0, metadata={"help": "Random seed of the corpus and the teacher."})

    def validate(self) -> None:
        if self.size not in SIZES:
            raise config_io.ConfigError(f"demo: size must be one of {sorted(SIZES)}, got {self.size!r}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise config_io.ConfigError(f"demo: seeds must be distinct and at least one, got {list(self.seeds)}")


def results_table(rows: list[dict]) -> str:
    """A Markdown table of the demo's results: mean ± std over seeds where there are several."""
    def cell(values: list) -> str:
        present = [v for v in values if v is not None]
        if not present:
            return MISSING
        stat = mean_std(present)
        return f"{100 * stat[0]:.1f} ± {100 * stat[1]:.1f}" if stat[2] > 1 else f"{100 * stat[0]:.1f}"
    cells = [[row["model"], MISSING if row["lambda"] is None else f"{row['lambda']:g}", str(len(row["accuracy"])),
              cell(row["accuracy"]), cell(row["eer"]), f"{sum(row['seconds']) / len(row['seconds']):.0f}"]
             for row in rows]
    return "\n".join(markdown_table(["model", "λ", "seeds", "test top-1 %", "EER %", "train s (each)"], cells))


def verdict(rows: list[dict], seeds: tuple[int, ...]) -> str:
    """What the table can and cannot say."""
    baseline = next((row for row in rows if row["lambda"] == 0), None)
    lines = []
    for row in rows:
        if baseline is None or row["lambda"] in (None, 0):
            continue
        differences = [a - b for a, b in zip(row["accuracy"], baseline["accuracy"])]
        mean = 100 * sum(differences) / len(differences)
        lines.append(f"λ = {row['lambda']:g} − λ = 0, paired by seed: {mean:+.1f} points "
                     f"({', '.join(f'{100 * d:+.1f}' for d in differences)}).")
    caution = (f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''} on a small test split: an anecdote, not a result. "
               "The paired comparison over 5 seeds with 95 % intervals, controls and verdicts is "
               "results/benchmark/report.md (`avl benchmark` reruns it).")
    return "\n".join([*lines, caution])


def run(cfg: DemoConfig) -> Path:
    """Run the whole pipeline on a synthetic corpus; returns the work directory.

    A second run in the same work directory reuses the corpus and prepared stores and retrains the rest.
    """
    started = time.perf_counter()
    size = SIZES[cfg.size]
    cfg.work.mkdir(parents=True, exist_ok=True)
    config_io.save(cfg, cfg.work / "demo.toml")
    run_dir = cfg.work / "run"
    common = {"run_dir": run_dir, "num_workers": cfg.num_workers}

    synth_cfg = config_io.build(SynthConfig, {**size["synth"], "seed": cfg.seed}, source="demo")
    root = synthesize_or_reuse(cfg.work / "corpus", synth_cfg, "demo")
    prepare.run(config_io.build(prepare.PrepareConfig, {"root": root, **common, **size.get("prepare", {})}, "demo"))
    teacher_out = train_teacher.run(config_io.build(
        train_teacher.TeacherConfig, {**common, "tiny": True, "device": cfg.device, "seed": cfg.seed, "overwrite": True, **size["teacher"]},
        "demo"))
    export_embeddings.run(config_io.build(
        export_embeddings.ExportConfig, {"run_dir": run_dir, "device": cfg.device, "num_workers": 1, "overwrite": True},
        "demo"))

    teacher_metrics = runs.read_json(teacher_out / "metrics.json")
    rows = [{"model": "video teacher (face frames, tiny ResNet34)", "lambda": None,
             "accuracy": [teacher_metrics["test"]["utterance_accuracy"]], "eer": [None],
             "seconds": [teacher_metrics["train_seconds"]]}]
    for lam in cfg.lambdas:
        row = {"model": "audio student (tiny ResNet)", "lambda": lam, "accuracy": [], "eer": [], "seconds": []}
        for seed in cfg.seeds:
            student_out = train_student.run(config_io.build(
                train_student.StudentConfig,
                {**common, "tiny": True, "lam": lam, "device": cfg.device, "seed": seed, "overwrite": True,
                 **size["student"]}, "demo"))
            metrics = runs.read_json(student_out / "metrics.json")
            row["accuracy"].append(metrics["identification"]["top1"])
            row["eer"].append((metrics["verification"] or {}).get("eer"))
            row["seconds"].append(metrics["train_seconds"])
        rows.append(row)

    table, note = results_table(rows), verdict(rows, cfg.seeds)
    elapsed = time.perf_counter() - started
    (cfg.work / "demo.md").write_text(
        f"# avl demo ({cfg.size})\n\nIdentification accuracy on the test split (whole videos the students never "
        f"saw); verification EER on held-out speakers.\n\n{table}\n\n{note}\n\nWall time: {elapsed:.0f} s\n")
    runs.write_json(cfg.work / "demo.json", {"rows": rows, "wall_seconds": elapsed})
    tqdm.write(f"\n{table}\n\n{note}\n\ndemo finished in {elapsed:.0f} s; outputs in {cfg.work.resolve()}:")
    tqdm.write(f"  table {cfg.work / 'demo.md'}; stages in {run_dir}/(prepare|teacher|embeddings|students)")
    return cfg.work
