"""Parameter counts, forward FLOPs and CPU time per batch of every registered model, full size next to tiny.

Times are this process's CPU time (all its threads), not wall time: on a machine that other jobs share, wall time
measures them too. With `--threads 1` on an idle machine the two agree.

`avl bench-models [--batch 32] [--threads 1] [--repeats 3]` prints a Markdown table.
Teachers read 64×64 face crops (stage 0's default); students 5 s crops (500 × 257 spectrogram rows). For the
tiny students it also times one training step (forward, backward, Adam) on the demo's batch: 16 crops of 2 s.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from pipeline.config import ConfigError
from pipeline.models.spec import ModelSpec
from pipeline.models.students import N_FREQ, STUDENTS, build_student
from pipeline.models.teachers import TEACHERS, build_teacher

NUM_CLASSES = 1251  # VoxCeleb1 identification
STUDENT_FRAMES = 500  # a 5 s crop
TRAIN_STEP_BATCH, TRAIN_STEP_FRAMES = 16, 200  # the demo's tiny students: 16 crops of 2 s


@dataclass(frozen=True)
class ModelBenchConfig:
    """Model benchmark settings."""

    batch: int = field(default=32, metadata={"help": "Inputs per forward pass."})
    threads: int = field(default=1, metadata={"help": "CPU threads torch may use."})
    repeats: int = field(default=3, metadata={
        "help": "Timed forward passes per model (the median CPU time is reported)."})

    def validate(self) -> None:
        if min(self.batch, self.threads, self.repeats) < 1:
            raise ConfigError("bench-models: batch, threads and repeats must be >= 1")


def _median_ms(run, repeats: int) -> float:
    """Median CPU time of `run()` after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        started = time.process_time()
        run()
        times.append(time.process_time() - started)
    return 1000 * statistics.median(times)


@torch.inference_mode()
def forward_ms(model, inputs: torch.Tensor, repeats: int) -> float:
    """Median CPU time of one eval-mode forward pass."""
    model.eval()
    return _median_ms(lambda: model(inputs), repeats)


def forward_gflop(model, item: torch.Tensor) -> float:
    """Forward GFLOP of one input item (torch's FLOP counter: 2 per multiply-add of convs, matmuls, LSTMs)."""
    model.eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(item[None])
    return counter.get_total_flops() / 1e9


def train_step_ms(model, repeats: int, batch: int = TRAIN_STEP_BATCH, frames: int = TRAIN_STEP_FRAMES) -> float:
    """Median CPU time of one training step of a student: forward, cross-entropy, backward, Adam."""
    model.train()
    spectrograms = torch.randn(batch, frames, N_FREQ)
    labels = torch.randint(0, model.spec.num_classes, (batch,))
    optimizer = torch.optim.Adam(model.parameters())

    def step():
        optimizer.zero_grad()
        F.cross_entropy(model(spectrograms)[1], labels).backward()
        optimizer.step()

    return _median_ms(step, repeats)


def rows(batch: int, repeats: int) -> list[tuple]:
    """(family, arch, sequential, (params, ms) full size, (params, ms) tiny, full-size GFLOP per item, tiny
    student training step ms or None) for every registered model."""
    frames = torch.randint(0, 256, (batch, 64, 64, 3), dtype=torch.uint8)
    spectrograms = torch.randn(batch, STUDENT_FRAMES, N_FREQ)
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
                gflop = forward_gflop(build(ModelSpec(arch, False, NUM_CLASSES, sequential=sequential)), inputs[0])
                step_ms = None
                if kind == "student":
                    torch.manual_seed(0)
                    step_ms = train_step_ms(build(ModelSpec(arch, True, NUM_CLASSES, sequential=sequential)), repeats)
                out.append((kind, arch, sequential, *measured, gflop, step_ms))
    return out


def run(cfg: ModelBenchConfig) -> list[tuple]:
    """Print the table; return its rows."""
    torch.set_num_threads(cfg.threads)
    print(f"batch {cfg.batch}, {cfg.threads} CPU thread(s), {NUM_CLASSES} classes; teachers per frame "
          "(sequential: + the aggregator run per frame), students on 5 s crops; GFLOP: full size, one frame or "
          f"crop; train step: tiny student, {TRAIN_STEP_BATCH} × {TRAIN_STEP_FRAMES // 100} s crops\n")
    print("| model | arch | sequential | params (full) | GFLOP (full) | CPU ms/batch (full) | params (tiny) | "
          "CPU ms/batch (tiny) | CPU ms/train step (tiny) |")
    print("|---|---|---|---|---|---|---|---|---|")
    measured = rows(cfg.batch, cfg.repeats)
    for kind, arch, sequential, (full_params, full_ms), (tiny_params, tiny_ms), gflop, step_ms in measured:
        step = "—" if step_ms is None else f"{step_ms:.0f}"
        print(f"| {kind} | {arch} | {'yes' if sequential else 'no'} | {full_params / 1e6:.2f} M | {gflop:.2f} | "
              f"{full_ms:.0f} | {tiny_params / 1e6:.3f} M | {tiny_ms:.1f} | {step} |")
    return measured
