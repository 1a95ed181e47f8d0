"""One cell of the grid: fine-tune one arm's network on one labelled subset, score the test set.

Runs in a worker process (the runner hands each worker the loaded data once).  Model
selection follows the spec: the final model, or, with ``select: best-val``, the state with
the best validation score seen at the evaluation steps (validation subjects are neither
training nor test subjects).  A segmentation cell also writes its model file and the NIfTI
predictions of the test subjects, so the numbers can be checked by eye.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anatplane_dist.finetune.backbone import Backbone, make_backbone
from anatplane_dist.finetune.classification import (
    ClsTrainConfig,
    StackClassifier,
    evaluate_classifier,
    summarise_classification,
    train_classifier,
)
from anatplane_dist.finetune.data import KneeStack, SegSubject
from anatplane_dist.finetune.segmentation import (
    SegNet,
    SegTrainConfig,
    evaluate_segmentation,
    predict_volume,
    summarise_segmentation,
    train_segmentation,
)

__all__ = ["CellJob", "CellData", "run_cell"]


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


@dataclass
class CellData:
    """The loaded fine-tuning data of one task (handed to each worker once)."""
    task: str                       # seg | cls
    seg: dict[str, SegSubject] | None = None
    seg_cfg: SegTrainConfig | None = None
    cls: dict[str, KneeStack] | None = None
    cls_cfg: ClsTrainConfig | None = None
    cls_names: tuple[str, ...] = ()
    root: str = ""                  # the fine-tuning data root (predictions keep its layout)


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


def _run_seg(job: CellJob, data: CellData, backbone: Backbone) -> dict[str, Any]:
    from anatplane_dist.finetune.predict import prediction_path, save_seg_model, write_prediction

    cfg = data.seg_cfg
    assert cfg is not None and data.seg is not None
    torch.manual_seed(job.seed)
    net = SegNet(backbone.encoder, backbone.decoder, cfg.num_classes)
    train = [data.seg[s] for s in job.train]
    selector = None
    if job.select == "best-val":
        val = [data.seg[s] for s in job.val]
        selector = _Selector(net, lambda: summarise_segmentation(evaluate_segmentation(net, val, cfg))["dice_mean"])
    losses = train_segmentation(net, train, cfg, job.seed, desc=f"{job.arm} n={job.n_labelled} s={job.seed}",
                                every=job.val_every if selector else 0, on_step=selector)
    if selector is not None:
        selector.restore()
    test = [data.seg[s] for s in job.test]
    rows = evaluate_segmentation(net, test, cfg)
    out: dict[str, Any] = {"summary": summarise_segmentation(rows), "rows": rows, "losses": losses}
    if selector is not None:
        out["selected_step"], out["val_history"] = selector.best_step, selector.history
    cell_dir = Path(job.cell_dir)
    save_seg_model(cell_dir / "model.pt", net, model_config_yaml=job.model_config_yaml,
                   num_channels=job.num_channels, num_classes=cfg.num_classes, grid=job.grid,
                   largest_component=cfg.largest_component)
    if job.predictions:
        import nibabel as nib
        written = []
        for subj in test:
            for vol in subj.volumes:
                affine = nib.load(str(Path(data.root) / vol.source)).affine
                p = prediction_path(cell_dir / "predictions", vol.source)
                written.append(str(write_prediction(p, predict_volume(net, vol, cfg), affine).relative_to(cell_dir)))
        out["predictions"] = written
    return out


def _run_cls(job: CellJob, data: CellData, backbone: Backbone) -> dict[str, Any]:
    cfg, names = data.cls_cfg, list(data.cls_names)
    assert cfg is not None and data.cls is not None
    torch.manual_seed(job.seed)
    net = StackClassifier(backbone.encoder, len(names), cfg.dropout)
    train = [data.cls[s] for s in job.train]
    selector = None
    if job.select == "best-val":
        val = [data.cls[s] for s in job.val]
        selector = _Selector(net, lambda: summarise_classification(evaluate_classifier(net, val, names, cfg),
                                                                   names, cfg.threshold)["auc_mean"])
    losses = train_classifier(net, train, names, cfg, job.seed, desc=f"{job.arm} n={job.n_labelled}",
                              every=job.val_every if selector else 0, on_step=selector)
    if selector is not None:
        selector.restore()
    rows = evaluate_classifier(net, [data.cls[s] for s in job.test], names, cfg)
    out: dict[str, Any] = {"summary": summarise_classification(rows, names, cfg.threshold), "rows": rows,
                           "losses": losses}
    if selector is not None:
        out["selected_step"], out["val_history"] = selector.best_step, selector.history
    return out


def run_cell(job: CellJob, data: CellData) -> dict[str, Any]:
    """Fine-tune and score one cell; returns its record body (the runner adds the key)."""
    t0 = time.perf_counter()
    backbone = _backbone(job)
    result = _run_seg(job, data, backbone) if data.task == "seg" else _run_cls(job, data, backbone)
    result["losses"] = [round(float(x), 5) for x in result["losses"]]
    return {"transferred": backbone.transferred, "seconds": round(time.perf_counter() - t0, 2), **result}


# worker-process state: the data is sent once per worker, not once per cell
_DATA: dict[str, CellData] = {}


def init_worker(data: CellData, threads: int) -> None:
    torch.set_num_threads(threads)
    _DATA["data"] = data


def run_cell_in_worker(job: CellJob) -> dict[str, Any]:
    return run_cell(job, _DATA["data"])
