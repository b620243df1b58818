"""AdvBN fine-tuning: the attack, split points, the returned architecture, the cache, the
runner, and (slow) clean accuracy of a real fine-tune of the embedded model."""

from __future__ import annotations

import copy
import inspect
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from robustbench_bn.errors import ConfigurationError
from robustbench_bn.finetune import advbn
from robustbench_bn.runner import run

#: Mechanics only: 2 steps of batch 64 on the 256 fixture images.
FEW_STEPS = {"epochs": 0.5, "batch_size": 64, "progress": False}


def _training(fashion_images):
    images, labels = fashion_images
    return lambda: ((images * 255).round().to(torch.uint8), labels)


def _finetune(model, fashion_images, cache_dir, **options):
    return advbn.advbn_finetune(
        model=model,
        training_images=_training(fashion_images),
        cache_key="quick",
        cache_dir=str(cache_dir),
        **{**FEW_STEPS, **options},
    )


@pytest.mark.parametrize("split_after", ["stem", "stages.0"])
def test_adversarial_statistics_raise_the_loss(quick_model, fashion_images, split_after):
    front, head = advbn.split_model(copy.deepcopy(quick_model), split_after)
    head.eval()
    images, labels = fashion_images
    with torch.no_grad():
        features = front(images)
    ones = torch.ones(1, features.shape[1], 1, 1)
    # At a valid split point the features are post-ReLU, so the unperturbed AdvBN layer
    # (scales 1, then ReLU) is the identity: the clean loss below is the model's own loss.
    assert torch.allclose(advbn.perturb_statistics(features, ones, ones), features, atol=1e-6)
    assert torch.allclose(head(features), quick_model(images), atol=1e-5)
    clean_loss = F.cross_entropy(head(features), labels)
    scales = advbn.adversarial_scales(head, features, labels, steps=6, step_size=0.2, bound=1.1)
    adversarial_loss = F.cross_entropy(head(advbn.perturb_statistics(features, *scales)), labels)
    assert adversarial_loss > clean_loss + 0.5
    for scale in scales:
        assert scale.shape == (1, features.shape[1], 1, 1)
        assert float(scale.min()) >= -0.1 - 1e-6 and float(scale.max()) <= 2.1 + 1e-6
        assert not torch.equal(scale, torch.ones_like(scale))
    # The attack puts the head in eval mode and restores the mode it found.
    assert not head.training
    head.train()
    advbn.adversarial_scales(head, features, labels, steps=1, step_size=0.2, bound=1.1)
    assert head.training


def test_attack_runs_in_eval_mode_and_leaves_running_statistics_alone(quick_model, fashion_images):
    front, head = advbn.split_model(copy.deepcopy(quick_model), "stem")
    head.train()
    before = copy.deepcopy(head.state_dict())
    images, labels = fashion_images
    with torch.no_grad():
        features = front(images)
    advbn.adversarial_scales(head, features, labels, steps=6, step_size=0.2, bound=1.1)
    for key, value in head.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize(
    ("split_after", "message"),
    [
        ("layer9", "names no module of SmallResNet; valid split points: .*stages.0"),
        ("stem.0", "does not end in a ReLU"),
        ("stages.2", "no BatchNorm2d layer follows it"),
        ("head", "it is the last module"),
        ("stages.0.0.relu", "called 2 times in the forward"),
    ],
)
def test_invalid_split_points_say_why_and_list_the_valid_ones(
    quick_model, fashion_images, tmp_path, split_after, message
):
    with pytest.raises(ConfigurationError, match=message) as error:
        _finetune(quick_model, fashion_images, tmp_path, split_after=split_after)
    assert "stem.2, stem, stages.0.0, stages.0, stages.1.0, stages.1." in str(error.value)
    assert not (tmp_path / "finetune").exists() or not any((tmp_path / "finetune").glob("*.pt"))


def test_a_skip_connection_around_the_split_point_is_refused(fashion_images, tmp_path):
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
            self.body = nn.Sequential(nn.Conv2d(4, 3, 3, padding=1), nn.BatchNorm2d(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(self.stem(x)) + x

    with pytest.raises(ConfigurationError, match="also reads the network's input") as error:
        _finetune(Residual(), fashion_images, tmp_path)
    assert "valid split points: none" in str(error.value).lower()


def test_a_network_fx_cannot_trace_is_refused_clearly(fashion_images, tmp_path):
    class ValueDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
            self.body = nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.Flatten())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            features = self.stem(x)
            return self.body(features) if features.sum() > 0 else features.flatten(1)

    with pytest.raises(ConfigurationError, match="torch.fx cannot trace its forward"):
        _finetune(ValueDependent(), fashion_images, tmp_path)


def _zoo(architecture: str) -> nn.Module:
    """A zoo architecture with random weights; ImageNet nets at 64 px to keep the test cheap."""
    from robustbench_bn.models import zoo

    if architecture.startswith("torchvision:"):
        model = zoo.torchvision_model(architecture=architecture.split(":")[1], weights=None)
    elif architecture.startswith("timm:"):
        model = zoo.timm_model(architecture=architecture.split(":")[1], pretrained=False)
    else:
        model = zoo.cifar_model(architecture=architecture)
    if model.input_size != 32:
        model.input_size = 64
    return model


#: Every architecture of the model zoo (the benz2021 configs are resnet20_projection) and
#: the split point the paper would use on it.
ZOO_SPLITS = [
    ("resnet20", "layer1"),
    ("resnet20_projection", "layer1"),
    ("resnet26", "layer2"),
    ("wide_resnet28_10", "block2.layer.0.relu1"),
    ("torchvision:resnet18", "layer1"),
    ("torchvision:resnet50", "layer1"),
    ("timm:resnet50", "layer1"),
]


@pytest.mark.parametrize(("architecture", "split_after"), ZOO_SPLITS)
def test_unperturbed_split_reproduces_every_zoo_architecture(architecture, split_after):
    torch.manual_seed(0)
    model = _zoo(architecture)
    network = model.network
    # Non-trivial running statistics, so that eval-mode BN is not close to the identity.
    for module in network.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    front, head = advbn.split_model(model, split_after)
    images = torch.rand(3, 3, model.input_size, model.input_size)
    with torch.no_grad():
        features = front(images)
        ones = torch.ones(1, features.shape[1], 1, 1)
        unperturbed = head(features)
        perturbed = head(advbn.perturb_statistics(features, ones, ones))
        expected = model(images)
    assert features.dim() == 4 and float(features.min()) >= 0
    torch.testing.assert_close(unperturbed, expected, rtol=1e-5, atol=1e-6)
    # (f - mu) + mu rounds differently from f by ~1e-7, which deep nets amplify a little.
    torch.testing.assert_close(perturbed, expected, rtol=1e-3, atol=1e-4)
    # The head runs the network's own parameters (shared, not copied).
    network_parameters = {id(parameter) for parameter in network.parameters()}
    assert {id(parameter) for parameter in head.parameters()} <= network_parameters


def test_invalid_split_of_a_torchvision_resnet_lists_its_blocks():
    with pytest.raises(ConfigurationError, match="called 3 times") as error:
        advbn.split_model(_zoo("torchvision:resnet50"), "layer1.0.relu")
    message = str(error.value)
    assert "relu, maxpool, layer1.0, layer1.1, layer1.2, layer1, layer2.0" in message
    assert "layer4.1." in message and "layer4," not in message


def test_the_front_runs_once_per_batch_and_the_attack_on_the_head_only(quick_model, fashion_images):
    from robustbench_bn.finetune.split import split_network

    model = copy.deepcopy(quick_model)
    split = split_network(model, "stages.0")
    dual_layers = []
    advbn._replace_modules(
        split.head,
        lambda m: (
            dual_layers.append(advbn.DualBatchNorm2d(m)) or dual_layers[-1]
            if isinstance(m, nn.BatchNorm2d)
            else None
        ),
    )
    calls = {"stem": 0, "split": 0, "head_conv": 0}
    network = model.network
    network.stem.register_forward_hook(lambda *_: calls.__setitem__("stem", calls["stem"] + 1))
    split.split_module.register_forward_hook(
        lambda *_: calls.__setitem__("split", calls["split"] + 1)
    )
    network.stages[1][0].conv1.register_forward_hook(
        lambda *_: calls.__setitem__("head_conv", calls["head_conv"] + 1)
    )
    images, labels = fashion_images
    settings = {"attack_steps": 6, "attack_step_size": 0.2, "attack_bound": 1.1}
    clean, adversarial = advbn._training_losses(
        split, dual_layers, images[:32], labels[:32], settings
    )
    assert calls == {"stem": 1, "split": 1, "head_conv": 6 + 2}
    assert adversarial > clean
    # Only the head's parameters receive gradients.
    (clean + adversarial).backward()
    assert network.stem[0].weight.grad is None
    assert network.stages[1][0].conv1.weight.grad is not None


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("epochs", 0),
        ("batch_size", 1),
        ("attack_steps", 0),
        ("lr_schedule", "step"),
        ("augmentation", "autoaugment"),
        ("precision", "fp16"),
    ],
)
def test_bad_settings_are_configuration_errors(
    quick_model, fashion_images, tmp_path, setting, value
):
    with pytest.raises(ConfigurationError, match=f"finetune.{setting} must be"):
        _finetune(quick_model, fashion_images, tmp_path, **{setting: value})


def test_finetune_keeps_the_architecture_and_uses_its_cache(
    quick_model, fashion_images, tmp_path, monkeypatch
):
    source_state = copy.deepcopy(quick_model.state_dict())
    rng_state = torch.random.get_rng_state()
    tuned = _finetune(quick_model, fashion_images, tmp_path)
    assert torch.equal(torch.random.get_rng_state(), rng_state)
    # The source model itself is untouched; the tuned copy is a plain model of its kind.
    for key, value in quick_model.state_dict().items():
        assert torch.equal(value, source_state[key]), key
    assert tuned.state_dict().keys() == quick_model.state_dict().keys()
    assert [type(m) for m in tuned.modules()] == [type(m) for m in quick_model.modules()]
    assert not tuned.training
    assert tuned.preprocessing == quick_model.preprocessing
    changed = {
        k for k, v in quick_model.state_dict().items() if not torch.equal(tuned.state_dict()[k], v)
    }
    # The front (stem) is frozen in eval mode: neither weights nor running statistics move.
    assert not any(key.startswith("network.stem.") for key in changed)
    assert any(key.startswith("network.stages.0.") and "weight" in key for key in changed)
    assert "network.stages.0.0.bn1.running_mean" in changed

    def must_not_train(*args, **kwargs):
        raise AssertionError("a cached fine-tune was trained again")

    monkeypatch.setattr(advbn, "_train", must_not_train)
    again = _finetune(quick_model, fashion_images, tmp_path)
    for key, value in tuned.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    # A different setting, or a different source model, is a different artifact.
    with pytest.raises(AssertionError, match="trained again"):
        _finetune(quick_model, fashion_images, tmp_path, learning_rate=0.123)
    with pytest.raises(AssertionError, match="trained again"):
        advbn.advbn_finetune(
            model=quick_model,
            training_images=_training(fashion_images),
            cache_key="another source model",
            cache_dir=str(tmp_path),
            **FEW_STEPS,
        )


def test_finetune_is_seeded(quick_model, fashion_images, tmp_path):
    one_step = {"epochs": 0.25}
    first = _finetune(quick_model, fashion_images, tmp_path / "a", **one_step)
    second = _finetune(quick_model, fashion_images, tmp_path / "b", **one_step)
    other_seed = _finetune(quick_model, fashion_images, tmp_path / "c", seed=1, **one_step)
    weight = "network.stages.1.0.conv1.weight"
    assert torch.equal(first.state_dict()[weight], second.state_dict()[weight])
    assert not torch.equal(first.state_dict()[weight], other_seed.state_dict()[weight])


def test_config_node_matches_the_function_defaults(make_config):
    node = make_config("finetune=advbn").finetune
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(advbn.advbn_finetune).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    for name, value in node.items():
        if name in ("name", "_target_", "progress"):
            continue
        assert defaults[name] == value, name
    assert instantiate({k: v for k, v in node.items() if k != "name"}, _partial_=True)


def test_runner_applies_bn_to_the_finetuned_model(make_config):
    cfg = make_config(
        "finetune=advbn",
        "finetune.epochs=0.005",
        "method=bn",
        "dataset.n_examples=64",
        "runner.batch_size=32",
        "dataset.corruptions=[gaussian_noise]",
        "dataset.severities=[3]",
    )
    rows = run(cfg)
    assert list(rows["corruption"]) == ["clean", "gaussian_noise"]
    assert (rows["finetune"] == "advbn").all() and (rows["method"] == "bn").all()
    assert (rows["accuracy"] > 30).all()
    # Every setting the fine-tuned weights depend on is in every row, and nothing else.
    assert rows["finetune_params"].nunique() == 1
    recorded = json.loads(rows["finetune_params"].iloc[0])
    expected = {
        key: value
        for key, value in OmegaConf.to_container(cfg.finetune, resolve=True).items()
        if key not in ("name", "_target_", "progress")
    }
    assert recorded == expected
    assert recorded["epochs"] == 0.005 and recorded["split_after"] == "stem"
    assert {"learning_rate", "attack_bound", "augmentation", "seed", "precision"} <= set(recorded)
    on_disk = pd.read_csv(Path(cfg.paths.output_dir) / "rows.csv")
    assert (on_disk["finetune_params"] == rows["finetune_params"].iloc[0]).all()


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

    def accuracy(model: nn.Module) -> float:
        with torch.inference_mode():
            predictions = torch.cat(
                [
                    model(test.images[i : i + 1000].float() / 255).argmax(1)
                    for i in range(0, 10_000, 1000)
                ]
            )
        return 100 * float((predictions == test.labels).float().mean())

    assert accuracy(tuned) >= accuracy(source) - 2.0


def test_runner_finetunes_a_zoo_cifar_resnet_on_the_embedded_default(make_config):
    """`rbn-run model=resnet20_cifar finetune=advbn finetune.split_after=layer1`, shortened."""
    cfg = make_config(
        "model=resnet20_cifar",
        "finetune=advbn",
        "finetune.split_after=layer1",
        "finetune.epochs=0.005",
        "dataset.n_examples=64",
        "runner.batch_size=32",
        "dataset.corruptions=[fog]",
        "dataset.severities=[3]",
        quick_model=False,
    )
    rows = run(cfg)
    assert list(rows["corruption"]) == ["clean", "fog"]
    assert (rows["model"] == "resnet20_cifar").all() and (rows["finetune"] == "advbn").all()
    cached = list((Path(cfg.paths.cache_dir) / "finetune").glob("advbn-*.pt"))
    records = [torch.load(path, weights_only=True) for path in cached]
    assert any(
        record["settings"]["split_after"] == "layer1" and record["steps"] == 2 for record in records
    )


def test_random_resized_crop_flip_is_seeded_and_keeps_the_size():
    images = torch.rand(4, 3, 24, 24)
    first = advbn.random_resized_crop_flip(images, torch.Generator().manual_seed(3))
    again = advbn.random_resized_crop_flip(images, torch.Generator().manual_seed(3))
    other = advbn.random_resized_crop_flip(images, torch.Generator().manual_seed(4))
    assert first.shape == images.shape
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert not torch.equal(first, images)
    assert float(first.min()) >= -0.05 and float(first.max()) <= 1.05


def test_augmentation_and_bf16_are_part_of_the_cache_key(quick_model, fashion_images, tmp_path):
    plain = _finetune(quick_model, fashion_images, tmp_path, epochs=0.25)
    augmented = _finetune(
        quick_model, fashion_images, tmp_path, epochs=0.25, augmentation="random_resized_crop_flip"
    )
    bf16 = _finetune(quick_model, fashion_images, tmp_path, epochs=0.25, precision="bf16")
    assert len({plain.cache_key, augmented.cache_key, bf16.cache_key}) == 3
    weight = "network.stages.1.0.conv1.weight"
    assert not torch.equal(plain.state_dict()[weight], augmented.state_dict()[weight])
    assert not torch.equal(plain.state_dict()[weight], bf16.state_dict()[weight])
    assert bf16.state_dict()[weight].dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_finetune_on_cuda_returns_a_cpu_model(quick_model, fashion_images, tmp_path):
    tuned = _finetune(quick_model, fashion_images, tmp_path, device="cuda", precision="bf16")
    assert all(parameter.device.type == "cpu" for parameter in tuned.parameters())
    assert all(parameter.dtype == torch.float32 for parameter in tuned.parameters())


def _write_jpegs(folder: Path, count: int, size: int, seed: int) -> None:
    import torchvision.io as io

    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(seed)
    for index in range(count):
        image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator)
        (folder / f"image_{index:03d}.JPEG").write_bytes(bytes(io.encode_jpeg(image).numpy()))


@pytest.mark.slow
def test_shu2021_imagenet_preset_runs_end_to_end_on_a_miniature_tree(make_config, tmp_path):
    """The issue's command: the paper preset (torchvision ResNet-50 split after layer1), random
    weights, 4 classes, 6 training images per class, fog 1."""
    wnids = ["n01440764", "n01443537", "n01484850", "n01491361"]
    for label, wnid in enumerate(wnids):
        _write_jpegs(tmp_path / "ImageNet-C" / "fog" / "1" / wnid, 2, 224, seed=label)
        _write_jpegs(tmp_path / "train" / wnid, 6, 300, seed=100 + label)
    cfg = make_config(
        "experiment=shu2021_advbn_imagenetc",
        "model.weights=null",
        # A 1000-class head on a 4-class tree is refused before the first cell.
        "+model.num_classes=4",
        f"dataset.root={tmp_path / 'ImageNet-C'}",
        f"dataset.train_dir={tmp_path / 'train'}",
        "dataset.num_classes=4",
        "dataset.train_images_per_class=6",
        "dataset.num_workers=0",
        "dataset.corruptions=[fog]",
        "dataset.severities=[1]",
        "finetune.epochs=1",
        "finetune.batch_size=8",
        "runner.batch_size=8",
        quick_model=False,
    )
    rows = run(cfg)
    assert list(rows["corruption"]) == ["fog"] and (rows["n"] == 8).all()
    assert (rows["finetune"] == "advbn").all() and (rows["model"] == "resnet50_torchvision").all()
    records = [
        torch.load(path, weights_only=True)
        for path in (Path(cfg.paths.cache_dir) / "finetune").glob("advbn-*.pt")
    ]
    assert any(
        record["settings"]["split_after"] == "layer1" and record["steps"] == 3 for record in records
    )


def test_missing_train_dir_is_a_clear_error_and_leaves_no_cache(make_config, tmp_path):
    _write_jpegs(tmp_path / "ImageNet-C" / "fog" / "1" / "n01440764", 1, 224, seed=0)
    cfg = make_config(
        "experiment=shu2021_advbn_imagenetc",
        "model=resnet18_torchvision",
        "model.weights=null",
        f"dataset.root={tmp_path / 'ImageNet-C'}",
        "dataset.num_classes=1",
        "dataset.corruptions=[fog]",
        "dataset.severities=[1]",
        quick_model=False,
    )
    cache = Path(cfg.paths.cache_dir) / "finetune"
    before = set(cache.glob("advbn-*")) if cache.is_dir() else set()
    with pytest.raises(ConfigurationError, match="dataset.train_dir"):
        run(cfg)
    # Nothing half-written: no new checkpoint and no temporary file (the lock may remain).
    after = set(cache.glob("advbn-*")) if cache.is_dir() else set()
    assert {path.suffix for path in after - before} <= {".lock"}
