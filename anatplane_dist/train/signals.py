"""SIGTERM / SIGINT become a request to stop after the current optimiser step.

The handler only sets a flag; the trainer reads it once per optimiser step in the same
collective as the NaN check, so every rank sees a stop requested on any rank at the same
step, writes the checkpoint together (a collective save inside a signal handler would hang)
and exits with ``ExitCode.INTERRUPTED``. A second SIGINT (Ctrl-C twice) restores the default
behaviour at once, for a user who does not want to wait for the save. SIGUSR2 (SLURM's
pre-timeout warning) is left to submitit: on global rank 0 it requeues the job and exits at
once, without a save, so a requeued job redoes the steps since its last periodic checkpoint
(``train.ckpt_every`` bounds that loss; a kill in the middle of a save leaves only a ``.tmp``,
never a damaged checkpoint).

DataLoader workers ignore these signals (``stream._worker_init``): the trainer alone decides,
and shuts them down itself on the way out.
"""
from __future__ import annotations

import logging
import signal
from types import FrameType
from typing import Any

log = logging.getLogger("anatplane.train")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """``with StopRequest() as stop:`` … ``stop.requested`` — set by SIGTERM/SIGINT."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            self.restore()
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        log.warning("%s received: stopping after the current optimiser step and writing a checkpoint "
                    "(Ctrl-C again to quit without one)", self.signal_name)

    def __enter__(self) -> "StopRequest":
        import threading
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        self._previous.clear()

    def __exit__(self, *exc: object) -> None:
        self.restore()
