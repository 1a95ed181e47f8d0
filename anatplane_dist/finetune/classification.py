"""Stack-level classification (MRNet style): per-slice encoder features pooled over slices.

Each slice of a stack goes through the (pretrained) encoder; its bottleneck is averaged over
the image, the slice vectors are max-pooled over the stack (a lesion seen on any slice
counts), and one linear layer gives a logit per label (multi-label, sigmoid + BCE).  This is
the MRNet baseline's head on top of our encoder, so the encoder is the only thing that differs
between random and pretrained initialisation.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from anatplane_dist.finetune.data import KneeStack

if TYPE_CHECKING:
    from anatplane_dist.finetune.schedules import Schedule

__all__ = ["ClsTrainConfig", "StackClassifier", "roc_auc", "train_classifier", "predict_stacks",
           "evaluate_classifier", "summarise_classification", "fit_and_evaluate_classifier"]


@dataclass
class ClsTrainConfig:
    """Fine-tuning schedule: a fixed number of steps of ``stacks_per_step`` stacks each."""

    steps: int = 150
    stacks_per_step: int = 2
    lr: float = 1e-3
    weight_decay: float = 1e-4
    rotate_deg: float = 10.0
    dropout: float = 0.0
    threshold: float = 0.5
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.steps < 1 or self.stacks_per_step < 1 or not self.lr > 0:
            raise ValueError(f"steps and stacks per step must be >= 1 and lr > 0, got steps={self.steps}, "
                             f"stacks_per_step={self.stacks_per_step}, lr={self.lr}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class StackClassifier(nn.Module):
    """(S, 1, H, W) slices of one stack -> (L,) logits; ``forward_many`` for a list of stacks."""

    def __init__(self, encoder: nn.Module, num_labels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(int(encoder.out_channels[-1]), num_labels)

    def forward(self, stack: Tensor) -> Tensor:
        feats = self.encoder(stack)[-1].mean(dim=(2, 3))      # (S, C): one vector per slice
        return self.fc(self.dropout(feats.amax(dim=0)))        # max over the stack

    def forward_many(self, stacks: Sequence[Tensor]) -> Tensor:
        """(B, L) logits; all slices of all stacks go through the encoder as one batch."""
        sizes = [int(s.shape[0]) for s in stacks]
        feats = self.encoder(torch.cat(list(stacks)))[-1].mean(dim=(2, 3))
        pooled = torch.stack([f.amax(dim=0) for f in feats.split(sizes)])
        return self.fc(self.dropout(pooled))


# -- metrics --------------------------------------------------------------------------------

def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties); NaN when the
    labels hold a single class (AUC is undefined, not 0.5)."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(score, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):                       # mid-ranks over runs of equal scores
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


# -- training -------------------------------------------------------------------------------

def _targets(stacks: Sequence[KneeStack], names: Sequence[str]) -> Tensor:
    return torch.tensor([[float(s.labels[n]) for n in names] for s in stacks])


def train_classifier(net: StackClassifier, stacks: Sequence[KneeStack], names: Sequence[str],
                     cfg: ClsTrainConfig, seed: int, desc: str = "cls", *, every: int = 0,
                     on_step: Callable[[int], None] | None = None, schedule: "Schedule | None" = None,
                     device: str | None = None) -> list[float]:
    """Fine-tune encoder + head with BCE on ``names``; one rotation per stack per step.

    ``schedule`` (default: the config's steps / lr / stacks per step, AdamW, cosine to 0);
    ``on_step(step)``: called after every ``every``-th step and the last (model selection).

    Positive labels are weighted by neg/pos of the training set (clamped to [0.2, 5]) so a
    rare label is not learnt as "always absent".  Returns the loss per step.
    """
    from anatplane_dist.data.augment import rotate_scale
    from anatplane_dist.finetune.segmentation import make_optimizer, schedule_of
    from anatplane_dist.train.schedule import set_lr

    if not stacks:
        raise ValueError("no labelled training stacks")
    sched = schedule or schedule_of(cfg)
    dev = torch.device(device or cfg.device)
    gen = torch.Generator().manual_seed(seed)
    images = [torch.from_numpy(s.image).float()[:, None] for s in stacks]
    y_all = _targets(stacks, names)
    pos = y_all.sum(0)
    pos_weight = ((len(stacks) - pos) / pos.clamp(min=1)).clamp(0.2, 5.0).to(dev)
    net.to(dev).train()
    opt = make_optimizer(net, sched)
    total = sched.total_steps(len(stacks))
    losses: list[float] = []
    for step in tqdm(range(total), desc=desc, leave=False, disable=None):
        set_lr(opt, sched.lr_at(step, len(stacks)))
        idx = torch.randint(0, len(stacks), (sched.batch_size,), generator=gen).tolist()
        angles = (torch.rand(len(idx), generator=gen) * 2 - 1) * math.radians(cfg.rotate_deg)
        batch = [rotate_scale(images[i], a.expand(images[i].shape[0])).to(dev) for i, a in zip(idx, angles)]
        logits = net.forward_many(batch)
        loss = F.binary_cross_entropy_with_logits(logits, y_all[idx].to(dev), pos_weight=pos_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        done = step + 1
        if on_step is not None and ((every and done % every == 0) or done == total):
            on_step(done)
            net.train()
    return losses


@torch.no_grad()
def predict_stacks(net: StackClassifier, stacks: Sequence[KneeStack], device: str = "cpu") -> np.ndarray:
    """(N, L) probabilities, one stack at a time (stacks can be large)."""
    net.to(device).eval()
    return np.stack([torch.sigmoid(net(torch.from_numpy(s.image).float()[:, None].to(device))).cpu().numpy()
                     for s in stacks])


def evaluate_classifier(net: StackClassifier, stacks: Sequence[KneeStack], names: Sequence[str],
                        cfg: ClsTrainConfig) -> list[dict[str, Any]]:
    """One row per stack: subject, the true labels and the predicted probabilities."""
    prob = predict_stacks(net, stacks, str(next(net.parameters()).device))
    return [{"subject": s.subject, "labels": {n: int(s.labels[n]) for n in names},
             "prob": {n: float(prob[i, j]) for j, n in enumerate(names)}} for i, s in enumerate(stacks)]


def summarise_classification(rows: Sequence[dict[str, Any]], names: Sequence[str],
                             threshold: float = 0.5) -> dict[str, float]:
    """AUC and accuracy per label, and their means (AUC mean over defined labels only)."""
    out: dict[str, float] = {}
    aucs, accs = [], []
    for n in names:
        y = np.array([r["labels"][n] for r in rows])
        p = np.array([r["prob"][n] for r in rows])
        out[f"auc_{n}"] = roc_auc(y, p)
        out[f"acc_{n}"] = float(((p >= threshold) == (y == 1)).mean()) if len(y) else float("nan")
        aucs.append(out[f"auc_{n}"])
        accs.append(out[f"acc_{n}"])
    out["auc_mean"] = float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan")
    out["acc_mean"] = float(np.mean(accs))
    out["stacks"] = len(rows)
    return out


def fit_and_evaluate_classifier(encoder: nn.Module, train: Sequence[KneeStack], test: Sequence[KneeStack],
                                names: Sequence[str], cfg: ClsTrainConfig, seed: int,
                                desc: str = "cls") -> dict[str, Any]:
    """One low-label run: new linear head on ``encoder``, fine-tune, score the test stacks.

    Returns ``{"summary", "rows", "losses"}`` (see :func:`summarise_classification`)."""
    torch.manual_seed(seed)
    net = StackClassifier(encoder, len(names), cfg.dropout)
    losses = train_classifier(net, train, names, cfg, seed, desc=desc)
    rows = evaluate_classifier(net, test, names, cfg)
    return {"summary": summarise_classification(rows, names, cfg.threshold), "rows": rows, "losses": losses}
