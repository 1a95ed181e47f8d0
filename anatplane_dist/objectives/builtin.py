"""Every built-in objective, registered: import this module before looking one up by name.

The objectives register themselves with :func:`anatplane_dist.objectives.base.register_objective`
when imported; this module imports them all and hands on the lookups, so the registry never
has to import its own members.
"""
from __future__ import annotations

from anatplane_dist.objectives import genesis as _genesis  # noqa: F401  (registers "genesis")
from anatplane_dist.objectives import pretext as _pretext  # noqa: F401  ("multitask", "orientation", "location")
from anatplane_dist.objectives import rotation as _rotation  # noqa: F401  (registers "rotation")
from anatplane_dist.objectives import simclr as _simclr  # noqa: F401  (registers "simclr")
from anatplane_dist.objectives.base import available_objectives, get_objective

__all__ = ["available_objectives", "get_objective"]
