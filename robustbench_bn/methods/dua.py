"""DUA: dynamic unsupervised adaptation of normalization statistics (Mirza, Micorek, Possegger,
Bischof, "The Norm Must Go On: Dynamic Unsupervised Domain Adaptation by Normalization",
CVPR 2022, arXiv 2112.00463; reference repository github jmiemirza/DUA).

Only the BatchNorm running statistics change; no gradient, no affine parameter. Per cell:

* **Adapt** (:meth:`adapt`, on ``num_samples`` images of the cell, one image at a time as in
  the paper): before image t the momentum decays, ``m_t = m_{t-1} * decay`` from
  ``m_0 = initial_momentum``, and every BN layer's momentum is set to ``m_t + min_momentum``
  (the reference adds the constant, so the momentum never falls below it). The image becomes
  a batch of ``copies`` augmented versions (the reference's augmentations: a random crop of
  the original size from the image zero-padded by 1/8 of its size on every side, i.e. 4 px at
  32 px; a horizontal flip with probability 1/2; a rotation by a random multiple of 90
  degrees), and one forward pass in train mode updates the running mean and variance.
* **Evaluate** (:meth:`predict`): the whole cell in eval mode with those statistics frozen.
  Prediction is per image, so any ``runner.batch_size`` works, 1 included.

Reproducing the paper's protocol, with two differences written down here: the runner hands
over ``num_samples`` random images of the cell (seeded by seed and cell) where the reference
takes the first ones of the test set, and the statistics after the last of them are used
where the reference evaluates after every image and reports the best result against the test
labels. Defaults are the reference's (CIFAR-10-C / ImageNet-C): 80 images, 64 copies,
``initial_momentum`` 0.1, ``decay`` 0.94, ``min_momentum`` 0.005. The augmentations draw from a
generator seeded by ``seed`` and reset with the model, so a cell's result does not depend on
the cells before it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_bn.errors import ConfigurationError
from robustbench_bn.methods.base import Method
from robustbench_bn.methods.eata import check_positive

AUGMENTATIONS = "random_crop(pad=size/8)+hflip(0.5)+rot90(k~U{0..3})"


class DynamicUnsupervisedAdaptation(Method):
    """See the module docstring."""

    def __init__(
        self,
        *,
        model: nn.Module,
        num_samples: int = 80,
        copies: int = 64,
        initial_momentum: float = 0.1,
        decay: float = 0.94,
        min_momentum: float = 0.005,
        seed: int = 0,
    ) -> None:
        check_positive("num_samples", num_samples, integer=True)
        check_positive("copies", copies, integer=True)
        check_positive("initial_momentum", initial_momentum)
        check_positive("min_momentum", min_momentum, zero=True)
        if isinstance(decay, bool) or not isinstance(decay, int | float) or not 0 < decay <= 1:
            raise ConfigurationError(f"method.decay must be a number in (0, 1], got {decay!r}.")
        if copies < 2:
            raise ConfigurationError(
                f"method.copies must be >= 2 (the augmented batch's statistics), got {copies}."
            )
        super().__init__(model=model)
        self.layers = [
            module
            for module in model.modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats
        ]
        if not self.layers:
            raise ConfigurationError(
                "method=dua adapts BatchNorm running statistics and needs a model with at "
                "least one BatchNorm layer that tracks them."
            )
        self._source_momenta = [layer.momentum for layer in self.layers]
        self.cell_samples = num_samples
        self.num_samples = num_samples
        self.copies = copies
        self.initial_momentum = float(initial_momentum)
        self.decay = float(decay)
        self.min_momentum = float(min_momentum)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def reset(self) -> None:
        super().reset()
        for layer, momentum in zip(self.layers, self._source_momenta, strict=True):
            layer.momentum = momentum
        self.generator.manual_seed(self.seed)

    def augment(self, image: torch.Tensor) -> torch.Tensor:
        """``copies`` augmented versions [copies, C, H, W] of one image [C, H, W]."""
        channels, height, width = image.shape
        pad_height, pad_width = height // 8, width // 8
        padded = F.pad(image, (pad_width, pad_width, pad_height, pad_height))
        count = self.copies
        tops = torch.randint(0, 2 * pad_height + 1, (count,), generator=self.generator)
        lefts = torch.randint(0, 2 * pad_width + 1, (count,), generator=self.generator)
        flips = torch.rand(count, generator=self.generator) < 0.5
        # A quarter turn of a non-square image changes its shape: then half turns only.
        turns = torch.randint(0, 4, (count,), generator=self.generator)
        if height != width:
            turns = turns - turns % 2
        copies = []
        for top, left, flip, turn in zip(
            tops.tolist(), lefts.tolist(), flips.tolist(), turns.tolist(), strict=True
        ):
            copy = padded[:, top : top + height, left : left + width]
            if flip:
                copy = copy.flip(2)
            copies.append(torch.rot90(copy, turn, dims=(1, 2)))
        return torch.stack(copies)

    def adapt(self, samples: torch.Tensor) -> None:
        momentum = self.initial_momentum
        with torch.no_grad():
            for image in samples:
                momentum *= self.decay
                for layer in self.layers:
                    layer.train()
                    layer.momentum = momentum + self.min_momentum
                self.model(self.augment(image))
                self.model.eval()

    def row_fields(self) -> dict[str, Any]:
        return {
            "num_samples": self.num_samples,
            "copies": self.copies,
            "initial_momentum": self.initial_momentum,
            "decay": self.decay,
            "min_momentum": self.min_momentum,
            "augmentations": AUGMENTATIONS,
        }
