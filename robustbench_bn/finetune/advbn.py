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

The ReLU: the paper inserts AdvBN after ResNet-50's layer1, whose output has already passed
a ReLU, and applies a ReLU to the perturbed features so that the head sees non-negative
inputs as it always has. Here a split point is only accepted if the block before it ends in
a ReLU (its output is checked to be non-negative), which holds for ``stem`` and every
``stages.<i>`` of the suite's SmallResNet. There, with both scales at 1 the perturbation is
the identity, ``relu(f) == f``, and the ReLU only clips the negative values that a
perturbation creates, exactly as in the paper.

Splitting needs a network whose forward is the composition of its top-level children (one
level of nn.Sequential unrolled), such as the suite's SmallResNet; this is checked on a
random batch and any other architecture gets a clear error.
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
NamedBlocks = list[tuple[str, nn.Module]]

#: Bumped when the training procedure changes, so that a cached fine-tune is never reused
#: for a procedure that would produce different weights from the same settings.
PROCEDURE_VERSION = 2
LR_SCHEDULES = ("constant", "cosine")


def sequential_blocks(network: nn.Module) -> NamedBlocks:
    """The network's top-level children in order, with nn.Sequential children unrolled once."""
    blocks: NamedBlocks = []
    for name, child in network.named_children():
        if isinstance(child, nn.Sequential):
            blocks.extend((f"{name}.{inner}", block) for inner, block in child.named_children())
        else:
            blocks.append((name, child))
    return blocks


def _network_and_normalization(
    model: nn.Module,
) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    """The network inside a NormalizedModel and the preprocessing that precedes it."""
    network = getattr(model, "network", model)
    if network is model:
        return network, lambda images: images
    return network, lambda images: (images - model.mean) / model.std


def _last_block_index(blocks: NamedBlocks, split_after: str) -> int | None:
    """Index of the last block named ``split_after`` or inside the group ``split_after``."""
    matches = [
        index
        for index, (name, _) in enumerate(blocks)
        if name == split_after or name.startswith(split_after + ".")
    ]
    return matches[-1] if matches else None


def _split_problem(blocks: NamedBlocks, index: int, output: torch.Tensor) -> str | None:
    """Why the network cannot be split after ``blocks[index]``, or None if it can."""
    if index == len(blocks) - 1:
        return "it is the last block, so nothing would be fine-tuned"
    if output.dim() != 4:
        return f"its output is not a feature map [N, C, H, W] (shape {list(output.shape)})"
    if float(output.min()) < 0:
        return (
            "its output can be negative (the block does not end in a ReLU), so AdvBN's ReLU "
            "would change the unperturbed features"
        )
    head = nn.ModuleList(block for _, block in blocks[index + 1 :])
    if not any(isinstance(module, nn.BatchNorm2d) for module in head.modules()):
        return "no BatchNorm2d layer follows it, so there is no BN branch to train"
    return None


def split_index(model: nn.Module, split_after: str) -> int:
    """Index of the last block before the split in :func:`sequential_blocks` of the network.

    ``split_after`` is a dotted module path of the network (``stem``, ``stages.0``, ...); a
    name that does not exist, or one after which AdvBN cannot be inserted, raises a
    ConfigurationError listing the valid ones.
    """
    network, _ = _network_and_normalization(model)
    blocks = sequential_blocks(network)
    outputs = _probe_block_outputs(model, network, blocks)
    group_names = {name.split(".")[0] for name, _ in blocks}
    candidates = sorted(group_names | {name for name, _ in blocks})
    valid = []
    for name in candidates:
        index = _last_block_index(blocks, name)
        if index is not None and _split_problem(blocks, index, outputs[index]) is None:
            valid.append(name)
    index = _last_block_index(blocks, split_after)
    if index is None:
        raise ConfigurationError(
            f"finetune.split_after={split_after!r} names no module of "
            f"{type(network).__name__}; valid split points: {', '.join(valid)}."
        )
    problem = _split_problem(blocks, index, outputs[index])
    if problem is not None:
        raise ConfigurationError(
            f"finetune.split_after={split_after!r} cannot take AdvBN: {problem}. "
            f"Valid split points: {', '.join(valid)}."
        )
    return index


def split_model(model: nn.Module, split_after: str) -> tuple[nn.Sequential, nn.Sequential]:
    """``(front, head)`` with ``model(x) == head(front(x))``; both share the model's modules.

    ``front`` includes the model's input normalization; see :func:`split_index` for
    ``split_after``.
    """
    return _front_and_head(model, split_index(model, split_after))


def _front_and_head(model: nn.Module, index: int) -> tuple[nn.Sequential, nn.Sequential]:
    network, normalize = _network_and_normalization(model)
    blocks = sequential_blocks(network)
    front = nn.Sequential(_Preprocessing(normalize), *[block for _, block in blocks[: index + 1]])
    head = nn.Sequential(*[block for _, block in blocks[index + 1 :]])
    return front, head


class _Preprocessing(nn.Module):
    def __init__(self, normalize: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.normalize = normalize

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.normalize(images)


def _probe_block_outputs(
    model: nn.Module, network: nn.Module, blocks: NamedBlocks
) -> list[torch.Tensor]:
    """Every block's output on a random batch; checks that the blocks compose to the network."""
    _, normalize = _network_and_normalization(model)
    # A private generator: probing must not move the global RNG that the runner seeded.
    generator = torch.Generator().manual_seed(0)
    probe = normalize(torch.rand(4, 3, 32, 32, generator=generator))
    was_training = network.training
    network.eval()
    refusal = ConfigurationError(
        f"finetune=advbn cannot split {type(network).__name__}: its forward is not the "
        "composition of its top-level blocks (it uses functional operations between them). "
        "Use a model built as a chain of blocks, such as model=fashion_small_resnet."
    )
    try:
        with torch.no_grad():
            expected = network(probe)
            outputs = []
            features = probe
            for _, block in blocks:
                features = block(features)
                # Cloned: a following in-place ReLU would otherwise overwrite this output.
                outputs.append(features.clone())
    except RuntimeError as error:
        # e.g. a classifier that receives an unflattened feature map.
        raise refusal from error
    finally:
        network.train(was_training)
    if features.shape != expected.shape or not torch.allclose(features, expected, atol=1e-5):
        raise refusal
    return outputs


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
    scale_mean = torch.ones(1, channels, 1, 1, requires_grad=True)
    scale_std = torch.ones(1, channels, 1, 1, requires_grad=True)
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
    epochs: float = 0.3,
    batch_size: int = 128,
    learning_rate: float = 0.01,
    lr_schedule: str = "constant",
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    attack_steps: int = 6,
    attack_step_size: float = 0.2,
    attack_bound: float = 1.1,
    seed: int = 0,
    progress: bool = True,
) -> nn.Module:
    """Fine-tune ``model`` with AdvBN; cached under ``cache_key`` and these settings.

    Returns a fine-tuned copy with the source model's architecture (clean BN branch), in eval
    mode; ``model`` itself is left unchanged. Parallel jobs wait for the first one to train
    and then load its result.
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
        "seed": seed,
    }
    _check_settings(settings)
    # Fails fast on a bad split point, before any waiting or training.
    split_index(model, split_after)
    key = stable_hash([cache_key, settings, PROCEDURE_VERSION])
    path = Path(cache_dir).expanduser() / "finetune" / f"advbn-{key}.pt"
    tuned = copy.deepcopy(model)
    with file_lock(path.with_suffix(".lock")):
        if not path.is_file():
            log.info("No cached AdvBN fine-tune at %s; fine-tuning the source model.", path)
            record = _train(tuned, training_images, settings, progress=progress)
            checkpoint = {"state_dict": tuned.state_dict(), "settings": settings, **record}
            atomic_write(path, lambda temporary: torch.save(checkpoint, temporary))
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    tuned.load_state_dict(checkpoint["state_dict"])
    tuned.cache_key = key
    return tuned.eval()


def _train(
    model: nn.Module, training_images: TrainingImages, settings: dict, *, progress: bool
) -> dict:
    """Fine-tune ``model`` in place; returns a record of the run for the checkpoint."""
    from tqdm import tqdm

    index = split_index(model, settings["split_after"])
    # channels_last is about 1.5x faster for these small convolutions on CPU (as in training).
    model.to(memory_format=torch.channels_last)
    network = getattr(model, "network", model)
    _, head = _front_and_head(model, index)
    head_batch_norms = {id(m) for m in head.modules() if isinstance(m, nn.BatchNorm2d)}
    # Swapped inside the network itself, so that swapping back below restores the original
    # module tree (and state_dict keys); front and head are then rebuilt around the swap.
    _replace_modules(network, lambda m: DualBatchNorm2d(m) if id(m) in head_batch_norms else None)
    front, head = _front_and_head(model, index)
    dual_layers = [module for module in head.modules() if isinstance(module, DualBatchNorm2d)]
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
    generator = torch.Generator().manual_seed(settings["seed"])
    started = time.perf_counter()
    bar = tqdm(total=total_steps, desc="AdvBN fine-tuning", disable=not progress, leave=False)
    step = 0
    clean_loss = adversarial_loss = torch.tensor(float("nan"))
    while step < total_steps:
        # A fresh permutation each epoch; only full batches, so BN always sees batch_size.
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, batches_per_epoch * batch_size, batch_size):
            if step >= total_steps:
                break
            index = order[start : start + batch_size]
            target = labels[index]
            with torch.no_grad():
                batch = images[index].float().div_(255)
                features = front(batch.contiguous(memory_format=torch.channels_last))
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
            clean_loss = F.cross_entropy(head(features), target)
            optimizer.zero_grad(set_to_none=True)
            (clean_loss + adversarial_loss).backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
            step += 1
            bar.update(1)
            bar.set_postfix(clean=f"{clean_loss.item():.3f}", adv=f"{adversarial_loss.item():.3f}")
    bar.close()
    seconds = time.perf_counter() - started
    log.info("AdvBN fine-tuning: %d steps in %.0f s", step, seconds)
    # Back to the source architecture: the clean branch replaces each dual layer.
    _replace_modules(network, lambda m: m.clean if isinstance(m, DualBatchNorm2d) else None)
    model.to(memory_format=torch.contiguous_format).eval()
    return {
        "steps": step,
        "seconds": round(seconds, 1),
        "final_clean_loss": clean_loss.item(),
        "final_adversarial_loss": adversarial_loss.item(),
    }
