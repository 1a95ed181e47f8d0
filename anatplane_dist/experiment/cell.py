"""One cell of the grid: fine-tune one arm's network on one labelled subset, score the test set.

Runs in a worker process (the runner hands each worker the loaded data once) on the device the
worker was given.  The task (segmentation, classification) comes from the registry
(:data:`anatplane_dist.finetune.tasks.TASKS`); this module has no per-task branch.  Model
selection follows the spec: the final model, or, with ``select: best-val``, the state with
the best validation score seen at the evaluation steps (validation subjects are neither
training nor test subjects).  Every cell also records its validation curve, whether that curve
was still rising over its last quarter (not converged), and how far the network's weights
moved from where they started (relative L2 per part): large moves of pretrained weights mean
the schedule overwrote what pretraining put there.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from anatplane_dist.finetune.backbone import Backbone, make_backbone
from anatplane_dist.finetune.schedules import Schedule
from anatplane_dist.finetune.tasks import TaskData, get_task

if TYPE_CHECKING:
    from anatplane_dist.experiment.spec import ExperimentSpec

__all__ = ["CellJob", "run_cell", "load_task_data", "still_rising", "weight_moves"]


@dataclass(frozen=True)
class CellJob:
    """Everything one cell needs besides the data (picklable: it goes to a worker)."""
    arm: str
    n_labelled: int
    seed: int
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    pretrained: str | None          # published version directory (None: random init)
    transfer: str
    select: str                     # final | best-val
    val_every: int
    cell_dir: str                   # where model.pt / predictions go
    predictions: bool
    model_config_yaml: str          # the architecture (random init builds the same network)
    num_channels: int
    grid: tuple[int, float]
    schedule: Schedule = field(default_factory=Schedule)
    device: str = ""                # "" -> the worker's device
    frozen_encoder: bool = False    # readout: the encoder is frozen (eval mode, no gradient)


def _backbone(job: CellJob) -> Backbone:
    from anatplane_dist.model import ModelConfig

    if job.pretrained is not None:
        return make_backbone("pretrained", pretrained=job.pretrained, transfer=job.transfer, seed=job.seed)
    return make_backbone("random", model_config=ModelConfig.from_yaml(job.model_config_yaml),
                         num_channels=job.num_channels, seed=job.seed)


class _Selector:
    """Keeps the state with the best validation score (ties: the later step, closer to final)."""

    def __init__(self, net: torch.nn.Module, score) -> None:
        self.net, self.score = net, score
        self.best, self.best_step, self.state = -np.inf, -1, None
        self.history: list[tuple[int, float]] = []

    def __call__(self, step: int) -> None:
        s = float(self.score())
        self.history.append((step, s))
        if np.isfinite(s) and s >= self.best:
            self.best, self.best_step = s, step
            self.state = copy.deepcopy(self.net.state_dict())

    def restore(self) -> None:
        if self.state is not None:
            self.net.load_state_dict(self.state)


#: a validation score this much higher in the last quarter than before it: still learning
RISE_TOL = 0.005


def still_rising(history: list[tuple[int, float]], tol: float = RISE_TOL) -> bool | None:
    """True when the best score of the last quarter of the validation curve beats the best of
    the rest by more than ``tol`` (the schedule stopped a network that was still learning);
    None when the curve is too short (< 4 points) to tell."""
    vals = [v for _, v in history if np.isfinite(v)]
    if len(vals) < 4:
        return None
    q = max(1, len(vals) // 4)
    return bool(max(vals[-q:]) > max(vals[:-q]) + tol)


def _part_tensors(net: torch.nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {}
    for part in ("encoder", "decoder"):
        mod = getattr(net, part, None)
        if isinstance(mod, torch.nn.Module):
            out[part] = {k: v.detach().float().cpu().clone() for k, v in mod.state_dict().items()
                         if v.is_floating_point()}
    return out


def weight_moves(before: dict[str, dict[str, torch.Tensor]], net: torch.nn.Module) -> dict[str, float]:
    """||w_after - w_before|| / ||w_before|| per part, over the tensors both hold with one shape
    (the new head is left out: it did not exist before)."""
    after = _part_tensors(net)
    out = {}
    for part, b in before.items():
        a = after.get(part, {})
        keys = [k for k in b if k in a and a[k].shape == b[k].shape]
        if not keys:
            continue
        num = sum(float((a[k] - b[k]).pow(2).sum()) for k in keys) ** 0.5
        den = sum(float(b[k].pow(2).sum()) for k in keys) ** 0.5
        out[part] = round(num / den, 5) if den > 0 else float("nan")
    return out


def freeze_encoder(net: torch.nn.Module) -> None:
    """The readout: no gradient into ``net.encoder`` and its norm layers kept in eval mode
    (their running statistics would otherwise drift), whatever ``train()`` calls follow."""
    enc = net.encoder
    for p in enc.parameters():
        p.requires_grad_(False)
    enc.train = lambda mode=True: torch.nn.Module.train(enc, False)     # type: ignore[method-assign]
    enc.eval()


def run_cell(job: CellJob, data: TaskData, device: str = "cpu") -> dict[str, Any]:
    """Fine-tune and score one cell; returns its record body (the runner adds the key)."""
    t0 = time.perf_counter()
    task = get_task(data.task)
    dev = job.device or device
    backbone = _backbone(job)
    torch.manual_seed(job.seed)                 # the new head: the same for every arm of a seed
    net = task.build(backbone, data)
    if job.frozen_encoder:
        freeze_encoder(net)
    before = _part_tensors(net)
    before.get("decoder", {}).pop("head.weight", None)
    before.get("decoder", {}).pop("head.bias", None)
    selector = None
    if job.select == "best-val" and job.val:
        selector = _Selector(net, lambda: task.score(net, data, job.val))
    losses = task.train(net, data, job.train, job.seed, schedule=job.schedule, device=dev,
                        every=job.val_every if selector else 0, on_step=selector,
                        desc=f"{job.arm} n={job.n_labelled} s={job.seed} lr={job.schedule.lr:g}")
    moved = weight_moves(before, net)           # of the final state: how far training went
    if selector is not None:
        selector.restore()
    rows = task.evaluate(net, data, job.test)
    out: dict[str, Any] = {"summary": task.summarise(rows, data), "rows": rows,
                           "losses": [round(float(x), 5) for x in losses], "steps": len(losses),
                           "lr": job.schedule.lr, "moved": moved, "device": str(dev)}
    if selector is not None:
        out.update(selected_step=selector.best_step, val_history=selector.history,
                   val_best=selector.best if np.isfinite(selector.best) else None,
                   still_rising=still_rising(selector.history))
    out.update(task.artifacts(net, data, job, Path(job.cell_dir)))
    return {"transferred": backbone.transferred, "seconds": round(time.perf_counter() - t0, 2), **out}


# worker-process state: the data is sent once per worker, not once per cell
_WORKER: dict[str, Any] = {}


def init_worker(data: TaskData, threads: int, devices: Any = None) -> None:
    """Worker start: one torch thread count, the data, a device slot from the shared queue, and
    SIGINT ignored (Ctrl-C is the parent's: it stops the pool; workers must not print tracebacks)."""
    import signal
    import threading

    from tqdm import tqdm

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # tqdm's default lock is a multiprocessing semaphore per process: a worker stopped by the
    # parent on Ctrl-C would leave it registered ("leaked semaphore" warnings at exit)
    tqdm.set_lock(threading.RLock())
    torch.set_num_threads(threads)
    _WORKER["data"] = data
    _WORKER["device"] = devices.get() if devices is not None else "cpu"


def run_cell_in_worker(job: CellJob) -> dict[str, Any]:
    return run_cell(job, _WORKER["data"], _WORKER["device"])


def load_task_data(spec: "ExperimentSpec", root: Path) -> TaskData:
    """The fine-tuning data on the model grid (:class:`~anatplane_dist.finetune.tasks.TaskData`)."""
    from anatplane_dist.experiment.spec import SpecError
    from anatplane_dist.finetune.classification import ClsTrainConfig
    from anatplane_dist.finetune.data import FinetuneDataError, GridSpec
    from anatplane_dist.finetune.segmentation import SegTrainConfig

    grid = GridSpec(spec.data.grid, spec.data.spacing)
    cfg = (SegTrainConfig(largest_component=spec.finetune.largest_component) if spec.task == "seg"
           else ClsTrainConfig())
    try:
        return get_task(spec.task).load(root, grid, view=spec.data.view, cfg=cfg,
                                        labels_csv=Path(spec.data.labels_csv) if spec.data.labels_csv else None)
    except FinetuneDataError as exc:
        raise SpecError(str(exc)) from exc
