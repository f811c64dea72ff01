"""Every registered model, non-sequential and sequential: forward shapes, no NaNs, and a backward pass
that reaches every parameter."""

import pytest
import torch

from pipeline.models.aggregator import Aggregator
from pipeline.models.spec import ModelSpec
from pipeline.models.students import STUDENTS, build_student
from pipeline.models.teachers import TEACHERS, build_teacher, load_initial_weights


def _check_backward(model, loss):
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no finite gradient for {missing}"


@pytest.mark.parametrize("sequential", [False, True], ids=["frames", "sequential"])
@pytest.mark.parametrize("arch", sorted(TEACHERS))
def test_tiny_teacher(arch, sequential):
    torch.manual_seed(0)
    model = build_teacher(ModelSpec(arch, tiny=True, num_classes=5, embed_dim=32, sequential=sequential))
    frames = torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8)
    embedding, logits = model(frames)
    assert embedding.shape == (4, 32) and logits.shape == (4, 5)
    assert torch.isfinite(logits).all()
    loss = logits.logsumexp(1).mean() + embedding.pow(2).mean()
    if sequential:  # (B, S, k, H, W, 3): 2 windows of 3 segments, 2 frames each
        aggregate, window_logits = model.forward_window(torch.randint(0, 256, (2, 3, 2, 64, 64, 3), dtype=torch.uint8))
        assert aggregate.shape == (2, 32) and window_logits.shape == (2, 5)
        assert torch.isfinite(window_logits).all()
        loss = loss + window_logits.logsumexp(1).mean() + aggregate.pow(2).mean()
    _check_backward(model, loss)


@pytest.mark.parametrize("sequential", [False, True], ids=["non-sequential", "sequential"])
@pytest.mark.parametrize("arch", sorted(STUDENTS))
def test_tiny_student_any_length(arch, sequential):
    torch.manual_seed(0)
    model = build_student(ModelSpec(arch, tiny=True, num_classes=5, embed_dim=32, sequential=sequential))
    for n_frames in (100, 237, 500):
        embedding, logits = model(torch.randn(2, n_frames, 257))
        assert embedding.shape == (2, 32) and logits.shape == (2, 5)
        assert torch.isfinite(logits).all()
    if sequential:
        assert model.encode_segments(torch.randn(2, 500, 257)).shape == (2, 5, 32)  # one row per 1 s segment
        assert model.encode_segments(torch.randn(2, 237, 257)).shape == (2, 2, 32)  # the partial second dropped
    _check_backward(model, logits.logsumexp(1).mean() + embedding.pow(2).mean())


def test_aggregator_pools_any_number_of_segments_to_one_embedding():
    aggregator = Aggregator(16)
    for n_segments in (1, 3, 7):
        assert aggregator(torch.randn(2, n_segments, 16)).shape == (2, 16)
    with pytest.raises(ValueError, match="even"):
        Aggregator(15)


FULL_SIZE_TEACHER_PARAMETERS = {"vgg16": (14e6, 16e6), "resnet34": (21e6, 22.5e6), "seresnet34": (21.3e6, 23e6)}


@pytest.mark.parametrize("arch", sorted(TEACHERS))
def test_full_size_teacher_builds(arch):
    """Built, never trained: the parameter count places it (VGG16 convs 14.7 M, ResNet34 21.3 M)."""
    model = build_teacher(ModelSpec(arch, tiny=False, num_classes=10))
    assert model.embedding.out_features == 512
    low, high = FULL_SIZE_TEACHER_PARAMETERS[arch]
    assert low < sum(p.numel() for p in model.parameters()) < high


@pytest.mark.parametrize("arch", sorted(STUDENTS))
def test_full_size_student_builds(arch):
    model = build_student(ModelSpec(arch, tiny=False, num_classes=10))
    assert model.embedding[-1].out_features == 512
    assert 1e6 < sum(p.numel() for p in model.parameters()) < 30e6


def test_teacher_initialises_from_torchvision_style_names():
    """A torchvision resnet34 state dict (conv1/bn1/layerN/fc names) loads into the trunk; the fc is skipped."""
    import torchvision

    reference = torchvision.models.resnet34(weights=None, num_classes=7).state_dict()
    model = build_teacher(ModelSpec("resnet34", tiny=False, num_classes=10))
    report = load_initial_weights(model, reference)
    assert "fc.weight" in report["skipped"] and "embedding.weight" in report["missing"]
    assert len(report["loaded"]) == len([k for k in reference if not k.startswith("fc.")])
    torch.testing.assert_close(model.state_dict()["trunk.stages.3.2.conv2.weight"], reference["layer4.2.conv2.weight"])


def test_unknown_architecture_names_the_registered_ones():
    with pytest.raises(ValueError, match="registered"):
        build_student(ModelSpec("nope", tiny=True, num_classes=2))


def test_squeeze_excitation_blocks_keep_torchvision_names():
    """Saved SE-ResNet weights load by name: torchvision's convN/bnN, plus `se`."""
    teacher = build_teacher(ModelSpec("seresnet34", tiny=True, num_classes=3)).state_dict()
    student = build_student(ModelSpec("seresnet", tiny=True, num_classes=3)).state_dict()
    assert {"trunk.stages.0.0.bn2.weight", "trunk.stages.0.0.se.fc1.weight"} <= set(teacher)
    assert {"trunk.stages.0.0.bn3.weight", "trunk.stages.0.0.se.fc2.bias"} <= set(student)
