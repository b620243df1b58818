"""Distribution mismatch correction (Fuchs, Knoll, Pernkopf 2021, "Distribution Mismatch
Correction for Improved Robustness in Deep Neural Networks", arXiv 2110.01955).

The paper corrects each layer's activation distribution at test time so that it matches the
training-time distribution, minimising the 1-D Wasserstein distance, without retraining. It
publishes no code; this module implements the suite's specification (docs/METHODS.md):

* Source side, once per model: K clean training images pass through the model in eval mode;
  for the input of every BatchNorm2d layer, per channel, Q quantiles at probabilities
  (i + 0.5) / Q of the activations over (N, H, W) are stored (cached on disk by model and
  configuration).
* Test side: a forward pre-hook on each of those layers moves every channel of the incoming
  activations by the 1-D optimal transport map from the test batch's empirical distribution
  to the stored source distribution, x -> F_s^-1(F_t(x)). F_t comes from ranks within the
  batch over (N, H, W) (``scope="sample"``: per image over (H, W)); F_s^-1 interpolates
  linearly between the stored quantiles. Layers are corrected in forward order, so each sees
  already corrected inputs. ``alpha`` blends corrected and raw activations.
* ``mode="exact"`` ranks every value with one sort per channel (the sorted positions are
  scattered back, no second argsort). ``mode="approx"`` estimates the test quantiles from at
  most ``approx_samples`` values per channel and maps every value piecewise-linearly from
  test to source quantiles.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustbench_bn.errors import ConfigurationError
from robustbench_bn.methods.base import Method, TrainingImages, batch_norm_layers
from robustbench_bn.utils.files import atomic_write, stable_hash

log = logging.getLogger(__name__)
SCOPES = ("batch", "sample")
MODES = ("exact", "approx")


def interpolate_quantiles(quantiles: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
    """F^-1 at ``probabilities`` ([C, M] or [M]) from quantiles [C, Q] stored at (i+0.5)/Q,
    linear in between and flat beyond the outermost quantiles."""
    count = quantiles.shape[1]
    position = (probabilities * count - 0.5).clamp(0, count - 1)
    lower = position.floor().long().clamp(max=count - 1)
    upper = (lower + 1).clamp(max=count - 1)
    weight = position - lower
    if position.dim() == 1:
        lower = lower.expand(quantiles.shape[0], -1)
        upper = upper.expand(quantiles.shape[0], -1)
        weight = weight.expand(quantiles.shape[0], -1)
    low_values = quantiles.gather(1, lower)
    return low_values + weight * (quantiles.gather(1, upper) - low_values)


def channel_quantiles(values: torch.Tensor, count: int) -> torch.Tensor:
    """[C, count] quantiles at (i+0.5)/count of values [C, M] (linear between order statistics)."""
    ordered = values.sort(dim=1).values
    size = ordered.shape[1]
    probabilities = (torch.arange(count, dtype=torch.float64) + 0.5) / count
    position = (probabilities * size - 0.5).clamp(0, size - 1)
    lower = position.floor().long()
    upper = (lower + 1).clamp(max=size - 1)
    weight = (position - lower).to(values.dtype)
    return ordered[:, lower] + weight * (ordered[:, upper] - ordered[:, lower])


def exact_transport(values: torch.Tensor, source_quantiles: torch.Tensor) -> torch.Tensor:
    """Map each row of values [C, M] onto the source distribution by rank (one sort per row)."""
    size = values.shape[1]
    order = values.argsort(dim=1)
    probabilities = (torch.arange(size, dtype=values.dtype, device=values.device) + 0.5) / size
    targets = interpolate_quantiles(source_quantiles.to(values.dtype), probabilities)
    # The value ranked j-th receives F_s^-1((j + 0.5) / M): scatter the targets back.
    return torch.empty_like(values).scatter_(1, order, targets)


def _interpolate_at(knots: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """Values of knots [..., K] at fractional knot positions (same leading dims)."""
    count = knots.shape[-1]
    position = position.clamp(0, count - 1)
    lower = position.floor().long().clamp(max=count - 2)
    weight = position - lower
    low = knots.gather(-1, lower)
    return low + weight * (knots.gather(-1, lower + 1) - low)


def approximate_transport_batch(
    activation: torch.Tensor,
    source_quantiles: torch.Tensor,
    samples: int,
    knots: int = 64,
    grid: int = 1024,
) -> torch.Tensor:
    """Batch-scope dmc from a subsample, in O(1) per value.

    The test quantiles of each channel are estimated from at most ``samples`` random
    positions; the piecewise-linear map from those test quantiles to the source quantiles at
    the same probabilities is tabulated on a uniform grid of ``grid`` bins over the test
    range, and every value is mapped by one table lookup and a linear blend (no sort and no
    binary search over the activations). Works on the [B, C, H*W] layout directly.
    """
    batch, channels, height, width = activation.shape
    flat = activation.reshape(batch, channels, height * width).float()
    size = batch * height * width
    generator = torch.Generator().manual_seed(size)
    chosen = torch.randperm(size, generator=generator)[: min(samples, size)]
    subsample = flat[chosen // (height * width), :, chosen % (height * width)].T
    test_knots = channel_quantiles(subsample, knots)
    probabilities = (torch.arange(knots, dtype=torch.float32) + 0.5) / knots
    source_knots = interpolate_quantiles(source_quantiles.float(), probabilities)
    low = test_knots[:, :1]
    span = (test_knots[:, -1:] - low).clamp(min=1e-6)
    grid_points = low + span * torch.linspace(0, 1, grid + 1).unsqueeze(0)
    # Map the grid through the knots; on tied knots take the middle of the tied run.
    left = torch.searchsorted(test_knots, grid_points, right=False)
    right = torch.searchsorted(test_knots, grid_points, right=True)
    lower = (left - 1).clamp(0, knots - 1)
    upper = left.clamp(0, knots - 1)
    low_knot = test_knots.gather(1, lower)
    gap = (test_knots.gather(1, upper) - low_knot).clamp(min=1e-12)
    within = ((grid_points - low_knot) / gap).clamp(0, 1)
    position = torch.where(right > left, (left + right - 1) / 2, lower + within)
    table = _interpolate_at(source_knots, position)
    slopes = torch.diff(table, dim=1, append=table[:, -1:])
    scaled = (flat - low.unsqueeze(0)).mul_(grid / span.unsqueeze(0)).clamp_(0, grid - 1e-3)
    bins = scaled.to(torch.int32)
    fraction = scaled.sub_(bins)
    offsets = torch.arange(channels, dtype=torch.int32).view(1, channels, 1) * (grid + 1)
    index = bins.add_(offsets).long()
    mapped = table.reshape(-1).take(index).addcmul_(fraction, slopes.reshape(-1).take(index))
    return mapped.view_as(activation)


class DistributionMismatchCorrection(Method):
    """See the module docstring."""

    needs_training_data = True

    def __init__(
        self,
        *,
        model: nn.Module,
        num_quantiles: int = 256,
        num_source_images: int = 2048,
        layers: int | None = None,
        scope: str = "batch",
        alpha: float = 1.0,
        mode: str = "exact",
        approx_samples: int = 4096,
        seed: int = 0,
    ) -> None:
        if scope not in SCOPES:
            raise ConfigurationError(f"method.scope must be one of {SCOPES}, got {scope!r}.")
        if mode not in MODES:
            raise ConfigurationError(f"method.mode must be one of {MODES}, got {mode!r}.")
        if mode == "approx" and scope != "batch":
            raise ConfigurationError("method.mode=approx works with method.scope=batch only.")
        if not 0 <= alpha <= 1:
            raise ConfigurationError(f"method.alpha must be in [0, 1], got {alpha}.")
        if num_quantiles < 2 or num_source_images < 1:
            raise ConfigurationError("method.num_quantiles must be >= 2, num_source_images >= 1.")
        super().__init__(model=model)
        all_layers = batch_norm_layers(model)
        if not all_layers:
            raise ConfigurationError("method=dmc needs a model with BatchNorm2d layers.")
        if layers is not None and not 1 <= layers <= len(all_layers):
            raise ConfigurationError(
                f"method.layers must be null (all) or 1..{len(all_layers)}, got {layers}."
            )
        self.layers = all_layers[: layers or len(all_layers)]
        self.settings = {
            "num_quantiles": num_quantiles,
            "num_source_images": num_source_images,
            "layers": layers,
            "scope": scope,
            "alpha": alpha,
            "mode": mode,
            "approx_samples": approx_samples,
            "seed": seed,
        }
        self.source_quantiles: list[torch.Tensor] = []
        self._handles: list[Any] = []

    # --- source side ----------------------------------------------------------------------

    def prepare(self, training_images: TrainingImages, *, cache_key: str, cache_dir: str) -> None:
        source_settings = {
            k: self.settings[k] for k in ("num_quantiles", "num_source_images", "layers", "seed")
        }
        key = stable_hash([cache_key, source_settings])
        path = Path(cache_dir).expanduser() / "dmc" / f"source_quantiles-{key}.pt"
        if path.is_file():
            self.source_quantiles = torch.load(path, weights_only=True)
        else:
            images, _ = training_images()
            self.source_quantiles = self._measure_source(images)
            atomic_write(path, lambda temporary: torch.save(self.source_quantiles, temporary))
            log.info("Stored dmc source quantiles at %s", path)
        self._install_hooks()

    def _measure_source(self, images: torch.Tensor) -> list[torch.Tensor]:
        count = min(self.settings["num_source_images"], len(images))
        generator = torch.Generator().manual_seed(self.settings["seed"])
        chosen = torch.randperm(len(images), generator=generator)[:count]
        collected: list[list[torch.Tensor]] = [[] for _ in self.layers]

        def collector(index: int):
            def hook(layer: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
                activation = inputs[0]
                collected[index].append(activation.transpose(0, 1).flatten(1).float().cpu())

            return hook

        handles = [
            layer.register_forward_pre_hook(collector(i)) for i, layer in enumerate(self.layers)
        ]
        device = next(self.model.parameters()).device
        self.model.eval()
        try:
            with torch.inference_mode():
                for start in range(0, count, 256):
                    batch = images[chosen[start : start + 256]].float().div_(255)
                    self.model(batch.to(device))
        finally:
            for handle in handles:
                handle.remove()
        return [
            channel_quantiles(torch.cat(parts, 1), self.settings["num_quantiles"])
            for parts in collected
        ]

    # --- test side ------------------------------------------------------------------------

    def _install_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = [
            layer.register_forward_pre_hook(self._corrector(quantiles))
            for layer, quantiles in zip(self.layers, self.source_quantiles, strict=True)
        ]

    def _corrector(self, quantiles: torch.Tensor):
        scope, alpha = self.settings["scope"], self.settings["alpha"]
        mode, samples = self.settings["mode"], self.settings["approx_samples"]

        def hook(layer: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor]:
            activation = inputs[0]
            batch, channels, height, width = activation.shape
            source = quantiles.to(activation.device)
            if mode == "approx" and scope == "batch":
                corrected = approximate_transport_batch(activation, source, samples)
                corrected = corrected.to(activation.dtype)
                if alpha < 1:
                    corrected = alpha * corrected + (1 - alpha) * activation
                return (corrected,)
            if scope == "batch":
                values = activation.transpose(0, 1).reshape(channels, -1)
                per_row_source = source
            else:
                values = activation.reshape(batch * channels, height * width)
                per_row_source = source.repeat(batch, 1)
            values = values.float()
            corrected = exact_transport(values, per_row_source)
            if scope == "batch":
                corrected = corrected.view(channels, batch, height, width).transpose(0, 1)
            else:
                corrected = corrected.view(batch, channels, height, width)
            corrected = corrected.to(activation.dtype)
            if alpha < 1:
                corrected = alpha * corrected + (1 - alpha) * activation
            return (corrected.contiguous(),)

        return hook

    def row_fields(self) -> dict[str, Any]:
        return dict(self.settings)
