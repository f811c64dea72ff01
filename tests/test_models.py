"""Every registered model: forward shapes, no NaNs, and a backward pass that reaches every parameter."""

import pytest
import torch

from pipeline.models.students import STUDENTS, StudentSpec, build_student
from pipeline.models.teachers import TEACHERS, TeacherSpec, build_teacher


def _check_backward(model, loss):
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no finite gradient for {missing}"


@pytest.mark.parametrize("arch", sorted(TEACHERS))
def test_tiny_teacher(arch):
    model = build_teacher(TeacherSpec(arch, tiny=True, num_classes=5, embed_dim=32))
    frames = torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8)
    embedding, logits = model(frames)
    assert embedding.shape == (4, 32) and logits.shape == (4, 5)
    assert torch.isfinite(logits).all()
    _check_backward(model, logits.logsumexp(1).mean() + embedding.pow(2).mean())


@pytest.mark.parametrize("arch", sorted(STUDENTS))
def test_tiny_student_any_length(arch):
    model = build_student(StudentSpec(arch, tiny=True, num_classes=5, embed_dim=32))
    for n_frames in (100, 237, 500):
        embedding, logits = model(torch.randn(2, n_frames, 257))
        assert embedding.shape == (2, 32) and logits.shape == (2, 5)
        assert torch.isfinite(logits).all()
    _check_backward(model, logits.logsumexp(1).mean() + embedding.pow(2).mean())


@pytest.mark.parametrize("arch", sorted(TEACHERS))
def test_full_size_teacher_builds(arch):
    model = build_teacher(TeacherSpec(arch, tiny=False, num_classes=10))
    assert model.embedding.out_features == 512
    assert 20e6 < sum(p.numel() for p in model.parameters()) < 25e6  # ResNet34 trunk ≈ 21 M


def test_unknown_architecture_names_the_registered_ones():
    with pytest.raises(ValueError, match="registered"):
        build_student(StudentSpec("nope", tiny=True, num_classes=2))
