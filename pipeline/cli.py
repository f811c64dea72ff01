"""The `avl` command: parses options and calls `stages.<stage>.run(cfg)`; no logic lives here."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from pipeline import config as config_io

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Audio representation learning with video as privileged information (LUPI).")
stage_app = typer.Typer(no_args_is_help=True, help=(
    "Run one pipeline stage (0 prepare, 1 teacher, 2 export, 3 student). train-teacher, export-embeddings and "
    "train-student also take --nproc-per-node N: they re-run themselves under torchrun with N processes "
    "(DDP training; export sharded by rank into one store)."))
data_app = typer.Typer(no_args_is_help=True, help="Make or inspect datasets.")
cache_app = typer.Typer(no_args_is_help=True, help="Inspect and verify stores (embedding caches, spectrogram shards).")
app.add_typer(stage_app, name="stage")
app.add_typer(data_app, name="data")
app.add_typer(cache_app, name="cache")

ConfigOption = typer.Option(None, "--config", help="TOML file with this stage's settings (CLI options win).")
DatasetOption = typer.Option(None, help="Dataset adapter; also names the default run dir runs/<dataset>.")
RunDirOption = typer.Option(None, help="Run directory shared by all stages (default: runs/<dataset>).")
StoreOption = typer.Option(None, help="Storage backend for what this stage writes: zarr or hdf5.")
WorkersOption = typer.Option(None, help="DataLoader worker processes.")
DeviceOption = typer.Option(None, help="cpu, cuda, cuda:N or auto.")
SeedOption = typer.Option(None, help="Random seed.")
PrecisionOption = typer.Option(None, help="bf16 (autocast) or fp32; auto: bf16 on CUDA, fp32 on the CPU.")
ChannelsLastOption = typer.Option(None, "--channels-last/--no-channels-last", help="NHWC convolutions (default: on for CUDA).")
CompileOption = typer.Option(None, "--compile", help="torch.compile the training step.")
MaxStepsOption = typer.Option(None, help="Stop every epoch after this many batches (smoke runs, benchmarks).")


def _overrides(**values) -> dict:
    return {key: value for key, value in values.items() if value is not None}


@data_app.command("synth")
def synth(
    out: Path = typer.Option(..., help="Directory to write the corpus into (VoxCeleb layout)."),
    speakers: Optional[int] = typer.Option(None, help="Identification speakers."),
    verification_speakers: Optional[int] = typer.Option(None, help="Held-out speakers for the trial list."),
    utterances: Optional[int] = typer.Option(None, help="Utterances per speaker."),
    min_seconds: Optional[float] = typer.Option(None, help="Shortest utterance."),
    max_seconds: Optional[float] = typer.Option(None, help="Longest utterance."),
    audio_noise: Optional[float] = typer.Option(None, help="Noise RMS relative to speech RMS (makes audio harder)."),
    trials: Optional[int] = typer.Option(None, help="Verification trials."),
    seed: Optional[int] = SeedOption,
    config: Optional[Path] = ConfigOption,
):
    """Write a synthetic audio-visual speaker corpus as real mp4 files (H.264 + AAC)."""
    from pipeline.datasets.synthetic import SynthConfig, synthesize

    cfg = config_io.load(SynthConfig, config, _overrides(
        n_speakers=speakers, n_verification_speakers=verification_speakers, utterances_per_speaker=utterances,
        min_seconds=min_seconds, max_seconds=max_seconds, audio_noise=audio_noise, n_trials=trials, seed=seed))
    typer.echo(f"corpus written to {synthesize(out, cfg)}")


@stage_app.command("prepare")
def prepare(
    root: Optional[Path] = typer.Option(None, help="Dataset root in its published layout."),
    dataset: Optional[str] = DatasetOption,
    run_dir: Optional[Path] = RunDirOption,
    split_file: Optional[Path] = typer.Option(None, help="iden_split.txt-format split (default: ROOT/iden_split.txt)."),
    trials_file: Optional[Path] = typer.Option(None, help="veri_test.txt-format trials (default: ROOT/veri_test.txt)."),
    store: Optional[str] = StoreOption,
    face_size: Optional[int] = typer.Option(None, help="Face crop side in pixels."),
    crop_fraction: Optional[float] = typer.Option(None, help="Centre crop side as a fraction of the frame."),
    normalisation: Optional[str] = typer.Option(None, help="Spectrogram normalisation: utterance or frequency-bin."),
    num_workers: Optional[int] = WorkersOption,
    on_error: Optional[str] = typer.Option(None, help="stop (default) at the first bad file, or skip and record it."),
    overwrite: Optional[bool] = typer.Option(None, "--overwrite", help="Rebuild stores that already exist."),
    commit_seconds: Optional[float] = typer.Option(None, help="Commit written utterances at least this often."),
    fold: Optional[int] = typer.Option(None, help="RAVDESS: test actor (leave-one-subject-out); IEMOCAP: test session."),
    classes: Optional[str] = typer.Option(None, help="RAVDESS: 7 (calm merged into neutral) or 8 classes."),
    include_song: Optional[bool] = typer.Option(None, "--include-song", help="RAVDESS: add the sung clips."),
    include_scripted: Optional[bool] = typer.Option(None, "--include-scripted/--no-scripted", help="IEMOCAP: scripted turns."),
    split: Optional[str] = typer.Option(None, help="VoxCeleb: official (iden_split.txt) or 70-10-20 per speaker."),
    seed: Optional[int] = typer.Option(None, help="VoxCeleb: seed of the 70-10-20 split."),
    audio_only_ok: Optional[bool] = typer.Option(None, "--audio-only-ok", help="List utterances that have no video."),
    boxes_dir: Optional[Path] = typer.Option(None, help="Per-frame face boxes (x0 y0 x1 y1) instead of centre crops."),
    config: Optional[Path] = ConfigOption,
):
    """Stage 0: manifest, spectrogram shards and face-crop frame store."""
    from stages import prepare as stage

    stage.run(config_io.load(stage.PrepareConfig, config, _overrides(
        root=root, dataset=dataset, run_dir=run_dir, split_file=split_file, trials_file=trials_file, store=store,
        face_size=face_size, crop_fraction=crop_fraction, normalisation=normalisation, num_workers=num_workers, on_error=on_error,
        overwrite=overwrite, commit_seconds=commit_seconds, fold=fold, classes=classes, include_song=include_song,
        include_scripted=include_scripted, split=split, seed=seed, audio_only_ok=audio_only_ok, boxes_dir=boxes_dir)))


@stage_app.command("train-teacher")
def train_teacher(
    dataset: Optional[str] = DatasetOption,
    run_dir: Optional[Path] = RunDirOption,
    arch: Optional[str] = typer.Option(None, help="Teacher architecture: vgg16, resnet34 or seresnet34."),
    tiny: Optional[bool] = typer.Option(None, "--tiny", help="Small variant that trains on a CPU."),
    embed_dim: Optional[int] = typer.Option(None, help="Embedding size (the student matches it)."),
    epochs: Optional[int] = typer.Option(None),
    batch_size: Optional[int] = typer.Option(None, help="Utterances per batch."),
    frames_per_utterance: Optional[int] = typer.Option(None, help="Random frames drawn per utterance per epoch."),
    sequential: Optional[bool] = typer.Option(None, "--sequential", help="Add the 2×BiLSTM + attention aggregator (Eq. 5); train on windows."),
    window_seconds: Optional[int] = typer.Option(None, help="Sequential: training window in seconds (= the student's crop)."),
    frames_per_segment: Optional[int] = typer.Option(None, help="Sequential: random frames per 1 s segment in training."),
    lr_min: Optional[float] = typer.Option(None),
    lr_max: Optional[float] = typer.Option(None),
    init_weights: Optional[Path] = typer.Option(None, help="Local weights file to initialise the teacher."),
    resume: Optional[bool] = typer.Option(None, "--resume", help="Continue an interrupted run from its last epoch."),
    overwrite: Optional[bool] = typer.Option(None, "--overwrite", help="Replace an existing run of the same name."),
    num_workers: Optional[int] = WorkersOption,
    device: Optional[str] = DeviceOption,
    seed: Optional[int] = SeedOption,
    precision: Optional[str] = PrecisionOption,
    channels_last: Optional[bool] = ChannelsLastOption,
    compile_step: Optional[bool] = CompileOption,
    max_steps_per_epoch: Optional[int] = MaxStepsOption,
    config: Optional[Path] = ConfigOption,
):
    """Stage 1: train a video teacher on face crops (under torchrun: DistributedDataParallel)."""
    from stages import train_teacher as stage

    stage.run(config_io.load(stage.TeacherConfig, config, _overrides(
        dataset=dataset, run_dir=run_dir, arch=arch, tiny=tiny, embed_dim=embed_dim, epochs=epochs,
        batch_size=batch_size, frames_per_utterance=frames_per_utterance, sequential=sequential,
        window_seconds=window_seconds, frames_per_segment=frames_per_segment, lr_min=lr_min, lr_max=lr_max,
        init_weights=init_weights, num_workers=num_workers, device=device, seed=seed, resume=resume,
        overwrite=overwrite, precision=precision, channels_last=channels_last, compile=compile_step,
        max_steps_per_epoch=max_steps_per_epoch)))


@stage_app.command("export-embeddings")
def export_embeddings(
    dataset: Optional[str] = DatasetOption,
    run_dir: Optional[Path] = RunDirOption,
    teacher: Optional[Path] = typer.Option(None, help="Teacher checkpoint (default: RUN_DIR/teacher/teacher.pt)."),
    out: Optional[Path] = typer.Option(None, help="Cache path (default: RUN_DIR/embeddings/DATASET.zarr)."),
    store: Optional[str] = StoreOption,
    dtype: Optional[str] = typer.Option(None, help="float16 (default) or float32 embeddings."),
    batch_frames: Optional[int] = typer.Option(None, help="Frames per teacher batch (across utterances)."),
    num_workers: Optional[int] = WorkersOption,
    device: Optional[str] = DeviceOption,
    overwrite: Optional[bool] = typer.Option(None, "--overwrite", help="Replace a cache made by another teacher."),
    window_seconds: Optional[int] = typer.Option(None, help="Sequential teachers: aggregator window (default: the teacher's)."),
    commit_seconds: Optional[float] = typer.Option(None, help="Commit written utterances at least this often."),
    part: Optional[int] = typer.Option(None, help="Write part PART of NUM_PARTS (default: torchrun's RANK)."),
    num_parts: Optional[int] = typer.Option(None, help="Number of parts (default: torchrun's WORLD_SIZE)."),
    splits: Optional[str] = typer.Option(None, help="Comma-separated manifest splits to export (default: train,val; never test unless asked)."),
    config: Optional[Path] = ConfigOption,
):
    """Stage 2: run the frozen teacher once over every frame and cache its embeddings."""
    from stages import export_embeddings as stage

    stage.run(config_io.load(stage.ExportConfig, config, _overrides(
        dataset=dataset, run_dir=run_dir, teacher=teacher, out=out, store=store, dtype=dtype,
        batch_frames=batch_frames, num_workers=num_workers, device=device, overwrite=overwrite,
        commit_seconds=commit_seconds, part=part, num_parts=num_parts, window_seconds=window_seconds,
        splits=tuple(name.strip() for name in splits.split(",")) if splits else None)))


@stage_app.command("train-student")
def train_student(
    lam: Optional[float] = typer.Option(None, "--lambda", help="Distillation weight λ in [0, 1] (0 = no distillation)."),
    dataset: Optional[str] = DatasetOption,
    run_dir: Optional[Path] = RunDirOption,
    cache: Optional[Path] = typer.Option(None, help="Teacher cache (default: RUN_DIR/embeddings/DATASET.zarr)."),
    arch: Optional[str] = typer.Option(None, help="Student architecture: vgg, resnet or seresnet (paper Tables 1-3)."),
    tiny: Optional[bool] = typer.Option(None, "--tiny", help="Small variant that trains on a CPU."),
    method: Optional[str] = typer.Option(None, help="proposed (embeddings, routed), soft-label (Eq. 1) or multitask."),
    level: Optional[str] = typer.Option(None, help="non-sequential (Eq. 8), encoder (EM, Eq. 12) or aggregator (AGG, Eq. 13)."),
    temperature: Optional[float] = typer.Option(None, help="Soft-label baseline: temperature T."),
    distance: Optional[str] = typer.Option(None, help="mse or cosine."),
    target: Optional[str] = typer.Option(None, help="crop-peak (peak frame inside the crop) or utterance-peak."),
    epochs: Optional[int] = typer.Option(None),
    batch_size: Optional[int] = typer.Option(None),
    crop_seconds: Optional[int] = typer.Option(None, help="Training crop length in whole seconds."),
    lr_min: Optional[float] = typer.Option(None),
    lr_max: Optional[float] = typer.Option(None),
    name: Optional[str] = typer.Option(None, help="Run name under RUN_DIR/students/."),
    expect_teacher: Optional[str] = typer.Option(None, help="Refuse a cache not made by this teacher fingerprint."),
    resume: Optional[bool] = typer.Option(None, "--resume", help="Continue an interrupted run from its last epoch."),
    overwrite: Optional[bool] = typer.Option(None, "--overwrite", help="Replace an existing run of the same name."),
    num_workers: Optional[int] = WorkersOption,
    device: Optional[str] = DeviceOption,
    seed: Optional[int] = SeedOption,
    precision: Optional[str] = PrecisionOption,
    channels_last: Optional[bool] = ChannelsLastOption,
    compile_step: Optional[bool] = CompileOption,
    max_steps_per_epoch: Optional[int] = MaxStepsOption,
    config: Optional[Path] = ConfigOption,
):
    """Stage 3: train an audio student from spectrogram shards and cached teacher targets (under torchrun: DDP)."""
    from stages import train_student as stage

    stage.run(config_io.load(stage.StudentConfig, config, _overrides(
        lam=lam, dataset=dataset, run_dir=run_dir, cache=cache, arch=arch, tiny=tiny, method=method, level=level,
        temperature=temperature,
        distance=distance, target=target, epochs=epochs, batch_size=batch_size, crop_seconds=crop_seconds,
        lr_min=lr_min, lr_max=lr_max, name=name, expect_teacher=expect_teacher, num_workers=num_workers,
        device=device, seed=seed, resume=resume, overwrite=overwrite, precision=precision,
        channels_last=channels_last, compile=compile_step, max_steps_per_epoch=max_steps_per_epoch)))


@app.command("demo")
def demo(
    work: Optional[Path] = typer.Option(None, help="Work directory (default: runs/demo)."),
    lambdas: Optional[str] = typer.Option(None, help="Comma-separated λ values to train students at (default: 0,0.4)."),
    size: Optional[str] = typer.Option(None, help="Corpus and training size: small (default, a few minutes) or tiny."),
    device: Optional[str] = DeviceOption,
    config: Optional[Path] = ConfigOption,
):
    """Synthesise a small corpus and run stages 0–3 for λ = 0 and λ = 0.4; print a table."""
    from stages import demo as stage

    lambda_values = tuple(float(v) for v in lambdas.split(",")) if lambdas else None
    stage.run(config_io.load(stage.DemoConfig, config, _overrides(
        work=work, lambdas=lambda_values, size=size, device=device)))


@app.command("sweep")
def sweep(
    run_dir: Optional[Path] = RunDirOption,
    dataset: Optional[str] = DatasetOption,
    name: Optional[str] = typer.Option(None, help="Sweep name: cells in RUN_DIR/students/NAME/, report in RUN_DIR/sweeps/NAME/."),
    lambdas: Optional[str] = typer.Option(None, help="Comma-separated λ values (default: 0,0.2,0.4,0.6,0.8,1)."),
    methods: Optional[str] = typer.Option(None, help="Comma-separated distillation methods (default: proposed)."),
    levels: Optional[str] = typer.Option(None, help="Comma-separated levels: non-sequential (default), encoder, aggregator."),
    archs: Optional[str] = typer.Option(None, help="Comma-separated student architectures (default: resnet)."),
    seeds: Optional[str] = typer.Option(None, help="Comma-separated seeds (default: 0,1,2)."),
    tiny: Optional[bool] = typer.Option(None, "--tiny", help="Small student variants that train on a CPU."),
    epochs: Optional[int] = typer.Option(None),
    batch_size: Optional[int] = typer.Option(None),
    crop_seconds: Optional[int] = typer.Option(None, help="Training crop length in whole seconds."),
    set_options: Optional[list[str]] = typer.Option(None, "--set", help="Any other stage-3 setting for every cell, KEY=VALUE (repeatable)."),
    report_only: Optional[bool] = typer.Option(None, "--report-only", help="Only rebuild the report from finished cells."),
    num_workers: Optional[int] = WorkersOption,
    device: Optional[str] = DeviceOption,
    config: Optional[Path] = ConfigOption,
):
    """Stage 3 over λ × method × level × architecture × seed (resumable; finished cells are reused), then report.md and plots."""
    from stages import sweep as stage

    def split(text, kind):
        return tuple(kind(value) for value in text.split(",")) if text else None

    stage.run(config_io.load(stage.SweepConfig, config, _overrides(
        run_dir=run_dir, dataset=dataset, name=name, lambdas=split(lambdas, float), methods=split(methods, str),
        levels=split(levels, str), archs=split(archs, str), seeds=split(seeds, int), tiny=tiny, epochs=epochs,
        batch_size=batch_size, crop_seconds=crop_seconds, student_options=tuple(set_options) if set_options else None,
        report_only=report_only, num_workers=num_workers, device=device)))


@app.command("protocol")
def protocol(
    dataset: Optional[str] = typer.Option(None, help="ravdess (leave-one-actor-out) or iemocap (leave-one-session-out)."),
    root: Optional[Path] = typer.Option(None, help="Dataset root in its published layout."),
    run_dir: Optional[Path] = typer.Option(None, help="Holds shared/, fold-K/ and protocol/ (default: runs/<dataset>-protocol)."),
    folds: Optional[str] = typer.Option(None, help="Comma-separated folds (the test actor or session), or all (default)."),
    lambdas: Optional[str] = typer.Option(None, help="Comma-separated λ values; λ = 0 is always trained (default: 0,0.4)."),
    method: Optional[str] = typer.Option(None, help="Distillation method (default: proposed)."),
    level: Optional[str] = typer.Option(None, help="non-sequential (default), encoder or aggregator (sequential teacher)."),
    arch: Optional[str] = typer.Option(None, help="Student architecture (default: resnet)."),
    teacher_arch: Optional[str] = typer.Option(None, help="Teacher architecture (default: resnet34)."),
    tiny: Optional[bool] = typer.Option(None, "--tiny", help="Small teacher and student variants that train on a CPU."),
    epochs: Optional[int] = typer.Option(None, help="Student epochs (and teacher epochs unless --teacher-epochs)."),
    teacher_epochs: Optional[int] = typer.Option(None),
    batch_size: Optional[int] = typer.Option(None),
    crop_seconds: Optional[int] = typer.Option(None, help="Training crop length in whole seconds."),
    classes: Optional[str] = typer.Option(None, help="RAVDESS: 7 (calm merged into neutral) or 8 classes."),
    include_song: Optional[bool] = typer.Option(None, "--include-song", help="RAVDESS: add the sung clips."),
    include_scripted: Optional[bool] = typer.Option(None, "--include-scripted/--no-scripted", help="IEMOCAP: scripted turns."),
    set_options: Optional[list[str]] = typer.Option(None, "--set", help="Any other stage-3 setting, KEY=VALUE (repeatable)."),
    teacher_set: Optional[list[str]] = typer.Option(None, "--teacher-set", help="Any other stage-1 setting, KEY=VALUE (repeatable)."),
    prepare_set: Optional[list[str]] = typer.Option(None, "--prepare-set", help="Any other stage-0 setting, KEY=VALUE (repeatable)."),
    num_workers: Optional[int] = WorkersOption,
    device: Optional[str] = DeviceOption,
    seed: Optional[int] = SeedOption,
    config: Optional[Path] = ConfigOption,
):
    """Stages 0–3 once per fold (teacher without the test subject, cache without test targets), then mean ± std over folds."""
    from stages import protocol as stage

    def split(text, kind):
        return tuple(kind(value) for value in text.split(",")) if text else None

    def listed(values):
        return tuple(values) if values else None

    stage.run(config_io.load(stage.ProtocolConfig, config, _overrides(
        dataset=dataset, root=root, run_dir=run_dir, folds=() if folds == "all" else split(folds, int),
        lambdas=split(lambdas, float), method=method, level=level, arch=arch, teacher_arch=teacher_arch, tiny=tiny,
        epochs=epochs, teacher_epochs=teacher_epochs, batch_size=batch_size, crop_seconds=crop_seconds,
        classes=classes, include_song=include_song, include_scripted=include_scripted,
        student_options=listed(set_options), teacher_options=listed(teacher_set), prepare_options=listed(prepare_set),
        num_workers=num_workers, device=device, seed=seed)))


ModelArgument = typer.Argument(..., help="A student checkpoint (student.pt) or the students/<name>/ folder holding it.")
FilesArgument = typer.Argument(..., help="Audio or video files (wav, mp4, m4a, ...); only the audio track is used.")
OverwriteOption = typer.Option(None, "--overwrite", help="Replace the output if it exists.")


@app.command("embed")
def embed(
    model: Path = ModelArgument,
    files: list[Path] = FilesArgument,
    out: Path = typer.Option(..., help="Output: .npy (plus .keys.txt naming each row's file), .zarr or .h5 store."),
    device: Optional[str] = DeviceOption,
    overwrite: Optional[bool] = OverwriteOption,
):
    """Student embeddings of audio or video files (full length, audio only)."""
    from stages import infer as stage

    stage.embed(config_io.load(stage.EmbedConfig, None, _overrides(
        model=model, files=tuple(files), out=out, device=device, overwrite=overwrite)))


@app.command("predict")
def predict(
    model: Path = ModelArgument,
    files: list[Path] = FilesArgument,
    top_k: Optional[int] = typer.Option(None, help="Classes listed per file (default 5)."),
    out: Optional[Path] = typer.Option(None, help="Also write the predictions as JSON here."),
    all_probabilities: Optional[bool] = typer.Option(None, "--all-probabilities", help="Put every class's probability in the JSON."),
    device: Optional[str] = DeviceOption,
    overwrite: Optional[bool] = OverwriteOption,
):
    """Class and probabilities of audio or video files with a saved student; prints a table."""
    from stages import infer as stage

    stage.predict(config_io.load(stage.PredictConfig, None, _overrides(
        model=model, files=tuple(files), top_k=top_k, out=out, all_probabilities=all_probabilities, device=device,
        overwrite=overwrite)))


@app.command("verify")
def verify(
    model: Path = ModelArgument,
    trials: Path = typer.Argument(..., help="Trial list in veri_test.txt format: '<1|0> <enrol path> <test path>' per line."),
    root: Optional[Path] = typer.Option(None, help="Folder the trial paths are relative to (default: the list's folder)."),
    out: Optional[Path] = typer.Option(None, help="Scores TSV (default: <trials stem>.scores.tsv); a .json summary goes beside it."),
    skip_missing: Optional[bool] = typer.Option(None, "--skip-missing", help="Score only the trials whose two files exist."),
    p_target: Optional[float] = typer.Option(None, help="Target prior of minDCF (default 0.01)."),
    device: Optional[str] = DeviceOption,
    overwrite: Optional[bool] = OverwriteOption,
):
    """Cosine-score a trial list with a saved student; writes the scores and prints EER and minDCF."""
    from stages import infer as stage

    stage.verify(config_io.load(stage.VerifyConfig, None, _overrides(
        model=model, trials=trials, root=root, out=out, skip_missing=skip_missing, p_target=p_target, device=device,
        overwrite=overwrite)))


@app.command("bench")
def bench(
    work: Optional[Path] = typer.Option(None, help="Keep the corpus and runs here (default: a temporary directory)."),
    speakers: Optional[int] = typer.Option(None, help="Speakers of the synthetic corpus."),
    utterances: Optional[int] = typer.Option(None, help="Utterances per speaker."),
    arch: Optional[str] = typer.Option(None, help="Student architecture."),
    tiny: Optional[bool] = typer.Option(None, "--tiny/--full", help="Tiny (default) or full-size student."),
    batch_size: Optional[int] = typer.Option(None),
    crop_seconds: Optional[int] = typer.Option(None),
    steps: Optional[int] = typer.Option(None, help="Timed training steps per input pipeline and round."),
    epochs: Optional[int] = typer.Option(None, help="Cached vs live teacher: epochs timed after a warm-up epoch."),
    rss_utterances: Optional[str] = typer.Option(None, help="Comma-separated dataset sizes for the peak-RSS runs (default: 200,1600)."),
    num_workers: Optional[int] = WorkersOption,
    device: Optional[str] = DeviceOption,
    out: Optional[Path] = typer.Option(None, help="Also write the JSON here."),
    config: Optional[Path] = ConfigOption,
):
    """Measure what the cache buys: store vs in-memory steps/s, cached vs live-teacher epochs, stage 2 throughput,
    bytes per hour, stage-3 peak RSS at two dataset sizes; prints one JSON object."""
    from stages import bench as stage

    sizes = tuple(int(size) for size in rss_utterances.split(",")) if rss_utterances else None
    stage.run(config_io.load(stage.BenchConfig, config, _overrides(
        work=work, speakers=speakers, utterances_per_speaker=utterances, arch=arch, tiny=tiny, batch_size=batch_size,
        crop_seconds=crop_seconds, steps=steps, epochs=epochs, rss_utterances=sizes, num_workers=num_workers, device=device,
        out=out)))


@cache_app.command("info")
def cache_info(
    path: Path = typer.Argument(..., help="A store (.zarr directory or .h5 file) or a directory of store parts."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
):
    """Counts, fields (shape, dtype, rows, chunking, bytes), attributes and size on disk of a store."""
    import json

    from cache import inspect

    info = inspect.store_info(path)
    typer.echo(json.dumps(info, indent=2) if as_json else inspect.format_info(info))


@cache_app.command("verify")
def cache_verify(
    path: Path = typer.Argument(..., help="A store (.zarr directory or .h5 file) or a directory of store parts."),
    manifest: Optional[Path] = typer.Option(None, help="Prepare directory (or its manifest.tsv): every key of the splits the store holds must be present, no other."),
    teacher: Optional[Path] = typer.Option(None, help="Teacher checkpoint the store must have been made by."),
):
    """Check a store: complete, unique keys, sound offsets, no NaN/Inf, manifest and teacher match; exit 1 on a problem."""
    from cache import inspect

    problems = inspect.verify_store(path, manifest, teacher)
    for problem in problems:
        typer.secho(f"problem: {problem}", fg=typer.colors.RED, err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo(f"{path}: ok")


KNOWN_ERRORS = ("ConfigError", "StoreError", "MediaError", "DatasetError", "FileNotFoundError", "TrainingStateError",
                "FileExistsError", "CheckpointError")


DISTRIBUTED_STAGES = ("train-teacher", "export-embeddings", "train-student")


def _torchrun_command(argv: list[str]) -> list[str] | None:
    """`avl stage S … --nproc-per-node N` → the torchrun command that runs `avl stage S …` in N processes."""
    for index, arg in enumerate(argv):
        if arg == "--nproc-per-node" or arg.startswith("--nproc-per-node="):
            value = arg.partition("=")[2] if "=" in arg else (argv[index + 1] if index + 1 < len(argv) else "")
            rest = argv[:index] + argv[index + (1 if "=" in arg else 2):]
            break
    else:
        return None
    if not value.isdigit() or int(value) < 1:
        raise config_io.ConfigError(f"--nproc-per-node takes a positive process count, got {value!r}")
    if not (len(rest) >= 2 and rest[0] == "stage" and rest[1] in DISTRIBUTED_STAGES):
        raise config_io.ConfigError(f"--nproc-per-node applies to `avl stage` {', '.join(DISTRIBUTED_STAGES)}")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={value}",
            "-m", "pipeline.cli", *rest]


def main() -> None:
    """Entry point: known user errors print one clear message instead of a traceback."""
    try:
        command = _torchrun_command(sys.argv[1:])
        if command is not None:  # this process becomes torchrun: signals reach it and it stops its workers
            os.execv(command[0], command)
        app()
    except Exception as error:  # noqa: BLE001 — only the known kinds are shortened
        if type(error).__name__ not in KNOWN_ERRORS:
            raise
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
