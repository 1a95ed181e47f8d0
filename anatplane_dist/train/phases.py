"""Where a training step's time goes (``train.phase_times``), without a host sync per step.

Each phase boundary of a step (host-to-device copy, augmentation, forward, loss, backward,
optimiser step) is a point in time: on CUDA an event recorded on the current stream, so the
figures are the GPU time between boundaries and nothing waits for the GPU until the next
metrics row is written (which reads the loss and so synchronises anyway); on the CPU, where
work runs as it is issued, the wall clock. Rows get ``ms/<phase>``: milliseconds per
optimiser step, summed over its micro-batches. Off by default: events cost a little, and
reading them needs the row's synchronisation.
"""
from __future__ import annotations

import time
from typing import Any

import torch

PHASES = ("host_to_device", "augment", "forward", "loss", "backward", "optimiser_step")


class PhaseTimer:
    """``start()`` opens a span, each ``mark(name)`` closes the current phase and opens the next."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._last: Any = None
        self._spans: list[tuple[str, Any, Any]] = []
        self._steps = 0

    def _point(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def start(self) -> None:
        self._last = self._point()

    def mark(self, name: str) -> None:
        now = self._point()
        self._spans.append((name, self._last, now))
        self._last = now

    def end_step(self) -> None:
        self._steps += 1

    def collect(self) -> dict[str, float]:
        """``ms/<phase>`` per optimiser step since the last call (waits for the last event)."""
        if not self._spans:
            return {}
        if self.cuda:
            self._spans[-1][2].synchronize()
        totals: dict[str, float] = {}
        for name, a, b in self._spans:
            ms = a.elapsed_time(b) if self.cuda else 1e3 * (b - a)
            totals[name] = totals.get(name, 0.0) + ms
        steps = max(self._steps, 1)
        self._spans, self._steps = [], 0
        return {f"ms/{k}": round(v / steps, 3) for k, v in totals.items()}


class NoPhaseTimer(PhaseTimer):
    """The disabled timer: every call is free."""

    def __init__(self) -> None:
        super().__init__(torch.device("cpu"))

    def start(self) -> None:
        pass

    def mark(self, name: str) -> None:
        pass

    def end_step(self) -> None:
        pass
