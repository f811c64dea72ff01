"""Parameter counts and CPU forward time per batch of every registered model, full size next to tiny.

`python -m pipeline.models.bench [--batch 32] [--threads 1] [--repeats 3]` prints a Markdown table.
Teachers read 64×64 face crops (stage 0's default); students 5 s crops (500 × 257 spectrogram rows).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pipeline.models.students import STUDENTS, StudentSpec, build_student
from pipeline.models.teachers import TEACHERS, TeacherSpec, build_teacher

NUM_CLASSES = 1251  # VoxCeleb1 identification


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
    frames = torch.randint(0, 256, (batch, 64, 64, 3), dtype=torch.uint8)
    spectrograms = torch.randn(batch, 500, 257)
    out = []
    for kind, registry, build, spec_type, inputs in (
        ("teacher", TEACHERS, build_teacher, TeacherSpec, frames),
        ("student", STUDENTS, build_student, StudentSpec, spectrograms),
    ):
        for arch in sorted(registry):
            for sequential in (False, True):
                measured = []
                for tiny in (False, True):
                    torch.manual_seed(0)
                    model = build(spec_type(arch, tiny, NUM_CLASSES, sequential=sequential))
                    measured.append((sum(p.numel() for p in model.parameters()), forward_ms(model, inputs, repeats)))
                out.append((kind, arch, sequential, *measured))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"batch {args.batch}, {args.threads} CPU thread(s), {NUM_CLASSES} classes; teachers per frame "
          "(sequential: + the aggregator run per frame), students on 5 s crops\n")
    print("| model | arch | sequential | params (full) | ms/batch (full) | params (tiny) | ms/batch (tiny) |")
    print("|---|---|---|---|---|---|---|")
    for kind, arch, sequential, (full_params, full_ms), (tiny_params, tiny_ms) in rows(args.batch, args.repeats):
        print(f"| {kind} | {arch} | {'yes' if sequential else 'no'} | {full_params / 1e6:.2f} M | {full_ms:.0f} | "
              f"{tiny_params / 1e6:.3f} M | {tiny_ms:.1f} |")


if __name__ == "__main__":
    main()
