"""The pretraining run: ``setup()`` builds everything once, ``train_step()`` is one optimiser
step, ``fit()`` is the loop. The same shape serves every backend and every objective.

Order of a run: rank 0 already holds the run-dir lock (:mod:`.cli`) → shard facts from the
manifest (K, grid, spacing) → rank 0 checks the resume rules and verifies the checkpoint to
resume from, every rank gets its decision → the run plan (global batch fixed for the life of
the run, accumulation adapted to the world size) → stream, model (by objective), optimiser,
backend → load the checkpoint, or ``train.init_from`` for a new run → epochs of optimiser steps
→ final checkpoint and validation.

Resume is exact on the same world size: the LR is a function of the step, the stream is
seeded by ``(data seed, epoch)``, augmentation by ``(seed, rank, micro-step)``, and a checkpoint
taken mid-epoch records the global samples of that epoch already trained on, whose
micro-batches are read but not trained on after the restart. On another world size the step,
the LR curve and the sample count continue exactly; the samples themselves differ because
each rank streams its own shard subset.
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from anatplane_dist.core import checkpoints as ckpt
from anatplane_dist.core import dist
from anatplane_dist.core.atomic import atomic_write_text
from anatplane_dist.core.dist import DistEnv, MetricSums
from anatplane_dist.core.errors import AnatplaneError, ExitCode
from anatplane_dist.data import stream
from anatplane_dist.data.augment import augment_batch
from anatplane_dist.data.shardlist import SharedEpoch, derive_seed
from anatplane_dist.model import check_data_grid
from anatplane_dist.objectives import Objective, get_objective
from anatplane_dist.shards.manifest import ShardFacts, read_shard_facts
from anatplane_dist.train import resume_rules
from anatplane_dist.train.backends import Backend, choose_backend, make_backend
from anatplane_dist.train.checkpointing import Checkpointer, ResumePlan, agree_on_plan
from anatplane_dist.train.config import (
    PretrainConfig,
    accum_for,
    dump_yaml,
    global_batch,
    micro_batch,
    scaled_lr,
    to_dict,
)
from anatplane_dist.train.hooks import StepHook
from anatplane_dist.train.init_weights import load_init_weights
from anatplane_dist.train.metrics import MetricsWriter, Progress, truncate_metrics
from anatplane_dist.train.phases import NoPhaseTimer, PhaseTimer
from anatplane_dist.train.schedule import LRSchedule, build_optimizer, make_schedule, set_lr
from anatplane_dist.train.signals import StopRequest
from anatplane_dist.train.state import RunPlan, RunSummary, TrainState

log = logging.getLogger("anatplane.train")


class NonFiniteLossError(AnatplaneError):
    """The loss became NaN/inf on some rank; training stopped without saving."""
    exit_code = ExitCode.NONFINITE


#: called with the optimiser step about to start (tests use it to kill a run at a known step)


@dataclass(frozen=True)
class Setup:
    """Everything :meth:`Trainer.fit` needs, built once by :meth:`Trainer.setup`."""
    cfg: PretrainConfig
    plan: RunPlan
    facts: ShardFacts
    objective: Objective
    backend: Backend
    loader: stream.StreamLoader
    epoch_state: SharedEpoch
    schedule: LRSchedule
    checkpointer: Checkpointer
    device: torch.device
    start_step: int


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Host to device; the memory layout is the backend's business (``Backend.layout``)."""
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def _with_facts(cfg: PretrainConfig, facts: ShardFacts) -> PretrainConfig:
    """The loss draws ridges at the shards' real grid spacing (the manifest is the truth)."""
    spacing = cfg.loss.spacing_mm
    if spacing is not None and abs(spacing - facts.spacing_mm) > 1e-9:
        log.warning("loss.spacing_mm=%g differs from the shards' grid spacing %g mm: using the shards'",
                    spacing, facts.spacing_mm)
    return dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, spacing_mm=facts.spacing_mm))


def _close_loader(loader: stream.StreamLoader) -> None:
    """Stop persistent DataLoader workers now, not when the interpreter gets round to it."""
    it = getattr(loader.dataloader, "_iterator", None)
    if it is not None and hasattr(it, "_shutdown_workers"):
        it._shutdown_workers()
    loader.dataloader._iterator = None


class Trainer:
    """One run in one process group; ``fit()`` trains it (see the module docstring)."""

    def __init__(self, cfg: PretrainConfig, run_dir: Path, denv: DistEnv, *, stop: StopRequest | None = None,
                 allow_config_change: bool = False, hooks: tuple[StepHook, ...] = ()) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.denv = denv
        self.stop = stop or StopRequest()
        self.allow_config_change = allow_config_change
        self.hooks = hooks
        self.micro_done = 0      #: micro-batches this process trained on (not counting skipped ones)
        self.train_time_s = 0.0  #: seconds spent in optimiser steps by the whole run (all starts)
        self.state = TrainState()
        self.phases: PhaseTimer = NoPhaseTimer()   #: per-phase step times (train.phase_times)

    # ------------------------------------------------------------------ set-up
    def setup(self) -> Setup:
        cfg, world = self.cfg, self.denv.world_size
        facts = read_shard_facts(_shard_list(cfg.data.shards) + _shard_list(cfg.data.val_shards))
        check_data_grid(cfg.model, facts.grid, facts.spacing_mm)  # nnunet: the plans' 2d patch and spacing
        cfg = _with_facts(cfg, facts)
        resume = self._agree_on_resume(cfg, facts)
        gbs = int(resume.meta.get("global_batch") or cfg.train.global_batch or global_batch(cfg, world))
        accum = accum_for(cfg, world, gbs)
        before = resume.meta.get("world_size")
        if before is not None and int(before) != world:
            log.info("world size %d -> %d: grad_accum %s -> %d keeps the run's global batch %d",
                     int(before), world, resume.meta.get("grad_accum", "?"), accum, gbs)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, grad_accum=accum, global_batch=gbs))
        if resume.path is not None and "data_seed" in resume.meta:
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, seed=int(resume.meta["data_seed"])))
        self.cfg = cfg

        epoch_state = SharedEpoch(0)
        loader, loader_steps = stream.make_train_loader(cfg.data, rank=self.denv.rank, world_size=world,
                                                        epoch_state=epoch_state, expect=facts)
        plan = _run_plan(cfg, world, loader_steps)
        steps_per_epoch, total = plan.steps_per_epoch, plan.total_steps

        device = dist.device_for(self.denv)
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        objective = get_objective(cfg.objective, cfg.loss, grid_spacing_mm=facts.spacing_mm)
        model = self._build_model(objective, facts, resume, device)
        schedule = make_schedule(cfg.optim, plan.peak_lr, total, steps_per_epoch)
        optimizer = build_optimizer(model, cfg.optim, schedule(0))
        written_world = int(resume.meta.get("world_size", world))
        backend = make_backend(choose_backend(cfg.train, self.denv), model, optimizer, cfg, device, world,
                               load_universal=resume.path is not None and written_world != world
                               and cfg.train.zero_stage > 0)
        checkpointer = Checkpointer(self.run_dir, every=cfg.train.ckpt_every or steps_per_epoch,
                                    keep_last=cfg.train.keep_last, model_config_yaml=dump_yaml(cfg.model),
                                    num_channels=facts.num_channels)
        state = checkpointer.load(backend, resume)
        self.train_time_s = float(resume.meta.get("train_time_s") or 0.0)
        self.state = state or TrainState(data_seed=cfg.data.seed, global_batch=gbs)
        self._record_start(backend, resume, facts)
        if cfg.train.phase_times:
            self.phases = PhaseTimer(device)
        return Setup(cfg, plan, facts, objective, backend, loader, epoch_state, schedule, checkpointer, device,
                     self.state.step)

    def _agree_on_resume(self, cfg: PretrainConfig, facts: ShardFacts) -> ResumePlan:
        """Rank 0 applies the config rules (a refusal reaches every rank), then the checkpoint plan."""
        verdict: tuple[str, Any] = ("", None)
        if dist.is_main_process():
            try:
                verdict = ("ok", resume_rules.check_config_change(
                    self.run_dir, to_dict(cfg), facts.manifest_sha256, allow=self.allow_config_change))
            except AnatplaneError as e:
                verdict = ("refused", str(e))
        kind, value = dist.broadcast_object(verdict)
        if kind == "refused":
            raise resume_rules.ConfigChangeRefused(value)
        self._changed_keys = value
        return agree_on_plan(self.run_dir, cfg.train.resume)

    def _build_model(self, objective: Objective, facts: ShardFacts, resume: ResumePlan,
                     device: torch.device) -> torch.nn.Module:
        t = self.cfg.train
        model = objective.build_model(self.cfg.model, facts.num_channels)
        if t.init_from:
            if resume.path is None:
                load_init_weights(model, t.init_from)
            else:
                log.info("train.init_from ignored: resuming from %s", resume.path)
        # channels_last and compile are applied by the backend (what each one can hold differs)
        return model.to(device)

    def _record_start(self, backend: Backend, resume: ResumePlan, facts: ShardFacts) -> None:
        """Rank 0: the config history, ``config.yaml``, ``ds_config.json``, the metrics file, and
        leftovers of killed saves (``.tmp``: removed; a ``step_N`` without a marker: set aside)."""
        def record() -> None:
            resume_rules.record_start(self.run_dir, to_dict(self.cfg), dump_yaml(self.cfg),
                                      world_size=self.denv.world_size, backend=backend.name,
                                      start_step=self.state.step, changed=self._changed_keys,
                                      manifest_hash=facts.manifest_sha256)
            if backend.name == "deepspeed":
                import json
                atomic_write_text(self.run_dir / "ds_config.json", json.dumps(backend.ds_config, indent=1))
            if resume.path is not None:
                dropped = truncate_metrics(self.run_dir, self.state.step)
                if dropped:
                    log.info("dropped %d metric rows logged after step %d by the interrupted run", dropped,
                             self.state.step)
            else:
                _set_aside_metrics(self.run_dir)
            for p in ckpt.remove_stale_tmp(self.run_dir):
                log.warning("removed interrupted checkpoint save %s", p)
            for p in ckpt.unmarked(self.run_dir):
                log.warning("set aside %s (no COMPLETE marker) as %s", p.name,
                            ckpt.set_aside(p, "no COMPLETE marker: a save killed before it finished"))
        dist.on_main(record)

    # ------------------------------------------------------------------ one step
    def train_step(self, s: Setup, batches: Iterator[dict[str, Any]]) -> tuple[dict[str, torch.Tensor], float, bool]:
        """Micro-batches of one optimiser step; returns summed loss parts, data time, stop flag.

        One host sync per step: the NaN check and the stop request travel in one all-reduce,
        after the last backward and before the optimiser updates anything.
        """
        t, st, plan, ph = s.cfg.train, self.state, s.plan, self.phases
        t_step = time.perf_counter()
        set_lr(s.backend.optimizer, s.schedule(st.step))
        sums: dict[str, torch.Tensor] = {}
        data_time = 0.0
        for micro in range(plan.grad_accum):
            t0 = time.perf_counter()
            raw = next(batches)
            data_time += time.perf_counter() - t0
            micro_idx = st.step * plan.grad_accum + micro
            ph.start()
            batch = _to_device(raw, s.device)
            ph.mark("host_to_device")
            # every random draw of this micro-step (augmentation, views, dropout) is a function of
            # (seed, rank, micro-step), so a resumed run repeats the interrupted one exactly
            torch.manual_seed(derive_seed(t.seed, self.denv.rank, micro_idx, 1))
            gen = torch.Generator(device=s.device)
            gen.manual_seed(derive_seed(st.data_seed, self.denv.rank, micro_idx))
            batch = augment_batch(batch, s.cfg.augment, gen)
            ph.mark("augment")
            last = micro == plan.grad_accum - 1
            with s.backend.no_sync(last):
                out = s.backend.forward(s.objective.inputs(batch, gen))
                ph.mark("forward")
                loss, parts = s.objective.loss(out, batch)
                ph.mark("loss")
                s.backend.backward(loss, last)
                ph.mark("backward")
            for k, v in {"loss": loss, **parts}.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float()
            self.micro_done += 1
        flags = dist.all_reduce(torch.stack([(~torch.isfinite(sums["loss"])).float().reshape(()),
                                             torch.tensor(float(self.stop.requested), device=sums["loss"].device)]),
                                "max").tolist()
        if flags[0]:
            raise NonFiniteLossError(f"non-finite loss at step {st.step} (epoch {st.epoch}); stopping without "
                                     f"saving. Last complete checkpoint: {ckpt.find_latest_complete(self.run_dir)}")
        ph.start()
        s.backend.step()
        ph.mark("optimiser_step")
        ph.end_step()
        st.advance(plan.steps_per_epoch)
        self.train_time_s += time.perf_counter() - t_step
        return sums, data_time, bool(flags[1])

    # ------------------------------------------------------------------ the loop
    def fit(self) -> RunSummary:
        s = self.setup()
        self._log_plan(s)
        metrics = MetricsWriter(self.run_dir, enabled=dist.is_main_process())
        progress = Progress(s.plan.total_steps, s.start_step, enabled=dist.is_main_process(),
                            mode=s.cfg.train.progress)
        summary = RunSummary(self.run_dir, s.backend.name, s.plan.world_size, s.plan.global_batch, s.plan.peak_lr,
                             s.plan.total_steps, s.start_step, -(-s.plan.total_steps // s.plan.steps_per_epoch),
                             ckpt.find_latest_complete(self.run_dir))
        window = _Window()
        stopped = False
        s.backend.module.train()
        try:
            while self.state.step < s.plan.total_steps and not stopped:
                epoch, batches = self.state.epoch, self._epoch_batches(s, progress)
                while self.state.epoch == epoch and self.state.step < s.plan.total_steps and not stopped:
                    for hook in self.hooks:
                        hook(self.state.step)
                    sums, data_time, stopped = self.train_step(s, batches)
                    window.add(sums, data_time, s.plan)
                    self._after_step(s, window, metrics, progress, summary, stopped)
                if self.state.epoch != epoch:
                    for _ in batches:  # micro-batches beyond the last full accumulation group: read,
                        pass           # unused, so the loader's equal-steps check runs at the end of its pass
        finally:
            progress.close()
            metrics.close()
            _close_loader(s.loader)
        summary.interrupted = stopped
        summary.last_checkpoint = ckpt.find_latest_complete(self.run_dir)
        return summary

    def _epoch_batches(self, s: Setup, progress: Progress) -> Iterator[dict[str, Any]]:
        """This epoch's stream, with the micro-batches already trained on consumed (not trained)."""
        s.loader.set_epoch(self.state.epoch)
        it = iter(s.loader)
        skip = s.plan.micro_done_in_epoch(self.state)
        for _ in range(skip):
            next(it)
        if skip:
            progress.message(f"skipped {skip} micro-batches already trained in epoch {self.state.epoch}")
        return it

    def _after_step(self, s: Setup, window: "_Window", metrics: MetricsWriter, progress: Progress,
                    summary: RunSummary, stopped: bool) -> None:
        """Log, validate and checkpoint at their cadence (and checkpoint on a stop request)."""
        step, t, last = self.state.step, s.cfg.train, self.state.step == s.plan.total_steps
        if step % t.log_every == 0 or last:
            row = {"step": step, "epoch": self.state.epoch, "lr": s.schedule(step - 1), **window.means(),
                   "samples_seen": self.state.samples_seen, **self.phases.collect()}
            metrics.write(row)
            progress.update(step, row)
        else:
            progress.update(step)
        if step % (t.val_every or s.plan.steps_per_epoch) == 0 or last:
            val = self.validate(s)
            summary.final_metrics = val
            summary.val_history.append({"step": step, **val})
            metrics.write({"step": step, "epoch": self.state.epoch, **val})
            progress.message(f"step {step}: " + " ".join(f"{k}={v:.4g}" for k, v in val.items()
                                                         if k.startswith("val/") and "/n" not in k))
        if s.checkpointer.should_save(step, last=last or stopped):
            path = s.checkpointer.save(s.backend, self.state, s.plan, summary.final_metrics, self.micro_done,
                                       self.train_time_s)
            if stopped:
                progress.message(f"{self.stop.signal_name or 'stop'}: saved {path}; rerun the same command to resume")

    @torch.no_grad()
    def validate(self, s: Setup) -> dict[str, float]:
        """The exact val pass on every rank (uneven batch counts allowed), one reduction at the end."""
        loader = stream.make_val_loader(s.cfg.data, rank=self.denv.rank, world_size=self.denv.world_size,
                                        expect=s.facts)
        sums = MetricSums(s.objective.validation_names)
        s.backend.module.eval()
        try:
            for i, raw in enumerate(loader):
                if s.cfg.train.val_batches and i >= s.cfg.train.val_batches:
                    break
                batch = _to_device(raw, s.device)
                gen = torch.Generator(device=s.device)
                gen.manual_seed(derive_seed(self.state.data_seed, self.denv.rank, i, 2))
                out = s.backend.eval_forward(s.objective.inputs(batch, gen))
                for name, (total, count) in s.objective.validation_sums(out, batch).items():
                    sums.add(name, float(total), float(count))
        finally:
            s.backend.module.train()
            _close_loader(loader)
        means = sums.reduce()
        means["val/samples"] = float(sums.counts[0])
        return means

    def _log_plan(self, s: Setup) -> None:
        if not dist.is_main_process():
            return
        p, o = s.plan, s.cfg.optim
        log.info("backend %s, objective %s, world %d, global batch %d = micro %d x accum %d x world %d, "
                 "peak LR %.4g (base %.4g, %s rule, ref %d)", s.backend.name, s.objective.name, p.world_size,
                 p.global_batch, p.micro_batch, p.grad_accum, p.world_size, p.peak_lr, o.base_lr, o.lr_rule,
                 o.ref_batch)
        log.info("%d optimiser steps/epoch (%d micro-batches/rank), %d steps total%s", p.steps_per_epoch,
                 p.micro_per_epoch, p.total_steps,
                 f"; resumed at step {s.start_step} (epoch {self.state.epoch})" if s.start_step else "")


class _Window:
    """Loss parts, data time and throughput summed between two logged rows."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.micro, self.data_time, self.samples, self.t0 = 0, 0.0, 0, time.perf_counter()

    def add(self, sums: dict[str, torch.Tensor], data_time: float, plan: RunPlan) -> None:
        for k, v in sums.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.micro += plan.grad_accum
        self.data_time += data_time
        self.samples += plan.global_batch

    def means(self) -> dict[str, float]:
        """Host sync happens here, once per logged row."""
        n = max(self.micro, 1)
        out = {k: float(v.item()) / n for k, v in self.sums.items()}
        out.update(samples_per_s=self.samples / max(time.perf_counter() - self.t0, 1e-9), data_time=self.data_time / n)
        self.reset()
        return out


def _shard_list(spec: Any) -> list[str]:
    """A shard spec (a list, a folder or brace pattern string, or nothing) as a list for the manifest reader."""
    if not spec:
        return []
    return [str(x) for x in spec] if isinstance(spec, (list, tuple)) else [str(spec)]


def _run_plan(cfg: PretrainConfig, world: int, loader_steps: int) -> RunPlan:
    """Steps per epoch and in total from the stream's micro-batches per rank (equal on every rank)."""
    dist.assert_same_across_ranks(loader_steps, "micro-batches per epoch")
    accum, gbs = cfg.train.grad_accum, cfg.train.global_batch
    steps_per_epoch = loader_steps // accum
    if steps_per_epoch < 1:
        raise AnatplaneError(f"{loader_steps} micro-batches per epoch < train.grad_accum={accum}: "
                             "raise data.samples_per_epoch or lower the global batch")
    total = cfg.train.max_steps if cfg.train.max_steps > 0 else cfg.train.epochs * steps_per_epoch
    return RunPlan(world, micro_batch(cfg), accum, gbs, steps_per_epoch, total, scaled_lr(cfg.optim, gbs))


def _set_aside_metrics(run_dir: Path) -> None:
    """A fresh start in a dir that has metrics (a run killed before its first checkpoint): keep them."""
    path = run_dir / "metrics.jsonl"
    if path.is_file() and path.stat().st_size:
        n = 1
        while (run_dir / f"metrics.jsonl.{n}").exists():
            n += 1
        shutil.move(path, run_dir / f"metrics.jsonl.{n}")
        log.info("kept the metrics of an earlier attempt (no checkpoint) as metrics.jsonl.%d", n)


def train(cfg: PretrainConfig, run_dir: Path, denv: DistEnv, **kwargs: Any) -> RunSummary:
    """Train ``cfg`` in ``run_dir``; the process group must exist and rank 0 hold the run lock."""
    return Trainer(cfg, run_dir, denv, **kwargs).fit()
