"""BatchNorm statistics adaptation: test-batch statistics, n-sample rectification, source prior.

Implements three published variants behind one class:

* ``statistics="batch"``: every BN layer normalizes each test batch with that batch's own
  mean and (biased) variance, as train-mode BN does. Schneider et al. 2020 ("Improving
  robustness against common corruptions by covariate shift adaptation", NeurIPS, arXiv
  2006.16971); Nado et al. 2020; the "norm"/"BN" row of TENT (Wang et al. 2021).
* ``statistics="samples"``: once per cell, re-estimate every BN layer's running mean and
  unbiased variance from ``n_samples`` random images of that cell, in one forward pass with
  a cumulative average (``momentum=None``) from reset statistics, then evaluate the whole cell
  in eval mode with those statistics frozen. Benz, Zhang, Karjauv, Kweon 2021 ("Revisiting
  Batch Normalization for Improving Corruption Robustness", WACV, arXiv 2010.03630), n=32.
* ``prior=N`` (either mode): mix source and target statistics,
  ``mu = lam*mu_source + (1-lam)*mu_target`` (same for the variance) with
  ``lam = N / (N + n)``, n being the test batch size (batch mode) or ``n_samples``
  (samples mode). N=0 is full adaptation; ``prior=inf`` is the source model exactly.
  Schneider et al. 2020.

Batch size 1 works wherever the statistics do not come from the batch alone: ``prior > 0``
(Schneider et al.'s remedy for small batches) and ``statistics="samples"``. With ``prior=0``
a single image would be normalized by its own spatial statistics, which is instance
normalization rather than any of the papers' methods, so it is refused.

In batch mode the target variance is the biased batch variance, so N=0 is exactly train-mode
BN; in samples mode it is the unbiased variance that PyTorch's running statistics keep.
"""

from __future__ import annotations

import math
import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_bn.errors import ConfigurationError
from robustbench_bn.methods.base import Method, batch_norm_layers

STATISTICS_MODES = ("batch", "samples")


def _source_weight(prior: float, count: int) -> float:
    """lambda = N / (N + n); 1 for N = inf (inf / inf would be nan)."""
    return 1.0 if math.isinf(prior) else prior / (prior + count)


def _mixed_statistics_forward(prior: float):
    """A BatchNorm2d forward that mixes the layer's running statistics with the batch's."""

    def forward(layer: nn.BatchNorm2d, inputs: torch.Tensor) -> torch.Tensor:
        batch_size = inputs.shape[0]
        if prior == 0:
            if batch_size < 2:
                raise ConfigurationError(
                    "method=bn with method.prior=0 normalizes with test-batch statistics alone "
                    "and needs at least 2 images per batch, got 1. For batch size 1 mix in the "
                    "source statistics (method.prior=16, Schneider et al. 2020) or use "
                    "method.statistics=samples; or raise runner.batch_size (the last batch of "
                    "a cell has 1 image when dataset.n_examples % runner.batch_size == 1)."
                )
            return F.batch_norm(inputs, None, None, layer.weight, layer.bias, True, 0.0, layer.eps)
        weight = _source_weight(prior, batch_size)
        if weight == 1.0:
            return F.batch_norm(
                inputs,
                layer.running_mean,
                layer.running_var,
                layer.weight,
                layer.bias,
                False,
                0.0,
                layer.eps,
            )
        batch_variance, batch_mean = torch.var_mean(inputs, dim=(0, 2, 3), correction=0)
        mean = weight * layer.running_mean + (1 - weight) * batch_mean
        variance = weight * layer.running_var + (1 - weight) * batch_variance
        return F.batch_norm(inputs, mean, variance, layer.weight, layer.bias, False, 0.0, layer.eps)

    return forward


class BatchNormAdaptation(Method):
    """See the module docstring for the three variants and their papers."""

    def __init__(
        self,
        *,
        model: nn.Module,
        statistics: str = "batch",
        n_samples: int = 32,
        prior: float = 0.0,
    ) -> None:
        if statistics not in STATISTICS_MODES:
            raise ConfigurationError(
                f"method.statistics must be one of {STATISTICS_MODES}, got {statistics!r}."
            )
        if math.isnan(prior) or prior < 0:
            raise ConfigurationError(f"method.prior (N) must be >= 0, got {prior}.")
        # n=1 is the left end of Benz et al.'s accuracy-against-n curve: one image still gives
        # every channel H*W values (experiment=benz2021_n_samples).
        if statistics == "samples" and (
            isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1
        ):
            raise ConfigurationError(
                "method.n_samples must be an integer >= 1 for statistics=samples, "
                f"got {n_samples!r}."
            )
        super().__init__(model=model)
        self.statistics = statistics
        self.n_samples = n_samples
        self.prior = float(prior)
        self.layers = batch_norm_layers(model)
        if not self.layers:
            raise ConfigurationError("method=bn needs a model with BatchNorm2d layers; found none.")
        if statistics == "samples":
            self.cell_samples = n_samples
        else:
            forward = _mixed_statistics_forward(self.prior)
            for layer in self.layers:
                layer.forward = types.MethodType(forward, layer)

    def adapt(self, samples: torch.Tensor) -> None:
        if self.statistics != "samples":
            return
        source_statistics = [
            (layer.running_mean.clone(), layer.running_var.clone()) for layer in self.layers
        ]
        momenta = [layer.momentum for layer in self.layers]
        for layer in self.layers:
            layer.reset_running_stats()
            layer.momentum = None  # cumulative average: the statistics of exactly these samples
            layer.train()
        with torch.no_grad():
            self.model(samples)
        weight = _source_weight(self.prior, samples.shape[0])
        for layer, momentum, (source_mean, source_variance) in zip(
            self.layers, momenta, source_statistics, strict=True
        ):
            layer.momentum = momentum
            layer.eval()
            if weight > 0:
                layer.running_mean.mul_(1 - weight).add_(weight * source_mean)
                layer.running_var.mul_(1 - weight).add_(weight * source_variance)

    def row_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"statistics": self.statistics, "prior": self.prior}
        if self.statistics == "samples":
            fields["n_samples"] = self.n_samples
        return fields
