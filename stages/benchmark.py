"""`avl benchmark`: the LUPI benchmark — synthesise the corpora, run stages 0-2 on each, train every study's λ
sweep, then write results/benchmark/ (report.md with the paper-shaped tables, controls and verdicts; plots).

Everything is resumable: a corpus whose speakers.json records the same settings is reused, stage 0 reuses
stores made with the same settings, a finished teacher (metrics.json with the same config) is kept, stage 2
resumes its cache, and a sweep never retrains a finished cell. Run the same command again after a stop.
`--jobs N` runs N processes that share the work through the stages' and cells' locks (each takes what no other
holds), each with 1/N of the CPU threads; several hosts sharing the work directory can do the same.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import tomli_w
import torch
from tqdm import tqdm

from cache import locks
from pipeline import config as config_io
from pipeline.cells import grid
from pipeline.datasets.synthetic import SynthConfig, synthesize_or_reuse
from pipeline.errors import UserError
from pipeline.evidence import spec as spec_io
from pipeline.evidence.earlier import read_earlier
from pipeline.evidence.report import write_report
from stages import export_embeddings, prepare, protocol, sweep, train_teacher
from pipeline.models.teachers import is_audio_teacher
from stages.benchmark_studies import (corpus_root, protocol_config, read_results, run_dir, study_sweeps,
                                      teacher_cache, teacher_checkpoint, temperature_choice)

WAIT_SECONDS = 20.0  # between looks at work another process holds


@dataclass(frozen=True)
class BenchmarkConfig:
    """Where the benchmark works and reports, and how many processes share it."""

    spec: Path | None = field(default=None, metadata={
        "help": "Benchmark spec (TOML: corpora, studies, shared student settings); default: the built-in one, "
                "written to OUT/benchmark.toml."})
    work: Path = field(default=Path("runs/benchmark"), metadata={
        "help": "Work directory: one corpus and run per corpus entry."})
    out: Path = field(default=Path("results/benchmark"), metadata={
        "help": "Report directory: report.md, plots, results.csv, summary.json, benchmark.toml."})
    jobs: int = field(default=1, metadata={
        "help": "Processes sharing the work (each with 1/JOBS of the CPU threads).", "min": 1})
    studies: tuple[str, ...] = field(default=(), metadata={
        "help": "Train only these studies (and what they need); the report still holds every study's finished "
                "cells (default: all)."})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N or auto."})
    reported: Path | None = field(default=None, metadata={
        "help": "An earlier report directory (e.g. results/benchmark) whose rows fill in the studies WORK holds no "
                "cell of, where its benchmark.toml defines them exactly as this spec does: a study rerun after the "
                "work directory is gone, or studies run on other hosts."})
    report_only: bool = field(default=False, metadata={
        "help": "Only rebuild the report from what has finished; train nothing."})
    worker: bool = field(default=False, metadata={
        "help": "A process started by --jobs: trains, writes no report (not for direct use)."})


def run(cfg: BenchmarkConfig) -> Path:
    """Train what is missing, then write the report; returns the report directory."""
    started = time.perf_counter()
    spec = spec_io.load(cfg.spec)
    for name in cfg.studies:
        if name not in {study.name for study in spec.studies}:
            raise config_io.ConfigError(f"benchmark: no study {name!r}; the spec has "
                                        f"{[study.name for study in spec.studies]}")
    check_settings(cfg, spec)  # every stage's settings, before anything trains
    if cfg.reported is not None and not cfg.worker:
        read_earlier(cfg.reported)  # an unreadable earlier report fails now, not after hours of training
    if not cfg.report_only:
        children = [] if cfg.worker else start_workers(cfg)
        threads = torch.get_num_threads()
        if cfg.jobs > 1:  # one process alone keeps torch's setting (a caller's, e.g. a test session's, stays intact)
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // cfg.jobs))
        try:
            work_through(cfg, spec)
        finally:
            torch.set_num_threads(threads)
            for child in children:
                child.wait()
        if any(child.returncode for child in children):
            codes = [child.returncode for child in children]
            raise RuntimeError(f"benchmark: a worker process failed (exit codes {codes}); its output above says why")
    if cfg.worker:
        return cfg.out
    results = read_results(cfg.work, spec, cfg.reported)  # before OUT's files are replaced: --reported may be OUT
    spec_text = ("# The spec this report was made from: `avl benchmark --spec results/benchmark/benchmark.toml` "
                 "reruns it.\n" + tomli_w.dumps(spec.document))
    report = write_report(cfg.out, results, time.perf_counter() - started, spec_text)
    (cfg.out / "benchmark.toml").write_text(spec_text)  # summary.json holds its digest: a stop in between is seen
    tqdm.write(f"benchmark: report → {report}")
    return cfg.out


def start_workers(cfg: BenchmarkConfig) -> list[subprocess.Popen]:
    """`jobs - 1` more processes of this benchmark (same settings, worker mode)."""
    if cfg.jobs == 1:
        return []
    settings = cfg.work / "benchmark-worker.toml"
    config_io.save(replace(cfg, worker=True), settings)
    command = [sys.executable, "-c", "from pipeline.cli import main; main()", "benchmark", "--config", str(settings)]
    return [subprocess.Popen(command) for _ in range(cfg.jobs - 1)]


def check_settings(cfg: BenchmarkConfig, spec: spec_io.BenchmarkSpec) -> None:
    """Build every stage config the benchmark will run, so a bad setting fails before hours of training."""
    for name, corpus in spec.corpora.items():
        synth_config(spec, spec.synth_corpus(name))
        if corpus.teacher:
            prepare_config(cfg, spec, name)
            teacher_config(cfg, spec, name)
    for study in spec.studies:
        if study.role == "emotion":
            protocol_config(cfg.work, spec, study, cfg.device)
            continue
        for teacher in study.teachers():
            export_config(cfg, spec, study, teacher)
        for sweep_cfg in study_sweeps(cfg.work, spec, study, cfg.device, temperature=2.0):
            for cell in grid(sweep_cfg):
                sweep.cell_config(sweep_cfg, cell)


# ---------------------------------------------------------------- stages 0-2 of each corpus


def synth_config(spec: spec_io.BenchmarkSpec, name: str) -> SynthConfig:
    return config_io.build(SynthConfig, spec.corpora[name].synth, source=f"benchmark corpus {name}: synth")


def prepare_config(cfg: BenchmarkConfig, spec: spec_io.BenchmarkSpec, name: str) -> prepare.PrepareConfig:
    root = corpus_root(cfg.work, spec.synth_corpus(name))
    settings = {"root": root, "run_dir": cfg.work / name / "run", "num_workers": 0, **spec.corpora[name].prepare}
    return config_io.build(prepare.PrepareConfig, settings, source=f"benchmark corpus {name}: prepare")


def teacher_config(cfg: BenchmarkConfig, spec: spec_io.BenchmarkSpec, name: str) -> train_teacher.TeacherConfig:
    """A corpus's teacher; a sequential one's window is the students' crop (its aggregator rows are per window), as
    is an audio teacher's training crop."""
    settings = {"run_dir": cfg.work / name / "run", "device": cfg.device, "num_workers": 0,
                **spec.corpora[name].teacher}
    if settings.get("sequential") or is_audio_teacher(settings.get("arch", "")):
        settings.setdefault("window_seconds", spec.crop_seconds)
    return config_io.build(train_teacher.TeacherConfig, settings, source=f"benchmark corpus {name}: teacher")


def make_corpus(cfg: BenchmarkConfig, spec: spec_io.BenchmarkSpec, name: str) -> Path:
    """Synthesise corpus entry `name`, or reuse it if it was made with the same settings."""
    root = corpus_root(cfg.work, name)
    with locks.hold(locks.inside(root.parent)):  # another --jobs process may be writing it
        return synthesize_or_reuse(root, synth_config(spec, name), f"benchmark corpus {name}")


def make_run(cfg: BenchmarkConfig, spec: spec_io.BenchmarkSpec, name: str) -> None:
    """Stages 0-2 for corpus entry `name`: each reuses or resumes what an earlier invocation made (only the
    corpus for an entry without a teacher: an emotion study's protocol runs its stages per fold)."""
    make_corpus(cfg, spec, spec.synth_corpus(name))
    if not spec.corpora[name].teacher:
        return
    prepare.run(prepare_config(cfg, spec, name))
    teacher_cfg = teacher_config(cfg, spec, name)
    train_teacher.run_or_reuse(teacher_cfg, "give the benchmark another --work, or remove the teacher to retrain",
                               f"benchmark corpus {name}")
    export_embeddings.run(config_io.build(export_embeddings.ExportConfig, {
        "run_dir": teacher_cfg.resolved_run_dir, "device": cfg.device, "num_workers": 0}, f"benchmark corpus {name}"))


def export_config(cfg: BenchmarkConfig, spec: spec_io.BenchmarkSpec, study: spec_io.StudySpec,
                  teacher: str) -> export_embeddings.ExportConfig:
    """A multi-teacher study's cache of `teacher`'s teacher over the study corpus's prepared data, with the inner
    layers its targets read."""
    return config_io.build(export_embeddings.ExportConfig, {
        "run_dir": run_dir(cfg.work, study.corpus), "teacher": teacher_checkpoint(cfg.work, teacher),
        "out": teacher_cache(cfg.work, study, teacher), "layers": study.layers_of(teacher) or None,
        "device": cfg.device, "num_workers": 0}, f"benchmark study {study.name}: cache of {teacher}'s teacher")


# ---------------------------------------------------------------- the work loop


def work_through(cfg: BenchmarkConfig, spec: spec_io.BenchmarkSpec) -> None:
    """Run every corpus's stages and every study's sweeps, skipping for now what another process holds, until
    everything is done."""
    wanted = [s for s in spec.studies if not cfg.studies or s.name in cfg.studies]
    needed = {c for s in wanted for c in spec.corpora_of(s)} | \
        {spec.study(s.temperature_from).corpus for s in wanted if s.temperature_from}
    pending: list[tuple[str, str]] = [("corpus", name) for name in spec.corpora if name in needed]
    for study in wanted:  # a study's temperature source trains first, even if not asked for by name
        if study.temperature_from and ("study", study.temperature_from) not in pending:
            pending.append(("study", study.temperature_from))
        pending.append(("study", study.name))
    done: set[tuple[str, str]] = set()
    failed: dict[tuple[str, str], str] = {}
    while pending:
        progressed = False
        for task in list(pending):
            if (blocker := blocked_by(spec, task, failed)) is not None:
                failed[task] = f"not run: {blocker[0]} {blocker[1]} failed"
                pending.remove(task)
                continue
            if not ready(cfg, spec, task, done):
                continue
            try:
                do(cfg, spec, task)
            except locks.LockedError as refusal:
                tqdm.write(f"benchmark: {task[0]} {task[1]} is held by another process "
                           f"({locks.describe_holder(refusal.holder)}); doing other work meanwhile")
                continue
            except UserError as error:  # this task's inputs or settings: the rest of the benchmark goes on
                tqdm.write(f"benchmark: {task[0]} {task[1]} failed: {error}")
                failed[task] = str(error)
            else:
                done.add(task)
            pending.remove(task)
            progressed = True
        if pending and not progressed:
            time.sleep(WAIT_SECONDS)
    if failed:
        raise UserError("benchmark: " + "; ".join(f"{kind} {name}: {why}" for (kind, name), why in failed.items())
                        + ". What finished is kept; mend the cause and run the same command again.")


def blocked_by(spec: spec_io.BenchmarkSpec, task: tuple[str, str], failed: dict) -> tuple[str, str] | None:
    """The failed task this one needs (a study's corpus or temperature study), if any."""
    if task[0] == "corpus":
        return None
    study = spec.study(task[1])
    needs = [("corpus", name) for name in spec.corpora_of(study)] + \
        ([("study", study.temperature_from)] if study.temperature_from else [])
    return next((need for need in needs if need in failed), None)


def ready(cfg: BenchmarkConfig, spec: spec_io.BenchmarkSpec, task: tuple[str, str], done: set) -> bool:
    """A study waits for its corpus's stages and for its temperature study's choice."""
    kind, name = task
    if kind == "corpus":
        return True
    study = spec.study(name)
    if any(("corpus", name) not in done for name in spec.corpora_of(study)):
        return False
    return study.temperature_from is None or temperature_choice(cfg.work, spec, spec.study(study.temperature_from),
                                                                cfg.device) is not None


def do(cfg: BenchmarkConfig, spec: spec_io.BenchmarkSpec, task: tuple[str, str]) -> None:
    kind, name = task
    if kind == "corpus":
        make_run(cfg, spec, name)
        return
    study = spec.study(name)
    if study.role == "emotion":
        protocol.run(protocol_config(cfg.work, spec, study, cfg.device))
        return
    for teacher in study.teachers():  # a multi-teacher study's caches, in its own run
        export_embeddings.run(export_config(cfg, spec, study, teacher))
    temperature = None
    if study.temperature_from:
        temperature = temperature_choice(cfg.work, spec, spec.study(study.temperature_from), cfg.device)
    for sweep_cfg in study_sweeps(cfg.work, spec, study, cfg.device, temperature):
        sweep.run(sweep_cfg)
