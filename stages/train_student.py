"""Stage 3: train an audio student from spectrogram shards and cached teacher targets (no video, no teacher).

`--method` (proposed, soft-label, multitask; pipeline/distill.py) and `--level` (non-sequential, encoder = EM,
aggregator = AGG) pick the loss, its gradient routing and the cached target each crop needs. `--distil SPEC`
(repeated) distils several targets instead: caches of several teachers or layers, each with its own λ_i, distance and
learned projection (pipeline/multi_target.py); every cache is checked as the single one is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from cache import locks
from cache.layers import cached_layers
from cache.schema import TeacherCacheSpec
from cache.store import StoreError, open_store
from pipeline import checkpoints, distributed, runs
from pipeline.audio_only import refuse_distillation_without_faces
from pipeline.errors import MissingInputError
from pipeline import config as config_io
from pipeline.controls import CONTROLS, PROBABILITY_TARGETS, controlled_targets
from pipeline.data import WINDOW_TARGETS, Crops, MultiCrops, target_field
from pipeline import degraded_audio as degrade_io
from pipeline.datasets.registry import dataset_crop_seconds
from pipeline.trial_speakers import check_prepared
from pipeline.distill import LEVELS, METHODS, build_method
from pipeline.evaluate import identification, verification
from pipeline.features import SEGMENT_SECONDS, SEGMENT_VIDEO_FRAMES, VIDEO_FPS, SpectrogramParams
from pipeline.manifest import MANIFEST, Entry, manifest_hash, read_classes, read_manifest, read_splits, read_trials
from pipeline.models.spec import ModelSpec
from pipeline.models.students import STUDENTS, build_student
from pipeline.multi_target import (EMBEDDING, ENSEMBLES, DistilTarget, MultiTargetStep, dimension_problems,
                                   parse_distil_targets)
from pipeline.runs import find_store
from pipeline.steps import StudentStep
from pipeline.training import TrainingConfig, autocast_dtype, finish_run, fit, speed_settings, start_training

TARGETS = ("crop-peak", "utterance-peak")


@dataclass(frozen=True)
class StudentConfig(TrainingConfig):
    """Stage 3 settings."""

    cache: Path | None = field(default=None, metadata={
        "help": "Teacher cache (default: RUN_DIR/embeddings/DATASET.zarr, or .h5)."})
    arch: str = field(default="resnet", metadata={
        "help": "Student architecture (paper Tables 1-3).", "choices": STUDENTS})
    tiny: bool = field(default=False, metadata={"help": "Small variant that trains on a CPU."})
    method: str = field(default="proposed", metadata={
        "help": "proposed (embeddings, routed), soft-label (Eq. 1) or multitask.", "choices": METHODS})
    level: str = field(default="non-sequential", metadata={
        "help": "non-sequential (Eq. 8), encoder (EM, Eq. 12) or aggregator (AGG, Eq. 13); encoder and "
                "aggregator train a sequential student.", "choices": LEVELS})
    lam: float = field(default=0.4, metadata={
        "help": "Distillation weight λ in [0, 1] (0 = no distillation).", "flag": "--lambda", "min": 0.0, "max": 1.0})
    distance: str = field(default="mse", metadata={"help": "Distance D to the teacher embedding: mse or cosine."})
    target: str = field(default="crop-peak", metadata={
        "help": "Non-sequential level: the peak frame inside the crop (crop-peak) or of the whole utterance "
                "(utterance-peak).", "choices": TARGETS})
    temperature: float = field(default=2.0, metadata={
        "help": "Soft-label baseline: temperature T of Eq. 1.", "above": 0.0})
    control: str = field(default="none", metadata={
        "help": "Replace the teacher targets (λ > 0): shuffled (another training utterance's, a fixed permutation "
                "seeded by --seed), class-mean (the class's mean target) or random-prototype (a fixed random vector "
                "per class at the teacher's scale; not for soft-label).", "choices": CONTROLS})
    crop_seconds: int | None = field(default=None, metadata={
        "help": "Training crop length in whole seconds (default: the dataset's, as the paper: VoxCeleb 5, RAVDESS "
                "and IEMOCAP 4); longer utterances are cut, shorter ones repeat-padded.", "min": 1})
    name: str | None = field(default=None, metadata={
        "help": "Run name: the folder under RUN_DIR/students/ (one name, no '/').", "plain_name": True})
    sweep: str | None = field(default=None, metadata={
        "help": "The sweep this run is a cell of: it goes to RUN_DIR/students/SWEEP/NAME (`avl sweep` sets it).",
        "plain_name": True})
    expect_teacher: str | None = field(default=None, metadata={
        "help": "Refuse a cache not made by this teacher fingerprint (sha256, or at least its first 12 hex digits)."})
    accept_foreign_cache: bool = field(default=False, metadata={
        "help": "Train on a cache made for another manifest or by another teacher than this run's (recorded in "
                "config.toml and metrics.json); utterances whose cached frame counts differ are left out."})
    distil: tuple[str, ...] | None = field(default=None, metadata={
        "help": "Several targets instead of --cache/--lambda/--distance/--target: repeat the option, one target "
                "each, as comma-separated key=value pairs: lam=λ_i (required; Σλ_i <= 1), cache=PATH, "
                "teacher=CHECKPOINT (that made the cache; default this run's), layer=TEACHER_LAYER (cached by "
                "export-embeddings --layers), target=KIND (crop-peak, utterance-peak, segments, aggregator), "
                "distance=mse|cosine, from=embedding|STUDENT_LAYER, projection=linear|identity, expect_teacher=HEX.",
        "repeatable": True})
    degrade: str | None = field(default=None, metadata={
        "help": "Train and evaluate on degraded audio while the teachers' caches stay what they computed from the clean "
                "recordings: steps noise=SNR_DB, lowpass=HZ, bandpass=LOW-HIGH, mulaw=BITS applied in order to stage "
                "0's waveforms (`prepare --waveforms`), e.g. noise=5,bandpass=300-3400,mulaw=8."})
    degrade_seed: int = field(default=0, metadata={
        "help": "--degrade: seed of each utterance's noise (with its key), apart from --seed, so students of "
                "different seeds hear the same degraded audio."})
    ensemble: str = field(default="sum", metadata={
        "help": "With --distil: sum (Σλ_i D_i, a projection per target) or mean-target (Σλ·D to the λ-weighted "
                "mean of the targets, which must share one dimension).", "choices": ENSEMBLES})

    def validate(self) -> None:
        self.validate_training("train-student")
        if self.arch not in STUDENTS:
            raise config_io.ConfigError(f"train-student: unknown arch {self.arch!r}; registered: {sorted(STUDENTS)}")
        if self.method not in METHODS:
            raise config_io.ConfigError(f"train-student: unknown method {self.method!r}; known: {sorted(METHODS)}")
        if self.level not in LEVELS:
            raise config_io.ConfigError(f"train-student: unknown level {self.level!r}; known: {LEVELS}")
        if self.target not in TARGETS:
            raise config_io.ConfigError(f"train-student: unknown target {self.target!r}; known: {TARGETS}")
        if self.control not in CONTROLS:
            raise config_io.ConfigError(f"train-student: unknown control {self.control!r}; known: {list(CONTROLS)}")
        if self.control == "random-prototype" and METHODS[self.method].target_for(self.level) in PROBABILITY_TARGETS:
            raise config_io.ConfigError(f"train-student: --control random-prototype replaces embedding targets; "
                                        f"{self.method} distils class probabilities (use shuffled or class-mean)")
        if self.distance not in ("mse", "cosine"):
            raise config_io.ConfigError(f"train-student: distance must be 'mse' or 'cosine', got {self.distance!r}")
        if self.ensemble not in ENSEMBLES:
            raise config_io.ConfigError(f"train-student: unknown ensemble {self.ensemble!r}; known: {list(ENSEMBLES)}")
        if self.distil and (self.method != "proposed" or self.control != "none"):
            raise config_io.ConfigError("train-student: --distil routes embedding targets as the proposed method "
                                        f"does; it takes --method proposed and --control none, not --method "
                                        f"{self.method} --control {self.control}")
        if self.degrade is not None:
            degrade_io.parse(self.degrade)  # a malformed step is refused before anything runs
        if self.distil:
            _ = self.distil_targets  # parsed now: a bad --distil or Σλ_i > 1 is refused before anything runs
        if self.expect_teacher is not None and not re.fullmatch(r"[0-9a-f]{12,64}", self.expect_teacher):
            raise config_io.ConfigError(f"train-student: --expect-teacher must be a teacher fingerprint (sha256: 64 "
                                        f"hex digits, or at least the first 12), got {self.expect_teacher!r}")

    @staticmethod
    def upgrade_saved(values: dict) -> dict:
        """A sweep cell's config.toml from before `sweep` was a setting named the cell SWEEP/CELL."""
        name = values.get("name")
        if isinstance(name, str) and "/" in name and values.get("sweep") is None:
            sweep, _, name = name.partition("/")
            return {**values, "sweep": sweep, "name": name}
        return values

    @property
    def distil_targets(self) -> list[DistilTarget]:
        """The parsed --distil targets ([] without --distil); a target without `target=` reads the level's kind."""
        if not self.distil:
            return []
        return parse_distil_targets(self.distil, self.level, METHODS[self.method].target_for(self.level, self.target),
                                    self.ensemble)

    @property
    def sequential(self) -> bool:
        return self.level != "non-sequential"

    @property
    def run_name(self) -> str:
        """`[arch-][level-]method[-control]-lambdaλ-seedS`; arch, level and control appear when not the defaults."""
        if self.name:
            return self.name
        variant = [part for part, default in ((self.arch, "resnet"), (self.level, "non-sequential")) if part != default]
        variant += ["degraded"] if self.degrade else []
        if self.distil:
            total = sum(target.lam for target in self.distil_targets)
            return "-".join([*variant, f"distil{len(self.distil)}", self.ensemble, f"lambda{total:g}", f"seed{self.seed}"])
        if self.control != "none":
            return "-".join([*variant, self.method, self.control, f"lambda{self.lam:g}", f"seed{self.seed}"])
        return "-".join([*variant, self.method, f"lambda{self.lam:g}", f"seed{self.seed}"])

    @property
    def out_dir(self) -> Path:
        """RUN_DIR/students/[SWEEP/]NAME: where this run writes."""
        return runs.students_dir(self.resolved_run_dir) / (self.sweep or "") / self.run_name


def open_checked_cache(path: Path, classes: list[str], entries: list[Entry], expect_teacher: str | None,
                       target: str = "crop-peak", crop_seconds: int = 5, layer: str | None = None):
    """Open the teacher cache and refuse it, naming what differs, if it does not fit this training run (`layer`: the
    targets come from that cached teacher layer)."""
    cache = open_store(path)  # an incomplete store is refused with the command that finishes it
    if layer is not None and layer not in (layers := cached_layers(cache)):
        cache.close()
        raise StoreError(f"{path}: holds no teacher layer {layer!r}; its layers: "
                         f"{', '.join(layers) or 'none (export-embeddings --layers NAMES caches some)'}")
    windowed = target in WINDOW_TARGETS
    crop_segments = crop_seconds // SEGMENT_SECONDS
    # one window per crop start: max(0, S_whole − crop) + 1
    window_rows = {entry.key: max(0, entry.n_video_frames // SEGMENT_VIDEO_FRAMES - crop_segments) + 1
                   for entry in entries} if windowed else None
    expected = TeacherCacheSpec(teacher_fingerprint=expect_teacher or None, class_names=tuple(classes),
                                video_fps=VIDEO_FPS, segment_frames=SEGMENT_VIDEO_FRAMES,
                                window_seconds=crop_seconds if windowed else None)
    expected.check(path, cache, training_keys=[entry.key for entry in entries],
                   target_field=target_field(target, layer), window_rows=window_rows)
    return cache


def foreign_cache(path: Path, prepared: Path, teacher: Path) -> tuple[list[str], list[str]]:
    """What makes the cache at `path` another run's than the one of `prepared` and `teacher` (its teacher.pt): the
    manifest it was made for (its sha256, and each cached utterance's frame count) and its teacher (when teacher.pt
    exists); and the manifest keys whose cached frame counts differ, in manifest order."""
    problems = []
    with open_store(path) as cache:
        counts = {entry.key: (cache.length(entry.key, "frames"), entry.n_video_frames)
                  for entry in read_manifest(prepared) if entry.key in cache}
        stale = [key for key, (cached, listed) in counts.items() if cached != listed]
        recorded, digest = cache.attrs.get("manifest_sha256"), manifest_hash(prepared)
        made_by = cache.attrs.get("teacher_fingerprint")
    if recorded != digest or stale:
        first = (f"; {len(stale)} utterances have other frame counts, the first {stale[0]!r}: "
                 f"{counts[stale[0]][0]} frames in the cache, {counts[stale[0]][1]} in the manifest") if stale else ""
        problems.append(f"it was made for manifest {recorded}, this run's {prepared / MANIFEST} is {digest}{first}")
    if teacher.is_file() and made_by != (fingerprint := runs.file_sha256(teacher)):
        problems.append(f"it was made by teacher {made_by}, this run's {teacher} is teacher {fingerprint}")
    return problems, stale


def accepted_cache(path: Path, prepared: Path, teacher: Path, train: list[Entry],
                   accept_foreign: bool) -> tuple[list[Entry], dict | None]:
    """Refuse a cache that is not this run's (`foreign_cache`) unless `accept_foreign`; then returns the training
    entries without those whose cached frame counts differ, and what was accepted (None: nothing)."""
    problems, stale = foreign_cache(path, prepared, teacher)
    if not problems:
        return train, None
    if not accept_foreign:
        raise StoreError(f"{path}: not this run's teacher cache: {'; '.join(problems)}; export it again for this run "
                         "(`avl stage export-embeddings --overwrite`), or pass --accept-foreign-cache to train on it")
    stale_keys = set(stale)
    left_out = [entry.key for entry in train if entry.key in stale_keys]
    tqdm.write(f"train-student: training on a foreign cache ({'; '.join(problems)}); {len(left_out)} training "
               "utterances left out for their frame counts")
    return [entry for entry in train if entry.key not in stale_keys], {"accepted": problems, "left_out": left_out}


def checked_targets(cfg: StudentConfig, targets: list[DistilTarget], prepared: Path, classes: list[str],
                    train: list[Entry]) -> tuple[list[Entry], list[dict]]:
    """Every --distil target's cache checked as the single one is (`accepted_cache`: made for this manifest, by the
    teacher named for it; `open_checked_cache`: complete, covering every training utterance, holding the field or
    layer it reads); returns the training entries no cache leaves out and what metrics.json records of each."""
    run_dir, records = cfg.resolved_run_dir, []
    for number, target in enumerate(targets, 1):
        teacher = target.teacher or runs.teacher_checkpoint(run_dir)
        try:
            path = target.cache or find_store(runs.embeddings_dir(run_dir), cfg.dataset)
            train, foreign = accepted_cache(path, prepared, teacher, train, cfg.accept_foreign_cache)
            with open_checked_cache(path, classes, train, target.expect_teacher, target.target, cfg.crop_seconds,
                                    target.layer) as cache:
                attrs, layers = cache.attrs, cached_layers(cache)
        except StoreError as error:
            hint = ("; for a cache of another teacher, name its checkpoint: teacher=PATH in this --distil"
                    if target.teacher is None and "teacher" in str(error) else "")
            raise StoreError(f"--distil target {number}: {error}{hint}") from None
        records.append({**target.record(), "cache": str(path), "teacher": str(teacher),
                        "dim": layers[target.layer] if target.layer else int(attrs["embed_dim"]),
                        "teacher_fingerprint": attrs["teacher_fingerprint"], "teacher_arch": attrs.get("teacher_arch"),
                        "foreign_cache": foreign})
    return train, records


def resolve_crop(cfg: StudentConfig) -> StudentConfig:
    """`cfg` with the dataset's crop length when none was given (from the prepared run's dataset.json)."""
    if cfg.crop_seconds is not None:
        return cfg
    return replace(cfg, crop_seconds=dataset_crop_seconds(runs.prepare_dir(cfg.resolved_run_dir)))


@runs.one_writer(lambda cfg: locks.inside(cfg.out_dir))
def run(cfg: StudentConfig) -> Path:
    """Train the student; writes student.pt (self-contained), metrics.json, history.png, config.toml.

    Under torchrun every rank trains on its DistributedSampler share; rank 0 writes the outputs."""
    cfg = resolve_crop(cfg)  # before config.toml is written: the run records the crop it trained with
    run_dir = cfg.resolved_run_dir
    prepared = runs.prepare_dir(run_dir)
    trial_speakers_in_training = check_prepared(prepared)
    out = cfg.out_dir
    by_split = read_splits(prepared)
    classes = read_classes(prepared)
    class_index = {name: i for i, name in enumerate(classes)}
    train = by_split["train"]

    # the caches are checked before the run directory is claimed: a refused run leaves nothing behind
    cache_path, cache, fingerprint, embed_dim, foreign, checked = None, None, None, 512, None, []
    targets = cfg.distil_targets
    target_kind = METHODS[cfg.method].target_for(cfg.level, cfg.target) if cfg.lam > 0 and not targets else None
    if targets:
        train, checked = checked_targets(cfg, targets, prepared, classes, train)
        fingerprint = "+".join(dict.fromkeys(record["teacher_fingerprint"] for record in checked))
        # the student's embedding is as wide as the first target distilled from it (the paper: the teacher's)
        embed_dim = next((record["dim"] for record in checked if record["from"] == EMBEDDING), embed_dim)
        foreign = [record["foreign_cache"] for record in checked] if any(r["foreign_cache"] for r in checked) else None
        if problems := dimension_problems(targets, [record["dim"] for record in checked], cfg.ensemble, embed_dim):
            raise config_io.ConfigError(f"train-student: {'; '.join(problems)}")
    elif cfg.lam > 0:
        try:
            cache_path = cfg.cache or find_store(runs.embeddings_dir(run_dir), cfg.dataset)
        except MissingInputError:
            refuse_distillation_without_faces(prepared, train, cfg.lam)  # the likely reason: an --audio-only run
            raise
        train, foreign = accepted_cache(cache_path, prepared, runs.teacher_checkpoint(run_dir), train,
                                        cfg.accept_foreign_cache)
        cache = open_checked_cache(cache_path, classes, train, cfg.expect_teacher, target_kind, cfg.crop_seconds)
        fingerprint, embed_dim = cache.attrs["teacher_fingerprint"], int(cache.attrs["embed_dim"])
        cache.close()
    waveforms = find_store(prepared, "waveforms", "degraded audio") if cfg.degrade else None  # before claiming the run
    device, job, resume_from = start_training(cfg, out)
    spectrogram_path = find_store(prepared, "spectrograms")
    spectrograms = open_store(spectrogram_path)
    if cfg.degrade:  # every read below (training crops, validation, test, trials) hears the degraded copy
        params = SpectrogramParams(**spectrograms.attrs["spectrogram"])
        spectrograms.close()
        spectrograms = spectrogram_path = degrade_io.DegradedSpectrograms(waveforms, cfg.degrade, cfg.degrade_seed,
                                                                          params)

    spec = ModelSpec(cfg.arch, cfg.tiny, len(classes), embed_dim, cfg.sequential)
    model = build_student(spec).to(device)
    labels = [class_index[e.label] for e in train]
    if targets:
        step = MultiTargetStep(model, cfg.level, targets, [record["dim"] for record in checked], cfg.ensemble)
        dataset = MultiCrops(train, labels, spectrogram_path, [(record["cache"], target.target, target.layer)
                                                               for target, record in zip(targets, checked)],
                             cfg.crop_seconds)
        control, unused = {"kind": cfg.control, "applied": False}, False
    else:
        method = build_method(cfg.method, cfg.level, cfg.distance, cfg.temperature, embed_dim)
        step = StudentStep(model, method, cfg.lam)
        # multitask's decoder gets no gradient at λ = 0: DDP must then look for unused parameters
        unused = any(True for _ in method.parameters())
        donors, class_targets, control = (controlled_targets(cfg.control, cache_path, train, labels, len(classes),
                                                             target_kind, cfg.seed)
                                          if cfg.lam > 0 else (None, None, {"kind": cfg.control, "applied": False}))
        dataset = Crops(train, labels, spectrogram_path, None if class_targets is not None else cache_path,
                        cfg.crop_seconds, target_kind, donors, class_targets)
    step = speed_settings(step.to(device), device, cfg.channels_last, cfg.compile)
    trained_step = distributed.wrap(step, job, device, find_unused=unused)
    val = by_split["val"] or by_split["test"]
    history = fit(
        cfg, job, device, out, resume_from, step, trained_step, dataset, "student",
        evaluate=lambda: {"val_accuracy": identification(model, spectrograms, val, class_index, device, job)["top1"]},
        describe=lambda row: (f"student {cfg.run_name} epoch {row['epoch']}: loss {row['loss']:.3f} "
                              f"(CE {row['cross_entropy']:.3f}, D {row['distance']:.4f}) "
                              f"val acc {row['val_accuracy']:.3f}"),
        losses=("loss", "cross_entropy", "distance"))

    trials = read_trials(prepared)
    autocast = autocast_dtype(cfg.precision, device)
    metrics = {
        "name": cfg.run_name,
        "method": cfg.method,
        "level": cfg.level,
        "lambda": sum(target.lam for target in targets) if targets else cfg.lam,
        "distance": "+".join(dict.fromkeys(target.distance for target in targets)) if targets else cfg.distance,
        "target": "+".join(dict.fromkeys(target.target for target in targets)) if targets else target_kind,
        "temperature": cfg.temperature,
        "control": control,
        "arch": cfg.arch,
        "tiny": cfg.tiny,
        "parameters": sum(p.numel() for p in model.parameters()),
        "teacher_fingerprint": fingerprint,
        "cache": str(cache_path) if cache_path else None,
        "foreign_cache": foreign,
        "distil": {"ensemble": cfg.ensemble, "targets": checked} if targets else None,
        "identification": identification(model, spectrograms, by_split["test"], class_index, device, job),
        "verification": verification(model, spectrograms, trials, device, job),
        "trial_speakers_in_training": len(trial_speakers_in_training),
        "crop_seconds": cfg.crop_seconds,
        "degrade": {"steps": cfg.degrade, "seed": cfg.degrade_seed} if cfg.degrade else None,
        "train_seconds": sum(row["seconds"] for row in history),
        "processes": job.world_size,
        "precision": str(autocast).removeprefix("torch.") if autocast else "float32",
        "history": history,
    }
    spectrogram_params = spectrograms.attrs["spectrogram"]
    spectrograms.close()
    if not job.is_main:
        distributed.teardown(job)
        return out
    checkpoints.save_student(out / checkpoints.STUDENT_FILE, model, classes, spectrogram_params,
                             {"method": cfg.method, "level": cfg.level, "lambda": metrics["lambda"],
                              "teacher_fingerprint": fingerprint})
    finish_run(out, metrics, ("loss", "cross_entropy", "distance", "val_accuracy"), cfg.run_name)
    eer = (metrics["verification"] or {}).get("eer")
    verification_text = f", EER {eer:.3f}" if eer is not None else ""
    tqdm.write(f"train-student {cfg.run_name}: test accuracy {metrics['identification']['top1']:.3f}"
               f"{verification_text} → {out}")
    distributed.teardown(job)
    return out
