"""The objective contract, its config, and the registry that picks one by name.

An :class:`Objective` is everything about a pretraining task that the trainer must not know:
which network to build, what tensor to feed it (two views, a corrupted image, a rotated one),
which loss to minimise and which validation metrics to report. The trainer, the launchers, the
checkpoints and the publishing stay the same for every objective, so an ablation or a generic
self-supervised baseline differs from the paper's method in exactly one config key,
``objective.name``, and trains with the same encoder for the same budget (steps x global batch).
"""
from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from anatplane_dist.model import ModelConfig
from anatplane_dist.objectives.config import (
    LossConfig,
    ObjectiveConfig,
    ObjectiveError,
)

__all__ = ["Objective", "register_objective", "get_objective", "available_objectives"]


@runtime_checkable
class Objective(Protocol):
    """What the train step calls; see docs/training.md ("Pretraining objectives").

    ``x = obj.inputs(batch, gen); out = model(x); loss, parts = obj.loss(out, batch)``.
    ``validation_sums`` runs no collective (ranks hold uneven numbers of validation batches);
    its (sum, count) pairs are 0-d tensors or floats, both what ``dist.MetricSums.add`` takes.
    """

    name: str
    transfer_parts: tuple[str, ...]
    validation_names: tuple[str, ...]

    def build_model(self, model_cfg: ModelConfig, num_channels: int) -> nn.Module: ...

    def inputs(self, batch: dict[str, Tensor], gen: torch.Generator) -> Tensor: ...

    def loss(self, out: dict[str, Tensor], batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]: ...

    def validation_sums(self, out: dict[str, Tensor], batch: dict[str, Tensor]
                        ) -> dict[str, tuple[Tensor | float, Tensor | float]]: ...


Factory = Callable[[ObjectiveConfig, LossConfig, "float | None"], Objective]
_REGISTRY: dict[str, Factory] = {}


def register_objective(name: str) -> Callable[[Factory], Factory]:
    """Register ``factory(objective_cfg, loss_cfg, grid_spacing_mm) -> Objective`` as ``name``."""
    def deco(factory: Factory) -> Factory:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"objective {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory
    return deco


def available_objectives() -> list[str]:
    """Registered objective names, sorted."""
    return sorted(_REGISTRY)


def get_objective(cfg: ObjectiveConfig, loss_cfg: LossConfig, *,
                  grid_spacing_mm: float | None = None) -> Objective:
    """The objective ``cfg.name`` with its hyper-parameters.

    Args:
        grid_spacing_mm: the shards' grid spacing, used by the heatmap objectives to turn
            ``loss.sigma_mm`` into pixels when ``loss.spacing_mm`` is not set (as
            ``MultitaskLoss`` takes it); the other objectives ignore it.
    Raises:
        ObjectiveError: an unknown name (the message lists the registered ones) or an invalid
            hyper-parameter.
    """
    factory = _REGISTRY.get(cfg.name)
    if factory is None:
        raise ObjectiveError(f"unknown objective.name {cfg.name!r}; available: "
                             f"{', '.join(available_objectives())}")
    cfg.validate()
    return factory(cfg, loss_cfg, grid_spacing_mm)
