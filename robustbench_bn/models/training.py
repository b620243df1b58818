"""Train, cache and reuse the embedded default's source model (a small BN ResNet on Fashion-MNIST).

The trained weights are cached under a hash of everything that changes them (architecture,
epochs, batch size, learning rate, seed, normalization), so every job of a sweep reuses one
model and a change of any of these trains a new one. ``rbn-train-source`` trains explicitly.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from robustbench_bn.data.fashion_mnist import CLASSES, load_fashion_mnist
from robustbench_bn.models.normalized import NormalizedModel
from robustbench_bn.models.small_resnet import SmallResNet
from robustbench_bn.utils.files import atomic_write, file_lock, stable_hash

log = logging.getLogger(__name__)

# Per-channel statistics of the padded Fashion-MNIST training images, in [0, 1].
FASHION_MNIST_MEAN = (0.2516, 0.2516, 0.2516)
FASHION_MNIST_STD = (0.3531, 0.3531, 0.3531)


def _evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(labels), 1000):
            batch = images[start : start + 1000].float().div_(255)
            correct += int((model(batch).argmax(1) == labels[start : start + 1000]).sum())
    return 100.0 * correct / len(labels)


def _untrained_model(training_config: dict) -> NormalizedModel:
    """The network of a training configuration (:func:`trained_small_resnet`'s), initialized
    from torch's global generator, with its input normalization."""
    network = SmallResNet(
        num_classes=len(CLASSES),
        widths=training_config["widths"],
        blocks_per_stage=training_config["blocks_per_stage"],
    )
    return NormalizedModel(network, mean=training_config["mean"], std=training_config["std"])


def train_small_resnet(
    training_config: dict,
    *,
    data_dir: str | None = None,
    download: bool = False,
    progress: bool = True,
) -> tuple[NormalizedModel, dict]:
    """Train from scratch with SGD and a one-cycle schedule; returns the model and its record.
    ``training_config`` is :func:`trained_small_resnet`'s (architecture, epochs, batch size,
    learning rate, seed, normalization)."""
    from tqdm import tqdm

    epochs = training_config["epochs"]
    batch_size = training_config["batch_size"]
    learning_rate = training_config["learning_rate"]
    seed = training_config["seed"]
    torch.manual_seed(seed)
    train = load_fashion_mnist("train", data_dir=data_dir, download=download)
    test = load_fashion_mnist("test", data_dir=data_dir, download=download)
    model = _untrained_model(training_config)
    # channels_last is about 1.5x faster for these small convolutions on CPU.
    model = model.to(memory_format=torch.channels_last)
    steps_per_epoch = len(train) // batch_size
    total_steps = max(1, int(round(epochs * steps_per_epoch)))
    optimizer = torch.optim.SGD(
        model.parameters(), lr=learning_rate, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=learning_rate, total_steps=total_steps, pct_start=0.25
    )
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    model.train()
    step = 0
    bar = tqdm(total=total_steps, desc="training source model", disable=not progress, leave=False)
    while step < total_steps:
        order = torch.randperm(len(train), generator=generator)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            if step >= total_steps:
                break
            index = order[start : start + batch_size]
            images = train.images[index].float().div_(255)
            images = images.contiguous(memory_format=torch.channels_last)
            loss = nn.functional.cross_entropy(model(images), train.labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    seconds = time.perf_counter() - started
    model = model.to(memory_format=torch.contiguous_format)
    accuracy = _evaluate(model, test.images, test.labels)
    record = {"clean_test_accuracy": accuracy, "training_seconds": round(seconds, 1), "steps": step}
    return model, record


def trained_small_resnet(
    *,
    cache_dir: str,
    data_dir: str | None = None,
    download: bool = False,
    widths: Sequence[int] = (16, 32, 64),
    blocks_per_stage: int = 1,
    epochs: float = 1.5,
    batch_size: int = 128,
    learning_rate: float = 0.2,
    seed: int = 0,
    progress: bool = True,
) -> NormalizedModel:
    """The cached source model for this training configuration, trained on first use."""
    training_config = {
        "architecture": "small_resnet",
        "dataset": "fashion_mnist",
        "widths": list(widths),
        "blocks_per_stage": blocks_per_stage,
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "seed": seed,
        "mean": FASHION_MNIST_MEAN,
        "std": FASHION_MNIST_STD,
    }
    key = stable_hash(training_config)
    path = checkpoint_path(cache_dir, training_config)
    model = _untrained_model(training_config)
    # Parallel jobs (joblib, SLURM) wait here for the first one to train, then load its result.
    with file_lock(path.with_suffix(".lock")):
        if not path.is_file():
            _train_and_save(
                path, training_config, data_dir=data_dir, download=download, progress=progress
            )
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(checkpoint["state_dict"])
    model.cache_key = key
    return model.eval()


def checkpoint_path(cache_dir: str | Path, training_config: dict) -> Path:
    """Where :func:`trained_small_resnet` keeps the model of this training configuration."""
    key = stable_hash(training_config)
    return Path(cache_dir).expanduser() / "models" / f"fashion_small_resnet-{key}.pt"


def install_checkpoint(checkpoint: str | Path, cache_dir: str | Path) -> Path:
    """Copy a checkpoint written by this module into ``cache_dir`` under its training config's
    key, so :func:`trained_small_resnet` loads it instead of training.

    Training numerics differ between CPUs (vector width changes float summation order), and a
    briefly trained model amplifies that into accuracy differences of several points; sharing
    the weights pins them, so numbers computed from them compare across machines.
    """
    loaded = torch.load(checkpoint, map_location="cpu", weights_only=True)
    target = checkpoint_path(cache_dir, loaded["config"])
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.is_file():
        atomic_write(target, lambda temporary: shutil.copyfile(checkpoint, temporary))
    elif target.read_bytes() != Path(checkpoint).read_bytes():
        log.warning(
            "Kept the model already cached at %s, which differs from %s (trained on this "
            "machine?); delete it to use the shared weights.",
            target,
            checkpoint,
        )
    return target


def _train_and_save(
    path: Path, training_config: dict, *, data_dir: str | None, download: bool, progress: bool
) -> None:
    log.info("No cached source model at %s; training one (about a minute on 2 CPU cores).", path)
    trained, record = train_small_resnet(
        training_config, data_dir=data_dir, download=download, progress=progress
    )
    log.info(
        "Trained source model: clean test accuracy %.2f%% in %.0f s; cached at %s",
        record["clean_test_accuracy"],
        record["training_seconds"],
        path,
    )
    checkpoint = {"state_dict": trained.state_dict(), "config": training_config, "record": record}
    atomic_write(path, lambda temporary: torch.save(checkpoint, temporary))


def main(argv: Sequence[str] | None = None) -> None:
    """``rbn-train-source``: train (or find in the cache) the embedded default's source model."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--cache-dir", default=".cache/robustbench_bn")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=float, default=1.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--install",
        metavar="CHECKPOINT",
        default=None,
        help="put this shared checkpoint into the cache instead of training (e.g. "
        "results/fashion_mnist_c/demo_model.pt, the weights behind the README's tables)",
    )
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if arguments.install:
        if not Path(arguments.install).is_file():
            raise SystemExit(f"rbn-train-source: no checkpoint at {arguments.install}")
        target = install_checkpoint(arguments.install, arguments.cache_dir)
        print(f"installed {arguments.install} as {target}")
        return
    model = trained_small_resnet(
        cache_dir=arguments.cache_dir,
        data_dir=arguments.data_dir,
        epochs=arguments.epochs,
        seed=arguments.seed,
    )
    test = load_fashion_mnist("test", data_dir=arguments.data_dir)
    print(f"clean test accuracy: {_evaluate(model, test.images, test.labels):.2f}%")


if __name__ == "__main__":
    main()
