"""Test-only fault injection, kept out of the trainer: a step hook that SIGKILLs the process.

``ANATPLANE_FAULT_AT_STEP=N`` (read once at start-up by the pretrain CLI) makes every rank
kill itself with SIGKILL as optimiser step N+1 starts, so the resume tests can stop a real
multi-process run at a known point. The trainer only sees a generic list of step hooks.
"""
from __future__ import annotations

import os
import signal
from typing import Callable

FAULT_ENV = "ANATPLANE_FAULT_AT_STEP"


def hooks_from_env() -> tuple[Callable[[int], None], ...]:
    """The hooks the environment asks for (none in normal runs)."""
    raw = os.environ.get(FAULT_ENV, "")
    if not raw:
        return ()
    at = int(raw)

    def kill_at(step: int) -> None:
        if step == at:
            os.kill(os.getpid(), signal.SIGKILL)
    return (kill_at,)
