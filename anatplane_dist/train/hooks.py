"""Step hooks named in the environment: the one way to run code of one's own at each step.

``ANATPLANE_STEP_HOOKS="pkg.module:factory[,other.module:factory]"`` makes the pretrain CLI
import each ``module`` and call ``factory()``, which returns a tuple of ``hook(step)``
callables the trainer runs as each optimiser step starts. Every rank reads the variable, so a
hook reaches every process of a multi-node run without touching the config (which a resume
compares). The product ships no hooks: the tests use this to kill a real run at a known step
(``tests/train/faults.py``); a user can use it for profiling or custom logging.
"""
from __future__ import annotations

import importlib
import os
from typing import Callable

from anatplane_dist.core.errors import AnatplaneError

HOOKS_ENV = "ANATPLANE_STEP_HOOKS"
StepHook = Callable[[int], None]


def hooks_from_env(environ: dict[str, str] | None = None) -> tuple[StepHook, ...]:
    """The hooks ``$ANATPLANE_STEP_HOOKS`` names, in order (none when it is unset)."""
    raw = (os.environ if environ is None else environ).get(HOOKS_ENV, "").strip()
    hooks: list[StepHook] = []
    for spec in filter(None, (s.strip() for s in raw.split(","))):
        module, _, name = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError) as e:
            raise AnatplaneError(f"{HOOKS_ENV}: cannot load {spec!r} ({e})") from None
        hooks.extend(factory())
    return tuple(hooks)
