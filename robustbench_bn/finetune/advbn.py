"""AdvBN fine-tuning (Shu, Wu, Goldblum, Goldstein, NeurIPS 2021, "Encoding Robustness to Image
Style via Adversarial Feature Perturbations", arXiv 2009.08965; github azshue/AdvBN).

The network is split after a block. The part before the split (the front) is frozen in eval
mode; at the split, an AdvBN layer perturbs the per-channel mean and standard deviation of
the features adversarially: with mu, sigma the batch statistics over (N, H, W),
``adv = relu((f - mu) * s_sigma + mu * s_mu)``, where the scale factors ``s_mu, s_sigma``
(one per channel, shared by the batch, starting at 1) are found by ``attack_steps``
sign-gradient ascent steps of ``attack_step_size`` on the cross-entropy, clamped to
``[1 - bound, 1 + bound]`` after each step (the paper: 6 steps of 0.2, bound 1.1), with the
model in eval mode during the attack. The part after the split (the head) keeps two
BatchNorm branches: the clean one and an adversarial one initialised from it. Training
minimises CE(clean features through the clean branch) + CE(perturbed features through the
adversarial branch) over the source training split, updating only the head.

At test time the AdvBN layer is gone and the clean branch is used: the returned model has
exactly the source architecture and state_dict keys, so every test-time method (``bn``,
``tent``, ``dmc``) and the runner's reset apply unchanged, e.g. ``finetune=advbn method=bn``.

The split (:mod:`.split`) works on any BN network at a named module (``layer1`` of a
torchvision or timm ResNet, ``layer1`` of the CIFAR ResNets, ``stem`` / ``stages.0`` of the
suite's SmallResNet): the front is the model run until that module returns, computed once per
batch without gradients; the head is the rest of the network's ``torch.fx`` graph, sharing
its modules. The six attack steps and both BN branches run on the head only.

The ReLU: the paper inserts AdvBN after ResNet-50's layer1, whose output has already passed
a ReLU, and applies a ReLU to the perturbed features so that the head sees non-negative
inputs as it always has. Here a split point is only accepted if its output is non-negative
on a probe batch (it ends in a ReLU); there, with both scales at 1 the perturbation is the
identity, ``relu(f) == f``, and the ReLU only clips the negative values that a perturbation
creates, exactly as in the paper.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import fx, nn

from robustbench_bn.errors import ConfigurationError
from robustbench_bn.finetune.split import Split, split_network
from robustbench_bn.utils.devices import resolve_device
from robustbench_bn.utils.files import atomic_write, file_lock, stable_hash

log = logging.getLogger(__name__)

TrainingImages = Callable[[], tuple[torch.Tensor, torch.Tensor]]

#: Bumped when the training procedure changes, so that a cached fine-tune is never reused
#: for a procedure that would produce different weights from the same settings.
PROCEDURE_VERSION = 3
LR_SCHEDULES = ("constant", "cosine")
AUGMENTATIONS = ("none", "random_resized_crop_flip")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def split_model(model: nn.Module, split_after: str) -> tuple[Callable, fx.GraphModule]:
    """``(front, head)`` with ``head(front(images)) == model(images)``, sharing the model's
    modules; ``front`` includes the model's preprocessing. See :func:`split_network`."""
    split = split_network(model, split_after)
    return split.front, split.head


class DualBatchNorm2d(nn.Module):
    """A clean and an adversarial BatchNorm branch; ``adversarial`` picks the branch."""

    def __init__(self, clean: nn.BatchNorm2d) -> None:
        super().__init__()
        self.clean = clean
        # The paper initialises the adversarial branch from the pretrained clean one.
        self.adversarial_branch = copy.deepcopy(clean)
        self.adversarial = False

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return (self.adversarial_branch if self.adversarial else self.clean)(inputs)


def _replace_modules(module: nn.Module, replace: Callable[[nn.Module], nn.Module | None]) -> None:
    """Swap every child for which ``replace`` returns a module, recursing into the others."""
    for name, child in module.named_children():
        replacement = replace(child)
        if replacement is not None:
            setattr(module, name, replacement)
        else:
            _replace_modules(child, replace)


def _select_branch(dual_layers: list[DualBatchNorm2d], *, adversarial: bool) -> None:
    for layer in dual_layers:
        layer.adversarial = adversarial


def perturb_statistics(
    features: torch.Tensor, scale_mean: torch.Tensor, scale_std: torch.Tensor
) -> torch.Tensor:
    """AdvBN's perturbation: rescale the per-channel batch mean and std, then ReLU.

    ``(f - mu) / sigma * (sigma * s_sigma) + mu * s_mu``: sigma cancels, so only the mean is
    computed.
    """
    mean = features.mean((0, 2, 3), keepdim=True)
    return F.relu((features - mean) * scale_std + mean * scale_mean)


def adversarial_scales(
    head: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int,
    step_size: float,
    bound: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PGD on the per-channel scale factors ``(s_mu, s_sigma)``, maximising the head's CE.

    The head is in eval mode during the attack (as in the paper), so its BN layers use
    running statistics and the attack does not update them.
    """
    channels = features.shape[1]
    scale_mean = torch.ones(1, channels, 1, 1, device=features.device, requires_grad=True)
    scale_std = torch.ones(1, channels, 1, 1, device=features.device, requires_grad=True)
    was_training = head.training
    head.eval()
    try:
        for _ in range(steps):
            logits = head(perturb_statistics(features, scale_mean, scale_std))
            loss = F.cross_entropy(logits, labels)
            gradients = torch.autograd.grad(loss, [scale_mean, scale_std])
            with torch.no_grad():
                for scale, gradient in zip((scale_mean, scale_std), gradients, strict=True):
                    scale.add_(step_size * gradient.sign()).clamp_(1 - bound, 1 + bound)
    finally:
        head.train(was_training)
    return scale_mean.detach(), scale_std.detach()


def _check_settings(settings: dict) -> None:
    checks = [
        ("epochs", settings["epochs"] > 0, "> 0 (fractions of an epoch are allowed)"),
        ("batch_size", settings["batch_size"] >= 2, "an integer >= 2 (BN needs a batch)"),
        ("learning_rate", settings["learning_rate"] > 0, "> 0"),
        ("momentum", 0 <= settings["momentum"] < 1, "in [0, 1)"),
        ("weight_decay", settings["weight_decay"] >= 0, ">= 0"),
        ("attack_steps", settings["attack_steps"] >= 1, "an integer >= 1 (the paper: 6)"),
        ("attack_step_size", settings["attack_step_size"] > 0, "> 0 (the paper: 0.2)"),
        ("attack_bound", settings["attack_bound"] >= 0, ">= 0 (the paper: 1.1)"),
        ("lr_schedule", settings["lr_schedule"] in LR_SCHEDULES, f"one of {LR_SCHEDULES}"),
        ("augmentation", settings["augmentation"] in AUGMENTATIONS, f"one of {AUGMENTATIONS}"),
        (
            "precision",
            settings["precision"] in PRECISIONS,
            f"one of {tuple(PRECISIONS)} (fp16 would need loss scaling; use bf16)",
        ),
    ]
    for name, ok, expected in checks:
        if not ok:
            raise ConfigurationError(
                f"finetune.{name} must be {expected}, got {settings[name]!r}; "
                f"e.g. 'finetune.{name}=...' on the command line."
            )


def advbn_finetune(
    *,
    model: nn.Module,
    training_images: TrainingImages,
    cache_key: str,
    cache_dir: str,
    split_after: str = "stem",
    epochs: float = 1.0,
    batch_size: int = 128,
    learning_rate: float = 0.01,
    lr_schedule: str = "constant",
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    attack_steps: int = 6,
    attack_step_size: float = 0.2,
    attack_bound: float = 1.1,
    augmentation: str = "none",
    seed: int = 0,
    device: str = "auto",
    precision: str = "fp32",
    progress: bool = True,
) -> nn.Module:
    """Fine-tune ``model`` with AdvBN; cached under ``cache_key`` and these settings.

    Returns a fine-tuned copy with the source model's architecture (clean BN branch), on the
    CPU in eval mode; ``model`` itself is left unchanged. Parallel jobs wait for the first
    one to train and then load its result. ``device`` and ``precision`` (bf16 autocast) only
    say where and how to train; both are part of the cache key, since they change the
    weights by float rounding.
    """
    settings = {
        "split_after": split_after,
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "lr_schedule": lr_schedule,
        "momentum": momentum,
        "weight_decay": weight_decay,
        "attack_steps": attack_steps,
        "attack_step_size": attack_step_size,
        "attack_bound": attack_bound,
        "augmentation": augmentation,
        "seed": seed,
        "precision": precision,
    }
    _check_settings(settings)
    train_device = resolve_device(
        device, setting="finetune.device", hint=", or runner.device=cpu, which it follows"
    )
    # Fails fast on a bad split point, before any waiting or training.
    split_network(copy.deepcopy(model), split_after)
    key = stable_hash([cache_key, settings, train_device.type, PROCEDURE_VERSION])
    path = Path(cache_dir).expanduser() / "finetune" / f"advbn-{key}.pt"
    tuned = copy.deepcopy(model)
    with file_lock(path.with_suffix(".lock")):
        if not path.is_file():
            log.info("No cached AdvBN fine-tune at %s; fine-tuning the source model.", path)
            record = _train(
                tuned, training_images, settings, device=train_device, progress=progress
            )
            checkpoint = {"state_dict": tuned.state_dict(), "settings": settings, **record}
            atomic_write(path, lambda temporary: torch.save(checkpoint, temporary))
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    tuned.load_state_dict(checkpoint["state_dict"])
    tuned.cache_key = key
    return tuned.eval()


def random_resized_crop_flip(
    images: torch.Tensor, generator: torch.Generator, *, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)
) -> torch.Tensor:
    """The paper's training augmentation on a float batch: per image, a random crop of
    ``scale`` of the area and aspect ``ratio`` resized back to the batch's size, then a
    horizontal flip with probability 1/2 (as torchvision's RandomResizedCrop and
    RandomHorizontalFlip, drawn from ``generator`` so that a fine-tune is reproducible).
    """
    count, _, height, width = images.shape
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    output = torch.empty_like(images)
    for index in range(count):
        top, left, crop_height, crop_width = 0, 0, height, width
        for _ in range(10):
            target = area * float(torch.empty(1).uniform_(*scale, generator=generator))
            aspect = float(torch.exp(torch.empty(1).uniform_(*log_ratio, generator=generator)))
            w = round((target * aspect) ** 0.5)
            h = round((target / aspect) ** 0.5)
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
                left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
                crop_height, crop_width = h, w
                break
        crop = images[index : index + 1, :, top : top + crop_height, left : left + crop_width]
        crop = F.interpolate(
            crop, size=(height, width), mode="bilinear", antialias=True, align_corners=False
        )
        if float(torch.rand(1, generator=generator)) < 0.5:
            crop = crop.flip(-1)
        output[index : index + 1] = crop
    return output


def _train(
    model: nn.Module,
    training_images: TrainingImages,
    settings: dict,
    *,
    device: torch.device,
    progress: bool,
) -> dict:
    """Fine-tune ``model`` in place; returns a record of the run for the checkpoint."""
    from tqdm import tqdm

    model.to(device)
    # channels_last is about 1.5x faster for these small convolutions on CPU (as in training)
    # and what tensor cores want on a GPU.
    model.to(memory_format=torch.channels_last)
    split = split_network(model, settings["split_after"])
    head = split.head
    # The dual layers live in the head's own module containers only: the model keeps its
    # BatchNorm2d objects (the clean branches), so it needs no swapping back afterwards.
    _replace_modules(head, lambda m: DualBatchNorm2d(m) if isinstance(m, nn.BatchNorm2d) else None)
    dual_layers = [module for module in head.modules() if isinstance(module, DualBatchNorm2d)]
    # The front runs under no_grad and is not in the optimizer: frozen, weights and BN
    # statistics (eval mode) alike.
    model.eval()
    optimizer = torch.optim.SGD(
        head.parameters(),
        lr=settings["learning_rate"],
        momentum=settings["momentum"],
        weight_decay=settings["weight_decay"],
    )
    images, labels = training_images()
    batch_size = settings["batch_size"]
    batches_per_epoch = len(images) // batch_size
    if batches_per_epoch < 1:
        raise ConfigurationError(
            f"The training split has {len(images)} images, fewer than one batch of "
            f"{batch_size}; lower finetune.batch_size."
        )
    total_steps = max(1, round(settings["epochs"] * batches_per_epoch))
    schedule = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
        if settings["lr_schedule"] == "cosine"
        else None
    )
    autocast_dtype = PRECISIONS[settings["precision"]]
    generator = torch.Generator().manual_seed(settings["seed"])
    started = time.perf_counter()
    bar = tqdm(
        total=total_steps * batch_size,
        desc="AdvBN fine-tuning",
        unit="img",
        disable=not progress,
        leave=False,
    )
    step = 0
    clean_loss = adversarial_loss = torch.tensor(float("nan"))
    while step < total_steps:
        # A fresh permutation each epoch; only full batches, so BN always sees batch_size.
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, batches_per_epoch * batch_size, batch_size):
            if step >= total_steps:
                break
            index = order[start : start + batch_size]
            target = labels[index].to(device)
            batch = images[index].float().div_(255)
            if settings["augmentation"] == "random_resized_crop_flip":
                batch = random_resized_crop_flip(batch, generator)
            batch = batch.to(device).contiguous(memory_format=torch.channels_last)
            with (
                torch.autocast(device.type, dtype=autocast_dtype)
                if autocast_dtype
                else contextlib.nullcontext()
            ):
                clean_loss, adversarial_loss = _training_losses(
                    split, dual_layers, batch, target, settings
                )
            optimizer.zero_grad(set_to_none=True)
            (clean_loss + adversarial_loss).backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
            step += 1
            bar.update(batch_size)
            bar.set_postfix(clean=f"{clean_loss.item():.3f}", adv=f"{adversarial_loss.item():.3f}")
    bar.close()
    seconds = time.perf_counter() - started
    log.info("AdvBN fine-tuning: %d steps in %.0f s", step, seconds)
    model.to(memory_format=torch.contiguous_format).to("cpu").eval()
    return {
        "steps": step,
        "seconds": round(seconds, 1),
        "images_per_second": round(step * batch_size / max(seconds, 1e-9), 1),
        "final_clean_loss": clean_loss.item(),
        "final_adversarial_loss": adversarial_loss.item(),
    }


def _training_losses(
    split: Split,
    dual_layers: list[DualBatchNorm2d],
    batch: torch.Tensor,
    target: torch.Tensor,
    settings: dict,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch: the front once, the attack and both BN branches on the head only."""
    head = split.head
    with torch.no_grad():
        features = split.front(batch)
    _select_branch(dual_layers, adversarial=True)
    scales = adversarial_scales(
        head,
        features,
        target,
        steps=settings["attack_steps"],
        step_size=settings["attack_step_size"],
        bound=settings["attack_bound"],
    )
    head.train()
    adversarial_loss = F.cross_entropy(head(perturb_statistics(features, *scales)), target)
    _select_branch(dual_layers, adversarial=False)
    # Last: a head that starts with an in-place operation may overwrite its input.
    clean_loss = F.cross_entropy(head(features), target)
    head.eval()
    return clean_loss, adversarial_loss
