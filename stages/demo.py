"""`avl demo`: synthesise a small corpus, run stages 0–3 at each λ, and print a results table."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from pipeline import config as config_io
from pipeline import runs
from pipeline.datasets.synthetic import GENERATOR_VERSION, SynthConfig, synthesize
from pipeline.report import MISSING, markdown_table
from stages import export_embeddings, prepare, train_student, train_teacher

# Sizes: "small" is the demo (22 min measured on a busy 2-core machine, 17 CPU-minutes); "tiny" is for tests (seconds).
SIZES = {
    "small": {
        "synth": {"utterances_per_speaker": 24, "videos_per_speaker": 8},
        "prepare": {"split": "70-10-20"},  # the paper's VoxCeleb protocol: whole videos to train/val/test
        "teacher": {"epochs": 8, "frames_per_utterance": 8, "batch_size": 16},
        "student": {"epochs": 16, "batch_size": 16, "lr_max": 2e-3},
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
    size: str = field(default="small", metadata={
        "help": "Corpus and training size: small (the demo, 10-20 minutes on 2 cores) or tiny (for tests).", "choices": SIZES})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N or auto."})
    num_workers: int = field(default=2, metadata={"help": "DataLoader worker processes."})
    seed: int = field(default=0, metadata={"help": "Random seed of the corpus and the training."})

    def validate(self) -> None:
        if self.size not in SIZES:
            raise config_io.ConfigError(f"demo: size must be one of {sorted(SIZES)}, got {self.size!r}")


def _corpus(cfg: DemoConfig) -> Path:
    """Synthesise the corpus, or reuse one made earlier with exactly the same settings."""
    root = cfg.work / "corpus"
    synth_cfg = config_io.build(SynthConfig, {**SIZES[cfg.size]["synth"], "seed": cfg.seed}, source="demo")
    recorded = root / "speakers.json"
    if recorded.exists():
        made = json.loads(recorded.read_text())
        if made.get("config") == asdict(synth_cfg) and made.get("generator_version") == GENERATOR_VERSION:
            tqdm.write(f"demo: reusing the corpus in {root} (same settings)")
            return root
        raise RuntimeError(f"{root}: holds a corpus made with other settings; remove it or pick another --work")
    return synthesize(root, synth_cfg)


def results_table(rows: list[dict]) -> str:
    """A Markdown table of the demo's results."""
    cells = [[MISSING if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)
              for value in (row["model"], row["lambda"], row["accuracy"], row["eer"], row["min_dcf"], row["seconds"])]
             for row in rows]
    return "\n".join(markdown_table(["model", "λ", "test accuracy", "EER", "minDCF", "train s"], cells))


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

    root = _corpus(cfg)
    prepare.run(config_io.build(prepare.PrepareConfig, {"root": root, **common, **size.get("prepare", {})}, "demo"))
    teacher_out = train_teacher.run(config_io.build(
        train_teacher.TeacherConfig, {**common, "tiny": True, "device": cfg.device, "seed": cfg.seed, "overwrite": True, **size["teacher"]},
        "demo"))
    export_embeddings.run(config_io.build(
        export_embeddings.ExportConfig, {"run_dir": run_dir, "device": cfg.device, "num_workers": 1, "overwrite": True},
        "demo"))

    teacher_metrics = runs.read_json(teacher_out / "metrics.json")
    rows = [{"model": "video teacher (frames)", "lambda": None,
             "accuracy": teacher_metrics["test"]["utterance_accuracy"], "eer": None, "min_dcf": None,
             "seconds": teacher_metrics["train_seconds"]}]
    for lam in cfg.lambdas:
        student_out = train_student.run(config_io.build(
            train_student.StudentConfig,
            {**common, "tiny": True, "lam": lam, "device": cfg.device, "seed": cfg.seed, "overwrite": True,
             **size["student"]}, "demo"))
        metrics = runs.read_json(student_out / "metrics.json")
        verification = metrics["verification"] or {}
        rows.append({"model": "audio student", "lambda": lam, "accuracy": metrics["identification"]["top1"],
                     "eer": verification.get("eer"), "min_dcf": verification.get("min_dcf"),
                     "seconds": metrics["train_seconds"]})

    table = results_table(rows)
    elapsed = time.perf_counter() - started
    (cfg.work / "demo.md").write_text(
        f"# avl demo ({cfg.size})\n\nIdentification accuracy on the test split; verification on held-out "
        f"speakers.\n\n{table}\n\nWall time: {elapsed:.0f} s\n")
    runs.write_json(cfg.work / "demo.json", {"rows": rows, "wall_seconds": elapsed})
    tqdm.write(f"\n{table}\n\ndemo finished in {elapsed:.0f} s; outputs in {cfg.work.resolve()}:")
    tqdm.write(f"  table {cfg.work / 'demo.md'}; stages in {run_dir}/(prepare|teacher|embeddings|students)")
    return cfg.work
