"""bn (methods/bn.py): test-batch statistics, n-sample rectification and the source prior,
checked against statistics computed independently from each layer's captured input."""

from __future__ import annotations

import copy

import pytest
import torch

from robustbench_bn.errors import ConfigurationError
from robustbench_bn.methods.base import batch_norm_layers
from robustbench_bn.methods.bn import BatchNormAdaptation
from robustbench_bn.methods.source import Source


@pytest.fixture
def model(quick_model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(quick_model).eval()


@pytest.fixture
def shifted_images(fashion_images: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Real images under a strong covariate shift (lower contrast, brighter): 256 of them."""
    images, _ = fashion_images
    return (images * 0.4 + 0.45).clamp(0, 1)


def _train_mode_inputs(model: torch.nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Every BN layer's input in a forward pass where every BN uses batch statistics.

    This is the pass the samples mode runs once per cell, so its layer inputs are the
    reference for the statistics it must store.
    """
    reference = copy.deepcopy(model)
    captured: list[torch.Tensor] = []
    for layer in batch_norm_layers(reference):
        layer.train()
        layer.register_forward_pre_hook(lambda _, inputs: captured.append(inputs[0].clone()))
    with torch.no_grad():
        reference(images)
    return captured


def _train_mode_logits(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    reference = copy.deepcopy(model)
    for layer in batch_norm_layers(reference):
        layer.train()
    with torch.no_grad():
        return reference(images)


def test_samples_with_the_whole_cell_store_exact_mean_and_unbiased_variance(
    model: torch.nn.Module, shifted_images: torch.Tensor
) -> None:
    inputs = _train_mode_inputs(model, shifted_images)
    source_means = [layer.running_mean.clone() for layer in batch_norm_layers(model)]
    method = BatchNormAdaptation(model=model, statistics="samples", n_samples=len(shifted_images))
    method.adapt(shifted_images)
    layers = batch_norm_layers(model)
    assert len(layers) == len(inputs) == 9
    for layer, layer_input, source_mean in zip(layers, inputs, source_means, strict=True):
        values = layer_input.transpose(0, 1).flatten(1).double()
        count = values.shape[1]
        mean = values.mean(1)
        unbiased_variance = ((values - mean[:, None]) ** 2).sum(1) / (count - 1)
        torch.testing.assert_close(layer.running_mean.double(), mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            layer.running_var.double(), unbiased_variance, rtol=1e-5, atol=1e-6
        )
        assert not torch.allclose(layer.running_mean, source_mean)  # the shift was real
        assert not layer.training  # evaluation runs with the statistics frozen


def test_samples_evaluate_in_eval_mode_with_frozen_statistics(
    model: torch.nn.Module, shifted_images: torch.Tensor
) -> None:
    method = BatchNormAdaptation(model=model, statistics="samples", n_samples=32)
    assert method.cell_samples == 32
    method.adapt(shifted_images[:32])
    adapted = copy.deepcopy(model.state_dict())
    first = method.predict(shifted_images[:100])
    second = method.predict(shifted_images[:100])
    torch.testing.assert_close(first, second)
    # Per-image predictions: a batch of one gives the same logits as inside a batch.
    torch.testing.assert_close(method.predict(shifted_images[:1]), first[:1], atol=1e-4, rtol=0)
    for key, value in model.state_dict().items():
        assert torch.equal(value, adapted[key]), key


@pytest.mark.parametrize("statistics", ["batch", "samples"])
def test_a_very_large_prior_gives_back_the_source_model(
    model: torch.nn.Module, shifted_images: torch.Tensor, statistics: str
) -> None:
    source_logits = Source(model=copy.deepcopy(model)).predict(shifted_images)
    method = BatchNormAdaptation(
        model=copy.deepcopy(model), statistics=statistics, n_samples=32, prior=1e12
    )
    method.adapt(shifted_images[:32])
    torch.testing.assert_close(method.predict(shifted_images), source_logits, rtol=1e-4, atol=1e-4)


def test_zero_prior_is_train_mode_batch_norm(
    model: torch.nn.Module, shifted_images: torch.Tensor
) -> None:
    expected = _train_mode_logits(model, shifted_images)
    logits = BatchNormAdaptation(model=copy.deepcopy(model), prior=0).predict(shifted_images)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(logits, Source(model=model).predict(shifted_images), atol=1e-2)


def test_prior_mixes_source_and_batch_statistics_with_n_over_n_plus_N(
    model: torch.nn.Module, shifted_images: torch.Tensor
) -> None:
    batch = shifted_images[:16]
    # The first layer's input does not depend on any BN layer.
    layer_input = _train_mode_inputs(model, batch)[0]
    first_layer = batch_norm_layers(model)[0]
    captured: list[torch.Tensor] = []
    first_layer.register_forward_hook(lambda _, __, output: captured.append(output.clone()))
    BatchNormAdaptation(model=model, prior=48).predict(batch)
    variance, mean = torch.var_mean(layer_input, dim=(0, 2, 3), correction=0)
    weight = 48 / (48 + 16)  # lambda = N / (N + n)
    mixed_mean = weight * first_layer.running_mean + (1 - weight) * mean
    mixed_variance = weight * first_layer.running_var + (1 - weight) * variance
    expected = torch.nn.functional.batch_norm(
        layer_input,
        mixed_mean,
        mixed_variance,
        first_layer.weight,
        first_layer.bias,
        False,
        0.0,
        first_layer.eps,
    )
    torch.testing.assert_close(captured[0], expected, rtol=1e-5, atol=1e-5)


def test_samples_prior_mixes_the_stored_statistics(
    model: torch.nn.Module, shifted_images: torch.Tensor
) -> None:
    samples = shifted_images[:32]
    source_mean = batch_norm_layers(model)[0].running_mean.clone()
    source_variance = batch_norm_layers(model)[0].running_var.clone()
    full = BatchNormAdaptation(model=copy.deepcopy(model), statistics="samples", n_samples=32)
    full.adapt(samples)
    mixed = BatchNormAdaptation(
        model=copy.deepcopy(model), statistics="samples", n_samples=32, prior=96
    )
    mixed.adapt(samples)
    target = batch_norm_layers(full.model)[0]
    result = batch_norm_layers(mixed.model)[0]
    torch.testing.assert_close(result.running_mean, 0.75 * source_mean + 0.25 * target.running_mean)
    torch.testing.assert_close(
        result.running_var, 0.75 * source_variance + 0.25 * target.running_var
    )


@pytest.mark.parametrize("statistics", ["batch", "samples"])
def test_reset_restores_the_source_state_between_cells(
    model: torch.nn.Module, fashion_images: tuple[torch.Tensor, torch.Tensor], statistics: str
) -> None:
    images, _ = fashion_images
    first_cell = (images * 0.4 + 0.45).clamp(0, 1)
    second_cell = (images + 0.2 * torch.randn_like(images)).clamp(0, 1)
    source_state = copy.deepcopy(model.state_dict())
    fresh = BatchNormAdaptation(model=copy.deepcopy(model), statistics=statistics, n_samples=32)
    fresh.adapt(second_cell[:32])
    expected_second = fresh.predict(second_cell)

    method = BatchNormAdaptation(model=model, statistics=statistics, n_samples=32)
    method.reset()
    method.adapt(first_cell[:32])
    method.predict(first_cell)
    if statistics == "samples":
        assert not torch.equal(
            batch_norm_layers(model)[0].running_mean, source_state["network.stem.1.running_mean"]
        )
    method.reset()
    state = model.state_dict()
    assert state.keys() == source_state.keys()
    for key, value in state.items():
        assert torch.equal(value, source_state[key]), key
    assert not any(module.training for module in model.modules())
    # Nothing from the first cell leaks into the second.
    method.adapt(second_cell[:32])
    torch.testing.assert_close(method.predict(second_cell), expected_second)


def test_a_batch_of_one_with_batch_statistics_is_a_clear_error(
    model: torch.nn.Module, shifted_images: torch.Tensor
) -> None:
    method = BatchNormAdaptation(model=model, statistics="batch")
    with pytest.raises(ConfigurationError, match="at least 2 images.*runner.batch_size"):
        method.predict(shifted_images[:1])
    # With a source prior a single image is fine (tests/test_batch_size_one.py).
    single = BatchNormAdaptation(model=copy.deepcopy(model), prior=16).predict(shifted_images[:1])
    assert torch.isfinite(single).all()


def test_batch_statistics_lift_accuracy_under_shift(
    model: torch.nn.Module, fashion_images: tuple[torch.Tensor, torch.Tensor]
) -> None:
    images, labels = fashion_images
    shifted = (images * 0.4 + 0.45).clamp(0, 1)
    source = (Source(model=copy.deepcopy(model)).predict(shifted).argmax(1) == labels).float()
    adapted = (BatchNormAdaptation(model=model).predict(shifted).argmax(1) == labels).float()
    assert adapted.mean() > source.mean() + 0.1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"statistics": "running"}, "method.statistics must be one of"),
        ({"prior": -1}, "method.prior"),
        ({"statistics": "samples", "n_samples": 0}, "method.n_samples"),
        ({"statistics": "samples", "n_samples": 2.5}, "method.n_samples"),
    ],
)
def test_bad_options_are_configuration_errors(
    model: torch.nn.Module, options: dict, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        BatchNormAdaptation(model=model, **options)


def test_a_model_without_batch_norm_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="BatchNorm2d"):
        BatchNormAdaptation(model=torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)))


def test_benz2021_preset(make_config) -> None:
    cfg = make_config("experiment=benz2021")
    assert cfg.method.name == "bn"
    assert (cfg.method.statistics, cfg.method.n_samples, cfg.method.prior) == ("samples", 32, 0)
    assert (cfg.runner.batch_size, cfg.runner.reset, cfg.seed) == (128, "per_cell", 333)


def test_schneider2020_preset(make_config) -> None:
    cfg = make_config("experiment=schneider2020")
    assert cfg.method.name == "bn"
    assert (cfg.method.statistics, cfg.method.prior, cfg.runner.batch_size) == ("batch", 16, 8)
    full = make_config("experiment=schneider2020", "method.prior=0")
    assert full.method.prior == 0 and full.runner.batch_size == 8
