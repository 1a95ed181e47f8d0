"""The pretraining loop: one ``train_one_epoch`` shape for every backend.

Order of a run: resolve the distributed env → rank 0 prepares the run dir → build loader,
model, optimiser, backend → resume from the newest complete checkpoint (falling back to
older ones if loading fails) → epochs of optimiser steps with per-step LR, on-device
augmentation, NaN guard, periodic metrics / validation / checkpoints → final checkpoint,
validation and (optionally) publishing.

Resume is exact: the LR is a function of the step, the stream is seeded by
``(data seed, epoch)``, augmentation by ``(seed, rank, micro-step)``, and a checkpoint taken
mid-epoch records how many micro-batches of that epoch were consumed, which are skipped
(read, not trained on) after the restart.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist

from anatplane_dist import checkpoint as ckpt
from anatplane_dist import weights
from anatplane_dist import stream
from anatplane_dist.augment import augment_batch
from anatplane_dist.atomic import atomic_write_text
from anatplane_dist.config import PretrainConfig, global_batch, micro_batch, scaled_lr, write_config
from anatplane_dist.data.decode import load_npy
from anatplane_dist.data.shardlist import SharedEpoch, derive_seed
from anatplane_dist.data.shardspec import all_urls, is_local, parse_sources
from anatplane_dist.dist import DistEnv, assert_same_across_ranks, barrier, device_for
from anatplane_dist.losses import MultitaskLoss
from anatplane_dist.model import build_model
from anatplane_dist.train.backends import Backend, CheckpointLoadError, choose_backend, make_backend
from anatplane_dist.train.metrics import MetricsWriter, Progress, truncate_metrics
from anatplane_dist.train.schedule import LRSchedule, build_optimizer, make_schedule, set_lr
from anatplane_dist.train.validate import evaluate

log = logging.getLogger("anatplane.train")

#: test-only fault injection: SIGKILL every rank when this optimiser step begins
FAULT_ENV = "ANATPLANE_FAULT_AT_STEP"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf on some rank; training stopped without saving."""


@dataclass
class TrainState:
    """What a checkpoint must restore besides weights and optimiser state."""
    step: int = 0                 #: optimiser steps done
    epoch: int = 0                #: current epoch
    micro_in_epoch: int = 0       #: micro-batches of ``epoch`` already consumed
    samples_seen: int = 0         #: global samples consumed by optimiser steps
    data_seed: int = 0

    def to_client_state(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_client_state(cls, d: dict[str, Any]) -> "TrainState":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: int(v) for k, v in d.items() if k in names})


@dataclass
class RunSummary:
    run_dir: Path
    backend: str
    world_size: int
    global_batch: int
    peak_lr: float
    steps: int
    start_step: int
    epochs: int
    last_checkpoint: Path | None
    final_metrics: dict[str, float] = field(default_factory=dict)
    val_history: list[dict[str, float]] = field(default_factory=list)


def _data_seed(cfg: PretrainConfig) -> int:
    return int(getattr(cfg.data, "seed", cfg.train.seed))


def _with_data_seed(cfg: PretrainConfig, seed: int) -> PretrainConfig:
    if hasattr(cfg.data, "seed"):
        return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, seed=seed))
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed))


def num_channels(data_cfg: Any) -> int:
    """K (reference views) from the first sample of the first shard: the shards define it."""
    urls = all_urls(parse_sources(data_cfg.val_shards or data_cfg.shards))
    for url in urls[:3]:
        if not is_local(url):
            continue
        with tarfile.open(url) as tar:
            for member in tar:
                if member.name.endswith(".lines.npy"):
                    lines = load_npy(tar.extractfile(member).read(), member.name)
                    return int(lines.shape[0])
    raise ValueError(f"cannot read the number of channels (lines.npy) from {urls[:3]}")


def params_in_sync(module: torch.nn.Module) -> bool:
    """Whether every rank holds bit-identical parameters (elementwise MAX == MIN across ranks).

    Run at each checkpoint: a silent divergence (a rank that skipped a step, a missed
    all-reduce) would otherwise only show up as a bad published model. Buffers are left out:
    BatchNorm running statistics are per rank by design (DDP re-broadcasts rank 0's at each
    forward; the exported weights are rank 0's).
    """
    flat = torch.cat([p.detach().reshape(-1).float() for p in module.parameters()])
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return True
    if dist.get_backend() == "nccl":
        flat = flat.cuda()
    hi, lo = flat.clone(), flat.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    return bool(torch.equal(hi, lo))


def gather_ints(value: int) -> list[int]:
    """``value`` of every rank, in rank order (e.g. micro-batches each rank trained on)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [int(value)]
    t = torch.tensor([int(value)], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    out = [torch.zeros_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return [int(x.item()) for x in out]


def _to_device(batch: dict[str, Any], device: torch.device, channels_last: bool) -> dict[str, Any]:
    out = {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
    if channels_last:
        out["image"] = out["image"].contiguous(memory_format=torch.channels_last)
    return out


def _all_finite(value: torch.Tensor) -> bool:
    """True on every rank iff the loss is finite on every rank (so all ranks stop together)."""
    bad = (~torch.isfinite(value.detach())).to(torch.float32).reshape(1)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    return bool(bad.item() == 0)


class Trainer:
    """Holds the pieces of one run; :meth:`run` is the whole training."""

    def __init__(self, cfg: PretrainConfig, run_dir: Path, denv: DistEnv):
        self.cfg = cfg
        self.run_dir = run_dir
        self.denv = denv
        self.is_main = denv.rank == 0
        self.device = device_for(denv)
        self.backend_name = choose_backend(cfg.train.backend, denv)
        self.world = denv.world_size
        self.accum = cfg.train.grad_accum
        self.micro = micro_batch(cfg)
        self.gbs = global_batch(cfg, self.world)
        self.micro_done = 0      #: micro-batches this process trained on (not counting skipped ones)

    # ------------------------------------------------------------------ set-up
    def _prepare_run_dir(self) -> None:
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            stale = ckpt.remove_stale_tmp(self.run_dir)
            for p in stale:
                log.warning("removed interrupted checkpoint %s", p)
            write_config(self.cfg, self.run_dir)
        barrier()

    def _resume_candidates(self) -> list[Path]:
        policy = self.cfg.train.resume
        if policy == "never":
            return []
        if policy == "auto":
            return ckpt.list_complete(self.run_dir)
        path = Path(policy)
        if not (path / ckpt.COMPLETE).is_file():
            raise FileNotFoundError(f"train.resume={policy}: not a complete checkpoint dir (no {ckpt.COMPLETE})")
        return [path]

    def _resume(self, backend: Backend) -> TrainState | None:
        """Newest complete checkpoint first; on a load failure, the previous one (P7)."""
        for cand in self._resume_candidates():
            try:
                client = backend.load(cand)
                state = TrainState.from_client_state(client)
                ok = torch.tensor([1.0])
            except (CheckpointLoadError, KeyError, TypeError, ValueError) as e:
                log.warning("rank %d: cannot resume from %s (%s)", self.denv.rank, cand, e)
                ok, state = torch.tensor([0.0]), None
            if dist.is_initialized() and self.world > 1:
                ok = ok.to(self.device)  # nccl reduces CUDA tensors only
                dist.all_reduce(ok, op=dist.ReduceOp.MIN)
            if ok.item() == 1.0 and state is not None:
                return state
            if self.cfg.train.resume != "auto":
                raise CheckpointLoadError(f"cannot resume from {cand}")
        return None

    # ------------------------------------------------------------------ checkpoints
    def save(self, backend: Backend, state: TrainState, metrics: dict[str, float]) -> Path:
        """tmp dir (rank 0) → engine state (all ranks) → barrier → meta, fp32, rename, COMPLETE."""
        tmp = ckpt.tmp_dir(self.run_dir, state.step)
        if self.is_main:
            ckpt.prepare_tmp(self.run_dir, state.step)
        barrier()
        backend.save(tmp, state.to_client_state())
        in_sync = params_in_sync(backend.module)
        rank_micro = gather_ints(self.micro_done)
        barrier()
        final = tmp.with_name(tmp.name[: -len(".tmp")])
        if self.is_main:
            meta = dict(step=state.step, epoch=state.epoch, micro_in_epoch=state.micro_in_epoch,
                        samples_seen=state.samples_seen, data_seed=state.data_seed, world_size=self.world,
                        backend=backend.name, global_batch=self.gbs, metrics=metrics,
                        params_in_sync=in_sync, rank_micro_steps=rank_micro)
            ckpt.write_meta(tmp, meta)
            weights.export_fp32(tmp, backend.fp32_state_dict(tmp), model_config_yaml=self.model_yaml,
                             num_channels=self.num_channels, step=state.step)
            final = ckpt.finalize(tmp)
            ckpt.prune(self.run_dir, self.cfg.train.keep_last)
        barrier()
        return final

    # ------------------------------------------------------------------ the run
    def run(self) -> RunSummary:
        cfg, t = self.cfg, self.cfg.train
        self._prepare_run_dir()
        torch.manual_seed(t.seed)  # identical initial weights on every rank

        epoch_state = SharedEpoch(0)
        loader, loader_steps = stream.make_train_loader(cfg.data, rank=self.denv.rank, world_size=self.world,
                                                        epoch_state=epoch_state)
        opt_per_epoch = loader_steps // self.accum
        if opt_per_epoch < 1:
            raise ValueError(f"{loader_steps} micro-batches per epoch < train.grad_accum={self.accum}")
        micro_per_epoch = opt_per_epoch * self.accum
        total = t.max_steps if t.max_steps > 0 else t.epochs * opt_per_epoch
        n_epochs = -(-total // opt_per_epoch)

        assert_same_across_ranks(loader_steps, "micro-batches per epoch")
        self.num_channels = num_channels(cfg.data)
        model = build_model(cfg.model, self.num_channels).to(self.device)
        if t.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if t.compile:
            model.compile()
        self.model_yaml = cfg.model.to_yaml() if hasattr(cfg.model, "to_yaml") else ""
        loss_fn = MultitaskLoss(cfg.loss)
        peak = scaled_lr(cfg.optim, self.gbs)
        schedule = make_schedule(cfg.optim, peak, total, opt_per_epoch)
        optimizer = build_optimizer(model, cfg.optim, schedule(0))
        backend = make_backend(self.backend_name, model, optimizer, cfg, self.device, self.world)
        if self.is_main and backend.name == "deepspeed":
            atomic_write_text(self.run_dir / "ds_config.json", json.dumps(backend.ds_config, indent=1))

        state = self._resume(backend)
        start_step = 0
        if state is None:
            state = TrainState(data_seed=_data_seed(cfg))
        else:
            start_step = state.step
            if state.data_seed != _data_seed(cfg):
                log.warning("data seed %d from the checkpoint replaces %d", state.data_seed, _data_seed(cfg))
                self.cfg = cfg = _with_data_seed(cfg, state.data_seed)
                loader, loader_steps = stream.make_train_loader(cfg.data, rank=self.denv.rank,
                                                                world_size=self.world, epoch_state=epoch_state)
        resumed = start_step > 0

        if self.is_main:
            log.info("backend %s, world %d, global batch %d = micro %d x accum %d x world %d, peak LR %.4g "
                     "(base %.4g, %s rule, ref %d)", backend.name, self.world, self.gbs, self.micro, self.accum,
                     self.world, peak, cfg.optim.base_lr, cfg.optim.lr_rule, cfg.optim.ref_batch)
            log.info("%d optimiser steps/epoch (%d micro-batches, %d samples/rank), %d steps total, %d epochs%s",
                     opt_per_epoch, micro_per_epoch, micro_per_epoch * self.micro, total, n_epochs,
                     f"; resumed at step {start_step} (epoch {state.epoch})" if resumed else "")

        if self.is_main:
            dropped = truncate_metrics(self.run_dir, start_step)
            if dropped:
                log.info("dropped %d metric rows logged after step %d by the interrupted run", dropped, start_step)
        metrics = MetricsWriter(self.run_dir, enabled=self.is_main)
        progress = Progress(total, start_step, enabled=self.is_main, mode=t.progress)
        summary = RunSummary(self.run_dir, backend.name, self.world, self.gbs, peak, total, start_step,
                             n_epochs, ckpt.find_latest_complete(self.run_dir))
        last_val: dict[str, float] = {}
        try:
            last_val = self._train(backend, loader, epoch_state, loss_fn, schedule, state, total,
                                   opt_per_epoch, metrics, progress, summary)
        finally:
            progress.close()
            metrics.close()
        summary.final_metrics = last_val
        summary.last_checkpoint = ckpt.find_latest_complete(self.run_dir)
        return summary

    def _validate(self, backend: Backend, loss_fn: MultitaskLoss) -> dict[str, float]:
        loader = stream.make_val_loader(self.cfg.data, rank=self.denv.rank, world_size=self.world)
        backend.module.eval()
        try:
            res = evaluate(backend.eval_forward, loader, loss_fn, self.device, self.cfg.train.val_batches)
        finally:
            backend.module.train()
        return res

    def _train(self, backend: Backend, loader, epoch_state: SharedEpoch, loss_fn: MultitaskLoss,
               schedule: LRSchedule, state: TrainState, total: int, opt_per_epoch: int,
               metrics: MetricsWriter, progress: Progress, summary: RunSummary) -> dict[str, float]:
        t, cfg = self.cfg.train, self.cfg
        micro_per_epoch = opt_per_epoch * self.accum
        fault_at = int(os.environ.get(FAULT_ENV, "-1"))
        ckpt_every = t.ckpt_every if t.ckpt_every > 0 else opt_per_epoch
        val_every = t.val_every if t.val_every > 0 else opt_per_epoch
        last_saved = state.step if state.step > 0 else -1
        last_val: dict[str, float] = {}
        sums: dict[str, torch.Tensor] = {}
        n_sum, data_time, t_window, samples_window = 0, 0.0, time.perf_counter(), 0
        backend.module.train()

        while state.step < total:
            loader.set_epoch(state.epoch)
            it: Iterator = iter(loader)
            skip = state.micro_in_epoch
            for _ in range(skip):  # exact mid-epoch resume: consume, do not train
                next(it)
            if skip and self.is_main:
                progress.message(f"skipped {skip} micro-batches already trained in epoch {state.epoch}")
            t_data = time.perf_counter()
            epoch = state.epoch
            while state.epoch == epoch and state.step < total:
                batch = next(it)
                data_time += time.perf_counter() - t_data
                micro_idx = state.step * self.accum + state.micro_in_epoch % self.accum
                boundary = (state.micro_in_epoch + 1) % self.accum == 0
                if boundary and state.step == fault_at:
                    os.kill(os.getpid(), 9)
                batch = _to_device(batch, self.device, t.channels_last)
                # every random draw of this micro-step (augmentation, dropout) is a function of
                # (seed, rank, micro-step), so a resumed run repeats the interrupted one exactly
                torch.manual_seed(derive_seed(t.seed, self.denv.rank, micro_idx, 1))
                gen = torch.Generator(device=self.device)
                gen.manual_seed(derive_seed(state.data_seed, self.denv.rank, micro_idx))
                batch = augment_batch(batch, cfg.augment, gen)
                if boundary:
                    set_lr(backend.optimizer, schedule(state.step))
                with backend.no_sync(boundary):
                    out = backend.forward(batch["image"])
                    loss, parts = loss_fn(out, batch)
                    if not _all_finite(loss):
                        raise NonFiniteLossError(
                            f"non-finite loss at step {state.step} (epoch {state.epoch}); stopping without "
                            f"saving. Last complete checkpoint: {ckpt.find_latest_complete(self.run_dir)}")
                    backend.backward(loss, boundary)
                for k, v in {"loss": loss.detach(), **parts}.items():
                    sums[k] = sums.get(k, 0.0) + v.detach().float()
                n_sum += 1
                self.micro_done += 1
                state.micro_in_epoch += 1
                samples_window += self.micro * self.world
                if not boundary:
                    t_data = time.perf_counter()
                    continue
                state.step += 1
                state.samples_seen += self.gbs
                if state.micro_in_epoch == micro_per_epoch:
                    state.epoch, state.micro_in_epoch = state.epoch + 1, 0
                step = state.step
                if step % t.log_every == 0 or step == total:
                    elapsed = time.perf_counter() - t_window
                    row = {"step": step, "epoch": state.epoch, "lr": schedule(step - 1),
                           **{k: float(v.item()) / n_sum for k, v in sums.items()},
                           "samples_per_s": samples_window / max(elapsed, 1e-9),
                           "data_time": data_time / n_sum, "samples_seen": state.samples_seen}
                    metrics.write(row)
                    progress.update(step, row)
                    sums, n_sum, data_time, samples_window, t_window = {}, 0, 0.0, 0, time.perf_counter()
                else:
                    progress.update(step)
                if step % val_every == 0 or step == total:
                    last_val = self._validate(backend, loss_fn)
                    summary.val_history.append({"step": step, **last_val})
                    metrics.write({"step": step, "epoch": state.epoch, **last_val})
                    progress.message(f"step {step}: " + " ".join(
                        f"{k}={v:.4g}" for k, v in last_val.items() if k.startswith("val/") and "/n" not in k))
                if step % ckpt_every == 0 or step == total:
                    self.save(backend, state, last_val)
                    last_saved = step
                t_data = time.perf_counter()
            if state.micro_in_epoch == 0:
                for _ in it:  # micro-batches beyond the last full accumulation group: read, unused,
                    pass      # so the loader's equal-steps check runs at the end of its pass
        if last_saved != state.step:
            self.save(backend, state, last_val)
        return last_val


def train(cfg: PretrainConfig, run_dir: Path, denv: DistEnv) -> RunSummary:
    """Train with the backend chosen by ``cfg.train.backend``; the process group must exist."""
    return Trainer(cfg, run_dir, denv).run()
