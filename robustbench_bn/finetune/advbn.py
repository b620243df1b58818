"""AdvBN fine-tuning (Shu, Wu, Goldblum, Goldstein, NeurIPS 2021, "Encoding Robustness to Image
Style via Adversarial Feature Perturbations", arXiv 2009.08965; github azshue/AdvBN).

The network is split after a block. The part before the split is frozen in eval mode; at the
split, an AdvBN layer perturbs the per-channel mean and standard deviation of the features
adversarially: with mu, sigma the batch statistics over (N, H, W),
``adv = (f - mu) * s_sigma + mu * s_mu`` followed by a ReLU, where the scale factors
``s_mu, s_sigma`` (one per channel, shared by the batch, starting at 1) are found by
``attack_steps`` sign-gradient ascent steps of ``attack_step_size`` on the cross-entropy,
clamped to ``[1 - bound, 1 + bound]`` (the paper: 6 steps of 0.2, bound 1.1), with the model
in eval mode during the attack. The head keeps two BatchNorm branches: the clean one and an
adversarial one initialised from it. Training minimises CE(clean through the clean branch) +
CE(perturbed through the adversarial branch) on the source training split. At test time the
AdvBN layer is gone and the clean branch is used: the returned model has exactly the source
architecture and state_dict keys, so every test-time method applies unchanged.

Splitting needs a network that is the composition of its top-level children (one level of
nn.Sequential unrolled), such as the suite's SmallResNet; this is checked on a random batch
and any other architecture gets a clear error.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_bn.errors import ConfigurationError
from robustbench_bn.utils.files import atomic_write, file_lock, stable_hash

log = logging.getLogger(__name__)
TrainingImages = Callable[[], tuple[torch.Tensor, torch.Tensor]]


def sequential_blocks(network: nn.Module) -> list[tuple[str, nn.Module]]:
    """The network's top-level children in order, with nn.Sequential children unrolled once."""
    blocks = []
    for name, child in network.named_children():
        if isinstance(child, nn.Sequential):
            blocks.extend((f"{name}.{inner}", block) for inner, block in child.named_children())
        else:
            blocks.append((name, child))
    return blocks


def split_index(blocks: list[tuple[str, nn.Module]], split_after: str) -> int:
    matches = [
        i
        for i, (name, _) in enumerate(blocks)
        if name == split_after or name.startswith(split_after + ".")
    ]
    if not matches or matches[-1] == len(blocks) - 1:
        names = sorted(
            {name.split(".")[0] for name, _ in blocks[:-1]} | {name for name, _ in blocks[:-1]}
        )
        raise ConfigurationError(
            f"finetune.split_after={split_after!r} names no block before the last one; "
            f"valid: {', '.join(names)}."
        )
    return matches[-1] + 1


class DualBatchNorm2d(nn.Module):
    """A clean and an adversarial BatchNorm branch; ``adversarial`` picks the branch."""

    def __init__(self, clean: nn.BatchNorm2d) -> None:
        super().__init__()
        self.clean = clean
        self.adversarial_branch = copy.deepcopy(clean)
        self.adversarial = False

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return (self.adversarial_branch if self.adversarial else self.clean)(inputs)


def _swap_batch_norms(module: nn.Module, make: Callable[[nn.Module], nn.Module | None]) -> None:
    for name, child in module.named_children():
        replacement = make(child)
        if replacement is not None:
            setattr(module, name, replacement)
        else:
            _swap_batch_norms(child, make)


def perturb_statistics(
    features: torch.Tensor, scale_mean: torch.Tensor, scale_std: torch.Tensor
) -> torch.Tensor:
    """AdvBN's perturbation: rescale per-channel batch mean and std, then ReLU."""
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
) -> tuple[torch.Tensor, ...]:
    """PGD on the per-channel scale factors, maximising the head's cross-entropy."""
    channels = features.shape[1]
    scale_mean = torch.ones(1, channels, 1, 1, requires_grad=True)
    scale_std = torch.ones(1, channels, 1, 1, requires_grad=True)
    was_training = head.training
    head.eval()
    for _ in range(steps):
        loss = F.cross_entropy(head(perturb_statistics(features, scale_mean, scale_std)), labels)
        gradient_mean, gradient_std = torch.autograd.grad(loss, [scale_mean, scale_std])
        with torch.no_grad():
            for scale, gradient in ((scale_mean, gradient_mean), (scale_std, gradient_std)):
                scale.add_(step_size * gradient.sign()).clamp_(1 - bound, 1 + bound)
    head.train(was_training)
    return scale_mean.detach(), scale_std.detach()


def advbn_finetune(
    *,
    model: nn.Module,
    training_images: TrainingImages,
    cache_key: str,
    cache_dir: str,
    split_after: str = "stem",
    epochs: float = 0.3,
    batch_size: int = 128,
    learning_rate: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    attack_steps: int = 6,
    attack_step_size: float = 0.2,
    attack_bound: float = 1.1,
    seed: int = 0,
    progress: bool = True,
) -> nn.Module:
    """Fine-tune ``model`` with AdvBN (cached under the source model and this configuration)."""
    settings = {
        "split_after": split_after,
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "momentum": momentum,
        "weight_decay": weight_decay,
        "attack_steps": attack_steps,
        "attack_step_size": attack_step_size,
        "attack_bound": attack_bound,
        "seed": seed,
    }
    network = getattr(model, "network", model)
    blocks = sequential_blocks(network)
    index = split_index(blocks, split_after)
    _check_composition(network, blocks, model)
    key = stable_hash([cache_key, settings])
    path = Path(cache_dir).expanduser() / "finetune" / f"advbn-{key}.pt"
    tuned = copy.deepcopy(model)
    with file_lock(path.with_suffix(".lock")):
        if not path.is_file():
            state = _train(tuned, index, training_images, settings, progress)
            atomic_write(path, lambda temporary: torch.save(state, temporary))
    tuned.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    tuned.cache_key = key
    return tuned.eval()


def _check_composition(network: nn.Module, blocks, model: nn.Module) -> None:
    probe = torch.rand(2, 3, 32, 32)
    network.eval()
    with torch.no_grad():
        inputs = (probe - model.mean) / model.std if hasattr(model, "mean") else probe
        expected = network(inputs)
        composed = inputs
        for _, block in blocks:
            composed = block(composed)
    if composed.shape != expected.shape or not torch.allclose(composed, expected, atol=1e-5):
        raise ConfigurationError(
            f"finetune=advbn cannot split {type(network).__name__}: its forward is not the "
            "composition of its top-level blocks. Use a model such as fashion_small_resnet."
        )


def _train(
    model: nn.Module, index: int, training_images: TrainingImages, settings: dict, progress: bool
) -> dict:
    from tqdm import tqdm

    torch.manual_seed(settings["seed"])
    network = getattr(model, "network", model)
    blocks = sequential_blocks(network)
    front = nn.Sequential(*[block for _, block in blocks[:index]])
    head = nn.Sequential(*[block for _, block in blocks[index:]])
    _swap_batch_norms(head, lambda m: DualBatchNorm2d(m) if isinstance(m, nn.BatchNorm2d) else None)
    dual_layers = [m for m in head.modules() if isinstance(m, DualBatchNorm2d)]
    for parameter in front.parameters():
        parameter.requires_grad_(False)
    front.eval()
    optimizer = torch.optim.SGD(
        head.parameters(),
        lr=settings["learning_rate"],
        momentum=settings["momentum"],
        weight_decay=settings["weight_decay"],
    )
    images, labels = training_images()
    generator = torch.Generator().manual_seed(settings["seed"])
    order = torch.randperm(len(images), generator=generator)
    batch_size = settings["batch_size"]
    steps = max(1, int(settings["epochs"] * len(images) / batch_size))
    normalize = (
        (lambda x: (x - model.mean) / model.std) if hasattr(model, "mean") else (lambda x: x)
    )
    started = time.perf_counter()
    for step in tqdm(range(steps), desc="AdvBN fine-tuning", disable=not progress, leave=False):
        index_batch = order[(step * batch_size) % len(order) :][:batch_size]
        if len(index_batch) < 2:
            continue
        batch = images[index_batch].float().div_(255)
        target = labels[index_batch]
        with torch.no_grad():
            features = front(normalize(batch))
        for layer in dual_layers:
            layer.adversarial = True
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
        for layer in dual_layers:
            layer.adversarial = False
        clean_loss = F.cross_entropy(head(features), target)
        optimizer.zero_grad(set_to_none=True)
        (clean_loss + adversarial_loss).backward()
        optimizer.step()
    log.info("AdvBN fine-tuning: %d steps in %.0f s", steps, time.perf_counter() - started)
    # Back to the source architecture: the clean branch replaces each dual layer.
    _swap_batch_norms(head, lambda m: m.clean if isinstance(m, DualBatchNorm2d) else None)
    _swap_batch_norms(network, lambda m: m.clean if isinstance(m, DualBatchNorm2d) else None)
    return model.state_dict()
