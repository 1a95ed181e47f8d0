"""Pretraining objectives, one registry: the paper's multitask method, its single-task
ablations and generic self-supervised baselines, all behind one :class:`Objective` contract.

``get_objective(ObjectiveConfig(name="simclr"), loss_cfg)`` returns the objective; the trainer
builds ``obj.build_model(model_cfg, K)``, feeds ``obj.inputs(batch, gen)`` and minimises
``obj.loss(out, batch)``. Add one with ``@register_objective("name")``.
"""
from anatplane_dist.objectives import genesis as _genesis  # noqa: F401  (registers "genesis")
from anatplane_dist.objectives import pretext as _pretext  # noqa: F401  (registers "multitask", "orientation", "location")
from anatplane_dist.objectives import rotation as _rotation  # noqa: F401  (registers "rotation")
from anatplane_dist.objectives import simclr as _simclr  # noqa: F401  (registers "simclr")
from anatplane_dist.objectives.base import (
                                            GenesisConfig,
                                            Objective,
                                            ObjectiveConfig,
                                            ObjectiveError,
                                            RotationConfig,
                                            SimCLRConfig,
                                            available_objectives,
                                            get_objective,
                                            register_objective,
)

__all__ = ["Objective", "ObjectiveConfig", "ObjectiveError", "SimCLRConfig", "GenesisConfig", "RotationConfig",
           "get_objective", "available_objectives", "register_objective"]
