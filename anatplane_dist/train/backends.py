"""The three ways to run one optimiser step: DeepSpeed engine, plain DDP, single process.

The trainer only sees :class:`Backend`: ``forward``, ``no_sync(last)``, ``backward(loss,
last)`` per micro-batch, ``step()`` once per optimiser step, ``save``/``load`` and
``fp32_state_dict``. Everything backend-specific (who saves what, how gradient accumulation
and clipping happen, which dtype and memory layout the inputs need, how a ZeRO checkpoint of
another world size is read) stays in here.

Speed options (``train.channels_last``, ``train.compile``) work under every backend:

- channels_last: the torch backends store the weights NHWC *and* feed NHWC batches. DeepSpeed
  cannot hold NHWC weights (its start-up broadcast views each parameter as bytes, which needs
  ``stride(-1) == 1``; converting after ``deepspeed.initialize`` detaches the parameters from
  the bf16/ZeRO flat buffers, and ZeRO-1/2 restore the default layout after each step), so
  there only the *input batch* is NHWC: a convolution with an NHWC input runs the NHWC kernels
  (cuDNN / oneDNN choose the layout from either operand) and its output stays NHWC, so the
  whole network runs channels_last while the stored weights keep DeepSpeed's layout.
- compile: ``nn.Module.compile()`` on the bare module (DeepSpeed: ``engine.compile()``, which
  calls the same after switching off its NVTX ranges), so state-dict keys carry no
  ``_orig_mod.`` prefix and checkpoints of compiled and eager runs are interchangeable.
  Validation runs the module eagerly: its batch sizes vary (the last batch of a split) and it
  runs rarely, so compiling it would cost a recompilation per shape for little gain.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import torch

from anatplane_dist.core.checkpoints import CheckpointLoadError
from anatplane_dist.core.dist import DistEnv, disable_deepspeed_shm_build, is_main_process
from anatplane_dist.train.config import PretrainConfig, ds_config
from anatplane_dist.train.options import TrainConfig, resolve_backend

log = logging.getLogger(__name__)

#: subdirectory (DeepSpeed tag / DDP file) holding the engine state inside a checkpoint dir
ENGINE_TAG = "engine"
DDP_STATE = "state.pt"


def choose_backend(train: "TrainConfig", denv: DistEnv) -> str:
    """:func:`anatplane_dist.train.options.resolve_backend` for this process group's launcher."""
    return resolve_backend(train, denv.world_size, denv.source)


class Backend:
    """Common part: the raw module, the torch optimiser, dtype handling."""
    name = "base"

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: PretrainConfig,
                 device: torch.device):
        self.module = model
        self.optimizer = optimizer
        self.cfg = cfg
        self.device = device
        self.precision = cfg.train.precision
        self.channels_last = cfg.train.channels_last

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """The batch in the memory layout the network runs in (NHWC with ``train.channels_last``)."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def input_dtype(self) -> torch.dtype:
        return torch.float32

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def eval_forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Forward of the raw module, no collectives (safe with uneven validation batches)."""
        module = self.module
        # the eager forward of a compiled module (Module.compile() only swaps __call__)
        call = module.forward if getattr(module, "_compiled_call_impl", None) is not None else module
        with self.autocast():
            out = call(self.layout(x).to(self.input_dtype()))
        return {k: v.float() for k, v in out.items()}

    def no_sync(self, last: bool) -> contextlib.AbstractContextManager:
        """Around forward+backward of a micro-batch: skip the gradient all-reduce unless ``last``."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        """Backward of one micro-batch (``last``: the final one of the optimiser step)."""
        raise NotImplementedError

    def step(self) -> None:
        """The optimiser step (clipping, update, zero grads), once per accumulation group."""
        raise NotImplementedError

    def save(self, ckpt_dir: Path, client_state: dict[str, Any]) -> None:
        raise NotImplementedError

    def load(self, ckpt_dir: Path, meta: dict[str, Any]) -> dict[str, Any]:
        """Restore a verified checkpoint written by ``meta['backend']`` on ``meta['world_size']`` ranks."""
        raise NotImplementedError

    def _check_backend(self, ckpt_dir: Path, meta: dict[str, Any], accepted: tuple[str, ...]) -> None:
        written = meta.get("backend")
        if written is not None and written not in accepted:
            raise CheckpointLoadError(f"{ckpt_dir.name} was written by the {written} backend and this run uses "
                                      f"{self.name}; resume with train.backend={written}, or start a new run "
                                      f"from its weights (train.init_from={ckpt_dir / 'fp32'})")

    def fp32_state_dict(self, ckpt_dir: Path) -> dict[str, torch.Tensor]:
        """Whole-model fp32 weights (rank 0 only; call after ``save``)."""
        return {k: v.detach().float() if v.is_floating_point() else v.detach()
                for k, v in self.module.state_dict().items()}


class TorchBackend(Backend):
    """DDP when the world has several ranks, the bare module otherwise."""

    def __init__(self, model, optimizer, cfg, device, world_size: int):
        super().__init__(model, optimizer, cfg, device)
        self.name = "ddp" if world_size > 1 else "single"
        if self.precision == "fp16" and device.type != "cuda":
            raise ValueError("train.precision=fp16 needs CUDA for the ddp/single backends; use bf16 on CPU")
        if self.channels_last:    # before DDP: its start-up broadcast copes with NHWC weights
            model.to(memory_format=torch.channels_last)
        if cfg.train.compile:
            model.compile()
        if world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP
            self.wrapped = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
        else:
            self.wrapped = model
        self.accum = cfg.train.grad_accum
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def forward(self, x):
        with self.autocast():
            out = self.wrapped(self.layout(x))
        return {k: v.float() for k, v in out.items()}

    def no_sync(self, last: bool):
        """Skip DDP's all-reduce on accumulation micro-steps; it runs once per optimiser step."""
        if last or self.wrapped is self.module:
            return contextlib.nullcontext()
        return self.wrapped.no_sync()

    def backward(self, loss, last):
        self.scaler.scale(loss / self.accum).backward()

    def step(self):
        if self.cfg.optim.clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.cfg.optim.clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def save(self, ckpt_dir, client_state):
        if is_main_process():
            state = {"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "scaler": self.scaler.state_dict(), "client_state": client_state}
            torch.save(state, ckpt_dir / DDP_STATE)

    def load(self, ckpt_dir, meta):
        """``state.pt`` holds the full model and optimiser: any world size reads it as it is."""
        self._check_backend(ckpt_dir, meta, ("ddp", "single"))
        path = ckpt_dir / DDP_STATE
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
            self.module.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
        except Exception as e:  # corrupt / truncated / wrong model: the caller refuses the checkpoint
            raise CheckpointLoadError(f"{path}: {type(e).__name__}: {e}") from e
        return dict(state.get("client_state") or {})


class DeepSpeedBackend(Backend):
    """``deepspeed.initialize`` with a generated ds_config and our torch optimiser."""
    name = "deepspeed"

    def __init__(self, model, optimizer, cfg, device, world_size: int, load_universal: bool = False):
        super().__init__(model, optimizer, cfg, device)
        disable_deepspeed_shm_build()
        import deepspeed
        self.world_size = world_size
        self.ds_config = ds_config(cfg, world_size)
        if load_universal:  # resuming ZeRO state written on another world size (see _load_universal)
            self.ds_config["checkpoint"] = {"load_universal": True}
        # the weights stay NCHW here (see the module docstring); only the batches are NHWC
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=self.ds_config)
        self.module = self.engine.module
        if cfg.train.compile:
            self.engine.compile()

    def input_dtype(self):
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision, torch.float32)

    def forward(self, x):
        out = self.engine(self.layout(x).to(self.input_dtype()))
        return {k: v.float() for k, v in out.items()}

    def backward(self, loss, last):
        if last != self.engine.is_gradient_accumulation_boundary():
            raise RuntimeError("trainer and DeepSpeed disagree about the gradient-accumulation boundary")
        self.engine.backward(loss)   # scales by 1/accumulation itself, reduces at the boundary
        if not last:
            self.engine.step()       # micro-step bookkeeping only: no update before the boundary

    def step(self):
        self.engine.step()           # the optimiser step (with clipping) at the boundary

    def save(self, ckpt_dir, client_state):
        # a collective: every rank writes its ZeRO partition; no 'latest' file, we use COMPLETE markers
        self.engine.save_checkpoint(str(ckpt_dir), tag=ENGINE_TAG, client_state=client_state, save_latest=False)

    def load(self, ckpt_dir, meta):
        self._check_backend(ckpt_dir, meta, ("deepspeed",))
        written_world = int(meta.get("world_size", self.world_size))
        if written_world != self.world_size and self.cfg.train.zero_stage > 0:
            return self._load_universal(ckpt_dir, written_world)
        try:
            path, client = self.engine.load_checkpoint(str(ckpt_dir), tag=ENGINE_TAG,
                                                       load_optimizer_states=True,
                                                       load_lr_scheduler_states=False)
        except Exception as e:
            raise CheckpointLoadError(f"{ckpt_dir}: {type(e).__name__}: {e}") from e
        if path is None:
            raise CheckpointLoadError(f"{ckpt_dir}: DeepSpeed could not load the engine state")
        return dict(client or {})

    def _load_universal(self, ckpt_dir: Path, written_world: int) -> dict[str, Any]:
        """ZeRO partitions of ``written_world`` ranks onto this world size (see :mod:`.universal`)."""
        from anatplane_dist.train import universal

        if self.ds_config.get("checkpoint", {}).get("load_universal") is not True:
            raise CheckpointLoadError(f"{ckpt_dir.name}: written on {written_world} ranks; the engine was not "
                                      "built for a universal load")
        log.info("converting %s (ZeRO state of %d ranks) to DeepSpeed's universal format for %d rank(s)",
                 ckpt_dir.name, written_world, self.world_size)
        with universal.converted(ckpt_dir / ENGINE_TAG, ckpt_dir.parent.parent / ".universal" / ckpt_dir.name) as (
                root, tag):
            path, client = self.engine.load_checkpoint(str(root), tag=tag)
            if path is None:
                raise CheckpointLoadError(f"{ckpt_dir}: DeepSpeed could not load the universal state")
        universal.restore_buffers(self.module, ckpt_dir / "fp32")
        return dict(client or {})

    def fp32_state_dict(self, ckpt_dir):
        """fp32 run: ``engine.module`` holds the full weights on every rank for ZeRO ≤ 2.

        bf16/fp16 under ZeRO 1-2: the fp32 master weights are partitioned across ranks, so
        they are gathered from the saved checkpoint (world-size independent). ZeRO-0 with
        bf16/fp16 keeps no separate fp32 copy we can read back portably; the module
        weights are up-cast.
        """
        if self.precision != "fp32" and self.cfg.train.zero_stage > 0:
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
            sd = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=ENGINE_TAG)
            # buffers (e.g. BatchNorm running stats) come from the module
            for k, v in self.module.state_dict().items():
                sd.setdefault(k, v)
            return {k: v.detach().float() if v.is_floating_point() else v.detach() for k, v in sd.items()}
        return super().fp32_state_dict(ckpt_dir)


def make_backend(name: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: PretrainConfig,
                 device: torch.device, world_size: int, *, load_universal: bool = False) -> Backend:
    """``load_universal``: the run resumes DeepSpeed ZeRO state written on another world size."""
    if name == "deepspeed":
        return DeepSpeedBackend(model, optimizer, cfg, device, world_size, load_universal)
    if name in ("ddp", "single"):
        return TorchBackend(model, optimizer, cfg, device, world_size)
    raise ValueError(f"unknown backend {name!r}")
