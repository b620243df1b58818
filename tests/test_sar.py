"""sar (methods/sar.py) against a hand transcription of the reference's update (Niu et al.,
ICLR 2023, github mr-eggplant/SAR: forward_and_adapt_sar with the SAM optimizer)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from robustbench_bn.errors import ConfigurationError
from robustbench_bn.methods.sar import SharpnessAwareReliable


@pytest.fixture
def model(quick_model: nn.Module) -> nn.Module:
    return copy.deepcopy(quick_model).eval()


@pytest.fixture
def batches(fashion_images: tuple[torch.Tensor, torch.Tensor]) -> list[torch.Tensor]:
    images = (fashion_images[0][:144] * 0.5 + 0.3).clamp(0, 1)
    return list(images.split(48))


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


def _reference_sar(model, batches, *, lr, rho, margin, reset_constant):
    """configure_model, collect_params (all norm layers), SAM(SGD) and forward_and_adapt_sar."""
    reference = copy.deepcopy(model).train()
    reference.requires_grad_(False)
    parameters = []
    for module in reference.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.track_running_stats = False
            module.running_mean = module.running_var = None
        if isinstance(module, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
            module.requires_grad_(True)
            parameters += [module.weight, module.bias]
    optimizer = torch.optim.SGD(parameters, lr=lr, momentum=0.9)
    source_state = copy.deepcopy(reference.state_dict())
    ema, outputs_per_batch, resets = None, [], 0
    for x in batches:
        optimizer.zero_grad()
        outputs = reference(x)
        entropys = _entropy(outputs)
        ids1 = torch.where(entropys < margin)
        loss = entropys[ids1].mean(0)
        loss.backward()
        # SAM.first_step
        grad_norm = torch.norm(torch.stack([p.grad.norm(p=2) for p in parameters]), p=2)
        scale = rho / (grad_norm + 1e-12)
        old = [p.data.clone() for p in parameters]
        with torch.no_grad():
            for p in parameters:
                p.add_(p.grad * scale)
        optimizer.zero_grad()
        entropys2 = _entropy(reference(x))[ids1]
        ids2 = torch.where(entropys2 < margin)
        loss_second = entropys2[ids2].mean(0)
        if not math.isnan(loss_second.item()):
            ema = loss_second.item() if ema is None else 0.9 * ema + 0.1 * loss_second.item()
        loss_second.backward()
        # SAM.second_step
        for p, value in zip(parameters, old, strict=True):
            p.data = value
        optimizer.step()
        optimizer.zero_grad()
        if ema is not None and ema < reset_constant:
            reference.load_state_dict(source_state)
            optimizer.state.clear()
            resets += 1
        outputs_per_batch.append(outputs.detach())
    return outputs_per_batch, dict(reference.named_parameters()), ema, resets


def test_two_sam_updates_match_the_reference_transcription(model, batches):
    source = copy.deepcopy(model)
    method = SharpnessAwareReliable(model=model, learning_rate=0.02, rho=0.05)
    logits = [method.predict(batch) for batch in batches]
    expected_logits, expected_parameters, ema, resets = _reference_sar(
        source, batches, lr=0.02, rho=0.05, margin=0.4 * math.log(10), reset_constant=0.2
    )
    for ours, theirs in zip(logits, expected_logits, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    moved = 0
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.detach(), expected_parameters[name].detach())
        moved += not torch.equal(parameter, dict(source.named_parameters())[name])
    assert moved > 0 and resets == 0 == method.recoveries
    assert method.loss_average == pytest.approx(ema, rel=1e-5)


def test_model_recovery_returns_to_source_and_keeps_the_average(model, batches):
    source = copy.deepcopy(model)
    # A threshold above any entropy: the first batch's update is undone at once.
    method = SharpnessAwareReliable(model=model, learning_rate=0.02, reset_threshold=10.0)
    method.predict(batches[0])
    assert method.recoveries == 1 and method.loss_average is not None
    for (name, parameter), value in zip(model.named_parameters(), source.parameters(), strict=True):
        assert torch.equal(parameter, value), name
    assert not method.optimizer.state
    expected = _reference_sar(
        source, batches[:2], lr=0.02, rho=0.05, margin=0.4 * math.log(10), reset_constant=10.0
    )
    method.predict(batches[1])
    assert method.recoveries == expected[3] == 2
    assert method.loss_average == pytest.approx(expected[2], rel=1e-5)


def test_reset_between_cells(model, batches):
    source = copy.deepcopy(model.state_dict())
    method = SharpnessAwareReliable(model=model, learning_rate=0.02)
    first = method.predict(batches[0])
    method.predict(batches[1])
    method.reset()
    for key, value in model.state_dict().items():
        assert torch.equal(value, source[key]), key
    assert method.loss_average is None and not method.optimizer.state
    torch.testing.assert_close(method.predict(batches[0]), first)


class _GroupNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(), nn.AdaptiveAvgPool2d(1)
        )
        self.fc = nn.Linear(8, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(images).flatten(1))


def test_batch_size_one_with_group_norm_and_a_clear_error_with_batch_norm(model, batches):
    torch.manual_seed(0)
    network = _GroupNormNet()
    # Sharpen the head so that some single images are reliable (entropy below 0.4 ln 10).
    network.fc.weight.data *= 5
    images = batches[0][:6]
    source = copy.deepcopy(network)
    method = SharpnessAwareReliable(
        model=network, learning_rate=0.05, entropy_margin=0.9, reset_threshold=0.0
    )
    logits = [method.predict(image[None]) for image in images]
    expected_logits, expected_parameters, _, _ = _reference_sar(
        source,
        [image[None] for image in images],
        lr=0.05,
        rho=0.05,
        margin=0.9 * math.log(10),
        reset_constant=0.0,
    )
    for ours, theirs in zip(logits, expected_logits, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    for name, parameter in network.named_parameters():
        torch.testing.assert_close(parameter.detach(), expected_parameters[name].detach())
    assert not torch.equal(network.features[1].weight, source.features[1].weight)
    with pytest.raises(ConfigurationError, match="at least 2 images"):
        SharpnessAwareReliable(model=model).predict(batches[0][:1])
    with pytest.raises(ConfigurationError, match="rho"):
        SharpnessAwareReliable(model=model, rho=0)
