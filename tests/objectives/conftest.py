"""A tiny network and a fixed batch in the stream's layout, for the objective tests."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from anatplane_dist.core.geometry import render_heatmaps
from anatplane_dist.model import ModelConfig
from anatplane_dist.objectives.config import LossConfig


def tiny_model(norm: str = "batch") -> ModelConfig:
    """A 4-8-16 U-Net: what every objective builds on here (same encoder for all)."""
    return ModelConfig(name="unet", width=4, depth=2, norm=norm, loc_hidden=[8], loc_dropout=0.0)


def tiny_loss() -> LossConfig:
    return LossConfig(alpha=1.0, beta=1.0, sigma_px=1.5)


def fixed_batch(b: int = 8, grid: int = 32, k: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """Images that show their own K lines (ridges + noise), z-scored, with lines/valid/loc targets."""
    rng = np.random.default_rng(seed)
    centre = (grid - 1) / 2.0
    lines = np.zeros((b, k, 3), np.float32)
    for i in range(b):
        theta = rng.uniform(0, math.pi)
        for j in range(k):
            a, c = math.cos(theta + j * math.pi / (k + 1)), math.sin(theta + j * math.pi / (k + 1))
            lines[i, j] = (a, c, -(a * centre + c * centre) - rng.uniform(-grid / 6, grid / 6))
    valid = np.ones((b, k), np.float32)
    heat = render_heatmaps(lines, valid.astype(bool), (grid, grid), sigma_px=1.5)
    image = heat.sum(axis=1, keepdims=True) + rng.normal(0, 0.05, (b, 1, grid, grid))
    image = (image - image.mean()) / image.std()
    loc = (lines[:, 0, 2] + centre * (lines[:, 0, 0] + lines[:, 0, 1])) / (grid / 6)
    return {"image": torch.tensor(image, dtype=torch.float32), "lines": torch.tensor(lines),
            "valid": torch.tensor(valid), "loc": torch.tensor(loc, dtype=torch.float32),
            "loc_valid": torch.ones(b)}


@pytest.fixture()
def batch() -> dict[str, torch.Tensor]:
    return fixed_batch()
