"""What every model family shares: the spec a checkpoint records, and a registry entry's trunks by size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a teacher or a student from its checkpoint."""

    arch: str
    tiny: bool
    num_classes: int
    embed_dim: int = 512
    sequential: bool = False


@dataclass(frozen=True)
class Trunks:
    """What differs between the architectures of a family: the trunk at full size and in the small
    variant that trains on a CPU (trunk specs have `out_channels` and `build()`)."""

    full: Any
    tiny: Any


def trunk_for(registry: dict[str, Trunks], spec: ModelSpec, family: str) -> Any:
    """The trunk spec `spec` asks for; an unknown architecture names the registered ones."""
    if spec.arch not in registry:
        raise ValueError(f"unknown {family} architecture {spec.arch!r}; registered: {sorted(registry)}")
    trunks = registry[spec.arch]
    return trunks.tiny if spec.tiny else trunks.full
