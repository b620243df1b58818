"""Distribution mismatch correction (Fuchs, Knoll, Pernkopf 2021, "Distribution Mismatch
Correction for Improved Robustness in Deep Neural Networks", arXiv 2110.01955).

The paper corrects each layer's activation distribution at test time so that it matches the
training-time distribution, minimising the 1-D Wasserstein distance, without retraining. It
publishes no code; this module implements the suite's specification (docs/METHODS.md):

* Source side, once per model (:meth:`DistributionMismatchCorrection.prepare`): K clean
  training images pass through the model in eval mode; for the input of every BatchNorm2d
  layer, per channel, Q quantiles at probabilities (i + 0.5) / Q of the activations over
  (N, H, W) are stored, cached on disk by model and by the settings that change them.
* Test side: a forward pre-hook on each of those layers moves every channel of the incoming
  activations by the 1-D optimal transport map from the test batch's empirical distribution
  to the stored source distribution, x -> F_s^-1(F_t(x)). F_t comes from ranks within the
  batch over (N, H, W) (``scope="sample"``: per image over (H, W)); F_s^-1 interpolates
  linearly between the stored quantiles and is flat beyond the outermost ones. Layers are
  corrected in forward order, so each sees already corrected inputs. ``alpha`` blends
  corrected and raw activations.
* ``mode="exact"`` ranks every value with one sort per channel and scatters the sorted
  positions back (no second sort). ``mode="approx"`` estimates F_t from at most
  ``approx_samples`` values per channel, tabulates x -> F_s^-1(F_t(x)) on ``approx_bins``
  equal bins over the subsample's range, and maps every value with one table lookup (an
  intercept and a slope per bin), so its cost per value is a handful of element-wise passes
  instead of a sort.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustbench_bn.errors import ConfigurationError
from robustbench_bn.methods.base import Method, TrainingImages, batch_norm_layers
from robustbench_bn.utils.files import atomic_write, file_lock, stable_hash

log = logging.getLogger(__name__)
SCOPES = ("batch", "sample")
MODES = ("exact", "approx")
#: Clean images per forward pass while measuring the source quantiles.
SOURCE_BATCH_SIZE = 256


def interpolate_quantiles(quantiles: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
    """F^-1 at ``probabilities`` ([C, M] or [M]) from quantiles [C, Q] stored at (i+0.5)/Q.

    Linear between stored quantiles, flat beyond the outermost ones (the source sample says
    nothing about its own tails beyond them).
    """
    count = quantiles.shape[1]
    position = (probabilities * count - 0.5).clamp(0, count - 1)
    if position.dim() == 1:
        position = position.unsqueeze(0).expand(quantiles.shape[0], -1)
    lower = position.floor().long().clamp(max=count - 2)
    weight = (position - lower).to(quantiles.dtype)
    low_values = quantiles.gather(1, lower)
    return low_values + weight * (quantiles.gather(1, lower + 1) - low_values)


def channel_quantiles(values: torch.Tensor, count: int) -> torch.Tensor:
    """[C, count] quantiles at (i+0.5)/count of values [C, M], linear between order statistics."""
    ordered = values.sort(dim=1).values
    size = ordered.shape[1]
    probabilities = (torch.arange(count, dtype=torch.float64) + 0.5) / count
    position = (probabilities * size - 0.5).clamp(0, size - 1)
    lower = position.floor().long()
    upper = (lower + 1).clamp(max=size - 1)
    weight = (position - lower).to(values.dtype).to(values.device)
    lower, upper = lower.to(values.device), upper.to(values.device)
    return ordered[:, lower] + weight * (ordered[:, upper] - ordered[:, lower])


def _order_preserving_keys(values: torch.Tensor) -> torch.Tensor:
    """int32 keys that sort like the float32 ``values`` (integer sorting is about 30% faster).

    A non-negative float's bit pattern already orders like an integer; a negative float's
    magnitude bits run backwards, so they are flipped.
    """
    bits = values.contiguous().view(torch.int32)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def exact_transport(values: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Give the value ranked j-th in each row of ``values`` [R, M] the target ``targets[:, j]``.

    ``targets`` ([R, M], or broadcastable rows) are F_s^-1((j + 0.5) / M), so this is the 1-D
    optimal transport of each row onto the source distribution. One sort per row; the sorted
    positions are scattered back instead of ranked by a second argsort.
    """
    order = _order_preserving_keys(values.float()).argsort(dim=1)
    return torch.empty(values.shape, dtype=targets.dtype, device=values.device).scatter_(
        1, order, targets.expand_as(order)
    )


#: Values mapped per step of the approximate map: its scratch then stays in the CPU cache.
#: Mapping a whole 128x16x32x32 batch at once streams six 8 MB tensors through memory and was
#: three times slower than these chunks on the embedded model (2 CPU threads).
CHUNK_VALUES = 1 << 17


class _Workspace:
    """Scratch buffers reused from call to call (allocating them anew costs page faults)."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, torch.dtype, torch.device], torch.Tensor] = {}

    def get(self, name: str, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (name, dtype, device)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.numel() < numel:
            buffer = torch.empty(numel, dtype=dtype, device=device)
            self._buffers[key] = buffer
        return buffer[:numel]


def rotating_rows(values: torch.Tensor, samples: int) -> torch.Tensor:
    """At most ``samples`` values (but at least one row) per channel of [B, C, H, W], as [C, S].

    Every k-th row of every image, where image b starts at row b mod k: each row position is
    sampled equally often over the batch, and block-structured corruptions (JPEG's 8x8 blocks,
    pixelation) cannot line up with a fixed phase. The rows are one strided view of the tensor
    (image b = g*k + j reads rows j, j+k, ..., an affine pattern in (g, j, t)), so the
    subsample is read as runs of whole rows with no index tensor; gathering the same number of
    random pixels was the costliest step of the approximate map.
    """
    batch, channels, height, width = values.shape
    step = min(height, -(-batch * height * width // samples))
    rows = height // step
    phases = min(step, batch)
    groups = batch // phases
    if groups * phases * rows * width > samples:  # one row per image is still too many
        groups = max(1, samples // (phases * rows * width))
        phases = min(phases, max(1, samples // (rows * width)))
    image_stride, channel_stride, row_stride, column_stride = values.stride()
    view = values.as_strided(
        (groups, phases, channels, rows, width),
        (
            step * image_stride,
            image_stride + row_stride,
            channel_stride,
            step * row_stride,
            column_stride,
        ),
        values.storage_offset(),
    )
    return view.permute(2, 0, 1, 3, 4).reshape(channels, -1)


def _channel_last_view(activation: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A view of [B, C, H, W] whose memory is dense in view order, and its channel axis."""
    if activation.is_contiguous():
        return activation, 1
    if activation.is_contiguous(memory_format=torch.channels_last):
        return activation.permute(0, 2, 3, 1), 3
    return activation.contiguous(), 1


def _transport_table(
    subsample: torch.Tensor, source_quantiles: torch.Tensor, bins: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per channel: the subsample's minimum, bins per unit, and the map x -> F_s^-1(F_t(x)) as
    an (intercept, slope) pair of float32 packed into one float64 for each of ``bins`` equal
    bins over the subsample's range, plus a flat bin on either side ([C * (bins + 2)]).

    ``subsample`` is [C, S]. F_t at the bin edges comes from a histogram of the subsample (no
    sort) and is linear within a bin.
    """
    channels, count = subsample.shape
    low = subsample.amin(1, keepdim=True)
    high = subsample.amax(1, keepdim=True)
    span = (high - low).clamp(min=torch.finfo(torch.float32).tiny)
    per_bin = bins / span
    sample_bins = (subsample - low).mul_(per_bin).clamp_(0, bins - 1).long()
    sample_bins += torch.arange(channels, device=subsample.device).unsqueeze(1) * bins
    histogram = torch.bincount(sample_bins.view(-1), minlength=channels * bins)
    cumulative = histogram.view(channels, bins).cumsum(1).float() / count
    edge_probabilities = torch.cat([torch.zeros_like(cumulative[:, :1]), cumulative], 1)
    edges = low + span * torch.linspace(0, 1, bins + 1, device=subsample.device)
    mapped_edges = interpolate_quantiles(source_quantiles.float(), edge_probabilities)
    slopes = (mapped_edges[:, 1:] - mapped_edges[:, :-1]) * per_bin
    intercepts = mapped_edges[:, :-1] - slopes * edges[:, :-1]
    flat = torch.zeros_like(slopes[:, :1])
    slope_table = torch.cat([flat, slopes, flat], 1)
    intercept_table = torch.cat([mapped_edges[:, :1], intercepts, mapped_edges[:, -1:]], 1)
    # Intercept and slope side by side in one 8-byte entry: one gather fetches both (a gather
    # costs about 1 ns per value here, more than all the arithmetic of the map together).
    packed = torch.stack([intercept_table, slope_table], -1).contiguous()
    return low, per_bin, packed.view(torch.float64).reshape(-1)


def approximate_transport(
    activation: torch.Tensor,
    source_quantiles: torch.Tensor,
    *,
    samples: int,
    bins: int,
    workspace: _Workspace | None = None,
) -> torch.Tensor:
    """Batch-scope dmc from a subsample, with O(1) work per value.

    F_t of each channel is estimated from at most ``samples`` values, the same rows of the same
    images in every channel (:func:`rotating_rows`; all values when the batch has no more).
    The map x -> F_s^-1(F_t(x)) is tabulated on ``bins`` equal bins between the
    subsample's minimum and maximum (see :func:`_transport_table`); values outside that range
    get the outermost mapped value, like the exact map's flat tails. Every value is then mapped
    by ``intercept[bin] + slope[bin] * x``: a few element-wise passes, no sort.
    """
    workspace = workspace or _Workspace()
    batch, channels, height, width = activation.shape
    values = activation.float()
    if batch * height * width <= samples:
        subsample = values.transpose(0, 1).reshape(channels, -1)
    else:
        subsample = rotating_rows(values, samples)
    low, per_bin, table = _transport_table(subsample, source_quantiles, bins)

    view, channel_axis = _channel_last_view(values)
    shape = [1, 1, 1, 1]
    shape[channel_axis] = channels
    scale = per_bin.view(shape)
    shift = (1 - low * per_bin).view(shape)
    offsets = torch.arange(channels, device=activation.device, dtype=torch.int32) * (bins + 2)
    offsets = offsets.view(shape)
    mapped = torch.empty(view.shape, dtype=torch.float32, device=activation.device)
    per_image = view[0].numel()
    step = max(1, CHUNK_VALUES // per_image)
    for start in range(0, batch, step):
        chunk = view[start : start + step]
        size = chunk.numel()
        position = workspace.get("position", size, torch.float32, chunk.device).view(chunk.shape)
        index = workspace.get("index", size, torch.int32, chunk.device).view(chunk.shape)
        # Position in bins: below the range -> bin 0, inside -> 1..bins, at or above the top
        # -> bins + 1; the int conversion truncates, a floor because the position is >= 0.
        torch.mul(chunk, scale, out=position)
        position.add_(shift).clamp_(0, bins + 1)
        index.copy_(position)
        flat_index = index.add_(offsets).view(-1)
        entries = table.index_select(0, flat_index).view(torch.float32).view(-1, 2)
        torch.addcmul(
            entries[:, 0],
            entries[:, 1],
            chunk.reshape(-1),
            out=mapped[start : start + step].view(-1),
        )
    if channel_axis == 3:
        mapped = mapped.permute(0, 3, 1, 2)
    return mapped


class DistributionMismatchCorrection(Method):
    """Per-channel quantile matching of every (or the first k) BatchNorm2d input; see the module."""

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
        approx_bins: int = 1024,
        seed: int = 0,
    ) -> None:
        if scope not in SCOPES:
            raise ConfigurationError(
                f"method.scope must be one of {SCOPES}, got {scope!r}: 'batch' ranks each "
                "channel over the whole batch, 'sample' within each image."
            )
        if mode not in MODES:
            raise ConfigurationError(
                f"method.mode must be one of {MODES}, got {mode!r}: 'exact' sorts every "
                "channel, 'approx' maps through quantiles of a subsample."
            )
        if mode == "approx" and scope != "batch":
            raise ConfigurationError(
                "method.mode=approx estimates quantiles over the batch and works with "
                "method.scope=batch only; use method.mode=exact for method.scope=sample."
            )
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 <= alpha <= 1:
            raise ConfigurationError(
                f"method.alpha must be a number in [0, 1] (1: fully corrected, 0: raw), "
                f"got {alpha!r}."
            )
        for option, value, minimum in (
            ("num_quantiles", num_quantiles, 2),
            ("num_source_images", num_source_images, 1),
            ("approx_samples", approx_samples, 2),
            ("approx_bins", approx_bins, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigurationError(
                    f"method.{option} must be an integer >= {minimum}, got {value!r}."
                )
        super().__init__(model=model)
        all_layers = batch_norm_layers(model)
        if not all_layers:
            raise ConfigurationError(
                "method=dmc corrects the inputs of BatchNorm2d layers and needs a model with "
                "at least one; found none."
            )
        if layers is not None and (
            isinstance(layers, bool)
            or not isinstance(layers, int)
            or not 1 <= layers <= len(all_layers)
        ):
            raise ConfigurationError(
                f"method.layers must be null (all {len(all_layers)} BatchNorm2d layers) or an "
                f"integer k in 1..{len(all_layers)} (the first k in forward order), got {layers!r}."
            )
        self.layers = all_layers[: layers or len(all_layers)]
        self.num_quantiles = num_quantiles
        self.num_source_images = num_source_images
        self.layer_count = layers
        self.scope = scope
        self.alpha = float(alpha)
        self.mode = mode
        self.approx_samples = approx_samples
        self.approx_bins = approx_bins
        self.seed = seed
        self.source_quantiles: list[torch.Tensor] = []
        self.cache_path: Path | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._workspace = _Workspace()

    # --- source side ----------------------------------------------------------------------

    def source_settings(self) -> dict[str, Any]:
        """The settings that change the stored source quantiles (part of the cache key)."""
        return {
            "num_quantiles": self.num_quantiles,
            "num_source_images": self.num_source_images,
            "layers": self.layer_count,
            "seed": self.seed,
        }

    def prepare(self, training_images: TrainingImages, *, cache_key: str, cache_dir: str) -> None:
        key = stable_hash([cache_key, self.source_settings()])
        path = Path(cache_dir).expanduser() / "dmc" / f"source_quantiles-{key}.pt"
        # Parallel jobs of a sweep measure the source once; the others wait and load it.
        with file_lock(path.with_suffix(".lock")):
            if not path.is_file():
                images, _ = training_images()
                quantiles = self.measure_source_quantiles(images)
                atomic_write(path, lambda temporary: torch.save(quantiles, temporary))
                log.info("Stored dmc source quantiles at %s", path)
        quantiles = torch.load(path, map_location="cpu", weights_only=True)
        self._check_quantiles(quantiles, path)
        self.source_quantiles = quantiles
        self.cache_path = path
        self._install_hooks()

    def _check_quantiles(self, quantiles: Any, path: Path) -> None:
        expected = [(layer.num_features, self.num_quantiles) for layer in self.layers]
        found = (
            [tuple(q.shape) for q in quantiles]
            if isinstance(quantiles, list) and all(isinstance(q, torch.Tensor) for q in quantiles)
            else None
        )
        if found != expected:
            raise ConfigurationError(
                f"The cached dmc source quantiles in {path} do not fit this model (expected "
                f"per-layer shapes {expected}, found {found}). Delete the file to measure them "
                "again."
            )

    def measure_source_quantiles(self, images: torch.Tensor) -> list[torch.Tensor]:
        """[C, Q] quantiles of every corrected layer's input over K random clean images."""
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ConfigurationError(
                "dmc measures the source on the clean training split as uint8 images "
                f"[N, C, H, W]; got {images.dtype} of shape {tuple(images.shape)}."
            )
        count = min(self.num_source_images, len(images))
        if count < self.num_source_images:
            log.warning(
                "dmc: the training split has %d images, fewer than num_source_images=%d.",
                len(images),
                self.num_source_images,
            )
        generator = torch.Generator().manual_seed(self.seed)
        chosen = torch.randperm(len(images), generator=generator)[:count]
        collected: list[list[torch.Tensor]] = [[] for _ in self.layers]

        def collector(index: int) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
            def hook(layer: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
                collected[index].append(inputs[0].transpose(0, 1).flatten(1).float().cpu())

            return hook

        handles = [
            layer.register_forward_pre_hook(collector(i)) for i, layer in enumerate(self.layers)
        ]
        # The correction hooks must stay out of the source measurement.
        for handle in self._handles:
            handle.remove()
        self._handles = []
        device = next(self.model.parameters()).device
        self.model.eval()
        try:
            with torch.inference_mode():
                for start in range(0, count, SOURCE_BATCH_SIZE):
                    batch = images[chosen[start : start + SOURCE_BATCH_SIZE]].float().div_(255)
                    self.model(batch.to(device))
        finally:
            for handle in handles:
                handle.remove()
        quantiles = []
        for parts in collected:
            quantiles.append(channel_quantiles(torch.cat(parts, 1), self.num_quantiles))
            parts.clear()  # frees the layer's activations before the next layer's sort
        return quantiles

    # --- test side ------------------------------------------------------------------------

    def _install_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = [
            layer.register_forward_pre_hook(self._corrector(quantiles))
            for layer, quantiles in zip(self.layers, self.source_quantiles, strict=True)
        ]

    def _corrector(
        self, quantiles: torch.Tensor
    ) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], tuple[torch.Tensor]]:
        # Exact targets F_s^-1((j + 0.5) / M) depend only on M: computed once per batch size.
        targets_by_size: dict[tuple[int, torch.device], torch.Tensor] = {}

        def targets(size: int, device: torch.device) -> torch.Tensor:
            key = (size, device)
            if key not in targets_by_size:
                probabilities = (torch.arange(size, dtype=torch.float64) + 0.5) / size
                source = quantiles.to(device)
                targets_by_size[key] = interpolate_quantiles(
                    source, probabilities.float().to(device)
                )
            return targets_by_size[key]

        def hook(layer: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor]:
            activation = inputs[0]
            batch, channels, height, width = activation.shape
            if self.mode == "approx":
                corrected = approximate_transport(
                    activation,
                    quantiles.to(activation.device),
                    samples=self.approx_samples,
                    bins=self.approx_bins,
                    workspace=self._workspace,
                )
            elif self.scope == "batch":
                values = activation.transpose(0, 1).reshape(channels, -1)
                corrected = exact_transport(values, targets(values.shape[1], values.device))
                corrected = corrected.view(channels, batch, height, width).transpose(0, 1)
            else:
                values = activation.reshape(batch * channels, height * width)
                per_channel = targets(height * width, values.device)
                per_row = per_channel.unsqueeze(0).expand(batch, -1, -1).reshape(values.shape)
                corrected = exact_transport(values, per_row).view(batch, channels, height, width)
            if self.alpha < 1:
                corrected = torch.lerp(activation.float(), corrected, self.alpha)
            return (corrected.to(activation.dtype).contiguous(memory_format=_format(activation)),)

        return hook

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        if not self.source_quantiles:
            raise ConfigurationError(
                "dmc has no source quantiles: call prepare(training_images, cache_key=..., "
                "cache_dir=...) before predict (the runner does this for methods with "
                "needs_training_data)."
            )
        if self.scope == "batch" and images.shape[0] < 2:
            # One image's batch-scope ranks are its own per-image ranks: the row would claim a
            # batch-level correction that never happened.
            raise ConfigurationError(
                "dmc with method.scope=batch ranks activations over a batch and needs at least "
                "2 images per batch, got 1. Use method.scope=sample (per-image correction, "
                "which works with runner.batch_size=1) or raise runner.batch_size (the last "
                "batch of a cell has 1 image when dataset.n_examples % runner.batch_size == 1)."
            )
        return super().predict(images)

    def row_fields(self) -> dict[str, Any]:
        # Every option, whatever the mode: reference tables match runs by the keys they name.
        return {
            **self.source_settings(),
            "scope": self.scope,
            "alpha": self.alpha,
            "mode": self.mode,
            "approx_samples": self.approx_samples,
            "approx_bins": self.approx_bins,
        }


def _format(tensor: torch.Tensor) -> torch.memory_format:
    """Keep the layer input's memory format (channels_last models stay channels_last)."""
    if not tensor.is_contiguous() and tensor.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format
