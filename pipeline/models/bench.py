"""Parameter counts and CPU forward time per batch of every registered model, full size next to tiny.

`avl bench-models [--batch 32] [--threads 1] [--repeats 3]` prints a Markdown table.
Teachers read 64×64 face crops (stage 0's default); students 5 s crops (500 × 257 spectrogram rows).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch

from pipeline.config import ConfigError
from pipeline.models.spec import ModelSpec
from pipeline.models.students import STUDENTS, build_student
from pipeline.models.teachers import TEACHERS, build_teacher

NUM_CLASSES = 1251  # VoxCeleb1 identification


@dataclass(frozen=True)
class ModelBenchConfig:
    """Model benchmark settings."""

    batch: int = field(default=32, metadata={"help": "Inputs per forward pass."})
    threads: int = field(default=1, metadata={"help": "CPU threads torch may use."})
    repeats: int = field(default=3, metadata={"help": "Timed forward passes per model (the median is reported)."})

    def validate(self) -> None:
        if min(self.batch, self.threads, self.repeats) < 1:
            raise ConfigError("bench-models: batch, threads and repeats must be >= 1")


@torch.inference_mode()
def forward_ms(model, inputs: torch.Tensor, repeats: int) -> float:
    """Median wall time of one eval-mode forward pass, after one warm-up pass."""
    model.eval()
    model(inputs)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        model(inputs)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def rows(batch: int, repeats: int) -> list[tuple]:
    """(family, arch, sequential, (params, ms) full size, (params, ms) tiny) for every registered model."""
    frames = torch.randint(0, 256, (batch, 64, 64, 3), dtype=torch.uint8)
    spectrograms = torch.randn(batch, 500, 257)
    out = []
    for kind, registry, build, inputs in (
        ("teacher", TEACHERS, build_teacher, frames),
        ("student", STUDENTS, build_student, spectrograms),
    ):
        for arch in sorted(registry):
            for sequential in (False, True):
                measured = []
                for tiny in (False, True):
                    torch.manual_seed(0)
                    model = build(ModelSpec(arch, tiny, NUM_CLASSES, sequential=sequential))
                    measured.append((sum(p.numel() for p in model.parameters()), forward_ms(model, inputs, repeats)))
                out.append((kind, arch, sequential, *measured))
    return out


def run(cfg: ModelBenchConfig) -> list[tuple]:
    """Print the table; return its rows."""
    torch.set_num_threads(cfg.threads)
    print(f"batch {cfg.batch}, {cfg.threads} CPU thread(s), {NUM_CLASSES} classes; teachers per frame "
          "(sequential: + the aggregator run per frame), students on 5 s crops\n")
    print("| model | arch | sequential | params (full) | ms/batch (full) | params (tiny) | ms/batch (tiny) |")
    print("|---|---|---|---|---|---|---|")
    measured = rows(cfg.batch, cfg.repeats)
    for kind, arch, sequential, (full_params, full_ms), (tiny_params, tiny_ms) in measured:
        print(f"| {kind} | {arch} | {'yes' if sequential else 'no'} | {full_params / 1e6:.2f} M | {full_ms:.0f} | "
              f"{tiny_params / 1e6:.3f} M | {tiny_ms:.1f} |")
    return measured
