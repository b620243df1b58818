"""Model zoo: CIFAR architectures load state dicts with the published key names."""

from __future__ import annotations

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
