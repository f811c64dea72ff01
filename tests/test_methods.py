"""Every distillation method at every level, checked numerically: which parameter groups receive CE only,
which the λ-mix, and that λ = 0 is plain cross-entropy training (DESIGN.md's routing table)."""

import pytest
import torch
import torch.nn.functional as F

from pipeline.distill import LEVELS, METHODS, build_method, embedding_distance, soft_label_divergence
from pipeline.models.spec import ModelSpec
from pipeline.models.students import AudioStudent
from pipeline.models.vgg import PooledConvSpec

EMBED, CLASSES, BATCH, N_FREQ, N_FRAMES, TEMPERATURE = 16, 3, 4, 16, 200, 2.0  # 200 frames = 2 segments
# Routing does not depend on the trunk (every registered one is tested in test_models.py): a one-conv
# trunk keeps these float64 checks fast.
TRUNK = PooledConvSpec(((4,),))


def _student(level: str):
    torch.manual_seed(0)
    spec = ModelSpec("test", tiny=True, num_classes=CLASSES, embed_dim=EMBED, sequential=level != "non-sequential")
    return AudioStudent(spec, TRUNK, n_freq=N_FREQ).double()  # float64: the comparisons below are exact up to rounding


def _method(name: str, level: str, distance: str = "mse"):
    torch.manual_seed(1)
    return build_method(name, level, distance, TEMPERATURE, EMBED).double()


def _batch(target_kind: str):
    generator = torch.Generator().manual_seed(2)
    spectrogram = torch.randn(BATCH, N_FRAMES, N_FREQ, generator=generator, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 1])
    shapes = {"crop-peak": (BATCH, EMBED), "aggregator": (BATCH, EMBED), "segments": (BATCH, 2, EMBED),
              "soft": (BATCH, CLASSES), "window-soft": (BATCH, CLASSES)}
    target = torch.randn(*shapes[target_kind], generator=generator, dtype=torch.float64)
    if target_kind.endswith("soft"):
        target = target.softmax(dim=1)
    return spectrogram, labels, target


def _group(name: str) -> str:
    return name.split(".")[0] if name.split(".")[0] in ("head", "aggregator", "decoder") else "encoder"


def _grads(*modules) -> dict[str, torch.Tensor]:
    """Every parameter's gradient (zero where none arrived), keyed by name; the decoder's prefixed."""
    grads = {}
    for prefix, module in zip(("", "decoder."), modules):
        for name, p in module.named_parameters():
            key = prefix + name.removeprefix("decoder.")
            grads[key] = p.grad.clone() if p.grad is not None else torch.zeros_like(p)
    return grads


def _method_grads(name, level, lam, distance="mse"):
    model, method = _student(level), _method(name, level, distance)
    spectrogram, labels, target = _batch(method.target_kind())
    method(model, spectrogram, labels, target, lam).total.backward()
    return _grads(model, method)


def _reference_grads(name, level, term, distance="mse"):
    """Gradients of CE alone or of the distillation term alone, in a plain graph with no routing."""
    model, method = _student(level), _method(name, level, distance)
    spectrogram, labels, target = _batch(method.target_kind())
    if term == "ce":
        loss = F.cross_entropy(model(spectrogram)[1], labels)
    elif name == "soft-label":
        loss = soft_label_divergence(model(spectrogram)[1], target, TEMPERATURE)
    else:
        student = model.encode_segments(spectrogram) if level == "encoder" else model.embed(spectrogram)
        if name == "multitask":
            student = method.decoder(student)
        loss = embedding_distance(student, target, distance)
    loss.backward()
    return _grads(model, method)


def _assert_groups(routed, expected_by_group):
    checked = set()
    for key, grad in routed.items():
        group = _group(key)
        torch.testing.assert_close(grad, expected_by_group[group](key), rtol=1e-9, atol=1e-12, msg=f"{group}: {key}")
        checked.add(group)
    return checked


# For each method and level: the parameter groups that see CE only; every other group sees the λ-mix.
CE_ONLY = {
    ("proposed", "non-sequential"): {"head"},
    ("proposed", "encoder"): {"head", "aggregator"},
    ("proposed", "aggregator"): {"head"},
}


@pytest.mark.parametrize("distance", ["mse", "cosine"])
@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("name", sorted(METHODS))
def test_each_parameter_group_gets_its_gradient(name, level, distance):
    lam = 0.3
    routed = _method_grads(name, level, lam, distance)
    ce = _reference_grads(name, level, "ce", distance)
    term = _reference_grads(name, level, "term", distance)
    ce_only = CE_ONLY.get((name, level), set())
    expected = {group: (lambda key, group=group: ce[key] if group in ce_only else (1 - lam) * ce[key] + lam * term[key])
                for group in ("head", "aggregator", "encoder", "decoder")}
    groups = _assert_groups(routed, expected)
    assert "head" in groups and "encoder" in groups and ("aggregator" in groups) == (level != "non-sequential")
    assert ("decoder" in groups) == (name == "multitask")


@pytest.mark.parametrize("level", LEVELS)
def test_proposed_head_gradient_does_not_depend_on_lambda_and_the_mix_does(level):
    low, high = _method_grads("proposed", level, 0.1), _method_grads("proposed", level, 0.9)
    for key in low:
        group = _group(key)
        if group in CE_ONLY[("proposed", level)]:
            torch.testing.assert_close(low[key], high[key], rtol=1e-12, atol=0)
    encoder = [key for key in low if _group(key) == "encoder"]
    assert any(not torch.allclose(low[key], high[key]) for key in encoder)  # the encoder sees λ


def test_aggregator_level_routes_the_mix_into_the_aggregator_and_encoder_level_does_not():
    """AGG: the aggregator's gradient is the λ-mix; EM: the aggregator sees CE only."""
    lam = 0.6
    agg = _method_grads("proposed", "aggregator", lam)
    em = _method_grads("proposed", "encoder", lam)
    ce = _reference_grads("proposed", "aggregator", "ce")
    distance_term = _reference_grads("proposed", "aggregator", "term")
    for key in (k for k in agg if _group(k) == "aggregator"):
        torch.testing.assert_close(agg[key], (1 - lam) * ce[key] + lam * distance_term[key], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(em[key], ce[key], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("name", sorted(METHODS))
def test_lambda_zero_is_plain_cross_entropy(name, level):
    routed = _method_grads(name, level, 0.0)
    ce = _reference_grads(name, level, "ce")
    for key, grad in routed.items():
        torch.testing.assert_close(grad, ce[key], rtol=1e-12, atol=0, msg=key)
    model, method = _student(level), _method(name, level)
    spectrogram, labels, _ = _batch(method.target_kind())
    losses = method(model, spectrogram, labels, None, 0.0)  # no cache needed at λ = 0
    assert losses.total.item() == pytest.approx(F.cross_entropy(model(spectrogram)[1], labels).item())


def test_soft_label_term_matches_tempered_teacher_logits():
    """softmax(log p / T) is the teacher's softmax(z/T) when p = softmax(z): caching probabilities loses nothing."""
    torch.manual_seed(3)
    teacher_logits, student_logits = torch.randn(5, 4), torch.randn(5, 4)
    expected = F.kl_div(F.log_softmax(student_logits / 3.0, 1), F.softmax(teacher_logits / 3.0, 1),
                        reduction="batchmean") * 9.0
    got = soft_label_divergence(student_logits, teacher_logits.softmax(1), 3.0)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_unknown_method_or_level_is_refused():
    with pytest.raises(ValueError, match="registered"):
        build_method("nope", "non-sequential")
    with pytest.raises(ValueError, match="level"):
        build_method("proposed", "frames")
