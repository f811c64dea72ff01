"""`avl embed`, `avl predict`, `avl verify`: a saved student on audio or video files (audio track only).

Only the student checkpoint is read: no run directory, teacher, cache or video decoding.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cache.store import FieldSpec, create_store
from pipeline import checkpoints, inference, runs
from pipeline import config as config_io
from pipeline import metrics as metric_fns
from pipeline.errors import MissingInputError, RunExistsError

EMBEDDING_FORMATS = {".npy": "npy", ".zarr": "zarr", ".h5": "hdf5"}
# the CLI help of the fields every inference command shares
MODEL_ARGUMENT = {"help": "A student checkpoint (student.pt) or the students/<name>/ folder holding it.", "argument": True}
FILES_ARGUMENT = {"help": "Audio or video files (wav, mp4, m4a, ...); only the audio track is used.", "argument": True}
DEVICE_HELP = {"help": "cpu, cuda, cuda:N or auto."}
OVERWRITE_HELP = {"help": "Replace the output if it exists."}


def _check_files(files: tuple[Path, ...], command: str) -> None:
    if not files:
        raise config_io.ConfigError(f"{command}: give at least one audio or video file")
    seen = set()
    for path in files:
        if path in seen:
            raise config_io.ConfigError(f"{command}: {path} is given twice")
        seen.add(path)
        if not path.is_file():
            raise MissingInputError(f"{path}: no such file")


def _claim(path: Path, overwrite: bool) -> None:
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise RunExistsError(f"{path}: already exists; pass --overwrite to replace it")


@dataclass(frozen=True)
class EmbedConfig:
    """`avl embed` settings."""

    model: Path = field(metadata=MODEL_ARGUMENT)
    files: tuple[Path, ...] = field(metadata=FILES_ARGUMENT)
    out: Path = field(metadata={
        "help": "Output: .npy (plus <stem>.keys.txt naming each row's file), .zarr or .h5 (a ragged store, one row "
                "per file)."})
    device: str = field(default="cpu", metadata=DEVICE_HELP)
    overwrite: bool = field(default=False, metadata=OVERWRITE_HELP)

    def validate(self) -> None:
        if self.out.suffix not in EMBEDDING_FORMATS:
            raise config_io.ConfigError(f"embed: --out must end in one of {sorted(EMBEDDING_FORMATS)}, got {self.out}")


def keys_path(npy_path: Path) -> Path:
    """The text file listing, one per line, the file each row of an embeddings .npy came from."""
    return npy_path.with_suffix(".keys.txt")


def embed(cfg: EmbedConfig) -> Path:
    """Student embeddings (full-length, one row per file) written as .npy + keys, or as a store."""
    _check_files(cfg.files, "embed")
    out_format = EMBEDDING_FORMATS[cfg.out.suffix]
    _claim(cfg.out, cfg.overwrite)
    student = checkpoints.load_student(cfg.model, runs.resolve_device(cfg.device))
    keys = [str(path) for path in cfg.files]
    rows = [embedding for _, embedding, _ in
            tqdm(inference.run_files(student, cfg.files), total=len(keys), desc="embed", unit="file")]
    embeddings = np.stack(rows).astype(np.float32)  # (N, D)
    if out_format == "npy":
        cfg.out.parent.mkdir(parents=True, exist_ok=True)
        np.save(cfg.out, embeddings)
        keys_path(cfg.out).write_text("".join(f"{key}\n" for key in keys))
        written = f"{cfg.out} and {keys_path(cfg.out)}"
    else:
        attrs = {"kind": "student-embeddings", "student": student.info, "embed_dim": student.embed_dim,
                 "spectrogram": student.spectrogram_params.to_dict()}
        fields = [FieldSpec("embedding", "float32", (student.embed_dim,), ragged=False, chunk_rows=256)]
        with create_store(cfg.out, fields, attrs, backend=out_format, overwrite=cfg.overwrite) as writer:
            for key, embedding in zip(keys, embeddings):
                writer.write(key, {"embedding": embedding})
            writer.mark_complete()
        written = str(cfg.out)
    tqdm.write(f"embed: {len(keys)} embeddings of size {student.embed_dim} → {written}")
    return cfg.out


@dataclass(frozen=True)
class PredictConfig:
    """`avl predict` settings."""

    model: Path = field(metadata=MODEL_ARGUMENT)
    files: tuple[Path, ...] = field(metadata=FILES_ARGUMENT)
    top_k: int = field(default=5, metadata={"help": "Classes listed per file."})
    out: Path | None = field(default=None, metadata={
        "help": "Also write every file's prediction and top-k probabilities as JSON here."})
    all_probabilities: bool = field(default=False, metadata={"help": "Put every class's probability in the JSON."})
    device: str = field(default="cpu", metadata=DEVICE_HELP)
    overwrite: bool = field(default=False, metadata=OVERWRITE_HELP)

    def validate(self) -> None:
        if self.top_k < 1:
            raise config_io.ConfigError(f"predict: top_k must be >= 1, got {self.top_k}")


def prediction_table(rows: list[dict]) -> str:
    """Plain-text table: file, predicted class, its probability, the runners-up."""
    width = max(len("file"), *(len(row["file"]) for row in rows))
    label_width = max(len("class"), *(len(row["class"]) for row in rows))
    lines = [f"{'file':<{width}}  {'class':<{label_width}}  {'prob':>6}  runners-up"]
    for row in rows:
        others = ", ".join(f"{c['class']} {c['probability']:.3f}" for c in row["top_k"][1:])
        lines.append(f"{row['file']:<{width}}  {row['class']:<{label_width}}  {row['probability']:6.3f}  {others}")
    return "\n".join(lines)


def predict(cfg: PredictConfig) -> list[dict]:
    """Class and probabilities of every file; prints a table, writes JSON when --out is given."""
    _check_files(cfg.files, "predict")
    if cfg.out is not None:
        _claim(cfg.out, cfg.overwrite)
    student = checkpoints.load_student(cfg.model, runs.resolve_device(cfg.device))
    top_k = min(cfg.top_k, len(student.class_names))
    rows = []
    for path, _, logits in tqdm(inference.run_files(student, cfg.files), total=len(cfg.files), desc="predict",
                                unit="file", leave=False):
        ranked = inference.predictions(student, logits, top_k)[0]
        row = {"file": str(path), "class": ranked[0][0], "probability": ranked[0][1],
               "top_k": [{"class": name, "probability": p} for name, p in ranked]}
        if cfg.all_probabilities:
            row["probabilities"] = dict(zip(student.class_names, inference.softmax(logits).tolist()))
        rows.append(row)
    tqdm.write(prediction_table(rows))
    if cfg.out is not None:
        runs.write_json(cfg.out, {"student": student.info, "class_names": student.class_names, "predictions": rows})
        tqdm.write(f"predict: {len(rows)} predictions → {cfg.out}")
    return rows


@dataclass(frozen=True)
class VerifyConfig:
    """`avl verify` settings."""

    model: Path = field(metadata=MODEL_ARGUMENT)
    trials: Path = field(metadata={
        "help": "Trial list in veri_test.txt format: '<1|0> <enrol path> <test path>' per line.", "argument": True})
    root: Path | None = field(default=None, metadata={
        "help": "Folder the trial paths are relative to (default: the list's folder)."})
    out: Path | None = field(default=None, metadata={
        "help": "Scores TSV (default: <trials stem>.scores.tsv in the current directory); a .json summary goes "
                "beside it."})
    skip_missing: bool = field(default=False, metadata={
        "help": "Score only the trials whose two files exist, and say how many were left out."})
    p_target: float = field(default=0.01, metadata={"help": "Target prior of minDCF."})
    device: str = field(default="cpu", metadata=DEVICE_HELP)
    overwrite: bool = field(default=False, metadata=OVERWRITE_HELP)

    def validate(self) -> None:
        if not 0.0 < self.p_target < 1.0:
            raise config_io.ConfigError(f"verify: p_target must lie in (0, 1), got {self.p_target}")


def verify(cfg: VerifyConfig) -> Path:
    """Cosine scores of a trial list → TSV (score, label, enrol, test) and a JSON summary with EER and minDCF."""
    root = cfg.root if cfg.root is not None else cfg.trials.parent
    out = cfg.out if cfg.out is not None else Path(f"{cfg.trials.stem}.scores.tsv")
    summary_path = out.with_suffix(".json")
    _claim(out, cfg.overwrite)
    trials = inference.read_file_trials(cfg.trials)
    missing = sorted({name for t in trials for name in (t.enrol, t.test) if not (root / name).is_file()})
    if missing and not cfg.skip_missing:
        raise MissingInputError(
            f"{root}: {len(missing)} files of the trial list are missing, e.g. {missing[:3]}; "
            "check --root, or pass --skip-missing to score only the trials whose files are present")
    absent = set(missing)
    scored = [t for t in trials if t.enrol not in absent and t.test not in absent]
    if not scored:
        raise MissingInputError(f"{root}: no trial of {cfg.trials} has both files present")
    student = checkpoints.load_student(cfg.model, runs.resolve_device(cfg.device))
    scores = inference.score_trials(student, scored, root)
    labels = np.array([t.label for t in scored])

    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(("score", "label", "enrol", "test"))
        writer.writerows((f"{score:.6f}", t.label, t.enrol, t.test) for score, t in zip(scores, scored))
    summary = metric_fns.verification_metrics(scores, labels)
    if summary["eer"] is not None:
        summary["min_dcf"] = metric_fns.min_dcf(scores, labels, p_target=cfg.p_target)
    summary.update(p_target=cfg.p_target, trials_in_list=len(trials), trials_skipped=len(trials) - len(scored),
                   missing_files=len(missing), student=student.info, trial_list=str(cfg.trials), root=str(root))
    runs.write_json(summary_path, summary)

    skipped = f" ({summary['trials_skipped']} skipped: a file is missing)" if summary["trials_skipped"] else ""
    tqdm.write(f"verify: {len(scored)} trials scored{skipped} → {out}")
    if summary["eer"] is None:
        tqdm.write(f"EER and minDCF are undefined: the scored trials hold {summary['targets']} target and "
                   f"{summary['nontargets']} non-target trials (both kinds are needed)")
    else:
        tqdm.write(f"EER {100 * summary['eer']:.2f}%  minDCF(p_target={cfg.p_target:g}) {summary['min_dcf']:.4f}")
    return out
