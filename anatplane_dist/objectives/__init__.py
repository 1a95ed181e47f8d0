"""Pretraining objectives, one registry: the paper's multitask method, its single-task
ablations and generic self-supervised baselines, all behind one :class:`Objective` contract.

``get_objective(ObjectiveConfig(name="simclr"), loss_cfg)`` returns the objective; the trainer
builds ``obj.build_model(model_cfg, K)``, feeds ``obj.inputs(batch, gen)`` and minimises
``obj.loss(out, batch)``. Add one with ``@register_objective("name")``.

Names are handed on lazily, so ``anatplane_dist.objectives.config`` imports without torch.
The registry lookups come from :mod:`.builtin`, which imports every built-in objective and so
registers them before any lookup.
"""
from __future__ import annotations

from anatplane_dist.core.lazy import lazy_exports

_HOME = {"Objective": "base", "register_objective": "base",
         "get_objective": "builtin", "available_objectives": "builtin",
         "ObjectiveConfig": "config", "ObjectiveError": "config", "SimCLRConfig": "config",
         "GenesisConfig": "config", "RotationConfig": "config", "LossConfig": "config"}

__all__ = sorted(_HOME)

__getattr__ = lazy_exports(__name__, _HOME)
