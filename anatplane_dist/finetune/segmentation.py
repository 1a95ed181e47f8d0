"""Segmentation fine-tuning: pretrained encoder (+ decoder) with a new 1x1 head, train, evaluate.

The network is the pretraining U-Net with its heatmap head (``decoder.head``, K channels)
swapped for a ``num_classes`` 1x1 conv, as the paper's fine-tuning does.  Whether the decoder
is transferred or re-initialised is the caller's choice (:mod:`.backbone`); the architecture is
the same either way, so random and pretrained inits are compared like for like.

Evaluation is done where the labels live: softmax probabilities on the model grid are
resampled back onto each native slice (linear, background outside the grid's field of view),
argmax'd, optionally reduced to the largest connected component per structure, then scored
as 3D Dice and HD95 (mm, anisotropic voxels) per structure per labelled frame.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor, nn
from tqdm import tqdm

from anatplane_dist.core.geometry import resample_to_grid
from anatplane_dist.finetune.data import ACDC_CLASSES, SegSubject, SegVolume

if TYPE_CHECKING:
    from anatplane_dist.finetune.schedules import Schedule

__all__ = ["SegTrainConfig", "SegNet", "dice_score", "hd95", "largest_component",
           "train_segmentation", "probs_to_native", "predict_volume", "evaluate_segmentation",
           "summarise_segmentation", "fit_and_evaluate_segmentation"]


@dataclass
class SegTrainConfig:
    """Fine-tuning schedule.  A fixed number of optimiser steps (not epochs), so a run with
    one labelled subject gets as many updates as a run with all of them.  The defaults are
    sized for CPU demos (64x64 grid, width-8 U-Net: ~2-3 min for the 16 runs of the default
    protocol on 2 cores); on the phantom, 300 steps bring random init to the same Dice as
    pretrained init, 150-200 steps show the faster convergence of pretrained weights."""

    steps: int = 200
    batch_size: int = 8
    lr: float = 3e-3
    weight_decay: float = 1e-4
    rotate_deg: float = 15.0       # the paper's fine-tuning augmentation
    scale: float = 0.1
    dice_weight: float = 1.0       # CE + dice_weight * soft Dice (foreground classes)
    largest_component: bool = True
    num_classes: int = 4
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError(f"steps and batch size must be >= 1 and lr > 0, got steps={self.steps}, "
                             f"batch_size={self.batch_size}, lr={self.lr}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background + structures), got {self.num_classes}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SegNet(nn.Module):
    """``encoder -> decoder.features -> new 1x1 head``: (B, 1, H, W) -> (B, C, H, W) logits."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, num_classes: int) -> None:
        super().__init__()
        if not hasattr(decoder, "features"):
            raise TypeError("decoder must expose .features(feats) (the pre-head decoder output)")
        self.encoder = encoder
        self.decoder = decoder
        width = int(encoder.out_channels[0])
        self.decoder.head = nn.Conv2d(width, num_classes, 1)
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder.head(self.decoder.features(self.encoder(x)))


# -- metrics --------------------------------------------------------------------------------

def dice_score(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice of two boolean volumes; 1.0 when both are empty (nothing to find, nothing found)."""
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    denom = int(pred.sum()) + int(gt.sum())
    if denom == 0:
        return 1.0
    return 2.0 * float(np.logical_and(pred, gt).sum()) / denom


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1))


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> float:
    """95th percentile of the symmetric surface distances (mm), via Euclidean distance
    transforms with the voxel ``spacing``.  NaN when either mask is empty (undefined)."""
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    if not pred.any() or not gt.any():
        return float("nan")
    ps, gs = _surface(pred), _surface(gt)
    to_gt = ndimage.distance_transform_edt(~gs, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~ps, sampling=spacing)
    return float(np.percentile(np.concatenate([to_gt[ps], to_pred[gs]]), 95))


def largest_component(labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Keep, per class, only its largest 3D face-connected component (the paper's post-processing)."""
    out = labels.copy()
    for c in classes:
        comp, n = ndimage.label(labels == c)
        if n > 1:
            sizes = ndimage.sum_labels(np.ones_like(comp), comp, index=np.arange(1, n + 1))
            keep = 1 + int(np.argmax(sizes))
            out[(comp > 0) & (comp != keep)] = 0
    return out


# -- training -------------------------------------------------------------------------------

def _stack_training_slices(subjects: Sequence[SegSubject]) -> tuple[Tensor, Tensor]:
    imgs = [v.image for s in subjects for v in s.volumes]
    labs = [v.label for s in subjects for v in s.volumes]
    if not imgs:
        raise ValueError("no labelled training slices")
    x = torch.from_numpy(np.concatenate(imgs)).float()[:, None]
    y = torch.from_numpy(np.concatenate(labs).astype(np.int64))
    return x, y


def _augment(x: Tensor, y: Tensor, gen: torch.Generator, rotate_deg: float, scale: float
             ) -> tuple[Tensor, Tensor]:
    """One random rotation + isotropic scale per sample, the same for image and label
    (:func:`anatplane_dist.data.augment.rotate_scale`)."""
    from anatplane_dist.data.augment import rotate_scale

    b = x.shape[0]
    ang = (torch.rand(b, generator=gen) * 2 - 1) * math.radians(rotate_deg)
    s = 1.0 + (torch.rand(b, generator=gen) * 2 - 1) * scale
    xa = rotate_scale(x, ang, s, mode="bilinear", padding_mode="border")
    ya = rotate_scale(y[:, None].to(x), ang, s, mode="nearest", padding_mode="zeros")[:, 0].round().long()
    return xa, ya


def _soft_dice_loss(logits: Tensor, y: Tensor) -> Tensor:
    prob = logits.softmax(1)[:, 1:]
    onehot = F.one_hot(y, logits.shape[1]).permute(0, 3, 1, 2).to(prob)[:, 1:]
    inter = (prob * onehot).sum((0, 2, 3))
    denom = prob.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    return 1.0 - ((2 * inter + 1.0) / (denom + 1.0)).mean()


def schedule_of(cfg: Any) -> "Schedule":
    """The ``steps`` schedule a task config's own steps / lr / batch / weight decay describe."""
    from anatplane_dist.finetune.schedules import Schedule

    batch = getattr(cfg, "batch_size", None) or getattr(cfg, "stacks_per_step")
    return Schedule(name="steps", optimizer="adamw", lr=cfg.lr, weight_decay=cfg.weight_decay,
                    batch_size=batch, steps=cfg.steps)


def make_optimizer(net: nn.Module, schedule: "Schedule") -> torch.optim.Optimizer:
    """The schedule's optimiser over the trainable parameters (a frozen encoder is left out)."""
    params = [p for p in net.parameters() if p.requires_grad]
    if schedule.optimizer == "adam":
        return torch.optim.Adam(params, lr=schedule.lr, weight_decay=schedule.weight_decay)
    return torch.optim.AdamW(params, lr=schedule.lr, weight_decay=schedule.weight_decay)


def train_segmentation(net: SegNet, subjects: Sequence[SegSubject], cfg: SegTrainConfig,
                       seed: int, desc: str = "seg", *, every: int = 0,
                       on_step: Callable[[int], None] | None = None, schedule: "Schedule | None" = None,
                       device: str | None = None) -> list[float]:
    """Fine-tune the whole network on all labelled slices of ``subjects``.

    Batches are drawn with replacement from a generator seeded by ``seed`` (the subject
    subset is the caller's).  ``schedule`` (default: the config's steps / lr / batch, AdamW,
    cosine to 0) sets the optimiser, the steps (the ``paper`` schedule counts epochs of the
    labelled slices) and the LR of every step.  Returns the loss per step.
    ``on_step(step)`` is called after every ``every``-th step and after the last one (model
    selection on validation subjects hooks in there; it must leave the net as it found it).
    """
    from anatplane_dist.train.schedule import set_lr

    sched = schedule or schedule_of(cfg)
    dev = torch.device(device or cfg.device)
    x_all, y_all = _stack_training_slices(subjects)
    total = sched.total_steps(int(x_all.shape[0]))
    gen = torch.Generator().manual_seed(seed)
    net.to(dev).train()
    opt = make_optimizer(net, sched)
    losses: list[float] = []
    for step in tqdm(range(total), desc=desc, leave=False, disable=None):
        set_lr(opt, sched.lr_at(step, int(x_all.shape[0])))
        idx = torch.randint(0, x_all.shape[0], (sched.batch_size,), generator=gen)
        x, y = _augment(x_all[idx], y_all[idx], gen, cfg.rotate_deg, cfg.scale)
        x, y = x.to(dev), y.to(dev)
        logits = net(x)
        loss = F.cross_entropy(logits, y) + cfg.dice_weight * _soft_dice_loss(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        done = step + 1
        if on_step is not None and ((every and done % every == 0) or done == total):
            on_step(done)
            net.train()
    return losses


# -- evaluation -----------------------------------------------------------------------------

def probs_to_native(prob: np.ndarray, vol: SegVolume, largest: bool = True) -> np.ndarray:
    """Class probabilities (S, C, H, W) on the model grid -> labels (S, rows, cols) uint8 on
    the native slices of ``vol`` (linear resampling of each class, then argmax)."""
    s, c = prob.shape[:2]
    rows, cols = vol.native_label.shape[1:]
    native = np.empty((s, c, rows, cols), np.float32)
    for k in range(s):
        for j in range(c):
            # outside the grid's field of view: background with certainty
            native[k, j] = resample_to_grid(prob[k, j], vol.grids[k], vol.native_planes[k], order=1,
                                            cval=1.0 if j == 0 else 0.0)
    labels = native.argmax(1).astype(np.uint8)
    return largest_component(labels, range(1, c)) if largest else labels


@torch.no_grad()
def predict_volume(net: SegNet, vol: SegVolume, cfg: SegTrainConfig) -> np.ndarray:
    """Labels (S, rows, cols) uint8 on the native slices of ``vol`` (on the net's device)."""
    net.eval()
    x = torch.from_numpy(vol.image).float()[:, None].to(next(net.parameters()).device)
    prob = net(x).softmax(1).cpu().numpy()
    return probs_to_native(prob, vol, cfg.largest_component)


def evaluate_segmentation(net: SegNet, subjects: Sequence[SegSubject], cfg: SegTrainConfig,
                          class_names: dict[int, str] = ACDC_CLASSES) -> list[dict[str, Any]]:
    """One row per labelled frame: subject, phase, Dice and HD95 (mm) per structure."""
    rows = []
    for subj in subjects:
        for vol in subj.volumes:
            pred = predict_volume(net, vol, cfg)
            gt = vol.native_label
            row: dict[str, Any] = {"subject": subj.subject, "phase": vol.phase, "dice": {}, "hd95": {}}
            for value, name in class_names.items():
                row["dice"][name] = dice_score(pred == value, gt == value)
                row["hd95"][name] = hd95(pred == value, gt == value, vol.voxel_mm)
            rows.append(row)
    return rows


def summarise_segmentation(rows: Sequence[dict[str, Any]],
                           class_names: dict[int, str] = ACDC_CLASSES) -> dict[str, float]:
    """Mean Dice / HD95 per structure over frames, plus the mean over structures.

    HD95 means skip undefined (NaN) frames; how many were defined is reported alongside.
    """
    out: dict[str, float] = {}
    dices, hds = [], []
    for name in class_names.values():
        d = np.array([r["dice"][name] for r in rows], float)
        h = np.array([r["hd95"][name] for r in rows], float)
        out[f"dice_{name}"] = float(d.mean()) if d.size else float("nan")
        out[f"hd95_{name}"] = float(np.nanmean(h)) if np.isfinite(h).any() else float("nan")
        out[f"hd95_{name}_n"] = int(np.isfinite(h).sum())
        dices.append(out[f"dice_{name}"])
        hds.append(out[f"hd95_{name}"])
    out["dice_mean"] = float(np.mean(dices))
    out["hd95_mean"] = float(np.nanmean(hds)) if np.isfinite(hds).any() else float("nan")
    out["frames"] = len(rows)
    return out


def fit_and_evaluate_segmentation(encoder: nn.Module, decoder: nn.Module, train: Sequence[SegSubject],
                                  test: Sequence[SegSubject], cfg: SegTrainConfig, seed: int,
                                  desc: str = "seg") -> dict[str, Any]:
    """One low-label run: new head on ``encoder``/``decoder``, fine-tune, score the test frames.

    Returns ``{"summary", "rows", "losses"}`` (see :func:`summarise_segmentation`)."""
    torch.manual_seed(seed)
    net = SegNet(encoder, decoder, cfg.num_classes)
    losses = train_segmentation(net, train, cfg, seed, desc=desc)
    rows = evaluate_segmentation(net, test, cfg)
    return {"summary": summarise_segmentation(rows), "rows": rows, "losses": losses}
