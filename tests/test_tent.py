"""tent (methods/tent.py): what is trained, what the logits are, reset, and failure modes,
checked against a hand-written reference loop of TENT's update (Wang et al., ICLR 2021)."""

from __future__ import annotations

import copy

import pytest
import torch

from robustbench_bn.errors import ConfigurationError
from robustbench_bn.methods.base import batch_norm_layers
from robustbench_bn.methods.tent import Tent, softmax_entropy
from robustbench_bn.runner import run


@pytest.fixture
def model(quick_model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(quick_model).eval()


@pytest.fixture
def shifted_images(fashion_images: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """128 real images under a strong covariate shift (lower contrast, brighter)."""
    images, _ = fashion_images
    return (images[:128] * 0.4 + 0.45).clamp(0, 1)


def _bn_affine_names(model: torch.nn.Module) -> set[str]:
    return {
        f"{name}.{parameter}"
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.BatchNorm2d)
        for parameter in ("weight", "bias")
    }


def _reference_tent(
    model: torch.nn.Module, images: torch.Tensor, *, steps: int, learning_rate: float = 1e-3
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """TENT written out by hand: train-mode BN without running statistics, Adam on the BN
    affine parameters, mean entropy; returns the last forward's logits and the new state."""
    reference = copy.deepcopy(model)
    reference.requires_grad_(False)
    parameters = []
    for layer in batch_norm_layers(reference):
        layer.train()
        layer.track_running_stats = False
        layer.running_mean = layer.running_var = None
        parameters += [layer.weight.requires_grad_(True), layer.bias.requires_grad_(True)]
    optimizer = torch.optim.Adam(parameters, lr=learning_rate, betas=(0.9, 0.999))
    for _ in range(steps):
        logits = reference(images)
        softmax_entropy(logits).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return logits.detach(), {
        name: value.detach() for name, value in reference.named_parameters(recurse=True)
    }


def test_only_the_batch_norm_affine_parameters_change(
    model: torch.nn.Module, shifted_images: torch.Tensor
) -> None:
    before = copy.deepcopy(model.state_dict())
    method = Tent(model=model)
    assert {id(p) for p in method.trainable} == {
        id(p) for layer in batch_norm_layers(model) for p in (layer.weight, layer.bias)
    }
    for _ in range(3):
        method.predict(shifted_images)
    changed = {
        key for key, value in model.state_dict().items() if not torch.equal(value, before[key])
    }
    assert changed == _bn_affine_names(model)  # every one of them moved, nothing else did
    # Running statistics are neither used nor updated (num_batches_tracked included).
    assert not any(key.endswith(("running_mean", "running_var", "tracked")) for key in changed)


def test_one_step_per_batch_returns_the_logits_of_the_forward_before_the_update(
    model: torch.nn.Module, shifted_images: torch.Tensor
) -> None:
    expected_logits, expected_parameters = _reference_tent(model, shifted_images, steps=1)
    logits = Tent(model=model).predict(shifted_images)
    torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-5)
    for name, value in model.named_parameters():
        torch.testing.assert_close(value.detach(), expected_parameters[name], rtol=1e-5, atol=1e-6)


def test_steps_and_learning_rate_are_honoured(
    model: torch.nn.Module, shifted_images: torch.Tensor
) -> None:
    expected_logits, expected_parameters = _reference_tent(
        model, shifted_images, steps=3, learning_rate=5e-3
    )
    method = Tent(model=model, steps=3, learning_rate=5e-3)
    torch.testing.assert_close(
        method.predict(shifted_images), expected_logits, rtol=1e-4, atol=1e-4
    )
    for name, value in model.named_parameters():
        torch.testing.assert_close(value.detach(), expected_parameters[name], rtol=1e-4, atol=1e-5)
    assert method.row_fields() == {
        "learning_rate": 5e-3,
        "steps": 3,
        "betas": [0.9, 0.999],
        "weight_decay": 0.0,
        "optimizer": "adam",
    }


def test_entropy_decreases_over_steps_on_a_fixed_batch(
    model: torch.nn.Module, shifted_images: torch.Tensor
) -> None:
    method = Tent(model=model)
    entropies = [float(softmax_entropy(method.predict(shifted_images)).mean()) for _ in range(6)]
    assert entropies[-1] < entropies[0] - 1e-3, entropies
    decreases = sum(
        later < earlier for earlier, later in zip(entropies[:-1], entropies[1:], strict=True)
    )
    assert decreases >= 4, entropies


def test_reset_restores_the_weights_and_the_optimizer(
    model: torch.nn.Module, fashion_images: tuple[torch.Tensor, torch.Tensor]
) -> None:
    images, _ = fashion_images
    first_cell = (images[:128] * 0.4 + 0.45).clamp(0, 1)
    second_cell = (images[128:] + 0.3 * torch.randn_like(images[128:])).clamp(0, 1)
    source_state = copy.deepcopy(model.state_dict())
    fresh = Tent(model=copy.deepcopy(model))
    expected = [fresh.predict(second_cell) for _ in range(2)]

    method = Tent(model=model)
    for _ in range(3):
        method.predict(first_cell)
    assert method.optimizer.state  # Adam's moments exist before the reset
    method.reset()
    assert not method.optimizer.state
    for key, value in model.state_dict().items():
        assert torch.equal(value, source_state[key]), key
    # Two steps after the reset match a fresh method: the second step depends on Adam's
    # moments, so a leaked optimizer state would show here.
    for logits in expected:
        torch.testing.assert_close(method.predict(second_cell), logits)


def test_predict_trains_even_inside_inference_mode(
    model: torch.nn.Module, shifted_images: torch.Tensor
) -> None:
    before = batch_norm_layers(model)[0].weight.detach().clone()
    method = Tent(model=model)
    with torch.inference_mode():
        inference_images = shifted_images.clone()  # an inference tensor, as loaders may give
        method.predict(inference_images)
    with torch.no_grad():
        method.predict(shifted_images)
    assert not torch.equal(batch_norm_layers(model)[0].weight.detach(), before)


def test_a_non_finite_loss_is_a_clear_error_and_changes_nothing(
    model: torch.nn.Module, shifted_images: torch.Tensor
) -> None:
    method = Tent(model=model)
    before = copy.deepcopy(model.state_dict())
    poisoned = shifted_images.clone()
    poisoned[0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite.*method.learning_rate"):
        method.predict(poisoned)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_a_batch_of_one_is_a_clear_error(
    model: torch.nn.Module, shifted_images: torch.Tensor
) -> None:
    with pytest.raises(ConfigurationError, match="at least 2 images.*runner.batch_size"):
        Tent(model=model).predict(shifted_images[:1])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"steps": 0}, "method.steps"),
        ({"learning_rate": 0.0}, "method.learning_rate"),
        ({"learning_rate": -1e-3}, "method.learning_rate"),
    ],
)
def test_bad_options_are_configuration_errors(
    model: torch.nn.Module, options: dict, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Tent(model=model, **options)


def test_runner_drives_tent_with_gradients_enabled(make_config) -> None:
    cfg = make_config(
        "method=tent",
        "dataset.n_examples=64",
        "runner.batch_size=32",
        "dataset.corruptions=[contrast]",
        "dataset.severities=[5]",
    )
    rows = run(cfg)
    assert list(rows["corruption"]) == ["clean", "contrast"]
    assert (rows["n"] == 64).all()
    assert '"optimizer": "adam"' in rows["method_params"].iloc[0]


def test_wang2021_tent_preset(make_config) -> None:
    cfg = make_config("experiment=wang2021_tent")
    assert cfg.method.name == "tent"
    assert (cfg.runner.batch_size, cfg.runner.reset) == (200, "per_cell")
    assert (cfg.method.learning_rate, cfg.method.steps) == (1e-3, 1)
    assert (cfg.method.beta1, cfg.method.beta2, cfg.method.weight_decay) == (0.9, 0.999, 0.0)
