"""Tiny target-task fixtures written as real files (NIfTI via nibabel) in the ACDC layout.

Each subject is a short-axis stack with an LV blood pool (3), a myocardial ring (2) and an
RV crescent (1), at an oblique orientation and anisotropic spacing, so the loaders' geometry
(affine -> LPS planes -> model grid) is exercised, not just array slicing.
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest


def heart_label_slice(shape: tuple[int, int], spacing: tuple[float, float], center_mm: tuple[float, float],
                      lv_r: float, wall: float) -> np.ndarray:
    """uint8 (rows, cols) label image: LV disc, MYO ring, RV crescent beside the septum."""
    rows, cols = shape
    y = (np.arange(rows)[:, None] * spacing[0]) - center_mm[0]
    x = (np.arange(cols)[None, :] * spacing[1]) - center_mm[1]
    r = np.hypot(x, y)
    lab = np.zeros(shape, np.uint8)
    rv = (np.hypot(x + lv_r + wall + 4.0, y) < lv_r + wall + 3.0) & (r > lv_r + wall + 1.5)
    lab[rv] = 1
    lab[r < lv_r + wall] = 2
    lab[r < lv_r] = 3
    return lab


def write_acdc_subject(root: Path, subject: str, rng: np.random.Generator,
                       shape: tuple[int, int, int] = (56, 48, 5),
                       zooms: tuple[float, float, float] = (1.6, 1.4, 8.0),
                       frames: tuple[int, int] = (1, 9), write_info: bool = True) -> Path:
    """One ACDC-format subject (ED and ES frames, both labelled); returns its folder."""
    d = root / subject
    d.mkdir(parents=True, exist_ok=True)
    angle = rng.uniform(-0.4, 0.4)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(zooms)
    affine[:3, 3] = rng.uniform(-20, 20, 3)
    for k, frame in enumerate(frames):
        lv_r = rng.uniform(8, 11) * (1.0 if k == 0 else 0.75)
        lab = np.zeros(shape, np.uint8)
        img = np.zeros(shape, np.float32)
        cy = shape[0] * zooms[0] / 2 + rng.uniform(-4, 4)
        cx = shape[1] * zooms[1] / 2 + rng.uniform(-4, 4)
        for s in range(shape[2]):
            taper = 1.0 - 0.12 * s
            lab[:, :, s] = heart_label_slice(shape[:2], zooms[:2], (cy, cx), lv_r * taper, 4.0)
        # SSFP-like: blood bright, myocardium dark, 12-bit range, noise
        img[:] = np.choose(lab, [300.0, 1800.0, 500.0, 2000.0]).astype(np.float32)
        img += rng.normal(0, 60, shape).astype(np.float32)
        img = np.clip(img, 0, 4095)
        name = f"{subject}_frame{frame:02d}"
        nib.save(nib.Nifti1Image(img.astype(np.int16), affine), str(d / f"{name}.nii.gz"))
        nib.save(nib.Nifti1Image(lab, affine), str(d / f"{name}_gt.nii.gz"))
    if write_info:
        (d / "Info.cfg").write_text(f"ED: {frames[0]}\nES: {frames[1]}\nGroup: NOR\nHeight: 170\n"
                                    f"NbFrame: 12\nWeight: 70\n")
    return d


def write_acdc(root: Path, n: int, seed: int = 0, **kw) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        write_acdc_subject(root, f"patient{i + 1:03d}", rng, **kw)
    return root


@pytest.fixture()
def acdc_root(tmp_path: Path) -> Path:
    """Six labelled subjects in ACDC layout."""
    return write_acdc(tmp_path / "acdc", 6, seed=0)
