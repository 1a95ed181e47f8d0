"""Fault injection for the resume tests, loaded by the trainer through its step-hook mechanism.

``ANATPLANE_FAULT_AT_STEP=N`` makes every rank kill itself with SIGKILL as optimiser step N+1
starts, so the resume tests can stop a real multi-process run at a known point.
:func:`fault_env` is the environment that arms it (the hook's module must be importable in the
ranks, hence the repo root on ``PYTHONPATH``).
"""
from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Callable

FAULT_ENV = "ANATPLANE_FAULT_AT_STEP"
REPO = Path(__file__).resolve().parents[2]


def fault_env(at_step: int | str) -> dict[str, str]:
    """Variables that make a launched trainer SIGKILL itself as step ``at_step + 1`` starts."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))
    return {FAULT_ENV: str(at_step), "ANATPLANE_STEP_HOOKS": "tests.train.faults:hooks_from_env",
            "PYTHONPATH": path}


def hooks_from_env() -> tuple[Callable[[int], None], ...]:
    """The hooks the environment asks for (none when ``ANATPLANE_FAULT_AT_STEP`` is unset)."""
    raw = os.environ.get(FAULT_ENV, "")
    if not raw:
        return ()
    at = int(raw)

    def kill_at(step: int) -> None:
        if step == at:
            os.kill(os.getpid(), signal.SIGKILL)
    return (kill_at,)
