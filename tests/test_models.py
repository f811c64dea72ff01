"""Every registered model, non-sequential and sequential: forward shapes, no NaNs, and a backward pass
that reaches every parameter."""

import pytest
import torch
from torch import nn

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
    if sequential:  # (B, T, H, W, 3): 2 windows of 6 frames
        aggregate, window_logits = model.forward_window(torch.randint(0, 256, (2, 6, 64, 64, 3), dtype=torch.uint8))
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
    assert [layer.out_features for layer in model.embedding if isinstance(layer, nn.Linear)] == [512, 512]
    assert 1e6 < sum(p.numel() for p in model.parameters()) < 30e6


PAPER_STUDENTS = ("vgg", "resnet", "seresnet")


@pytest.mark.parametrize("tiny", [True, False], ids=["tiny", "full"])
@pytest.mark.parametrize("arch", PAPER_STUDENTS)
def test_paper_students_follow_tables_1_and_2(arch, tiny):
    """Stride-1 convs each followed by batch norm, 2×2/2 max pools, frequency flattened into FC 512 (no
    activation) → FC 512 + ReLU = e_s; tiny variants have the same layers."""
    model = build_student(ModelSpec(arch, tiny=tiny, num_classes=10))
    modules = list(model.trunk.modules())
    convs = [m for name, m in model.trunk.named_modules() if isinstance(m, nn.Conv2d) and ".se." not in name]
    assert convs and all(m.stride == (1, 1) for m in modules if isinstance(m, nn.Conv2d))
    assert sum(isinstance(m, nn.BatchNorm2d) for m in modules) == len(convs)  # SE's 1×1 convs have none
    pools = [m for m in modules if isinstance(m, nn.MaxPool2d)]
    assert pools and all(pool.kernel_size == 2 and pool.stride == 2 for pool in pools)
    assert not any(isinstance(m, (nn.AdaptiveAvgPool2d, nn.AvgPool2d))  # only SE's squeeze averages
                   for name, m in model.trunk.named_modules() if not name.endswith(".se.avgpool"))
    first, second, activation = model.embedding
    assert isinstance(first, nn.Linear) and isinstance(second, nn.Linear) and isinstance(activation, nn.ReLU)
    trunk_out = model.trunk(torch.zeros(1, 1, 257, 100))  # (1, C, F', T')
    assert model.frequency_rows == trunk_out.shape[2] > 1
    assert first.in_features == trunk_out.shape[1] * trunk_out.shape[2]  # channels × frequency
    if arch != "vgg":
        assert tuple(model.trunk.stem[0].kernel_size) == (7, 7)


def test_tiny_students_have_the_structure_of_the_full_ones():
    for arch in PAPER_STUDENTS:
        full, tiny = (build_student(ModelSpec(arch, tiny=tiny, num_classes=3)) for tiny in (False, True))
        kinds = [[type(m).__name__ for m in model.trunk.modules() if not isinstance(m, nn.Sequential)]
                 for model in (full, tiny)]
        if arch == "vgg":
            assert kinds[0] == kinds[1]
        else:  # fewer repeats, the same layers per block
            assert set(kinds[0]) == set(kinds[1])


@pytest.mark.parametrize("arch", PAPER_STUDENTS)
def test_paper_students_hear_where_energy_sits_in_frequency(arch):
    """The same spectral envelope shape shifted up in frequency changes e_s: frequency is not averaged away."""
    torch.manual_seed(0)
    model = build_student(ModelSpec(arch, tiny=True, num_classes=3)).eval()
    low, high = torch.zeros(1, 200, 257), torch.zeros(1, 200, 257)
    low[..., 20:40], high[..., 180:200] = 1.0, 1.0
    with torch.no_grad():
        assert not torch.allclose(model.embed(low), model.embed(high), atol=1e-4)


def test_pooling_time_before_the_first_fc_equals_pooling_after_it():
    """Why time may be averaged before FC 512: it has no activation, so the mean commutes with it."""
    torch.manual_seed(0)
    model = build_student(ModelSpec("vgg", tiny=True, num_classes=3)).eval()
    with torch.no_grad():
        features = model.trunk(torch.randn(2, 1, 257, 300))  # (B, C, F', T')
        per_step = model.embedding[0](features.permute(0, 3, 1, 2).flatten(2))  # (B, T', D)
        torch.testing.assert_close(per_step.mean(1), model.embedding[0](features.mean(3).flatten(1)))


def test_students_refuse_another_frequency_resolution():
    model = build_student(ModelSpec("vgg", tiny=True, num_classes=3))
    with pytest.raises(ValueError, match="reads spectrograms of 257 frequency bins, got 129"):
        model(torch.randn(1, 100, 129))


def test_aggregator_is_table_3():
    """2 BiLSTM layers, then two FC+ReLU layers, then attention pooling."""
    aggregator = Aggregator(16)
    assert aggregator.lstm.num_layers == 2 and aggregator.lstm.bidirectional
    assert [type(m) for m in aggregator.fc] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU]
    assert (aggregator(torch.randn(3, 5, 16)) >= 0).all()  # a convex mix of ReLU outputs


def test_sequential_teacher_aggregates_frame_embeddings():
    """Eq. 5: the window's logits come from the aggregator over its frames' embeddings, not segment means."""
    torch.manual_seed(0)
    model = build_teacher(ModelSpec("resnet34", tiny=True, num_classes=4, embed_dim=16, sequential=True)).eval()
    frames = torch.randint(0, 256, (2, 30, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():
        aggregate, logits = model.forward_window(frames)
        per_frame = model.embed(frames.flatten(0, 1)).view(2, 30, 16)
        torch.testing.assert_close(aggregate, model.aggregate(per_frame))
        torch.testing.assert_close(logits, model.head(aggregate))


def test_model_bench_measures_a_tiny_student():
    from pipeline.models import bench

    model = build_student(ModelSpec("resnet", tiny=True, num_classes=3))
    assert bench.forward_gflop(model, torch.randn(200, 257)) > 0
    assert bench.train_step_ms(model, repeats=1, batch=2, frames=100) > 0


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


def _save(path, spec, model, **extra):
    from dataclasses import asdict

    from pipeline.features import SpectrogramParams

    torch.save({"spec": asdict(spec), "class_names": ["a", "b", "c"], "spectrogram": SpectrogramParams().to_dict(),
                "face_size": 32, "state_dict": model.state_dict(), **extra}, path)


def test_a_sequential_teacher_saved_before_table_3_is_refused(tmp_path):
    """Its aggregator pooled segment means and had no FC layers: refused by name, never partly loaded."""
    from pipeline import checkpoints

    spec = ModelSpec("resnet34", tiny=True, num_classes=3, sequential=True)
    _save(tmp_path / "old.pt", spec, build_teacher(spec))  # no `architectures` entry: saved by an older avl
    with pytest.raises(checkpoints.OutdatedCheckpointError, match="sequential teacher.*frame embeddings.*again"):
        checkpoints.load_teacher(tmp_path / "old.pt")
    _save(tmp_path / "new.pt", spec, build_teacher(spec), architectures=checkpoints.ARCHITECTURES)
    assert checkpoints.load_teacher(tmp_path / "new.pt").model.aggregator is not None
    plain = ModelSpec("resnet34", tiny=True, num_classes=3)
    _save(tmp_path / "frames.pt", plain, build_teacher(plain))  # frame teachers did not change: still load
    checkpoints.load_teacher(tmp_path / "frames.pt")


def test_a_student_saved_before_the_paper_networks_names_its_new_name(tmp_path):
    from pipeline import checkpoints

    old_network = build_student(ModelSpec("resnet-strided", tiny=True, num_classes=3))
    _save(tmp_path / "old.pt", ModelSpec("resnet", tiny=True, num_classes=3), old_network)
    with pytest.raises(checkpoints.OutdatedCheckpointError, match="now registered as 'resnet-strided'"):
        checkpoints.load_student(tmp_path / "old.pt")
