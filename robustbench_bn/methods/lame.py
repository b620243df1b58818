"""LAME: Laplacian-adjusted maximum-likelihood estimation (Boudiaf, Mueller, Ben Ayed, Bertinetto,
"Parameter-free Online Test-time Adaptation", CVPR 2022, arXiv 2201.05718; reference repository
github fiveai/LAME).

The model is not changed at all (eval mode, source statistics, no gradient): LAME only
corrects the batch's output probabilities. For a batch of N images with source probabilities
``p`` and penultimate features ``f``:

* the affinity ``W`` is computed on the L2-normalized features, one of the reference's three
  (``affinity``): ``knn``, the kNN graph (``W_ij = 1`` when j is one of the ``knn`` nearest
  neighbours of i by Euclidean distance, itself excluded; not symmetrized); ``rbf``, the dense
  Gaussian kernel ``exp(-d_ij^2 / (2 sigma^2))`` (diagonal included) with ``sigma`` the batch
  mean of each point's distance to its ``knn``-th nearest point counting itself (so its
  ``knn - 1``-th neighbour), as the reference computes it; ``linear``, the dense dot products
  ``f_i . f_j`` (diagonal included). The reference's configuration default is ``rbf`` with
  ``knn`` 5; its validation grid is these three affinities x ``knn`` 1, 3, 5,
* the assignments ``Y`` minimize ``sum_i KL(y_i || p_i) - bound_lambda * sum_ij W_ij y_i.y_j``
  by the paper's concave-convex bound iterations: ``Y <- softmax(log p + bound_lambda W Y)``
  from ``Y = p``, at most ``max_steps`` times, stopping when the energy
  ``sum(-log(p) Y - bound_lambda (W Y) Y + Y log Y)`` changes by at most 1e-8 relative
  (``-log p`` is taken as ``-log(p + 1e-10)``, as the reference does).

The logits returned are ``log Y`` (the log-softmax of the last iteration's exponent, finite
where ``Y`` underflows); their argmax is LAME's prediction. A batch of one image has no
neighbours: with ``knn`` ``Y = p``; ``rbf`` and ``linear`` keep the self-affinity, which
sharpens ``Y`` but keeps its argmax, the source prediction. A batch whose points all coincide
has ``sigma = 0``; it is floored at the smallest positive float so the kernel stays finite.

Features: the input of the classifier, caught by a forward pre-hook. The classifier is found
generically: the last ``nn.Linear`` in module order whose output width equals the logits'
(checked on the first batch), or the module named by ``classifier`` (e.g. ``head.2``) for a
model whose final layer is not an ``nn.Linear``. Works on any model, BN or not.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_bn.errors import ConfigurationError
from robustbench_bn.methods.base import Method
from robustbench_bn.methods.eata import check_positive

#: The reference's guard inside log(p).
PROBABILITY_EPSILON = 1e-10
#: The reference's stopping rule: relative change of the energy.
ENERGY_TOLERANCE = 1e-8


def knn_affinity(features: torch.Tensor, knn: int) -> torch.Tensor:
    """[N, N] with ones at each row's ``knn`` nearest other rows (Euclidean distance)."""
    count = features.shape[0]
    # Without the matrix-product shortcut: exact distances, so near-ties order as the
    # reference's explicit differences do.
    distances = torch.cdist(features, features, compute_mode="donot_use_mm_for_euclid_dist")
    neighbours = min(knn + 1, count)
    # The nearest point is the point itself (distance 0): dropped.
    nearest = distances.topk(neighbours, dim=1, largest=False).indices[:, 1:]
    affinity = torch.zeros(count, count, dtype=features.dtype, device=features.device)
    return affinity.scatter_(1, nearest, 1.0)


def rbf_affinity(features: torch.Tensor, knn: int) -> torch.Tensor:
    """[N, N] Gaussian kernel, bandwidth the mean distance to the ``knn``-th nearest point
    (the point itself counted first, as in the reference)."""
    distances = torch.cdist(features, features, compute_mode="donot_use_mm_for_euclid_dist")
    kth_distance = distances.topk(min(knn, features.shape[0]), dim=1, largest=False).values[:, -1]
    sigma = kth_distance.mean().clamp(min=torch.finfo(features.dtype).tiny)
    # Scaled before squaring: a floored sigma squared would underflow to 0 (0/0 on the diagonal).
    return torch.exp(-(distances / sigma).square() / 2)


def linear_affinity(features: torch.Tensor, knn: int) -> torch.Tensor:
    """[N, N] dot products of the (normalized) features; ``knn`` is not used."""
    return features.matmul(features.T)


AFFINITIES = {"knn": knn_affinity, "rbf": rbf_affinity, "linear": linear_affinity}


def laplacian_assignments(
    probabilities: torch.Tensor, affinity: torch.Tensor, *, bound_lambda: float, max_steps: int
) -> torch.Tensor:
    """log Y for LAME's Laplacian-regularized assignments (see the module docstring)."""
    unary = -torch.log(probabilities + PROBABILITY_EPSILON)
    log_assignments = (-unary).log_softmax(1)
    previous_energy = float("inf")
    for step in range(max_steps):
        pairwise = bound_lambda * affinity.matmul(log_assignments.exp())
        log_assignments = (pairwise - unary).log_softmax(1)
        assignments = log_assignments.exp()
        energy = float(
            (
                unary * assignments
                - bound_lambda * pairwise * assignments
                + assignments * torch.log(assignments.clamp(min=1e-20))
            ).sum()
        )
        if step > 1 and abs(energy - previous_energy) <= ENERGY_TOLERANCE * abs(previous_energy):
            break
        previous_energy = energy
    return log_assignments


class LaplacianAdjustedMaximumLikelihood(Method):
    """See the module docstring."""

    def __init__(
        self,
        *,
        model: nn.Module,
        affinity: str = "knn",
        knn: int = 5,
        bound_lambda: float = 1.0,
        max_steps: int = 100,
        classifier: str | None = None,
    ) -> None:
        if affinity not in AFFINITIES:
            raise ConfigurationError(
                f"method.affinity must be one of {sorted(AFFINITIES)} (the reference's kNN "
                f"graph, Gaussian kernel or dot products), got {affinity!r}."
            )
        check_positive("knn", knn, integer=True)
        if affinity == "rbf" and knn < 2:
            raise ConfigurationError(
                "method.affinity=rbf takes its bandwidth from the knn-th nearest point counting "
                "the point itself, so knn=1 gives sigma=0 (an identity kernel: the source "
                "prediction; the reference divides 0 by 0); use method.knn=2 or more."
            )
        check_positive("bound_lambda", bound_lambda, zero=True)
        check_positive("max_steps", max_steps, integer=True)
        super().__init__(model=model)
        self.affinity = affinity
        self.knn = knn
        self.bound_lambda = float(bound_lambda)
        self.max_steps = max_steps
        self.classifier_name = classifier
        self.classifier = self._find_classifier(model, classifier)
        self._features: torch.Tensor | None = None
        self._checked = False
        self.classifier.register_forward_pre_hook(self._catch_features)

    @staticmethod
    def _find_classifier(model: nn.Module, name: str | None) -> nn.Module:
        modules = dict(model.named_modules())
        if name is not None:
            if name not in modules:
                raise ConfigurationError(
                    f"method.classifier={name!r} names no module of the model; give the name "
                    "of the final layer (its input is LAME's features), e.g. 'fc' or 'head.2', "
                    "or null to use the last nn.Linear."
                )
            return modules[name]
        linear = [module for module in modules.values() if isinstance(module, nn.Linear)]
        if not linear:
            raise ConfigurationError(
                "method=lame takes its features at the classifier's input and found no "
                "nn.Linear in the model; name the final layer with method.classifier=NAME."
            )
        return linear[-1]

    def _catch_features(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        self._features = inputs[0]

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        self._features = None
        with torch.inference_mode():
            logits = self.model(images)
            features = self._features
            if features is None:
                raise ConfigurationError(
                    "lame's classifier module was not called in the forward pass; name the "
                    "final layer with method.classifier=NAME."
                )
            if not self._checked:
                self._check_features(features, logits)
            features = F.normalize(features.float().flatten(1), p=2, dim=1)
            probabilities = logits.float().softmax(1)
            affinity = AFFINITIES[self.affinity](features, self.knn)
            return laplacian_assignments(
                probabilities, affinity, bound_lambda=self.bound_lambda, max_steps=self.max_steps
            )

    def _check_features(self, features: torch.Tensor, logits: torch.Tensor) -> None:
        if features.shape[0] != logits.shape[0]:
            raise ConfigurationError(
                f"lame's features ({tuple(features.shape)}) do not have one row per image "
                f"({logits.shape[0]}); name the final layer with method.classifier=NAME."
            )
        width = getattr(self.classifier, "out_features", logits.shape[1])
        if width != logits.shape[1]:
            raise ConfigurationError(
                f"The last nn.Linear of the model has {width} outputs but the model returns "
                f"{logits.shape[1]} logits, so it is not the classifier; name the final layer "
                "with method.classifier=NAME."
            )
        self._checked = True

    def row_fields(self) -> dict[str, Any]:
        return {
            "affinity": self.affinity,
            "knn": self.knn,
            "bound_lambda": self.bound_lambda,
            "max_steps": self.max_steps,
            "classifier": self.classifier_name,
        }
