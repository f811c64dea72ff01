"""Fixtures shared by test modules: a tiny prepared run with a teacher, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline import config as config_io
from pipeline.datasets.synthetic import SynthConfig, synthesize

# 18 utterances of 1.2-3 s (about 900 video frames): the smallest corpus with several teacher groups
TINY_CORPUS = SynthConfig(n_speakers=3, n_verification_speakers=0, utterances_per_speaker=6, videos_per_speaker=2,
                          min_seconds=1.2, max_seconds=3.0, frame_size=64, n_trials=0)


@pytest.fixture(scope="session")
def one_torch_thread():
    """One intra-op thread, as the subprocesses run with OMP_NUM_THREADS=1: same kernels, same bits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, one_torch_thread) -> Path:
    """A work directory with `corpus/` (real mp4 files) and `run/` holding stage 0 and stage 1 outputs."""
    from stages import prepare, train_teacher

    work = tmp_path_factory.mktemp("tiny-run")
    root = synthesize(work / "corpus", TINY_CORPUS)
    prepare.run(config_io.build(prepare.PrepareConfig, {"root": root, "run_dir": work / "run", "num_workers": 0}))
    train_teacher.run(config_io.build(train_teacher.TeacherConfig, {
        "run_dir": work / "run", "tiny": True, "epochs": 1, "batch_size": 4, "num_workers": 0, "device": "cpu"}))
    return work
