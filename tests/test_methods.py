"""Test-time methods: bn (batch, samples, prior), tent and dmc against their specifications."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from robustbench_bn.errors import ConfigurationError
from robustbench_bn.methods.base import batch_norm_layers
from robustbench_bn.methods.bn import BatchNormAdaptation
from robustbench_bn.methods.dmc import DistributionMismatchCorrection, channel_quantiles
from robustbench_bn.methods.source import Source
from robustbench_bn.methods.tent import Tent, softmax_entropy


@pytest.fixture
def model(quick_model):
    return copy.deepcopy(quick_model).eval()


@pytest.fixture
def shifted_images(fashion_images):
    """Real images under a strong, simple covariate shift (contrast and brightness)."""
    images, labels = fashion_images
    return (images * 0.4 + 0.45).clamp(0, 1), labels


def _layer_inputs(model, images):
    captured = []
    handles = [
        layer.register_forward_pre_hook(lambda m, i: captured.append(i[0].detach()))
        for layer in batch_norm_layers(model)
    ]
    with torch.no_grad():
        model(images)
    for handle in handles:
        handle.remove()
    return captured


def test_bn_samples_with_the_whole_cell_gives_exact_statistics(model, shifted_images):
    images, _ = shifted_images
    method = BatchNormAdaptation(model=model, statistics="samples", n_samples=len(images))
    method.adapt(images)
    # The reference: every layer's input when the layers before it use the adapted statistics.
    inputs = _layer_inputs(model, images)
    for layer, layer_input in zip(batch_norm_layers(model), inputs, strict=True):
        mean = layer_input.mean((0, 2, 3))
        variance = layer_input.var((0, 2, 3), unbiased=True)
        torch.testing.assert_close(layer.running_mean, mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(layer.running_var, variance, rtol=1e-4, atol=1e-5)


def test_bn_huge_prior_is_source_and_zero_prior_is_batch(model, shifted_images):
    images, _ = shifted_images
    source_logits = Source(model=copy.deepcopy(model)).predict(images)
    huge_prior = BatchNormAdaptation(model=copy.deepcopy(model), prior=1e12).predict(images)
    torch.testing.assert_close(huge_prior, source_logits, rtol=1e-4, atol=1e-4)
    train_mode = copy.deepcopy(model)
    for layer in batch_norm_layers(train_mode):
        layer.train()
    with torch.no_grad():
        train_logits = train_mode(images)
    zero_prior = BatchNormAdaptation(model=copy.deepcopy(model), prior=0).predict(images)
    torch.testing.assert_close(zero_prior, train_logits, rtol=1e-4, atol=1e-4)
    partial = BatchNormAdaptation(model=copy.deepcopy(model), prior=64).predict(images)
    assert not torch.allclose(partial, zero_prior) and not torch.allclose(partial, source_logits)


def test_bn_samples_prior_mixes_statistics(model, shifted_images):
    images, _ = shifted_images
    source_mean = batch_norm_layers(model)[0].running_mean.clone()
    full = BatchNormAdaptation(model=copy.deepcopy(model), statistics="samples", n_samples=32)
    full.adapt(images[:32])
    mixed = BatchNormAdaptation(
        model=copy.deepcopy(model), statistics="samples", n_samples=32, prior=32
    )
    mixed.adapt(images[:32])
    expected = 0.5 * source_mean + 0.5 * batch_norm_layers(full.model)[0].running_mean
    torch.testing.assert_close(batch_norm_layers(mixed.model)[0].running_mean, expected)


@pytest.mark.parametrize("statistics", ["batch", "samples"])
def test_bn_reset_restores_the_source_state(model, shifted_images, statistics):
    images, _ = shifted_images
    before = copy.deepcopy(model.state_dict())
    method = BatchNormAdaptation(model=model, statistics=statistics, n_samples=32)
    method.adapt(images[:32])
    method.predict(images)
    if statistics == "samples":
        assert not torch.equal(
            model.state_dict()["network.stem.1.running_mean"], before["network.stem.1.running_mean"]
        )
    method.reset()
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_bn_adapts_on_shifted_data(model, shifted_images):
    images, labels = shifted_images
    source = (Source(model=copy.deepcopy(model)).predict(images).argmax(1) == labels).float()
    adapted = (BatchNormAdaptation(model=model).predict(images).argmax(1) == labels).float()
    assert adapted.mean() > source.mean() + 0.1


def test_bn_rejects_bad_options(model):
    with pytest.raises(ConfigurationError, match="statistics"):
        BatchNormAdaptation(model=model, statistics="running")
    with pytest.raises(ConfigurationError, match="prior"):
        BatchNormAdaptation(model=model, prior=-1)


def test_tent_trains_only_bn_affine_and_lowers_entropy(model, shifted_images):
    images, _ = shifted_images
    before = {k: v.clone() for k, v in model.state_dict().items()}
    method = Tent(model=model, learning_rate=1e-3)
    entropies = []
    for _ in range(5):
        logits = method.predict(images)
        entropies.append(float(softmax_entropy(logits).mean()))
    assert entropies[-1] < entropies[0]
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.endswith((".weight", ".bias")) for k in changed)
    bn_affine = {
        f"{name}.{p}"
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.BatchNorm2d)
        for p in ("weight", "bias")
    }
    assert changed <= bn_affine
    method.reset()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not method.optimizer.state
    first_after_reset = method.predict(images)
    torch.testing.assert_close(
        softmax_entropy(first_after_reset).mean(), torch.tensor(entropies[0])
    )


def test_tent_divergence_is_reported(model, shifted_images):
    images, _ = shifted_images
    method = Tent(model=model, learning_rate=1e-3)
    with pytest.raises(FloatingPointError, match="non-finite"):
        method.predict(torch.full_like(images, float("nan")))


def _dmc(model, cache_dir, **options):
    from robustbench_bn.data.fashion_mnist import load_fashion_mnist

    train = load_fashion_mnist("train")
    method = DistributionMismatchCorrection(model=model, num_source_images=512, **options)
    method.prepare(lambda: (train.images, train.labels), cache_key="test", cache_dir=str(cache_dir))
    return method


def _wasserstein(values: torch.Tensor, quantiles: torch.Tensor) -> float:
    return float((channel_quantiles(values, quantiles.shape[1]) - quantiles).abs().mean())


@pytest.mark.parametrize("mode", ["exact", "approx"])
def test_dmc_moves_layer_inputs_onto_source_quantiles(model, shifted_images, mode, tmp_path):
    images, _ = shifted_images
    raw_first_input = _layer_inputs(model, images)[0]
    method = _dmc(model, tmp_path, mode=mode)
    corrected_first_input = []
    handle = method.layers[0].register_forward_pre_hook(
        lambda m, i: corrected_first_input.append(i[0].detach())
    )
    method.predict(images)
    handle.remove()
    # The hook registered after dmc's sees the corrected input.
    source = method.source_quantiles[0]
    raw = _wasserstein(raw_first_input.transpose(0, 1).flatten(1), source)
    corrected = _wasserstein(corrected_first_input[0].transpose(0, 1).flatten(1), source)
    assert corrected < 0.1 * raw, (raw, corrected)


def test_dmc_keeps_clean_accuracy(model, fashion_images, tmp_path):
    images, labels = fashion_images
    source = (Source(model=copy.deepcopy(model)).predict(images).argmax(1) == labels).float()
    corrected = (_dmc(model, tmp_path).predict(images).argmax(1) == labels).float()
    assert abs(float(corrected.mean() - source.mean())) <= 0.01 + 1e-9


def test_dmc_options_are_checked(model):
    with pytest.raises(ConfigurationError, match="scope"):
        DistributionMismatchCorrection(model=model, scope="pixel")
    with pytest.raises(ConfigurationError, match="layers"):
        DistributionMismatchCorrection(model=model, layers=99)


def test_check_finite_loss_stops_nan_and_inf_and_names_the_remedy():
    from robustbench_bn.methods.base import check_finite_loss

    check_finite_loss(torch.tensor(0.5), method="m", learning_rate=0.1)
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(FloatingPointError) as error:
            check_finite_loss(torch.tensor(bad), method="m", learning_rate=0.1)
        assert str(error.value) == (
            "m's loss became non-finite; lower method.learning_rate (now 0.1) or use "
            "runner.precision=fp32."
        )


@pytest.mark.parametrize(
    ("module_name", "class_name", "options"),
    [
        ("tent", "Tent", {}),
        ("eata", "EfficientAntiForgetting", {"fisher_alpha": 0.0}),
        ("sar", "SharpnessAwareReliable", {}),
    ],
)
def test_gradient_methods_check_every_loss_through_the_shared_helper(
    monkeypatch, model, shifted_images, module_name, class_name, options
):
    """tent, eata and sar stop a non-finite loss before backward() with one helper, so the
    check and its message cannot drift apart between them."""
    import importlib

    module = importlib.import_module(f"robustbench_bn.methods.{module_name}")
    checked = []
    monkeypatch.setattr(
        module,
        "check_finite_loss",
        lambda loss, **names: checked.append((float(loss.detach()), names)),
    )
    method = getattr(module, class_name)(model=model, **options)
    method.predict(shifted_images[0][:64])
    assert checked, f"{module_name} never checked its loss"
    for loss, names in checked:
        assert math.isfinite(loss)
        assert names == {"method": module_name, "learning_rate": method.learning_rate}
