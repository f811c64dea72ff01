"""Named intermediate layers of a model, read with forward hooks: the teacher's for `export-embeddings --layers`,
the student's for stage 3's `--distil ...,from=LAYER`.

A layer is a module name of the model (`trunk.stages.2`, `trunk.7`), as `named_modules()` gives it. Its output is
averaged over every axis after the channel axis: (B, C, H, W) → (B, C); (B, C) stays as it is.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from pipeline.config import ConfigError


def pooled(output: torch.Tensor) -> torch.Tensor:
    """(B, C, *spatial) → (B, C): the mean over the spatial axes (a global average pool), kept in float32 or wider."""
    if output.ndim < 2:
        raise ValueError(f"a layer output of shape {tuple(output.shape)} has no channel axis")
    output = output if output.dtype in (torch.float32, torch.float64) else output.float()
    return output.mean(dim=tuple(range(2, output.ndim))) if output.ndim > 2 else output


def layer_names(model: nn.Module, under: Sequence[str], depth: int = 2) -> list[str]:
    """The module names under the prefixes `under`, to `depth` dots (what an error lists as choices)."""
    return [name for name, _ in model.named_modules()
            if any(name == prefix or name.startswith(prefix + ".") for prefix in under) and name.count(".") <= depth]


def resolve_layers(model: nn.Module, names: Sequence[str], under: Sequence[str], what: str) -> dict[str, nn.Module]:
    """name → module for each of `names`, which must lie under one of the prefixes `under`; an unknown name is a
    ConfigError listing the model's layers there."""
    modules = dict(model.named_modules())
    allowed = [name for name in names if name in modules
               and any(name == prefix or name.startswith(prefix + ".") for prefix in under)]
    if unknown := [name for name in names if name not in allowed]:
        raise ConfigError(f"{what}: no layer {', '.join(map(repr, unknown))}; its layers under {list(under)} are "
                          f"{', '.join(layer_names(model, under))} (and the modules inside them)")
    return {name: modules[name] for name in names}


@contextmanager
def captured(layers: dict[str, nn.Module]) -> Iterator[dict[str, torch.Tensor]]:
    """Inside the block, each forward of a layer stores its pooled output under its name (a later forward of the
    same layer replaces it). Pooling happens in the hook, before any in-place op after the layer changes its
    output. The hooks are removed on leaving."""
    outputs: dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(module, inputs, output):
            if not isinstance(output, torch.Tensor):
                raise ConfigError(f"layer {name!r} ({type(module).__name__}) returns {type(output).__name__}, not "
                                  "one tensor; name one of its submodules")
            outputs[name] = pooled(output)
        return hook

    handles = [module.register_forward_hook(hook_for(name)) for name, module in layers.items()]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()
