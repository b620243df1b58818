"""AdvBN fine-tuning: the attack, the returned architecture, the cache, clean accuracy."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from robustbench_bn.errors import ConfigurationError
from robustbench_bn.finetune import advbn


def _training(fashion_images):
    images, labels = fashion_images
    return lambda: ((images * 255).to(torch.uint8), labels)


def test_adversarial_statistics_raise_the_loss(quick_model, fashion_images):
    model = copy.deepcopy(quick_model)
    blocks = advbn.sequential_blocks(model.network)
    index = advbn.split_index(blocks, "stem")
    front = torch.nn.Sequential(*[b for _, b in blocks[:index]])
    head = torch.nn.Sequential(*[b for _, b in blocks[index:]]).eval()
    images, labels = fashion_images
    with torch.no_grad():
        features = front((images - model.mean) / model.std)
    ones = torch.ones(1, features.shape[1], 1, 1)
    clean_loss = F.cross_entropy(head(advbn.perturb_statistics(features, ones, ones)), labels)
    scales = advbn.adversarial_scales(head, features, labels, steps=6, step_size=0.2, bound=1.1)
    adversarial_loss = F.cross_entropy(head(advbn.perturb_statistics(features, *scales)), labels)
    assert adversarial_loss > clean_loss + 0.1
    assert all(float(s.min()) >= -0.1 - 1e-6 and float(s.max()) <= 2.1 + 1e-6 for s in scales)


def test_finetune_keeps_the_architecture_and_uses_its_cache(
    quick_model, fashion_images, tmp_path, monkeypatch
):
    options = {"split_after": "stem", "epochs": 0.5, "batch_size": 64, "progress": False}
    tuned = advbn.advbn_finetune(
        model=quick_model,
        training_images=_training(fashion_images),
        cache_key="quick",
        cache_dir=str(tmp_path),
        **options,
    )
    assert tuned.state_dict().keys() == quick_model.state_dict().keys()
    assert any(
        not torch.equal(tuned.state_dict()[k], v) for k, v in quick_model.state_dict().items()
    )
    # The front (before the split) is frozen.
    for key, value in quick_model.state_dict().items():
        if key.startswith("network.stem.0"):
            assert torch.equal(tuned.state_dict()[key], value)

    def must_not_train(*args, **kwargs):
        raise AssertionError("a cached fine-tune was trained again")

    monkeypatch.setattr(advbn, "_train", must_not_train)
    again = advbn.advbn_finetune(
        model=quick_model,
        training_images=_training(fashion_images),
        cache_key="quick",
        cache_dir=str(tmp_path),
        **options,
    )
    for key, value in tuned.state_dict().items():
        assert torch.equal(again.state_dict()[key], value)


def test_unknown_split_point_lists_the_valid_ones(quick_model, fashion_images, tmp_path):
    with pytest.raises(ConfigurationError, match="valid: .*stages"):
        advbn.advbn_finetune(
            model=quick_model,
            training_images=_training(fashion_images),
            cache_key="quick",
            cache_dir=str(tmp_path),
            split_after="layer9",
        )


@pytest.mark.slow
def test_default_finetune_keeps_clean_accuracy_of_the_embedded_model(session_cache):
    """The real thing: the fully trained embedded model, AdvBN at its configured defaults."""
    from robustbench_bn.data.fashion_mnist import load_fashion_mnist
    from robustbench_bn.models.training import trained_small_resnet

    source = trained_small_resnet(cache_dir=str(session_cache), progress=False)
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    tuned = advbn.advbn_finetune(
        model=source,
        training_images=lambda: (train.images, train.labels),
        cache_key=source.cache_key,
        cache_dir=str(session_cache),
        progress=False,
    )

    def accuracy(model):
        with torch.inference_mode():
            predictions = torch.cat(
                [
                    model(test.images[i : i + 1000].float() / 255).argmax(1)
                    for i in range(0, 10_000, 1000)
                ]
            )
        return 100 * float((predictions == test.labels).float().mean())

    assert accuracy(tuned) >= accuracy(source) - 2.0
