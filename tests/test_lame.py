"""lame (methods/lame.py) against a hand transcription of the reference (Boudiaf et al., CVPR 2022,
github fiveai/LAME: kNN_affinity, rbf_affinity, linear_affinity, laplacian_optimization,
entropy_energy)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustbench_bn.errors import ConfigurationError
from robustbench_bn.methods.lame import LaplacianAdjustedMaximumLikelihood


@pytest.fixture
def model(quick_model: nn.Module) -> nn.Module:
    return copy.deepcopy(quick_model).eval()


@pytest.fixture
def images(fashion_images: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return (fashion_images[0][:64] * 0.6 + 0.2).clamp(0, 1)


def _reference_knn(features: torch.Tensor, knn: int) -> torch.Tensor:
    count = features.size(0)
    distances = torch.norm(features.unsqueeze(0) - features.unsqueeze(1), dim=-1, p=2)
    neighbours = min(knn + 1, count)
    index = distances.topk(neighbours, -1, largest=False).indices[:, 1:]
    affinity = torch.zeros(count, count)
    affinity.scatter_(dim=-1, index=index, value=1.0)
    return affinity


def _reference_rbf(features: torch.Tensor, knn: int) -> torch.Tensor:
    distances = torch.norm(features.unsqueeze(0) - features.unsqueeze(1), dim=-1, p=2)
    neighbours = min(knn, features.size(0))
    kth_distance = distances.topk(k=neighbours, dim=-1, largest=False).values[:, -1]
    sigma = kth_distance.mean()
    return torch.exp(-(distances**2) / (2 * sigma**2))


def _reference_linear(features: torch.Tensor, knn: int) -> torch.Tensor:
    return torch.matmul(features, features.t())


_REFERENCE_AFFINITIES = {"knn": _reference_knn, "rbf": _reference_rbf, "linear": _reference_linear}


def _reference_lame(
    probabilities, features, *, affinity="knn", knn=5, bound_lambda=1.0, max_steps=100
):
    unary = -torch.log(probabilities + 1e-10)
    kernel = _REFERENCE_AFFINITIES[affinity](F.normalize(features, p=2, dim=-1), knn)
    old_energy = float("inf")
    assignments = (-unary).softmax(-1)
    steps = 0
    for step in range(max_steps):
        pairwise = bound_lambda * kernel.matmul(assignments)
        assignments = (-unary + pairwise).softmax(-1)
        energy = (
            unary * assignments
            - bound_lambda * pairwise * assignments
            + assignments * torch.log(assignments.clip(1e-20))
        ).sum()
        steps = step + 1
        if step > 1 and abs(energy.item() - old_energy) <= 1e-8 * abs(old_energy):
            break
        old_energy = energy.item()
    return assignments, steps


def _source_outputs(model, images):
    features = []
    handle = model.network.head[2].register_forward_pre_hook(
        lambda module, inputs: features.append(inputs[0])
    )
    with torch.no_grad():
        logits = model(images)
    handle.remove()
    return logits, features[0]


@pytest.mark.parametrize(("knn", "bound_lambda"), [(5, 1.0), (3, 0.5)])
def test_assignments_match_the_reference_transcription(model, images, knn, bound_lambda):
    source_state = copy.deepcopy(model.state_dict())
    logits, features = _source_outputs(model, images)
    expected, steps = _reference_lame(
        logits.softmax(1), features, knn=knn, bound_lambda=bound_lambda
    )
    method = LaplacianAdjustedMaximumLikelihood(model=model, knn=knn, bound_lambda=bound_lambda)
    assert method.classifier is model.network.head[2]  # found without naming it
    adjusted = method.predict(images)
    torch.testing.assert_close(adjusted.exp(), expected, rtol=1e-4, atol=1e-6)
    assert 2 < steps < 100  # the stopping rule was reached, not the step limit
    # LAME changed predictions and the model stayed exactly as it was.
    assert (adjusted.argmax(1) != logits.argmax(1)).any()
    for key, value in model.state_dict().items():
        assert torch.equal(value, source_state[key]), key


@pytest.mark.parametrize(("affinity", "knn"), [("rbf", 5), ("rbf", 2), ("linear", 5)])
def test_dense_affinities_match_the_reference_transcription(model, images, affinity, knn):
    logits, features = _source_outputs(model, images)
    expected, steps = _reference_lame(logits.softmax(1), features, affinity=affinity, knn=knn)
    method = LaplacianAdjustedMaximumLikelihood(model=model, affinity=affinity, knn=knn)
    adjusted = method.predict(images)
    torch.testing.assert_close(adjusted.exp(), expected, rtol=1e-4, atol=1e-6)
    assert steps < 100
    assert method.row_fields()["affinity"] == affinity
    # Each affinity is its own graph: the three give different assignments on this batch.
    knn_graph = LaplacianAdjustedMaximumLikelihood(model=model, knn=knn).predict(images)
    assert not torch.allclose(adjusted, knn_graph)


def test_dense_affinities_keep_the_source_prediction_for_one_image(model, images):
    logits, _ = _source_outputs(model, images)
    for affinity in ("rbf", "linear"):
        single = LaplacianAdjustedMaximumLikelihood(model=model, affinity=affinity)
        adjusted = single.predict(images[:1])
        assert torch.isfinite(adjusted).all()  # sigma = 0 for one point: floored, not 0/0
        assert adjusted.argmax(1) == logits[:1].argmax(1)


def test_batch_of_one_and_zero_lambda_give_the_source_prediction(model, images):
    logits, _ = _source_outputs(model, images)
    method = LaplacianAdjustedMaximumLikelihood(model=model)
    single = method.predict(images[:1])
    # Y = softmax(log(p + 1e-10)) = p up to the reference's guard inside the logarithm.
    torch.testing.assert_close(single.exp(), logits[:1].softmax(1), rtol=1e-5, atol=1e-6)
    method.reset()  # nothing to reset, but the protocol must hold
    neutral = LaplacianAdjustedMaximumLikelihood(model=model, bound_lambda=0.0)
    torch.testing.assert_close(
        neutral.predict(images).exp(), logits.softmax(1), rtol=1e-5, atol=1e-6
    )


def test_named_classifier_and_clear_errors(model, images):
    named = LaplacianAdjustedMaximumLikelihood(model=model, classifier="network.head.2")
    auto = LaplacianAdjustedMaximumLikelihood(model=copy.deepcopy(model))
    torch.testing.assert_close(named.predict(images), auto.predict(images))
    with pytest.raises(ConfigurationError, match="names no module"):
        LaplacianAdjustedMaximumLikelihood(model=model, classifier="fc")
    with pytest.raises(ConfigurationError, match="no nn.Linear"):
        LaplacianAdjustedMaximumLikelihood(model=nn.Sequential(nn.Conv2d(3, 4, 3)))
    # The last nn.Linear registered is not the classifier: refused on the first batch.
    with pytest.raises(ConfigurationError, match="not the classifier"):
        LaplacianAdjustedMaximumLikelihood(model=_AuxiliaryHead()).predict(images[:4])
    with pytest.raises(ConfigurationError, match="not called"):
        LaplacianAdjustedMaximumLikelihood(model=_UnusedLinear(model)).predict(images[:4])
    with pytest.raises(ConfigurationError, match="knn"):
        LaplacianAdjustedMaximumLikelihood(model=model, knn=0)
    with pytest.raises(ConfigurationError, match="method.affinity must be one of"):
        LaplacianAdjustedMaximumLikelihood(model=model, affinity="gaussian")
    with pytest.raises(ConfigurationError, match="knn=1 gives sigma=0"):
        LaplacianAdjustedMaximumLikelihood(model=model, affinity="rbf", knn=1)


class _AuxiliaryHead(nn.Module):
    """A classifier followed (in registration order) by an auxiliary head of another width."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, 10)
        self.auxiliary = nn.Linear(8, 3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.features(images)
        self.auxiliary(features)
        return self.fc(features)


class _UnusedLinear(nn.Module):
    """A model with an nn.Linear registered after the classifier and never called."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = copy.deepcopy(network)
        self.unused = nn.Linear(10, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images)
