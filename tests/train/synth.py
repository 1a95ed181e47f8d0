"""Synthetic shard sets with a learnable pretext signal, written with real WebDataset tars.

Each image shows the ridges of its own K target lines (plus noise), so a tiny network can
learn the orientation task within a few dozen steps, and the location target is the signed
offset of the first line from the centre (also visible in the image).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import webdataset as wds

from anatplane_dist.core.geometry import render_heatmaps


def _sample(rng: np.random.Generator, grid: int, k: int) -> dict[str, np.ndarray]:
    centre = (grid - 1) / 2.0
    theta = rng.uniform(0, np.pi)
    offset = rng.uniform(-grid / 4, grid / 4)
    lines = np.full((k, 3), np.nan, dtype=np.float32)
    valid = np.zeros(k, dtype=np.uint8)
    for j in range(k):
        ang = theta + j * np.pi / (k + 1)
        a, b = np.cos(ang), np.sin(ang)
        off = offset if j == 0 else rng.uniform(-grid / 6, grid / 6)
        lines[j] = (a, b, -(a * centre + b * centre) - off)
        valid[j] = 1 if (j == 0 or rng.random() > 0.2) else 0
    shown = np.where(valid[:, None] > 0, lines, 0.0)
    # channel j is drawn wider and dimmer than channel j-1, so a network can tell them apart
    image = sum((1.0 - 0.3 * j) * render_heatmaps(shown[j:j + 1], valid[j:j + 1].astype(bool), (grid, grid),
                                                  sigma_px=1.0 + 1.5 * j)[0] for j in range(k))
    image = image + rng.normal(0, 0.05, (grid, grid))
    image = (image - image.min()) / max(image.max() - image.min(), 1e-6)
    lines[valid == 0] = np.nan
    return {"image.npy": image.astype(np.float16), "lines.npy": lines, "valid.npy": valid,
            "loc.npy": np.float32(offset / (grid / 4))}


def write_shards(out: Path, sizes: list[int], val_sizes: list[int], *, grid: int = 32, k: int = 2,
                 seed: int = 0, constant: bool = False) -> Path:
    """``train-NNNNNN.tar`` / ``val-NNNNNN.tar`` + ``sizes.json`` under ``out`` (uneven sizes allowed).

    ``constant``: every sample is the same one, so a global batch has the same content however
    the ranks split the stream (isolates optimiser-state transfer from data order in tests).
    """
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    one = _sample(np.random.default_rng(seed), grid, k) if constant else None
    table = {}
    for split, counts in (("train", sizes), ("val", val_sizes)):
        for i, n in enumerate(counts):
            name = f"{split}-{i:06d}.tar"
            with wds.TarWriter(str(out / name)) as tw:
                for j in range(n):
                    key = f"s{i:02d}_{split}_{j:04d}"
                    tw.write({"__key__": key, **(one if constant else _sample(rng, grid, k)),
                              "meta.json": json.dumps({"subject": f"s{i:02d}", "frame": j}).encode()})
            table[name] = n
    (out / "sizes.json").write_text(json.dumps(table))
    # the facts the trainer reads instead of opening a tar (as `anatplane shard` writes them)
    (out / "manifest.json").write_text(json.dumps({"num_channels": k, "grid": grid, "spacing_mm": 1.0,
                                                   "channels": [f"line{j}" for j in range(k)]}))
    return out


def config_yaml(shards: Path, **sections: dict) -> str:
    """A tiny test config (32x32 grid, 4-8-16 U-Net) with section overrides merged in."""
    import yaml

    base = {
        "data": {"shards": str(shards), "samples_per_epoch": 32, "batch_size": 4, "num_workers": 0,
                 "shuffle_buffer": 32, "shuffle_initial": 8, "seed": 0},
        "model": {"name": "unet", "width": 4, "depth": 2, "norm": "batch", "loc_hidden": [8], "loc_dropout": 0.0},
        "loss": {"alpha": 1.0, "beta": 1.0, "sigma_px": 1.5},
        "augment": {"p": 0.5, "rotation_deg": 10.0, "scale": [0.95, 1.05], "translate": 0.02},
        "optim": {"name": "adamw", "base_lr": 3.0e-3, "lr_rule": "linear", "ref_batch": 8, "warmup_steps": 2,
                  "min_lr": 1.0e-4},
        "train": {"epochs": 2, "log_every": 2, "keep_last": 10, "progress": "lines", "zero_stage": 0},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return yaml.safe_dump(base, sort_keys=False)
