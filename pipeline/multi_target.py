"""Stage 3 with several teacher targets (`train-student --distil SPEC ...`): caches of several teachers, or several
layers of one, each with its own weight λ_i, distance D_i and learned projection P_i from a student representation
into that target's dimension.

Eq. 8's routing, generalised: the head reads the student's embedding through a gradient scale of (1 − Σλ_i), so

    ∂/∂head = ∇CE                     ∂/∂(student below the head) = (1 − Σλ_i)∇CE + Σλ_i∇D_i

with Σλ_i ≤ 1. A target distilled from a student layer below the embedding adds its λ_i∇D_i to that layer and the
ones below it only. The ensemble rule: `sum` (Σλ_i D_i(P_i(r_i), t_i)) or `mean-target` (one projection P, and
Σλ_i · D(P(r), Σ_i (λ_i/Σλ_j) t_i): the λ-weighted mean of targets of one dimension).

A SPEC is comma-separated key=value pairs (`SPEC_KEYS`), e.g.
`cache=runs/x/embeddings/voxceleb.zarr,layer=trunk.stages.2,target=segments,lam=0.3,distance=mse,from=embedding`.
A target is a cache, a field kind and optionally a teacher layer, so a cache of any teacher whose rows lie on the
1 s grid (a video teacher's, or an audio teacher's run on clean audio) is one more target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import ConfigError
from pipeline.distill import Losses, embedding_distance, scale_grad
from pipeline.layers import captured, resolve_layers

ENSEMBLES = {"sum": "Σλ_i D_i, one projection per target",
             "mean-target": "Σλ · D to the λ-weighted mean of the targets (one dimension, one projection)"}
PROJECTIONS = ("linear", "identity")
DISTANCES = ("mse", "cosine")
EMBEDDING = "embedding"  # `from=embedding`: the representation the head reads (e_s; per segment at the EM level)
TARGET_KINDS = ("crop-peak", "utterance-peak", "segments", "aggregator")  # pipeline/data.py TARGET_READERS
LAYER_TARGET_KINDS = ("crop-peak", "utterance-peak", "segments")  # what a cached teacher layer holds
PER_SEGMENT_KINDS = ("segments",)  # (S, D) per crop; the others one (D,) row
STUDENT_LAYERS_UNDER = ("trunk", "embedding")  # the encoder: every part of it lies below the routed head
SPEC_KEYS = {
    "cache": "the teacher cache (default: this run's)",
    "teacher": "the checkpoint that made it (default: this run's teacher/teacher.pt)",
    "expect_teacher": "refuse the cache unless made by this fingerprint (12-64 hex digits)",
    "layer": "a teacher layer the cache holds (export-embeddings --layers); default: the last embedding",
    "target": f"what is read per crop: {', '.join(TARGET_KINDS)} (default: the --level's)",
    "lam": "its weight λ_i in [0, 1] (also `lambda`); required",
    "distance": "mse or cosine (default mse)",
    "from": "the student representation: `embedding` (default) or a student layer (trunk.*, embedding.*)",
    "projection": "linear (default) or identity (when the dimensions match)",
}


@dataclass(frozen=True)
class DistilTarget:
    """One parsed --distil SPEC; `target` is the resolved kind, `source` the student representation (`from`)."""

    lam: float
    target: str
    cache: Path | None = None
    teacher: Path | None = None
    expect_teacher: str | None = None
    layer: str | None = None
    distance: str = "mse"
    source: str = EMBEDDING
    projection: str = "linear"

    @property
    def per_segment(self) -> bool:
        return self.target in PER_SEGMENT_KINDS

    def record(self) -> dict:
        """As metrics.json records it, keyed as the SPEC is (`from`, not `source`)."""
        return {"from" if key == "source" else key: str(value) if isinstance(value, Path) else value
                for key, value in asdict(self).items()}


def parse_distil(text: str, default_target: str) -> DistilTarget:
    """One SPEC (`key=value,...`) → DistilTarget; an unknown key, a missing λ or a bad value is a ConfigError."""
    values: dict[str, str] = {}
    for pair in (part.strip() for part in text.split(",")):
        key, equals, value = pair.partition("=")
        key = {"lambda": "lam"}.get(key.strip(), key.strip())
        if not equals or not value.strip():
            raise ConfigError(f"--distil {text!r}: {pair!r} is not key=value; keys: {', '.join(SPEC_KEYS)}")
        if key not in SPEC_KEYS:
            raise ConfigError(f"--distil {text!r}: unknown key {key!r}; keys: {', '.join(SPEC_KEYS)} (see "
                              "`avl stage train-student --help`)")
        if key in values:
            raise ConfigError(f"--distil {text!r}: {key!r} given twice")
        values[key] = value.strip()
    if "lam" not in values:
        raise ConfigError(f"--distil {text!r}: give its weight, lam=λ (Σλ over the targets at most 1)")
    try:
        lam = float(values["lam"])
    except ValueError:
        raise ConfigError(f"--distil {text!r}: lam must be a number in [0, 1], got {values['lam']!r}") from None
    target = DistilTarget(
        lam=lam, target=values.get("target", default_target), cache=_path(values.get("cache")),
        teacher=_path(values.get("teacher")), expect_teacher=values.get("expect_teacher"), layer=values.get("layer"),
        distance=values.get("distance", "mse"), source=values.get("from", EMBEDDING),
        projection=values.get("projection", "linear"))
    checks = [
        (not 0.0 <= lam <= 1.0, f"lam must lie in [0, 1], got {lam}"),
        (target.target not in TARGET_KINDS, f"target must be one of {TARGET_KINDS}, got {target.target!r}"),
        (bool(target.layer) and target.target not in LAYER_TARGET_KINDS,
         f"a teacher layer holds {LAYER_TARGET_KINDS} rows, not {target.target!r}"),
        (target.distance not in DISTANCES, f"distance must be one of {DISTANCES}, got {target.distance!r}"),
        (target.projection not in PROJECTIONS, f"projection must be one of {PROJECTIONS}, got {target.projection!r}"),
        (target.expect_teacher is not None and not _is_fingerprint(target.expect_teacher),
         "expect_teacher must be 12-64 lowercase hex digits of a teacher fingerprint"),
    ]
    problem = next((message for failed, message in checks if failed), None)
    if problem:
        raise ConfigError(f"--distil {text!r}: {problem}")
    return target


def parse_distil_targets(texts: Sequence[str], level: str, default_target: str, ensemble: str) -> list[DistilTarget]:
    """Every --distil SPEC, checked together: Σλ_i ≤ 1, per-segment targets only where the student has per-segment
    representations, and what `mean-target` needs."""
    if ensemble not in ENSEMBLES:
        raise ConfigError(f"train-student: ensemble must be one of {list(ENSEMBLES)}, got {ensemble!r}")
    targets = [parse_distil(text, default_target) for text in texts]
    total = sum(target.lam for target in targets)
    if total > 1.0 + 1e-9:
        raise ConfigError(f"train-student: the --distil weights sum to {total:g} > 1 "
                          f"({' + '.join(f'{t.lam:g}' for t in targets)}); the parts below the head see "
                          "(1 − Σλ_i)∇CE + Σλ_i∇D_i, so Σλ_i must not exceed 1")
    for text, target in zip(texts, targets):
        # per segment: the EM level's segment embeddings, or any student layer when the student encodes segments
        segments_here = level == "encoder" or (level == "aggregator" and target.source != EMBEDDING)
        if target.per_segment and not segments_here:
            raise ConfigError(f"--distil {text!r}: {target.target} targets are one row per 1 s segment and need "
                              "per-segment student representations: --level encoder, or --level aggregator with "
                              "from=<a student layer>")
    if ensemble == "mean-target" and len({(t.target, t.source, t.distance, t.projection) for t in targets}) > 1:
        raise ConfigError("train-student: --ensemble mean-target distils one mean of the targets, so every --distil "
                          "needs the same target kind, from, distance and projection; use --ensemble sum")
    return targets


def dimension_problems(targets: Sequence[DistilTarget], dims: Sequence[int], ensemble: str,
                       embed_dim: int) -> list[str]:
    """What the target dimensions rule out before a student exists: mean-target over several dimensions, and an
    identity projection from the student's embedding (`embed_dim` wide) into a target of another width."""
    problems = []
    if ensemble == "mean-target" and len(set(dims)) > 1:
        problems.append(f"--ensemble mean-target needs targets of one dimension, got {list(dims)}; use --ensemble sum")
    problems += [f"--distil target {number}: projection=identity needs from=embedding ({embed_dim}-d) and the target "
                 f"({dim}-d) of one dimension; use projection=linear"
                 for number, (target, dim) in enumerate(zip(targets, dims), 1)
                 if target.projection == "identity" and target.source == EMBEDDING and dim != embed_dim]
    return problems


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _is_fingerprint(text: str) -> bool:
    return 12 <= len(text) <= 64 and all(c in "0123456789abcdef" for c in text)


class MultiTargetStep(nn.Module):
    """A batch's CE through the routed head and the distances to every target; the student and the projections
    are its children (the projections are dropped after training, like multitask's decoder)."""

    def __init__(self, student: nn.Module, level: str, targets: Sequence[DistilTarget], target_dims: Sequence[int],
                 ensemble: str = "sum"):
        super().__init__()
        total = sum(target.lam for target in targets)
        if not targets or total > 1.0 + 1e-9 or any(not 0.0 <= target.lam <= 1.0 for target in targets):
            raise ValueError(f"several targets need λ_i in [0, 1] with Σλ_i <= 1, got {[t.lam for t in targets]}")
        if problems := dimension_problems(targets, target_dims, ensemble, student.spec.embed_dim):
            raise ConfigError(f"train-student: {'; '.join(problems)}")
        self.student, self.level, self.ensemble, self.total_lam = student, level, ensemble, total
        self.targets = list(targets)
        self.layers = resolve_layers(student, sorted({t.source for t in targets if t.source != EMBEDDING}),
                                     STUDENT_LAYERS_UNDER, "train-student --distil from=")
        source_dims = self._source_dims()
        projected = targets[:1] if ensemble == "mean-target" else targets
        self.projections = nn.ModuleList(
            self._projection(target, source_dims[target.source], dim) for target, dim in zip(projected, target_dims))

    def _source_dims(self) -> dict[str, int]:
        """The width of every student representation a target reads, from one 1 s probe (batch statistics kept)."""
        parameter = next(self.student.parameters())
        dims = {EMBEDDING: self.student.spec.embed_dim}
        if self.layers:
            was_training = self.student.training
            probe = torch.zeros(2, 100, self.student.n_freq, dtype=parameter.dtype, device=parameter.device)
            with torch.no_grad(), captured(self.layers) as outputs:
                self.student.eval()
                self.student.encode(probe)
            self.student.train(was_training)
            dims.update({name: int(output.shape[1]) for name, output in outputs.items()})
        return dims

    def _projection(self, target: DistilTarget, source_dim: int, dim: int) -> nn.Module:
        if target.projection == "identity":
            if source_dim != dim:
                raise ConfigError(f"train-student --distil: projection=identity needs from={target.source} "
                                  f"({source_dim}-d) and the target ({dim}-d) of one dimension; use projection=linear")
            return nn.Identity()
        parameter = next(self.student.parameters())
        return nn.Linear(source_dim, dim, dtype=parameter.dtype, device=parameter.device)

    def forward(self, spectrogram: torch.Tensor, labels: torch.Tensor, *targets: torch.Tensor) -> Losses:
        student, batch = self.student, len(spectrogram)
        with captured(self.layers) as outputs:
            if self.level == "encoder":  # Eq. 12: the aggregator, like the head, sees ∇CE only
                embedding = student.encode_segments(spectrogram)  # (B, S, D)
                logits = student.head(student.aggregator(scale_grad(embedding, 1.0 - self.total_lam)))
            else:  # Eq. 8 (e_s) or Eq. 13 (a_s: the aggregator lies below the routing)
                embedding = student.embed(spectrogram)  # (B, D)
                logits = student.head(scale_grad(embedding, 1.0 - self.total_lam))
        cross_entropy = F.cross_entropy(logits, labels)
        representations = [self._representation(target, embedding, outputs, batch) for target in self.targets]
        if self.ensemble == "mean-target":
            weights = [target.lam / self.total_lam if self.total_lam > 0 else 1.0 / len(targets)
                       for target in self.targets]
            mean = sum(weight * target.to(embedding.dtype) for weight, target in zip(weights, targets))
            distance = embedding_distance(self.projections[0](representations[0]), mean, self.targets[0].distance)
            return Losses(cross_entropy + self.total_lam * distance, cross_entropy, distance, logits)
        distances = [embedding_distance(projection(representation), target, spec.distance)
                     for projection, representation, target, spec
                     in zip(self.projections, representations, targets, self.targets)]
        weighted = sum(spec.lam * distance for spec, distance in zip(self.targets, distances))
        # logged: the λ-weighted mean distance (the plain mean when every λ_i is 0)
        logged = weighted / self.total_lam if self.total_lam > 0 else torch.stack(distances).mean()
        return Losses(cross_entropy + weighted, cross_entropy, logged.detach(), logits)

    @staticmethod
    def _representation(target: DistilTarget, embedding: torch.Tensor, outputs: dict[str, torch.Tensor],
                        batch: int) -> torch.Tensor:
        """(B, C) per crop or (B, S, C) per segment: a per-segment forward's rows regrouped by crop; per-segment
        rows averaged when the target is one row per crop."""
        representation = embedding if target.source == EMBEDDING else outputs[target.source]
        if representation.ndim == 2 and len(representation) != batch:  # the encoder ran on each segment
            representation = representation.view(batch, -1, representation.shape[-1])
        if representation.ndim == 3 and not target.per_segment:
            representation = representation.mean(dim=1)
        elif representation.ndim == 2 and target.per_segment:  # one segment per crop: (B, C) → (B, 1, C)
            representation = representation[:, None]
        return representation
