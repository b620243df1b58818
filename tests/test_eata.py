"""eata (methods/eata.py) against a hand transcription of the reference's update (Niu et al.,
ICML 2022, github mr-eggplant/EATA: forward_and_adapt_eata and the Fisher loop of main.py)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from robustbench_bn.errors import ConfigurationError
from robustbench_bn.methods.base import batch_norm_layers
from robustbench_bn.methods.eata import EfficientAntiForgetting


@pytest.fixture
def model(quick_model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(quick_model).eval()


@pytest.fixture
def batches(fashion_images: tuple[torch.Tensor, torch.Tensor]) -> list[torch.Tensor]:
    """Three batches of 48 real images under a contrast-and-brightness shift."""
    images = (fashion_images[0][:144] * 0.5 + 0.3).clamp(0, 1)
    return list(images.split(48))


def _configured(model: torch.nn.Module) -> tuple[torch.nn.Module, list, list[str]]:
    """The reference's configure_model + collect_params on a copy."""
    reference = copy.deepcopy(model).train()
    reference.requires_grad_(False)
    parameters, names = [], []
    for name, module in reference.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.requires_grad_(True)
            module.track_running_stats = False
            module.running_mean = module.running_var = None
            for parameter_name, parameter in module.named_parameters():
                parameters.append(parameter)
                names.append(f"{name}.{parameter_name}")
    return reference, parameters, names


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


def _reference_fisher(model, images_uint8, *, count, batch_size, seed):
    reference, parameters, names = _configured(model)
    chosen = torch.randperm(len(images_uint8), generator=torch.Generator().manual_seed(seed))
    loader = images_uint8[chosen[:count]].float().div(255).split(batch_size)
    fishers = {}
    for iteration, images in enumerate(loader, start=1):
        outputs = reference(images)
        loss = torch.nn.CrossEntropyLoss()(outputs, outputs.max(1)[1])
        loss.backward()
        for name, parameter in reference.named_parameters():
            if parameter.grad is not None:
                fisher = parameter.grad.detach().clone() ** 2
                if iteration > 1:
                    fisher = fisher + fishers[name][0]
                if iteration == len(loader):
                    fisher = fisher / iteration
                fishers[name] = [fisher, parameter.detach().clone()]
        reference.zero_grad()
    return fishers


def _reference_steps(model, batches, *, fishers, fisher_alpha, e_margin, d_margin, lr):
    reference, parameters, _ = _configured(model)
    optimizer = torch.optim.SGD(parameters, lr, momentum=0.9)
    current = None
    outputs_per_batch = []
    for x in batches:
        outputs = reference(x)
        entropys = _entropy(outputs)
        ids1 = torch.where(entropys < e_margin)
        ids2 = torch.where(ids1[0] > -0.1)
        entropys = entropys[ids1]
        if current is not None:
            cosine = F.cosine_similarity(current.unsqueeze(0), outputs[ids1].softmax(1), dim=1)
            ids2 = torch.where(torch.abs(cosine) < d_margin)
            entropys = entropys[ids2]
            new = outputs[ids1][ids2].softmax(1)
            if new.size(0):
                current = 0.9 * current + 0.1 * new.mean(0).detach()
        else:
            new = outputs[ids1].softmax(1)
            current = new.mean(0).detach() if new.size(0) else None
        coeff = 1 / torch.exp(entropys.clone().detach() - e_margin)
        loss = entropys.mul(coeff).mean(0)
        if fishers is not None:
            ewc = 0
            for name, parameter in reference.named_parameters():
                if name in fishers:
                    ewc += (
                        fisher_alpha
                        * (fishers[name][0] * (parameter - fishers[name][1]) ** 2).sum()
                    )
            loss = loss + ewc
        if x[ids1][ids2].size(0) != 0:
            loss.backward()
            optimizer.step()
        optimizer.zero_grad()
        outputs_per_batch.append(outputs.detach())
    return outputs_per_batch, dict(reference.named_parameters())


@pytest.fixture
def matches_reference(model, batches):
    """``matches_reference(method, fishers=..., fisher_alpha=...)``: runs ``method`` (built on
    ``model``) over ``batches`` and the reference's steps from a copy of the untouched model
    (lr 0.01, the default margins), and asserts equal logits and updated parameters."""
    source = copy.deepcopy(model)

    def check(method, *, fishers, fisher_alpha, parameter_tolerance=(None, None)):
        logits = [method.predict(batch) for batch in batches]
        expected_logits, expected_parameters = _reference_steps(
            source,
            batches,
            fishers=fishers,
            fisher_alpha=fisher_alpha,
            e_margin=0.4 * math.log(10),
            d_margin=0.4,
            lr=0.01,
        )
        for ours, theirs in zip(logits, expected_logits, strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
        rtol, atol = parameter_tolerance
        for name, parameter in model.named_parameters():
            torch.testing.assert_close(
                parameter.detach(), expected_parameters[name].detach(), rtol=rtol, atol=atol
            )

    return check


def test_fisher_and_updates_match_the_reference_transcription(
    model, batches, fashion_images, matches_reference
):
    source = copy.deepcopy(model)
    clean_uint8 = (fashion_images[0][:96] * 255).round().to(torch.uint8)
    options = dict(learning_rate=0.01, redundancy_threshold=0.4, fisher_alpha=50.0, seed=3)
    method = EfficientAntiForgetting(
        model=model, num_fisher_samples=96, fisher_batch_size=32, **options
    )
    fisher = method.measure_fisher(clean_uint8)
    expected_fisher = _reference_fisher(source, clean_uint8, count=96, batch_size=32, seed=3)
    names = [
        f"{name}.{suffix}"
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.BatchNorm2d)
        for suffix in ("weight", "bias")
    ]
    assert len(fisher) == len(names)
    for value, name in zip(fisher, names, strict=True):
        torch.testing.assert_close(value, expected_fisher[name][0], rtol=1e-5, atol=1e-9)
    assert any(float(value.abs().max()) > 0 for value in fisher)

    method.fishers = fisher
    matches_reference(
        method, fishers=expected_fisher, fisher_alpha=50.0, parameter_tolerance=(1e-4, 1e-6)
    )
    # Both filters were exercised: some samples reliable, not all of them kept.
    assert 0 < method.selected_count < method.reliable_count < 144


def test_without_fisher_it_is_eta_and_the_threshold_matters(model, matches_reference):
    method = EfficientAntiForgetting(model=model, fisher_alpha=0.0, learning_rate=0.01)
    assert not method.needs_training_data
    matches_reference(method, fishers=None, fisher_alpha=0)


def test_reset_returns_model_optimizer_and_average(model, batches):
    source = copy.deepcopy(model.state_dict())
    method = EfficientAntiForgetting(model=model, fisher_alpha=0.0, learning_rate=0.01)
    first = method.predict(batches[0])
    for batch in batches[1:]:
        method.predict(batch)
    changed = [
        key for key, value in model.state_dict().items() if not torch.equal(value, source[key])
    ]
    assert changed
    method.reset()
    for key, value in model.state_dict().items():
        assert torch.equal(value, source[key]), key
    assert method.probability_average is None and not method.optimizer.state
    torch.testing.assert_close(method.predict(batches[0]), first)


def test_prepare_caches_the_fisher(model, tmp_path, fashion_images):
    clean_uint8 = (fashion_images[0][:64] * 255).round().to(torch.uint8)
    calls = []

    def training_images():
        calls.append(1)
        return clean_uint8, torch.zeros(len(clean_uint8), dtype=torch.long)

    for _ in range(2):
        method = EfficientAntiForgetting(
            model=copy.deepcopy(model), num_fisher_samples=64, fisher_batch_size=32
        )
        method.prepare(training_images, cache_key="quick", cache_dir=str(tmp_path))
        assert method.fishers is not None and method.cache_path.is_file()
    assert len(calls) == 1
    with pytest.raises(ConfigurationError, match="no Fisher"):
        EfficientAntiForgetting(model=copy.deepcopy(model)).predict(fashion_images[0][:4])


def test_batch_of_one_and_bad_options_are_clear_errors(model, batches):
    with pytest.raises(ConfigurationError, match="at least 2 images"):
        EfficientAntiForgetting(model=model, fisher_alpha=0.0).predict(batches[0][:1])
    with pytest.raises(ConfigurationError, match="redundancy_threshold"):
        EfficientAntiForgetting(model=model, redundancy_threshold=-1)
    with pytest.raises(ConfigurationError, match="BatchNorm2d"):
        EfficientAntiForgetting(model=torch.nn.Linear(3, 2))
    assert batch_norm_layers(model)  # the fixture itself is a BN model
