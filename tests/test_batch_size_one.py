"""Batch size 1: allowed where a method's statistics do not come from the batch alone (bn with
a source prior N > 0 or statistics=samples, source, dmc with scope=sample); refused with an
error naming the alternative everywhere else (bn with N=0, dmc with scope=batch, tent)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from robustbench_bn.errors import ConfigurationError
from robustbench_bn.methods.bn import BatchNormAdaptation
from robustbench_bn.methods.dmc import DistributionMismatchCorrection
from robustbench_bn.methods.source import Source
from robustbench_bn.methods.tent import Tent
from robustbench_bn.runner import run


@pytest.fixture
def images(fashion_images: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    noisy = fashion_images[0][:8] + 0.3 * torch.randn(
        fashion_images[0][:8].shape, generator=generator
    )
    return noisy.clamp(0, 1)


def _one_by_one(method, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([method.predict(image[None]) for image in images])


def test_bn_with_a_source_prior_handles_single_images(quick_model, images):
    method = BatchNormAdaptation(model=copy.deepcopy(quick_model), prior=16)
    single = _one_by_one(method, images)
    assert torch.isfinite(single).all()
    # Each image gets its own mixture (lambda = 16/17), not the batch's.
    assert not torch.allclose(single, method.predict(images), atol=1e-4)
    source = Source(model=copy.deepcopy(quick_model)).predict(images)
    assert not torch.allclose(single, source, atol=1e-4)


def test_bn_with_an_infinite_prior_is_the_source_model(quick_model, images):
    method = BatchNormAdaptation(model=copy.deepcopy(quick_model), prior=math.inf)
    source = Source(model=copy.deepcopy(quick_model)).predict(images)
    torch.testing.assert_close(_one_by_one(method, images), source)
    torch.testing.assert_close(method.predict(images), source)
    assert method.row_fields()["prior"] == math.inf


def test_bn_samples_predicts_single_images_as_in_a_batch(quick_model, images):
    method = BatchNormAdaptation(
        model=copy.deepcopy(quick_model), statistics="samples", n_samples=8
    )
    method.adapt(images)
    torch.testing.assert_close(_one_by_one(method, images), method.predict(images))


def test_bn_without_a_prior_refuses_single_images_naming_the_alternatives(quick_model, images):
    method = BatchNormAdaptation(model=copy.deepcopy(quick_model), prior=0)
    with pytest.raises(ConfigurationError, match="method.prior=16.*statistics=samples"):
        method.predict(images[:1])


def test_bn_refuses_a_nan_prior(quick_model):
    with pytest.raises(ConfigurationError, match="prior"):
        BatchNormAdaptation(model=copy.deepcopy(quick_model), prior=float("nan"))


def test_tent_refuses_single_images(quick_model, images):
    with pytest.raises(ConfigurationError, match="at least 2 images"):
        Tent(model=copy.deepcopy(quick_model)).predict(images[:1])


def test_dmc_sample_scope_handles_single_images_and_batch_scope_refuses(
    quick_model, images, tmp_path
):
    from robustbench_bn.data.fashion_mnist import load_fashion_mnist

    train = load_fashion_mnist("train")
    training = (train.images[:128].clone(), train.labels[:128].clone())
    for scope in ("sample", "batch"):
        method = DistributionMismatchCorrection(
            model=copy.deepcopy(quick_model), scope=scope, num_source_images=128, num_quantiles=32
        )
        method.prepare(lambda: training, cache_key="quick", cache_dir=str(tmp_path))
        if scope == "sample":
            # Per-image correction: an image's logits do not depend on its batch (up to how
            # tied activations, e.g. ReLU zeros, are ranked, and float summation order).
            single, batched = _one_by_one(method, images), method.predict(images)
            torch.testing.assert_close(single, batched, atol=0.05, rtol=0)
            assert torch.equal(single.argmax(1), batched.argmax(1))
        else:
            with pytest.raises(ConfigurationError, match="method.scope=sample"):
                method.predict(images[:1])


def test_runner_evaluates_with_batch_size_one(make_config):
    rows = run(
        make_config(
            "dataset.n_examples=12",
            "runner.batch_size=1",
            "dataset.corruptions=[gaussian_noise]",
            "dataset.severities=[5]",
            "method=bn",
            "method.prior=16",
            "runner.order=shuffled",
        )
    )
    assert (rows["batch_size"] == 1).all() and (rows["n"] == 12).all()


def test_runner_refusal_reaches_the_user_unwrapped(make_config):
    with pytest.raises(ConfigurationError, match="method.prior=16"):
        run(
            make_config(
                "dataset.n_examples=12",
                "runner.batch_size=1",
                "dataset.corruptions=[gaussian_noise]",
                "dataset.severities=[5]",
                "method=bn",
            )
        )
