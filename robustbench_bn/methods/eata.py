"""EATA: efficient anti-forgetting test-time adaptation (Niu, Wu, Zhang, Chen, Zheng, Zhao, Tan,
"Efficient Test-Time Model Adaptation without Forgetting", ICML 2022, arXiv 2204.02610;
reference repository github mr-eggplant/EATA).

Like TENT, every BatchNorm2d layer normalizes with the test batch's statistics and only the
BN affine parameters are trained, one update per batch. EATA changes what the update sees:

* **Reliable samples** (Eqn. 3): only samples whose softmax entropy is below the margin
  ``E0 = entropy_margin * ln C`` (C classes, read from the logits; paper: 0.4 ln C) enter
  the loss, each weighted by ``1 / exp(H(x) - E0)`` (the weight is a constant, no gradient).
* **Non-redundant samples** (Eqns. 4-5): a moving average ``m`` of the selected samples'
  probability vectors is kept (``m <- 0.9 m + 0.1 mean(p)``, the first batch's mean starts
  it); a reliable sample is dropped when ``|cos(m, p(x))| >= redundancy_threshold``. The
  moving average is updated with the samples that pass both filters.
* **Anti-forgetting** (Eqns. 8-9): ``fisher_alpha * sum_i F_i (theta_i - theta_i^source)^2``
  is added to the loss. ``F`` is the diagonal Fisher of the BN affine parameters, measured
  once per model in :meth:`EfficientAntiForgetting.prepare` from ``num_fisher_samples``
  random clean training images in batches of ``fisher_batch_size``: the model in the same
  batch-statistics mode, cross-entropy against its own argmax, the squared gradient of each
  batch's mean loss, averaged over the batches (as the reference does). It is cached on disk
  by model and by these settings, like dmc's source quantiles. ``fisher_alpha: 0`` is the
  paper's ETA (no regularizer, no training data needed).
* SGD with momentum 0.9 (the reference: lr 0.00025 at batch 64 on ImageNet); the update is
  skipped when no sample survives the filters (the momentum buffer is then left alone).

The logits returned for a batch are those of the forward pass before its update, as in the
reference. The loss is computed in float32 and the parameters stay float32 under autocast;
a non-finite loss stops the job with a clear error. :meth:`reset` restores the model, the
optimizer and the moving average of probabilities (the reference keeps that average across
its per-shift resets; a per-cell reset here returns every piece of state to the source).
"""

from __future__ import annotations

import logging
import math
import types
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_bn.errors import ConfigurationError
from robustbench_bn.methods.base import (
    Method,
    TrainingImages,
    batch_norm_layers,
    check_finite_loss,
)
from robustbench_bn.methods.tent import softmax_entropy
from robustbench_bn.utils.files import atomic_write, file_lock, stable_hash

log = logging.getLogger(__name__)
#: The moving average of the selected samples' probabilities (EATA's Eqn. 4 uses 0.9).
PROBABILITY_AVERAGE_DECAY = 0.9


def use_batch_statistics(layers: list[nn.BatchNorm2d], method_name: str) -> None:
    """Make every layer normalize with its input batch's statistics, never its running ones
    (TENT's configuration, which EATA and SAR inherit); the running buffers stay untouched."""

    def forward(layer: nn.BatchNorm2d, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.shape[0] < 2:
            raise ConfigurationError(
                f"{method_name} normalizes BatchNorm layers with test-batch statistics and "
                "needs at least 2 images per batch; raise runner.batch_size."
            )
        return F.batch_norm(inputs, None, None, layer.weight, layer.bias, True, 0.0, layer.eps)

    for layer in layers:
        layer.forward = types.MethodType(forward, layer)


def check_positive(name: str, value: Any, *, integer: bool = False, zero: bool = False) -> None:
    """A clear error for an option that must be a positive (or non-negative) number."""
    kinds = (int,) if integer else (int, float)
    if (
        isinstance(value, bool)
        or not isinstance(value, kinds)
        or value < 0
        or (not zero and value == 0)
    ):
        expected = ("an integer" if integer else "a number") + (" >= 0" if zero else " > 0")
        raise ConfigurationError(f"method.{name} must be {expected}, got {value!r}.")


class EfficientAntiForgetting(Method):
    """EATA (ETA with ``fisher_alpha=0``); see the module docstring."""

    def __init__(
        self,
        *,
        model: nn.Module,
        learning_rate: float = 0.00025,
        momentum: float = 0.9,
        entropy_margin: float = 0.4,
        redundancy_threshold: float = 0.4,
        fisher_alpha: float = 2000.0,
        num_fisher_samples: int = 2000,
        fisher_batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        check_positive("learning_rate", learning_rate)
        check_positive("momentum", momentum, zero=True)
        check_positive("entropy_margin", entropy_margin)
        check_positive("redundancy_threshold", redundancy_threshold)
        check_positive("fisher_alpha", fisher_alpha, zero=True)
        check_positive("num_fisher_samples", num_fisher_samples, integer=True)
        check_positive("fisher_batch_size", fisher_batch_size, integer=True)
        if fisher_batch_size < 2:
            raise ConfigurationError(
                "method.fisher_batch_size must be >= 2: the Fisher is measured with "
                f"batch statistics, got {fisher_batch_size}."
            )
        super().__init__(model=model)
        self.layers = batch_norm_layers(model)
        if not self.layers:
            raise ConfigurationError("method=eata needs a model with BatchNorm2d layers.")
        model.requires_grad_(False)
        use_batch_statistics(self.layers, "eata")
        self.trainable: list[nn.Parameter] = []
        for layer in self.layers:
            for parameter in (layer.weight, layer.bias):
                if parameter is not None:
                    self.trainable.append(parameter.requires_grad_(True))
        self.anchors = [parameter.detach().clone() for parameter in self.trainable]
        self.optimizer = torch.optim.SGD(self.trainable, lr=learning_rate, momentum=momentum)
        self.learning_rate = learning_rate
        self.entropy_margin = entropy_margin
        self.redundancy_threshold = redundancy_threshold
        self.fisher_alpha = fisher_alpha
        self.num_fisher_samples = num_fisher_samples
        self.fisher_batch_size = fisher_batch_size
        self.seed = seed
        self.needs_training_data = fisher_alpha > 0
        self.fishers: list[torch.Tensor] | None = None
        self.cache_path: Path | None = None
        self.probability_average: torch.Tensor | None = None
        #: Samples that passed the reliability filter, and both filters, since the last reset.
        self.reliable_count = 0
        self.selected_count = 0
        self._hyperparameters = {
            "learning_rate": learning_rate,
            "momentum": momentum,
            "optimizer": "sgd",
            "entropy_margin": entropy_margin,
            "redundancy_threshold": redundancy_threshold,
            "fisher_alpha": fisher_alpha,
            "num_fisher_samples": num_fisher_samples if fisher_alpha > 0 else 0,
            "fisher_batch_size": fisher_batch_size if fisher_alpha > 0 else 0,
        }

    # --- source side ----------------------------------------------------------------------

    def fisher_settings(self) -> dict[str, Any]:
        """The settings that change the stored Fisher (part of its cache key)."""
        return {
            "num_fisher_samples": self.num_fisher_samples,
            "fisher_batch_size": self.fisher_batch_size,
            "seed": self.seed,
        }

    def prepare(self, training_images: TrainingImages, *, cache_key: str, cache_dir: str) -> None:
        if self.fisher_alpha == 0:
            return
        key = stable_hash([cache_key, self.fisher_settings()])
        path = Path(cache_dir).expanduser() / "eata" / f"fisher-{key}.pt"
        # Parallel jobs of a sweep measure the Fisher once; the others wait and load it.
        with file_lock(path.with_suffix(".lock")):
            if not path.is_file():
                images, _ = training_images()
                fishers = self.measure_fisher(images)
                atomic_write(path, lambda temporary: torch.save(fishers, temporary))
                log.info("Stored the eata Fisher at %s", path)
        fishers = torch.load(path, map_location="cpu", weights_only=True)
        expected = [tuple(parameter.shape) for parameter in self.trainable]
        found = (
            [tuple(f.shape) for f in fishers]
            if isinstance(fishers, list) and all(isinstance(f, torch.Tensor) for f in fishers)
            else None
        )
        if found != expected:
            raise ConfigurationError(
                f"The cached eata Fisher in {path} does not fit this model (expected shapes "
                f"{expected}, found {found}). Delete the file to measure it again."
            )
        device = self.trainable[0].device
        self.fishers = [fisher.to(device) for fisher in fishers]
        self.cache_path = path

    def measure_fisher(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Diagonal Fisher of the BN affine parameters on random clean images (uint8 NCHW)."""
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ConfigurationError(
                "eata measures its Fisher on the clean training split as uint8 images "
                f"[N, C, H, W]; got {images.dtype} of shape {tuple(images.shape)}."
            )
        count = min(self.num_fisher_samples, len(images))
        generator = torch.Generator().manual_seed(self.seed)
        chosen = torch.randperm(len(images), generator=generator)[:count]
        device = self.trainable[0].device
        sums = [torch.zeros_like(parameter) for parameter in self.trainable]
        batches = 0
        with torch.inference_mode(False), torch.enable_grad():
            for start in range(0, count, self.fisher_batch_size):
                batch = images[chosen[start : start + self.fisher_batch_size]].float().div_(255)
                if len(batch) < 2:
                    break  # batch statistics of one image: the reference never meets this
                logits = self.model(batch.to(device))
                loss = F.cross_entropy(logits, logits.argmax(1))
                gradients = torch.autograd.grad(loss, self.trainable)
                for total, gradient in zip(sums, gradients, strict=True):
                    total += gradient.detach() ** 2
                batches += 1
        return [total.div_(batches).cpu() for total in sums]

    # --- test side ------------------------------------------------------------------------

    def reset(self) -> None:
        super().reset()
        self.optimizer.state.clear()
        self.probability_average = None
        self.reliable_count = 0
        self.selected_count = 0

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        if self.fisher_alpha > 0 and self.fishers is None:
            raise ConfigurationError(
                "eata has no Fisher: call prepare(training_images, cache_key=..., "
                "cache_dir=...) before predict (the runner does this), or set "
                "method.fisher_alpha=0 for ETA."
            )
        with torch.inference_mode(False), torch.enable_grad():
            images = images.clone()  # an inference tensor cannot enter autograd
            logits = self.model(images)
            entropy = softmax_entropy(logits.float())
            margin = self.entropy_margin * math.log(logits.shape[1])
            reliable = entropy < margin
            probabilities = logits.detach().float()[reliable].softmax(1)
            keep = torch.ones(len(probabilities), dtype=torch.bool, device=logits.device)
            if self.probability_average is not None:
                similarity = F.cosine_similarity(
                    self.probability_average.unsqueeze(0), probabilities, dim=1
                )
                keep = similarity.abs() < self.redundancy_threshold
            selected_entropy = entropy[reliable][keep]
            self._update_probability_average(probabilities[keep])
            self.reliable_count += int(reliable.sum())
            self.selected_count += len(selected_entropy)
            if len(selected_entropy):
                weight = torch.exp(-(selected_entropy.detach() - margin))
                loss = (selected_entropy * weight).mean()
                if self.fishers is not None:
                    loss = loss + self.fisher_alpha * sum(
                        (fisher * (parameter - anchor) ** 2).sum()
                        for fisher, parameter, anchor in zip(
                            self.fishers, self.trainable, self.anchors, strict=True
                        )
                    )
                check_finite_loss(loss, method="eata", learning_rate=self.learning_rate)
                loss.backward()
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return logits.detach()

    def _update_probability_average(self, probabilities: torch.Tensor) -> None:
        if not len(probabilities):
            return
        batch_mean = probabilities.mean(0)
        if self.probability_average is None:
            self.probability_average = batch_mean
        else:
            self.probability_average = (
                PROBABILITY_AVERAGE_DECAY * self.probability_average
                + (1 - PROBABILITY_AVERAGE_DECAY) * batch_mean
            )

    def row_fields(self) -> dict[str, Any]:
        return dict(self._hyperparameters)
