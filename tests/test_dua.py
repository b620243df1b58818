"""dua (methods/dua.py) against a transcription of the reference's adaptation loop (Mirza et al.,
CVPR 2022, github jmiemirza/DUA: methods/dua.py, the momentum schedule and the augmentations)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustbench_bn.errors import ConfigurationError
from robustbench_bn.methods.dua import DynamicUnsupervisedAdaptation


@pytest.fixture
def model(quick_model: nn.Module) -> nn.Module:
    return copy.deepcopy(quick_model).eval()


@pytest.fixture
def samples(fashion_images: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return (fashion_images[0][:3] * 0.5 + 0.4).clamp(0, 1)


def _bn_layers(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)]


def test_statistics_follow_the_reference_loop(model, samples):
    """The reference: mom_new = mom_pre * decay; BN momentum = mom_new + min_mom; one train-mode
    forward of the augmented copies; PyTorch's running update (1-m) r + m batch statistics."""
    source = copy.deepcopy(model)
    method = DynamicUnsupervisedAdaptation(model=model, copies=8, decay=0.9, min_momentum=0.01)
    # The same augmented batches the method will draw (same seed, same draw order).
    drawn = DynamicUnsupervisedAdaptation(model=copy.deepcopy(model), copies=8)
    drawn.reset()
    batches = [drawn.augment(image) for image in samples]
    method.reset()
    seen_momenta: list[float] = []
    hook = _bn_layers(model)[0].register_forward_pre_hook(
        lambda layer, inputs: seen_momenta.append(layer.momentum)
    )
    method.adapt(samples)
    hook.remove()

    mom_pre, expected_momenta = 0.1, []
    layers = _bn_layers(source)
    inputs: dict[int, torch.Tensor] = {}
    handles = [
        layer.register_forward_pre_hook(
            lambda layer, x, index=index: inputs.__setitem__(index, x[0])
        )
        for index, layer in enumerate(layers)
    ]
    running = [(layer.running_mean.clone(), layer.running_var.clone()) for layer in layers]
    for batch in batches:
        mom_new = mom_pre * 0.9
        momentum = mom_new + 0.01
        expected_momenta.append(momentum)
        mom_pre = mom_new
        for layer in layers:
            layer.train()
            layer.momentum = momentum
        with torch.no_grad():
            source(batch)
        source.eval()
        for index, (mean, variance) in enumerate(running):
            x = inputs[index]
            batch_variance, batch_mean = torch.var_mean(x, dim=(0, 2, 3), correction=1)
            running[index] = (
                (1 - momentum) * mean + momentum * batch_mean,
                (1 - momentum) * variance + momentum * batch_variance,
            )
    for handle in handles:
        handle.remove()
    assert seen_momenta == pytest.approx(expected_momenta)
    assert seen_momenta == pytest.approx([0.1 * 0.9**t + 0.01 for t in (1, 2, 3)])
    for layer, (mean, variance) in zip(_bn_layers(model), running, strict=True):
        torch.testing.assert_close(layer.running_mean, mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(layer.running_var, variance, rtol=1e-4, atol=1e-5)
    assert not model.training and all(not layer.training for layer in _bn_layers(model))
    # Afterwards the cell is predicted in eval mode with the adapted, frozen statistics.
    frozen = copy.deepcopy(model.state_dict())
    images = samples.repeat(4, 1, 1, 1)
    logits = method.predict(images)
    for key, value in model.state_dict().items():
        assert torch.equal(value, frozen[key]), key
    # Batch size 1: each image alone gets the same logits as within the batch.
    torch.testing.assert_close(method.predict(images[1:2]), logits[1:2], rtol=1e-5, atol=1e-5)


def test_augmentations_are_the_references():
    """Every copy is a crop of the image zero-padded by size/8, maybe flipped, turned k*90."""
    torch.manual_seed(0)
    image = torch.rand(1, 8, 8)
    method = DynamicUnsupervisedAdaptation(model=nn.Sequential(nn.BatchNorm2d(1)), copies=64)
    padded = F.pad(image, (1, 1, 1, 1))
    candidates = []
    for top in range(3):
        for left in range(3):
            crop = padded[:, top : top + 8, left : left + 8]
            for flipped in (crop, crop.flip(2)):
                candidates += [torch.rot90(flipped, turn, dims=(1, 2)) for turn in range(4)]
    copies = method.augment(image)
    assert copies.shape == (64, 1, 8, 8)
    matches = [
        next(i for i, candidate in enumerate(candidates) if torch.equal(copy_, candidate))
        for copy_ in copies
    ]
    assert len(set(matches)) > 20  # the draws vary: offsets, flips and turns all occur


def test_reset_restores_statistics_momentum_and_draws(model, samples):
    source = copy.deepcopy(model.state_dict())
    method = DynamicUnsupervisedAdaptation(model=model, copies=8)
    method.reset()
    method.adapt(samples)
    adapted = copy.deepcopy(model.state_dict())
    assert not torch.equal(adapted[_running_key(model)], source[_running_key(model)])
    method.reset()
    for key, value in model.state_dict().items():
        assert torch.equal(value, source[key]), key
    assert all(layer.momentum == 0.1 for layer in _bn_layers(model))
    method.adapt(samples)  # the same draws again: a cell's result ignores the cells before
    for key, value in model.state_dict().items():
        assert torch.equal(value, adapted[key]), key
    assert (
        method.cell_samples == 80
        and DynamicUnsupervisedAdaptation(model=model, num_samples=5).cell_samples == 5
    )


def _running_key(model: nn.Module) -> str:
    return next(key for key in model.state_dict() if key.endswith("running_mean"))


def test_bad_options_are_clear_errors(model):
    with pytest.raises(ConfigurationError, match="decay"):
        DynamicUnsupervisedAdaptation(model=model, decay=1.5)
    with pytest.raises(ConfigurationError, match="copies"):
        DynamicUnsupervisedAdaptation(model=model, copies=1)
    with pytest.raises(ConfigurationError, match="BatchNorm"):
        DynamicUnsupervisedAdaptation(model=nn.Linear(2, 2))
