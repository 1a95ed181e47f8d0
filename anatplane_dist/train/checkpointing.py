"""The Checkpointer: which checkpoint a run resumes from, when it saves, and how.

Resume (``resume_plan`` on rank 0, before the backend exists, then ``load`` on every rank):

1. ``train.resume=never`` refuses a run dir that holds checkpoints; ``must`` one that holds none.
2. Complete checkpoints are tried newest first; each is verified against its signed marker
   (:func:`anatplane_dist.core.checkpoints.verify`) *before* anything in it is read. The newest that
   verifies is loaded; newer ones that did not are moved to ``checkpoints/refused/`` (kept, with
   the reason) once the load succeeded, since the run will write those steps again.
3. When checkpoints exist and none verifies, or the newest that verifies does not load (a
   verified checkpoint that does not fit this model and code: older ones would not either), the
   run stops with exit 2 naming each one and why; nothing of the run is pruned, rewritten or
   overwritten.

Saving: every ``ckpt_every`` optimiser steps (default: each epoch), at the last step, and when
a stop is requested: ``step_N.tmp/`` → engine state (every rank) → meta + fp32 export (rank 0)
→ rename → signed marker → prune to ``keep_last``.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anatplane_dist.core import checkpoints as ckpt
from anatplane_dist.core import dist
from anatplane_dist.core.errors import AnatplaneError, DiskFullError, is_disk_full
from anatplane_dist.train.state import RunPlan, TrainState

log = logging.getLogger("anatplane.train")


class ResumeRefused(AnatplaneError):
    """The run dir cannot be resumed under the requested policy; nothing was changed."""


@dataclass(frozen=True)
class ResumePlan:
    """Rank 0's decision, broadcast to every rank."""
    path: Path | None = None                    #: checkpoint to load; None = fresh start
    meta: dict[str, Any] = field(default_factory=dict)
    refused: tuple[tuple[Path, str], ...] = ()  #: newer checkpoints that did not verify, and why


def plan_resume(run_dir: Path, policy: str) -> ResumePlan:
    """Rank 0: apply the resume policy and verify candidates newest first (see module doc)."""
    complete = ckpt.list_complete(run_dir)
    if policy == "never":
        if ckpt.has_checkpoints(run_dir):
            raise ResumeRefused(f"train.resume=never but {ckpt.checkpoints_root(run_dir)} holds checkpoints; "
                                "use a new --run-dir (nothing was changed)")
        return ResumePlan()
    if not complete:
        if policy == "must":
            raise ResumeRefused(f"train.resume=must but {run_dir} holds no complete checkpoint")
        return ResumePlan()
    refused: list[tuple[Path, str]] = []
    for cand in complete:
        try:
            ckpt.verify(cand)
            meta = ckpt.read_meta(cand)
        except (AnatplaneError, OSError, ValueError) as e:
            log.warning("refusing checkpoint %s: %s", cand, e)
            refused.append((cand, str(e)))
            continue
        return ResumePlan(cand, meta, tuple(refused))
    raise ResumeRefused(_none_loads(run_dir, refused))


def _none_loads(run_dir: Path, refused: list[tuple[Path, str]]) -> str:
    reasons = "; ".join(f"{p.name}: {why}" for p, why in refused)
    return (f"{run_dir} holds {len(refused)} complete checkpoint(s) and none can be resumed ({reasons}). "
            "Nothing was changed; fix them, or start elsewhere with --run-dir (train.init_from can take "
            "their fp32 weights)")


def agree_on_plan(run_dir: Path, policy: str) -> ResumePlan:
    """Every rank gets rank 0's plan, or every rank raises rank 0's refusal (no rank hangs)."""
    result: tuple[str, Any]
    if dist.is_main_process():
        try:
            result = ("ok", plan_resume(run_dir, policy))
        except ResumeRefused as e:
            result = ("refused", str(e))
    else:
        result = ("", None)
    kind, value = dist.broadcast_object(result)
    if kind == "refused":
        raise ResumeRefused(value)
    return value


class Checkpointer:
    """Owns the run's checkpoints: loading the planned one, the save cadence, saving."""

    def __init__(self, run_dir: Path, *, every: int, keep_last: int, model_config_yaml: str,
                 num_channels: int) -> None:
        self.run_dir = run_dir
        self.every = every
        self.keep_last = keep_last
        self.model_config_yaml = model_config_yaml
        self.num_channels = num_channels
        self.last_saved_step = -1
        self.last_save_s: float | None = None

    def load(self, backend: Any, plan: ResumePlan) -> TrainState | None:
        """Load ``plan.path`` on every rank (a collective decision); None for a fresh start."""
        if plan.path is None:
            return None
        error = ""
        try:
            client = backend.load(plan.path, plan.meta)
            state = TrainState.from_client_state({**plan.meta, **client})
        except Exception as e:  # noqa: BLE001 — any failure on any rank refuses the checkpoint
            error, state = f"{type(e).__name__}: {e}", None
        if not dist.all_ranks_true(not error):
            why = error or "failed on another rank"
            raise ResumeRefused(_none_loads(self.run_dir, [*plan.refused, (plan.path, f"verified but does not "
                                                                                     f"load ({why})")]))

        def set_aside_refused() -> None:
            for path, why in plan.refused:
                moved = ckpt.set_aside(path, why)
                log.warning("moved refused checkpoint %s to %s", path.name, moved)
        dist.on_main(set_aside_refused)
        self.last_saved_step = state.step
        return state

    def should_save(self, step: int, *, last: bool) -> bool:
        return step != self.last_saved_step and (last or step % self.every == 0)

    def save(self, backend: Any, state: TrainState, plan: RunPlan, metrics: dict[str, float],
             micro_done: int, train_time_s: float) -> Path:
        """tmp dir (rank 0) → engine state (all ranks) → barrier → meta, fp32, rename, marker.

        A full disk (ENOSPC/EDQUOT, or torch's "unexpected pos" from its zip writer) is one
        :class:`DiskFullError` saying which step was being written and which is intact.
        """
        t0 = time.perf_counter()
        tmp = ckpt.tmp_dir(self.run_dir, state.step)
        try:
            return self._save(backend, state, plan, metrics, micro_done, train_time_s, t0, tmp)
        except (OSError, RuntimeError, AnatplaneError) as e:
            if not is_disk_full(e):
                raise
            newest = ckpt.find_latest_complete(self.run_dir)
            intact = f"the newest complete checkpoint is step {ckpt.step_of(newest)} ({newest})" if newest \
                else "no complete checkpoint exists yet"
            raise DiskFullError(f"no space left on device writing checkpoint step {state.step} in {self.run_dir}: "
                                f"{intact}; free space and rerun the same command to resume (the partial "
                                "step is removed then)") from None

    def _save(self, backend: Any, state: TrainState, plan: RunPlan, metrics: dict[str, float],
              micro_done: int, train_time_s: float, t0: float, tmp: Path) -> Path:
        from anatplane_dist.core import weights

        dist.on_main(ckpt.prepare_tmp, self.run_dir, state.step)
        backend.save(tmp, state.to_client_state())
        in_sync = dist.params_in_sync(backend.module)
        rank_micro = dist.gather_ints(micro_done)
        dist.barrier()

        def finish() -> Path:   # rank 0; a failure here (a full disk) fails every rank, none hangs
            meta = dict(state.to_client_state(), world_size=plan.world_size, backend=backend.name,
                        grad_accum=plan.grad_accum, micro_batch=plan.micro_batch, metrics=metrics,
                        params_in_sync=in_sync, rank_micro_steps=rank_micro,
                        train_time_s=round(train_time_s, 3), save_s=round(time.perf_counter() - t0, 3))
            weights.export_fp32(tmp, backend.fp32_state_dict(tmp), model_config_yaml=self.model_config_yaml,
                                num_channels=self.num_channels, step=state.step)
            ckpt.write_meta(tmp, meta)
            done = ckpt.finalize(tmp)
            ckpt.prune(self.run_dir, self.keep_last)
            return done

        final = dist.on_main(finish)
        self.last_saved_step = state.step
        self.last_save_s = time.perf_counter() - t0
        return final
