"""SAR: sharpness-aware and reliable entropy minimization (Niu, Wu, Zhang, Wen, Chen, Zhao, Tan,
"Towards Stable Test-Time Adaptation in Dynamic Wild World", ICLR 2023, arXiv 2302.12400;
reference repository github mr-eggplant/SAR).

The norm layers' affine parameters are trained at test time, one SAM update per batch:
BatchNorm2d layers normalize with the test batch's statistics (as in TENT), GroupNorm and
LayerNorm layers are used as they are (SAR's recommended models at batch size 1 and under
label shift are GN/LN ones; a BN model needs at least 2 images per batch here).

For each batch (Algorithm 1 / the reference's ``forward_and_adapt_sar``):

1. Forward; the entropy ``H(x)`` of each sample; the reliable samples are those with
   ``H(x) < E0 = entropy_margin * ln C`` (paper: 0.4 ln C). ``loss = mean H`` over them.
2. SAM's first step (Foret et al. 2021): the gradient ``g`` of that loss, the perturbation
   ``e = rho * g / (||g||_2 + 1e-12)`` over all trained parameters together, ``theta += e``.
3. Forward again at ``theta + e``; among the step-1 reliable samples, those still below E0
   form ``loss2 = mean H``; its gradient, taken at ``theta + e``, is applied at ``theta`` by
   SGD with momentum 0.9 (reference: lr 0.00025 at batch 64 for ResNet-50-BN).
4. Model recovery: ``ema <- 0.9 ema + 0.1 loss2`` (the first finite ``loss2`` starts it);
   when ``ema < reset_threshold`` (0.2) the model and optimizer return to the source state.
   As in the reference, the moving average itself survives that recovery (so recovery
   repeats while it stays low); :meth:`reset` between cells clears it.

When no sample is reliable both gradients are zero, so SAM perturbs nothing and SGD moves the
parameters by its momentum alone, as the reference's update of an empty mean does.

All BN/GN/LN affine parameters are trained. The reference additionally leaves out the last
stage of a ResNet-50 (``layer4``) and the last ViT blocks by module name; that name-based
choice does not carry to other architectures and is not reproduced.

The logits returned for a batch are those of the first forward, as in the reference. Losses
are computed in float32, the parameters stay float32 under autocast, and a non-finite loss
stops the job with a clear error.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

from robustbench_bn.errors import ConfigurationError
from robustbench_bn.methods.base import Method, batch_norm_layers, check_finite_loss
from robustbench_bn.methods.eata import check_positive, use_batch_statistics
from robustbench_bn.methods.tent import softmax_entropy

log = logging.getLogger(__name__)
#: SAR's moving average of the second loss (its model-recovery criterion) uses 0.9.
LOSS_AVERAGE_DECAY = 0.9
#: SAM's guard against a zero gradient norm (Foret et al.'s reference implementation).
GRADIENT_NORM_EPSILON = 1e-12
NORM_LAYERS = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)


class SharpnessAwareReliable(Method):
    """See the module docstring."""

    def __init__(
        self,
        *,
        model: nn.Module,
        learning_rate: float = 0.00025,
        momentum: float = 0.9,
        rho: float = 0.05,
        entropy_margin: float = 0.4,
        reset_threshold: float = 0.2,
    ) -> None:
        check_positive("learning_rate", learning_rate)
        check_positive("momentum", momentum, zero=True)
        check_positive("rho", rho)
        check_positive("entropy_margin", entropy_margin)
        check_positive("reset_threshold", reset_threshold, zero=True)
        super().__init__(model=model)
        model.requires_grad_(False)
        use_batch_statistics(batch_norm_layers(model), "sar")
        self.trainable: list[nn.Parameter] = []
        for module in model.modules():
            if isinstance(module, NORM_LAYERS):
                for parameter in (module.weight, module.bias):
                    if parameter is not None:
                        self.trainable.append(parameter.requires_grad_(True))
        if not self.trainable:
            raise ConfigurationError(
                "method=sar trains the affine parameters of BatchNorm2d, GroupNorm or "
                "LayerNorm layers and found none in this model."
            )
        self.optimizer = torch.optim.SGD(self.trainable, lr=learning_rate, momentum=momentum)
        self.learning_rate = learning_rate
        self.rho = rho
        self.entropy_margin = entropy_margin
        self.reset_threshold = reset_threshold
        self.loss_average: float | None = None
        #: How often model recovery fired since the last reset (for logs and tests).
        self.recoveries = 0
        self._hyperparameters = {
            "learning_rate": learning_rate,
            "momentum": momentum,
            "optimizer": "sam_sgd",
            "rho": rho,
            "entropy_margin": entropy_margin,
            "reset_threshold": reset_threshold,
        }

    def _restore_source(self) -> None:
        super().reset()
        self.optimizer.state.clear()

    def reset(self) -> None:
        self._restore_source()
        self.loss_average = None
        self.recoveries = 0

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(False), torch.enable_grad():
            images = images.clone()  # an inference tensor cannot enter autograd
            logits = self.model(images)
            entropy = softmax_entropy(logits.float())
            margin = self.entropy_margin * math.log(logits.shape[1])
            reliable = entropy < margin
            first_loss = _mean_or_zero(entropy[reliable])
            check_finite_loss(first_loss, method="sar", learning_rate=self.learning_rate)
            gradients = torch.autograd.grad(first_loss, self.trainable, allow_unused=True)
            originals = self._perturb(gradients)
            second_entropy = softmax_entropy(self.model(images).float())[reliable]
            second_loss = _mean_or_zero(second_entropy[second_entropy < margin])
            check_finite_loss(second_loss, method="sar", learning_rate=self.learning_rate)
            second_loss.backward()
            with torch.no_grad():
                for parameter, original in zip(self.trainable, originals, strict=True):
                    parameter.copy_(original)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if bool((second_entropy < margin).any()):
                value = float(second_loss.detach())
                self.loss_average = (
                    value
                    if self.loss_average is None
                    else LOSS_AVERAGE_DECAY * self.loss_average + (1 - LOSS_AVERAGE_DECAY) * value
                )
            if self.loss_average is not None and self.loss_average < self.reset_threshold:
                self._restore_source()
                self.recoveries += 1
                log.debug(
                    "sar: loss average %.4f below the threshold; model recovered",
                    self.loss_average,
                )
        return logits.detach()

    def _perturb(self, gradients: tuple[torch.Tensor | None, ...]) -> list[torch.Tensor]:
        """SAM's ascent step: move every parameter by rho * g / ||g||; returns the originals."""
        present = [gradient for gradient in gradients if gradient is not None]
        norm = torch.linalg.vector_norm(torch.stack([g.norm(2) for g in present]), 2)
        scale = self.rho / (norm + GRADIENT_NORM_EPSILON)
        originals = []
        with torch.no_grad():
            for parameter, gradient in zip(self.trainable, gradients, strict=True):
                originals.append(parameter.detach().clone())
                if gradient is not None:
                    parameter.add_(gradient * scale)
        return originals

    def row_fields(self) -> dict[str, Any]:
        return dict(self._hyperparameters)


def _mean_or_zero(values: torch.Tensor) -> torch.Tensor:
    """The mean, or a zero still connected to the graph (zero gradients) when empty: the
    reference's mean of an empty selection yields exactly those zero gradients."""
    return values.sum() / max(len(values), 1)
