"""Stack classification: AUC, the MRNet-style head, and that fine-tuning learns a stack label."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from anatplane_dist.finetune.classification import (
    ClsTrainConfig,
    StackClassifier,
    evaluate_classifier,
    roc_auc,
    summarise_classification,
    train_classifier,
)
from anatplane_dist.finetune.data import KneeStack
from anatplane_dist.model import ModelConfig, build_model

TINY = ModelConfig(name="unet", width=8, depth=3)


def test_auc_matches_pairwise_definition() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.normal(size=200) + y, 1)          # rounding makes ties
    pos, neg = s[y == 1], s[y == 0]
    brute = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    assert roc_auc(y, s) == pytest.approx(brute)
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert np.isnan(roc_auc([1, 1, 1], [0.1, 0.2, 0.3]))


def _stacks(n: int, seed: int) -> list[KneeStack]:
    """Noisy 6-slice stacks; 'lesion' = a bright blob on one slice, 'other' = pure chance."""
    rng = np.random.default_rng(seed)
    out = []
    yy, xx = np.mgrid[:32, :32]
    for i in range(n):
        lesion = i % 2
        img = rng.normal(0, 1, (6, 32, 32)).astype(np.float32)
        img += 2.0 * (np.hypot(yy - 16, xx - 16) < 12)            # some anatomy
        if lesion:
            k, cy, cx = rng.integers(0, 6), *rng.integers(8, 24, 2)
            img[k] += 4.0 * (np.hypot(yy - cy, xx - cx) < 4)
        out.append(KneeStack(f"k{seed}_{i}", "sagittal", (img - img.mean(axis=(1, 2), keepdims=True)) / img.std(axis=(1, 2), keepdims=True),
                             {"lesion": int(lesion), "other": int(rng.integers(0, 2))}))
    return out


def test_head_pools_over_slices() -> None:
    net = StackClassifier(build_model(TINY, 2).encoder, num_labels=3).eval()
    stacks = [torch.randn(5, 1, 32, 32), torch.randn(3, 1, 32, 32)]
    with torch.no_grad():
        many = net.forward_many(stacks)
        one = torch.stack([net(s) for s in stacks])
        # max pooling: the order of slices does not matter
        flipped = net(stacks[0].flip(0))
    assert many.shape == (2, 3)
    torch.testing.assert_close(many, one, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(flipped, one[0], rtol=1e-4, atol=1e-5)


def test_fine_tuning_learns_a_stack_label() -> None:
    train, test = _stacks(16, seed=1), _stacks(12, seed=2)
    names = ["lesion", "other"]
    torch.manual_seed(0)
    net = StackClassifier(build_model(TINY, 2).encoder, num_labels=2)
    cfg = ClsTrainConfig(steps=120, stacks_per_step=4, lr=2e-3)
    losses = train_classifier(net, train, names, cfg, seed=0)
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    rows = evaluate_classifier(net, test, names, cfg)
    assert [r["subject"] for r in rows] == [s.subject for s in test]
    summary = summarise_classification(rows, names)
    assert summary["auc_lesion"] > 0.85, summary
    assert summary["acc_lesion"] > 0.7, summary
    assert summary["stacks"] == 12
