"""Run metrics: JSON lines + TensorBoard (rank 0), and the progress line.

``metrics.jsonl`` gets one object per logged step (``step``, ``epoch``, ``lr``, ``loss``,
``loss_ori``, ``loss_loc``, ``samples_per_s``, ...; validation rows carry ``val/...`` keys).
The file is appended to, so a resumed run continues the same history.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from anatplane_dist.core.jsonl import append_jsonl, read_jsonl

log = logging.getLogger("anatplane.train")


class MetricsWriter:
    """Appends rows to ``metrics.jsonl`` and mirrors scalars to TensorBoard; no-op off rank 0."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool = True):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self._tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(run_dir / "tb"))
            except Exception as e:  # tensorboard missing or broken: the JSON lines still carry everything
                log.warning("TensorBoard disabled: %s", e)

    def write(self, row: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        append_jsonl(self.path, clean)
        if self._tb is not None:
            step = int(row["step"])
            for k, v in row.items():
                if k not in ("step", "epoch") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k if "/" in k else f"train/{k}", v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def truncate_metrics(run_dir: Path, last_step: int) -> int:
    """Drop rows logged after ``last_step`` (by a run killed after its last checkpoint).

    On resume from step N the history must read as one run: steps N+1... are trained again
    and would otherwise appear twice. Rewritten atomically; returns the rows dropped.
    """
    from anatplane_dist.core.atomic import atomic_write_text

    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return 0
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    keep = []
    for line in lines:
        try:
            if int(json.loads(line)["step"]) <= last_step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            pass  # a torn last line from a kill
    atomic_write_text(path, "".join(f"{line}\n" for line in keep))
    return len(lines) - len(keep)


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every row of ``metrics.jsonl`` (none when absent); a line torn by a kill is skipped.

    The one reader of the file (publishing, the demo report and the tests use it)."""
    return read_jsonl(Path(run_dir) / "metrics.jsonl")


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


class Progress:
    """Rank-0 progress: a tqdm bar on a terminal, one log line per logged step otherwise."""

    def __init__(self, total_steps: int, start_step: int, enabled: bool, mode: str = "auto"):
        self.total = total_steps
        self.start_step = start_step
        self.enabled = enabled
        if mode == "auto":
            mode = "tqdm" if sys.stderr.isatty() else "lines"
        self.mode = mode if enabled else "none"
        self.t0 = time.perf_counter()
        self._bar = None
        if self.mode == "tqdm":
            from tqdm import tqdm
            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def eta(self, step: int) -> float:
        done = step - self.start_step
        if done <= 0:
            return float("nan")
        return (time.perf_counter() - self.t0) / done * (self.total - step)

    def line(self, row: Mapping[str, Any]) -> str:
        step = int(row["step"])
        losses = " ".join(f"{k}={row[k]:.4g}" for k in ("loss", "loss_ori", "loss_loc") if k in row)
        return (f"step {step}/{self.total} ep {row.get('epoch', 0)} | {losses} | lr {row.get('lr', 0):.3g} | "
                f"{row.get('samples_per_s', 0):.1f} samples/s | data {row.get('data_time', 0) * 1000:.0f} ms/it | "
                f"ETA {_fmt_time(self.eta(step))}")

    def update(self, step: int, row: Mapping[str, Any] | None = None) -> None:
        if self.mode == "tqdm":
            self._bar.n = step
            if row:
                self._bar.set_postfix_str(self.line(row).split(" | ", 1)[1], refresh=False)
            self._bar.refresh()
        elif self.mode == "lines" and row:
            log.info(self.line(row))

    def message(self, text: str) -> None:
        if self.mode == "tqdm":
            self._bar.write(text)
        elif self.enabled:
            log.info(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
