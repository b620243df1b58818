"""Model zoo: CIFAR architectures load state dicts with the published key names; shared source
model checkpoints install into the cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robustbench_bn.errors import ConfigurationError
from robustbench_bn.models.zoo import cifar_model


@pytest.mark.parametrize(
    ("architecture", "keys", "parameters"),
    [
        (
            "resnet20",
            [
                "conv1.weight",
                "bn1.running_mean",
                "layer1.0.conv1.weight",
                "layer3.2.bn2.weight",
                "linear.weight",
            ],
            269_722,
        ),
        # ResNet-20 plus one block per stage: 2 convs and 2 BNs at 16, 32 and 64 channels.
        ("resnet26", ["layer3.3.conv2.weight"], 269_722 + 97_216),
        (
            "wide_resnet28_10",
            [
                "conv1.weight",
                "block1.layer.0.bn1.weight",
                "block1.layer.0.convShortcut.weight",
                "block3.layer.3.conv2.weight",
                "bn1.running_var",
                "fc.bias",
            ],
            36_479_194,
        ),
    ],
)
def test_published_key_names_and_sizes(architecture, keys, parameters, tmp_path):
    model = cifar_model(architecture=architecture)
    state = model.network.state_dict()
    assert all(key in state for key in keys)
    assert sum(p.numel() for p in model.network.parameters()) == parameters
    # A checkpoint saved the way DataParallel saves it loads back exactly.
    path = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    loaded = cifar_model(architecture=architecture, checkpoint=str(path))
    for key, value in loaded.network.state_dict().items():
        assert torch.equal(value, state[key])
    assert loaded(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_mismatched_checkpoint_is_explained(tmp_path):
    path = tmp_path / "other.pt"
    torch.save(cifar_model(architecture="resnet20").network.state_dict(), path)
    with pytest.raises(ConfigurationError, match="does not fit resnet26"):
        cifar_model(architecture="resnet26", checkpoint=str(path))
    with pytest.raises(ConfigurationError, match="Unknown CIFAR architecture"):
        cifar_model(architecture="resnet9000")


def test_install_checkpoint_shares_weights_and_never_overwrites_a_cached_model(tmp_path, caplog):
    from robustbench_bn.models.training import install_checkpoint
    from robustbench_bn.models.training import main as train_source_main

    shared = Path(__file__).resolve().parents[1] / "results" / "fashion_mnist_c" / "demo_model.pt"
    target = install_checkpoint(shared, tmp_path / "cache")
    assert target.read_bytes() == shared.read_bytes()
    assert target.name.startswith("fashion_small_resnet-")
    target.write_bytes(b"a model trained here")
    with caplog.at_level("WARNING"):
        assert install_checkpoint(shared, tmp_path / "cache") == target
    assert target.read_bytes() == b"a model trained here"
    assert "delete it to use the shared weights" in caplog.text
    train_source_main(["--install", str(shared), "--cache-dir", str(tmp_path / "cli")])
    assert (tmp_path / "cli" / "models" / target.name).read_bytes() == shared.read_bytes()
