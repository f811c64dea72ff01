"""Several distillation targets (`train-student --distil`), checked numerically in float64: the head sees ∇CE only,
the parts below (1 − Σλ_i)∇CE + Σλ_i∇D_i, each projection λ_i∇D_i; and Σλ_i > 1 is refused."""

import copy

import pytest
import torch
import torch.nn.functional as F

from pipeline import config as config_io
from pipeline.distill import build_method, embedding_distance
from pipeline.layers import captured
from pipeline.models.spec import ModelSpec
from pipeline.models.students import AudioStudent
from pipeline.models.vgg import PooledConvSpec
from pipeline.multi_target import MultiTargetStep, parse_distil_targets

EMBED, CLASSES, BATCH, N_FREQ, N_FRAMES = 6, 3, 4, 16, 200  # 200 frames = 2 segments
TRUNK = PooledConvSpec(((4, 5),))  # trunk.2: the first conv's ReLU (4 channels), trunk.5: the second's (5)
LAYER = "trunk.2"
# level → (target kinds of the two targets, the parts that see ∇CE only)
LEVELS = {"non-sequential": (("crop-peak", "crop-peak"), ("head",)),
          "encoder": (("segments", "segments"), ("head", "aggregator")),
          "aggregator": (("aggregator", "segments"), ("head",))}


def _student(level: str) -> AudioStudent:
    torch.manual_seed(0)
    spec = ModelSpec("test", tiny=True, num_classes=CLASSES, embed_dim=EMBED, sequential=level != "non-sequential")
    return AudioStudent(spec, TRUNK, n_freq=N_FREQ).double()


def _targets(level: str, lams=(0.3, 0.45), distances=("mse", "cosine"), sources=("embedding", LAYER), ensemble="sum"):
    kinds, _ = LEVELS[level]
    texts = [f"lam={lam},target={kind},distance={distance},from={source}"
             for lam, kind, distance, source in zip(lams, kinds, distances, sources)]
    return parse_distil_targets(texts, level, kinds[0], ensemble)


def _batch(targets, dims):
    generator = torch.Generator().manual_seed(2)
    spectrogram = torch.randn(BATCH, N_FRAMES, N_FREQ, generator=generator, dtype=torch.float64)
    teacher = [torch.randn(BATCH, *((2,) if target.per_segment else ()), dim, generator=generator, dtype=torch.float64)
               for target, dim in zip(targets, dims)]
    return spectrogram, torch.tensor([0, 1, 2, 1]), teacher


def _grads(module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() if p.grad is not None else torch.zeros_like(p)
            for name, p in module.named_parameters()}


def _plain_forward(student, level, spectrogram, layer):
    """Unrouted: (logits, the embedding the targets read, the layer's rows by crop) as the level defines them."""
    with captured({layer: dict(student.named_modules())[layer]}) as outputs:
        if level == "encoder":
            embedding = student.encode_segments(spectrogram)  # (B, S, D)
            logits = student.head(student.aggregator(embedding))
        else:
            embedding = student.embed(spectrogram)
            logits = student.head(embedding)
    rows = outputs[layer]
    return logits, embedding, rows.view(BATCH, -1, rows.shape[-1]) if len(rows) != BATCH else rows


def _as_target(representation, target):
    if representation.ndim == 3 and not target.per_segment:
        return representation.mean(dim=1)
    return representation


@pytest.mark.parametrize("level", list(LEVELS))
def test_two_targets_route_ce_to_the_head_and_the_lambda_mix_below(level):
    targets, dims = _targets(level), (5, 7)
    step = MultiTargetStep(_student(level), level, targets, dims)
    spectrogram, labels, teacher = _batch(targets, dims)
    reference = copy.deepcopy(step)  # the same weights, for gradients of CE and of each D_i alone
    step(spectrogram, labels, *teacher).total.backward()
    routed = _grads(step)

    lam_total = sum(target.lam for target in targets)
    pieces = []  # ∇CE, ∇D_1, ∇D_2 of every parameter of the step, each in a plain graph
    for part in ("ce", 0, 1):
        model = copy.deepcopy(reference)
        logits, embedding, layer_rows = _plain_forward(model.student, level, spectrogram, LAYER)
        if part == "ce":
            loss = F.cross_entropy(logits, labels)
        else:
            target = targets[part]
            representation = _as_target(embedding if target.source == "embedding" else layer_rows, target)
            loss = embedding_distance(model.projections[part](representation), teacher[part], target.distance)
        loss.backward()
        pieces.append(_grads(model))
    ce, d1, d2 = pieces
    _, ce_only = LEVELS[level]
    for name, grad in routed.items():
        if name.startswith("projections."):
            index = int(name.split(".")[1])
            expected = targets[index].lam * (d1, d2)[index][name]
        elif name.removeprefix("student.").split(".")[0] in ce_only:
            expected = ce[name]
        else:
            expected = (1 - lam_total) * ce[name] + targets[0].lam * d1[name] + targets[1].lam * d2[name]
        torch.testing.assert_close(grad, expected, rtol=1e-9, atol=1e-12, msg=f"{level}: {name}")
    # every part got a gradient: the routing did not cut anything off
    assert all(routed[name].abs().sum() > 0 for name in routed if "projections" in name or "trunk" in name)


def test_one_identity_target_is_the_papers_eq_8():
    level = "non-sequential"
    targets = parse_distil_targets(["lam=0.4,projection=identity"], level, "crop-peak", "sum")
    step = MultiTargetStep(_student(level), level, targets, [EMBED])
    spectrogram, labels, teacher = _batch(targets, [EMBED])
    paper_student = copy.deepcopy(step.student)
    step(spectrogram, labels, *teacher).total.backward()
    method = build_method("proposed", level, "mse", 1.0, EMBED).double()
    method(paper_student, spectrogram, labels, teacher[0], 0.4).total.backward()
    multi, paper = _grads(step.student), _grads(paper_student)
    for name in paper:
        torch.testing.assert_close(multi[name], paper[name], rtol=1e-12, atol=1e-14)


def test_mean_target_distils_the_lambda_weighted_mean_through_one_projection():
    level = "non-sequential"
    targets = _targets(level, lams=(0.2, 0.6), distances=("mse", "mse"), sources=("embedding", "embedding"),
                       ensemble="mean-target")
    step = MultiTargetStep(_student(level), level, targets, [5, 5], ensemble="mean-target")
    assert len(step.projections) == 1
    spectrogram, labels, teacher = _batch(targets, [5, 5])
    losses = step(spectrogram, labels, *teacher)
    logits, embedding, _ = _plain_forward(step.student, level, spectrogram, LAYER)
    mean = 0.25 * teacher[0] + 0.75 * teacher[1]
    expected = F.cross_entropy(logits, labels) + 0.8 * F.mse_loss(step.projections[0](embedding), mean)
    torch.testing.assert_close(losses.total, expected, rtol=1e-12, atol=1e-14)
    with pytest.raises(config_io.ConfigError, match="one dimension"):
        MultiTargetStep(_student(level), level, targets, [5, 7], ensemble="mean-target")


def test_lambdas_summing_above_one_are_refused(tmp_path):
    from stages import train_student

    with pytest.raises(config_io.ConfigError, match=r"sum to 1\.1 > 1"):
        config_io.build(train_student.StudentConfig, {"run_dir": tmp_path, "distil": ("lam=0.6", "lam=0.5,layer=x")})
    with pytest.raises(ValueError, match="Σλ_i <= 1"):
        MultiTargetStep(_student("non-sequential"), "non-sequential",
                        _targets("non-sequential", lams=(0.5, 0.5)) * 2, [5, 7, 5, 7])
    ok = config_io.build(train_student.StudentConfig, {"run_dir": tmp_path, "distil": ("lam=0.4", "lam=0.6")})
    assert ok.run_name == "distil2-sum-lambda1-seed0"


@pytest.mark.parametrize("spec, message", [
    ("lam=0.3,colour=red", "unknown key 'colour'"),
    ("cache=x.zarr", "give its weight"),
    ("lam=1.5", r"lam must lie in \[0, 1\]"),
    ("lam=0.3,target=segments", "per-segment student representations"),
    ("lam=0.3,layer=trunk.stages.2,target=aggregator", "teacher layer holds"),
    ("lam=0.3,distance=l1", "distance must be one of"),
])
def test_bad_specs_are_refused_naming_the_problem(tmp_path, spec, message):
    from stages import train_student

    with pytest.raises(config_io.ConfigError, match=message):
        config_io.build(train_student.StudentConfig, {"run_dir": tmp_path, "distil": (spec,)})


def test_distil_takes_the_proposed_method_only(tmp_path):
    from stages import train_student

    with pytest.raises(config_io.ConfigError, match="--method proposed"):
        config_io.build(train_student.StudentConfig, {"run_dir": tmp_path, "distil": ("lam=0.3",),
                                                      "method": "soft-label"})


def test_unknown_student_layer_lists_the_student_layers():
    targets = _targets("non-sequential", sources=("embedding", "trunk.99"))
    with pytest.raises(config_io.ConfigError, match=r"no layer 'trunk\.99'.*trunk\.2"):
        MultiTargetStep(_student("non-sequential"), "non-sequential", targets, [5, 7])
