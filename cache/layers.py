"""Intermediate teacher layers as extra fields of the teacher cache (`export-embeddings --layers`).

Each named layer's output is averaged over its spatial axes to one vector per frame, then stored as the last
embedding is: per frame, per 1 s segment (the mean of the segment's frames, Eq. 6) and at the utterance's peak
frame (the frame the teacher is most confident about, Eq. 4: the same frame as `peak`). A layer `trunk.stages.2`
is stored as the fields `layer_trunk_stages_2__frames`, `..__segments` and `..__peak` (store field names are
identifiers, so the module name's dots become underscores); the attribute `layers` maps each module name to its
dimension. A cache exported without layers records no `layers` attribute and holds exactly the fields it did
before layers existed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from cache.base import FieldSpec
from cache.schema import EMBEDDING_CHUNK_BYTES, Reader, TeacherCacheSpec

LAYER_KINDS = ("frames", "segments", "peak")  # what each layer stores, as the embedding's fields of the same names


def layer_field(layer: str, kind: str) -> str:
    """The store field holding `kind` (LAYER_KINDS) of teacher layer `layer` (a module name)."""
    if kind not in LAYER_KINDS:
        raise ValueError(f"layer field kind {kind!r} is not one of {LAYER_KINDS}")
    return f"layer_{layer.replace('.', '_')}__{kind}"


def layer_fields(layers: Mapping[str, int], dtype: str) -> list[FieldSpec]:
    """The ragged per-frame and per-segment rows and the per-utterance peak row of every layer (name → dim)."""
    fields = []
    for layer, dim in layers.items():
        rows = max(64, EMBEDDING_CHUNK_BYTES // (dim * np.dtype(dtype).itemsize))
        fields += [FieldSpec(layer_field(layer, "frames"), dtype, (dim,), ragged=True, chunk_rows=rows, layout="raw"),
                   FieldSpec(layer_field(layer, "segments"), dtype, (dim,), ragged=True, chunk_rows=rows,
                             layout="raw"),
                   FieldSpec(layer_field(layer, "peak"), dtype, (dim,), ragged=False, chunk_rows=rows, layout="raw")]
    return fields


def colliding_layers(layers: list[str]) -> list[tuple[str, str]]:
    """Pairs of layer names that would share store fields (`a.b_c` and `a_b.c` both become `a_b_c`)."""
    seen: dict[str, str] = {}
    pairs = []
    for layer in layers:
        name = layer_field(layer, "frames")
        if name in seen:
            pairs.append((seen[name], layer))
        seen.setdefault(name, layer)
    return pairs


def cached_layers(store: Reader) -> dict[str, int]:
    """The layers a teacher cache holds (module name → dimension); {} for one exported without layers."""
    return dict(store.attrs.get("layers") or {})


@dataclass(frozen=True)
class LayeredTeacherCacheSpec(TeacherCacheSpec):
    """The teacher cache with intermediate layers (`layers`: module name → dimension; None: none, and then the
    store is exactly a `TeacherCacheSpec` store)."""

    layers: dict[str, int] | None = None

    def attrs(self) -> dict[str, Any]:
        """The attributes to record; `layers` only when there are some."""
        attrs = super().attrs()
        if not self.layers:
            del attrs["layers"]
        return attrs

    def fields(self) -> list[FieldSpec]:
        return super().fields() + layer_fields(self.layers or {}, self.dtype)

    def resume_problems(self, store: Reader, part: tuple[int, int] | None = None) -> list[str]:
        """Those of the teacher cache, and other layers than this export's."""
        problems = [problem for problem in super().resume_problems(store, part)
                    if not problem.startswith("was written with layers=")]  # said below, also when this has none
        recorded, layers = cached_layers(store), dict(self.layers or {})
        same_teacher = store.attrs.get("teacher_fingerprint") == self.teacher_fingerprint  # else that is the problem
        if recorded != layers and same_teacher:
            problems.append(f"holds teacher layers {recorded or 'none'}, this export writes {layers or 'none'}")
        return problems
