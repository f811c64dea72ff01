"""The fields of the stores the stages write: spectrogram shards, face-crop frames, the teacher cache.

Chunk sizes aim at 128-512 KB: a training batch reads a few rows of many utterances and a read
decompresses whole chunks, so small chunks keep random reads cheap, while the chunk count (and with
zarr's 16-chunk shards, the file count) stays bounded.
"""

from __future__ import annotations

import numpy as np

from cache.store import FieldSpec

EMBEDDING_CHUNK_BYTES = 256 << 10


def spectrogram_fields(n_freq: int) -> list[FieldSpec]:
    """Stage 0: (ΣF, n_freq) float16 spectrogram rows; 512 rows of 257 bins is a 257 KB chunk."""
    return [FieldSpec("spectrogram", "float16", (n_freq,), ragged=True, chunk_rows=512)]


def face_fields(face_size: int) -> list[FieldSpec]:
    """Stage 0: (ΣT, S, S, 3) uint8 face crops; 32 rows of 64×64×3 is a 384 KB chunk."""
    return [FieldSpec("frames", "uint8", (face_size, face_size, 3), ragged=True, chunk_rows=32)]


def cache_fields(embed_dim: int, num_classes: int, dtype: str, sequential: bool = False) -> list[FieldSpec]:
    """Stage 2 (DESIGN.md): ragged per-frame and per-segment rows, per-utterance rows; a sequential teacher
    adds ragged per-window rows (window = training crop, stride 1 segment): `aggregator` and `window_soft`."""
    embedding_rows = max(64, EMBEDDING_CHUNK_BYTES // (embed_dim * np.dtype(dtype).itemsize))  # 256 at 512-d fp16
    window_fields = [
        FieldSpec("aggregator", dtype, (embed_dim,), ragged=True, chunk_rows=embedding_rows),
        FieldSpec("window_soft", "float32", (num_classes,), ragged=True,
                  chunk_rows=max(64, EMBEDDING_CHUNK_BYTES // (num_classes * 4))),
    ]
    return [
        FieldSpec("frames", dtype, (embed_dim,), ragged=True, chunk_rows=embedding_rows),
        FieldSpec("frame_prob", "float32", (), ragged=True, chunk_rows=4096),
        FieldSpec("frame_pred", "int32", (), ragged=True, chunk_rows=4096),
        FieldSpec("segments", dtype, (embed_dim,), ragged=True, chunk_rows=embedding_rows),
        FieldSpec("peak", dtype, (embed_dim,), ragged=False, chunk_rows=embedding_rows),
        FieldSpec("soft", "float32", (num_classes,), ragged=False, chunk_rows=256),
    ] + (window_fields if sequential else [])
