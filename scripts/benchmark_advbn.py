"""AdvBN fine-tuning speed: the suite's training step against a plain re-implementation.

The suite (robustbench_bn.finetune.advbn) runs the frozen front once per batch, without
gradients, and the six attack steps and both BN branches on the head only, asking autograd
for the gradient of the two scale vectors alone. The baseline is the straightforward way to
write AdvBN: the AdvBN layer is a forward hook on the split module, every attack step runs
the whole network and calls ``loss.backward()`` (which also fills every head parameter's
gradient), and the clean and adversarial training passes each run the whole network again.
Both do the same arithmetic on the same batches: the script checks that one step of each
gives the same losses and the same updated weights, then times them alternately in one
process (the machine may be shared: only the ratio is meaningful).

    PYTHONPATH=. .venv/bin/python scripts/benchmark_advbn.py              # 32 px, CPU
    PYTHONPATH=. .venv/bin/python scripts/benchmark_advbn.py --device cuda --model resnet50 \\
        --size 224 --split layer1 --batch-size 64
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_bn.finetune import advbn
from robustbench_bn.finetune.split import network_of, split_network

SETTINGS = {"attack_steps": 6, "attack_step_size": 0.2, "attack_bound": 1.1}


def build_model(name: str) -> nn.Module:
    from robustbench_bn.models import zoo
    from robustbench_bn.models.normalized import NormalizedModel
    from robustbench_bn.models.small_resnet import SmallResNet

    if name == "small_resnet":
        return NormalizedModel(SmallResNet(), mean=[0.5] * 3, std=[0.25] * 3)
    if name in ("resnet18", "resnet50"):
        model = zoo.torchvision_model(architecture=name, weights=None)
        model.input_size = None
        return model
    return zoo.cifar_model(architecture=name)


class Suite:
    """The suite's step: ``advbn._training_losses`` plus the SGD step."""

    def __init__(self, model: nn.Module, split_after: str) -> None:
        self.split = split_network(model, split_after)
        self.dual_layers: list[advbn.DualBatchNorm2d] = []

        def make_dual(module: nn.Module) -> nn.Module | None:
            if isinstance(module, nn.BatchNorm2d):
                self.dual_layers.append(advbn.DualBatchNorm2d(module))
                return self.dual_layers[-1]
            return None

        advbn._replace_modules(self.split.head, make_dual)
        model.eval()
        self.optimizer = torch.optim.SGD(self.split.head.parameters(), lr=0.01, momentum=0.9)

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
        clean, adversarial = advbn._training_losses(
            self.split, self.dual_layers, images, labels, SETTINGS
        )
        self.optimizer.zero_grad(set_to_none=True)
        (clean + adversarial).backward()
        self.optimizer.step()
        return clean.item(), adversarial.item()


class Naive:
    """AdvBN as a forward hook; the whole network runs for every attack step and pass."""

    def __init__(self, model: nn.Module, split_after: str) -> None:
        self.model = model
        network = network_of(model)
        split = split_network(model, split_after)
        head_batch_norms = {id(m) for m in split.head.modules() if isinstance(m, nn.BatchNorm2d)}
        self.head_modules = [m for m in split.head.modules() if not isinstance(m, fx_module())]
        self.duals: list[advbn.DualBatchNorm2d] = []

        def make_dual(module: nn.Module) -> nn.Module | None:
            if id(module) in head_batch_norms:
                self.duals.append(advbn.DualBatchNorm2d(module))
                return self.duals[-1]
            return None

        advbn._replace_modules(network, make_dual)
        head_parameters = {id(p) for p in split.head.parameters()}
        head_parameters |= {id(p) for dual in self.duals for p in dual.parameters()}
        for parameter in model.parameters():
            parameter.requires_grad_(id(parameter) in head_parameters)
        self.split_module = network.get_submodule(split_after)
        self.scales: tuple[torch.Tensor, torch.Tensor] | None = None
        self.split_module.register_forward_hook(self._perturb)
        self.optimizer = torch.optim.SGD(
            [p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9
        )

    def _perturb(self, module: nn.Module, inputs: object, output: torch.Tensor):
        if self.scales is None:
            return None
        return advbn.perturb_statistics(output, *self.scales)

    def _head_mode(self, training: bool) -> None:
        for dual in self.duals:
            dual.train(training)
        for module in self.head_modules:
            module.train(training)

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
        self.model.eval()
        for dual in self.duals:
            dual.adversarial = True
        channels = self.split_module_channels(images)
        scale_mean = torch.ones(1, channels, 1, 1, device=images.device, requires_grad=True)
        scale_std = torch.ones(1, channels, 1, 1, device=images.device, requires_grad=True)
        self.scales = (scale_mean, scale_std)
        for _ in range(SETTINGS["attack_steps"]):
            loss = F.cross_entropy(self.model(images), labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():
                for scale in self.scales:
                    scale.add_(SETTINGS["attack_step_size"] * scale.grad.sign())
                    scale.clamp_(1 - SETTINGS["attack_bound"], 1 + SETTINGS["attack_bound"])
                    scale.grad = None
        self.scales = (scale_mean.detach(), scale_std.detach())
        self._head_mode(True)
        adversarial = F.cross_entropy(self.model(images), labels)
        self.scales = None
        for dual in self.duals:
            dual.adversarial = False
        clean = F.cross_entropy(self.model(images), labels)
        self.optimizer.zero_grad(set_to_none=True)
        (clean + adversarial).backward()
        self.optimizer.step()
        self._head_mode(False)
        return clean.item(), adversarial.item()

    def split_module_channels(self, images: torch.Tensor) -> int:
        if not hasattr(self, "_channels"):
            captured = []
            handle = self.split_module.register_forward_hook(
                lambda m, i, o: captured.append(o.shape[1])
            )
            with torch.no_grad():
                self.model(images[:2])
            handle.remove()
            self._channels = captured[0]
        return self._channels


def fx_module() -> type:
    from torch import fx

    return fx.GraphModule


def images_per_second(trainer, batches, repeats: int) -> list[float]:
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for images, labels in batches:
            trainer.step(images, labels)
        if batches[0][0].device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(sum(len(b[0]) for b in batches) / (time.perf_counter() - started))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small_resnet")
    parser.add_argument("--split", default="stem")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads (default: torch's); 1 is steadier on a machine shared with others",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    source = build_model(args.model).to(device).to(memory_format=torch.channels_last)
    classes = network_of(source)(torch.zeros(2, 3, args.size, args.size, device=device)).shape[1]
    generator = torch.Generator().manual_seed(1)
    batches = [
        (
            torch.rand(args.batch_size, 3, args.size, args.size, generator=generator)
            .to(device)
            .contiguous(memory_format=torch.channels_last),
            torch.randint(0, classes, (args.batch_size,), generator=generator).to(device),
        )
        for _ in range(args.batches)
    ]
    suite = Suite(copy.deepcopy(source), args.split)
    naive = Naive(copy.deepcopy(source), args.split)
    # Same arithmetic: one step of each from the same weights gives the same losses.
    suite_losses, naive_losses = suite.step(*batches[0]), naive.step(*batches[0])
    assert all(abs(a - b) < 1e-3 for a, b in zip(suite_losses, naive_losses, strict=True)), (
        suite_losses,
        naive_losses,
    )
    suite_rates, naive_rates = [], []
    for _ in range(args.rounds):  # alternated, so that load from other processes hits both
        suite_rates += images_per_second(suite, batches, 1)
        naive_rates += images_per_second(naive, batches, 1)
    suite_rate, naive_rate = statistics.median(suite_rates), statistics.median(naive_rates)
    print(
        f"{args.model} split after {args.split}, {args.size} px, batch {args.batch_size}, "
        f"{device.type}, {torch.get_num_threads()} threads; losses of the first step: suite "
        f"{suite_losses[0]:.4f}/{suite_losses[1]:.4f}, naive "
        f"{naive_losses[0]:.4f}/{naive_losses[1]:.4f}"
    )
    print(
        f"images/s (median of {args.rounds}): suite {suite_rate:.1f}, naive re-run "
        f"{naive_rate:.1f}; ratio {suite_rate / naive_rate:.2f}x"
    )


if __name__ == "__main__":
    main()
