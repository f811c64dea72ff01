"""The `avl` command: options generated from each stage's config dataclass, then `stages.<stage>.run(cfg)`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from pipeline.commands import Command, group
from pipeline.distributed import torchrun_command
from pipeline.errors import UserError

STAGES = {
    "prepare": Command("stages.prepare", "PrepareConfig", "Stage 0: manifest, spectrogram shards and face-crop frame store."),
    "train-teacher": Command("stages.train_teacher", "TeacherConfig", (
        "Stage 1: train a video teacher on face crops (under torchrun: DistributedDataParallel).")),
    "export-embeddings": Command("stages.export_embeddings", "ExportConfig", (
        "Stage 2: run the frozen teacher once over every frame and cache its embeddings.")),
    "train-student": Command("stages.train_student", "StudentConfig", (
        "Stage 3: train an audio student from spectrogram shards and cached teacher targets (under torchrun: DDP).")),
}
DATA = {
    "synth": Command(
        "pipeline.datasets.synthetic", "SynthConfig",
        "Write a synthetic audio-visual corpus as real mp4 files (H.264 + AAC): speakers in the VoxCeleb layout, or "
        "with --preset emotion four arousal classes in the RAVDESS layout; version 2 (--preset) shares part of "
        "each speaker's latent between face and voice.", run="synthesize",
        extra=(("out", Path, typer.Option(..., help="Directory to write the corpus into.")),),
        done="corpus written to {}"),
}
COMMANDS = {
    "demo": Command("stages.demo", "DemoConfig", (
        "Synthesise a small corpus and run stages 0–3 for λ = 0 and λ = 0.4; print a table.")),
    "sweep": Command("stages.sweep", "SweepConfig", (
        "Stage 3 over λ × method × level × architecture × seed (resumable; finished cells are reused), "
        "then report.md and plots.")),
    "benchmark": Command("stages.benchmark", "BenchmarkConfig", (
        "The LUPI benchmark: corpora with and without shared face-voice information and a weak teacher, every "
        "method over λ and seeds, controls; resumable; writes results/benchmark/ (report.md with paired "
        "intervals and verdicts, plots).")),
    "protocol": Command("stages.protocol", "ProtocolConfig", (
        "Stages 0–3 once per fold (teacher without the test subject, cache without test targets), "
        "then mean ± std over folds.")),
    "embed": Command("stages.infer", "EmbedConfig", (
        "Student embeddings of audio or video files (full length, audio only)."), run="embed"),
    "predict": Command("stages.infer", "PredictConfig", (
        "Class and probabilities of audio or video files with a saved student; prints a table."), run="predict"),
    "verify": Command("stages.infer", "VerifyConfig", (
        "Cosine-score a trial list with a saved student; writes the scores and prints EER and minDCF."), run="verify"),
    "export-model": Command("stages.export_model", "ExportModelConfig", (
        "A saved student as TorchScript or ONNX: 16 kHz mono waveform → (embedding, logits), spectrogram inside; "
        "a JSON description beside it."), done="exported to {}"),
    "bench": Command("stages.bench", "BenchConfig", (
        "Measure what the cache buys: store vs in-memory steps/s, cached vs live-teacher epochs, stage 2 "
        "throughput, bytes per hour, stage-3 peak RSS at two dataset sizes; prints one JSON object.")),
    "bench-models": Command("pipeline.models.bench", "ModelBenchConfig", (
        "Parameter counts and CPU forward time per batch of every registered model; prints a Markdown table.")),
    "bench-store": Command("cache.bench", "StoreBenchConfig", (
        "Random-access training reads from each on-disk backend against the same stores in memory, random 5 s "
        "crops side by side (memory, memory-mapped .npy, h5py, .npy per utterance, avl), and bytes on disk per "
        "hour of video; prints one JSON object.")),
    "bench-faces": Command("pipeline.bench.faces", "FaceBenchConfig", (
        "Face-crop storage per encoding: MB per hour of video and read+decode frames/s of raw uint8 and JPEG at "
        "64, 112 and 224 px (synthetic faces; real ones with --clips); prints one JSON object.")),
    "bench-gpu": Command("stages.bench_gpu", "BenchGpuConfig", "Run every CUDA path once (stages 1-3, nccl, bf16, "
                         "channels-last, compile, GPU JPEG decode), timed; prints one JSON object, exits 2 on a failure."),
}

app = typer.Typer(cls=group(COMMANDS), add_completion=False, no_args_is_help=True,
                  help="Audio representation learning with video as privileged information (LUPI).")
stage_app = typer.Typer(cls=group(STAGES), no_args_is_help=True, help=(
    "Run one pipeline stage (0 prepare, 1 teacher, 2 export, 3 student). prepare, train-teacher, "
    "export-embeddings and train-student also take --nproc-per-node N: they re-run themselves under torchrun with "
    "N processes (DDP training; prepare and export sharded by rank into stores that read as one)."))
data_app = typer.Typer(cls=group(DATA), no_args_is_help=True, help="Make or inspect datasets.")
cache_app = typer.Typer(no_args_is_help=True, help="Inspect and verify stores (embedding caches, spectrogram shards).")
app.add_typer(stage_app, name="stage")
app.add_typer(data_app, name="data")
app.add_typer(cache_app, name="cache")

StorePath = typer.Argument(..., help="A store (.zarr directory or .h5 file) or a directory of store parts.")


@cache_app.command("info")
def cache_info(path: Path = StorePath, as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")):
    """Counts, fields (shape, dtype, rows, chunking, bytes), attributes and size on disk of a store."""
    import json

    from cache import inspect

    info = inspect.store_info(path)
    typer.echo(json.dumps(info, indent=2) if as_json else inspect.format_info(info))


@cache_app.command("verify")
def cache_verify(
    path: Path = StorePath,
    manifest: Optional[Path] = typer.Option(None, help=(
        "Prepare directory (or its manifest.tsv): every key of the splits the store holds must be present, no other.")),
    teacher: Optional[Path] = typer.Option(None, help="Teacher checkpoint the store must have been made by."),
):
    """Check a store: every chunk against its checksum, complete, unique keys, sound offsets, no NaN/Inf, manifest and teacher match; exit 1 on a problem."""
    from pipeline import stores

    problems = stores.verify(path, manifest, teacher)
    for problem in problems:
        typer.secho(f"problem: {problem}", fg=typer.colors.RED, err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo(f"{path}: ok")


def main() -> None:
    """Entry point: an error meant for the user prints one clear message instead of a traceback."""
    try:
        command = torchrun_command(sys.argv[1:])
        if command is not None:  # this process becomes torchrun: signals reach it and it stops its workers
            os.execv(command[0], command)
        app()
    except UserError as error:  # one line, even when the message quotes a library's multi-line one
        typer.secho(f"error: {' '.join(str(error).split())}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
