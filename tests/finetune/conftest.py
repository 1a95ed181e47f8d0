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


def write_knee_subject(root: Path, subject: str, rng: np.random.Generator, lesion: bool,
                       n_slices: int = 6, size: int = 48) -> Path:
    """A knee study as real MR DICOM: a sagittal stack (normal ~x) and a coronal stack (normal
    ~y), one frame of reference; ``lesion`` puts a bright blob on one sagittal slice."""
    from pydicom.uid import generate_uid

    from anatplane_dist.core.geometry import Plane
    from anatplane_dist.sources.dicom_write import SeriesInfo, write_mr_image

    study_uid, for_uid = generate_uid(), generate_uid()
    yy, xx = np.mgrid[:size, :size]
    views = {"sagittal": ([0, 1, 0], [0, 0, -1], [1, 0, 0]), "coronal": ([1, 0, 0], [0, 0, -1], [0, 1, 0])}
    for number, (view, (r, c, n)) in enumerate(views.items(), start=1):
        info = SeriesInfo(subject, study_uid, generate_uid(), for_uid, number, f"{view} PD",
                          slice_thickness=3.0, body_part="KNEE", laterality="R")
        hit = int(rng.integers(0, n_slices))
        for k in range(n_slices):
            origin = -np.asarray(r) * size / 2 - np.asarray(c) * size / 2 + np.asarray(n) * 3.0 * (k - n_slices / 2)
            plane = Plane(origin, r, c, [1.0, 1.0], [size, size])
            img = 800 + 300 * (np.hypot(yy - size / 2, xx - size / 2) < size / 3) + rng.normal(0, 60, (size, size))
            if lesion and view == "sagittal" and k == hit:
                cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
                img += 2000 * (np.hypot(yy - cy, xx - cx) < 5)
            write_mr_image(root / subject / f"{number:02d}_{view}" / f"{k + 1:03d}.dcm", np.clip(img, 0, 4095),
                           plane, info, instance_number=k + 1)
    return root / subject


def write_knee(root: Path, n: int, seed: int = 0) -> Path:
    """``n`` knee studies + ``labels.csv`` (abnormal = lesion, acl and meniscus by chance)."""
    rng = np.random.default_rng(seed)
    rows = ["subject,abnormal,acl,meniscus"]
    for i in range(n):
        lesion = bool(i % 2)
        write_knee_subject(root, f"knee{i:03d}", rng, lesion)
        rows.append(f"knee{i:03d},{int(lesion)},{int(rng.integers(0, 2))},{int(rng.integers(0, 2))}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture()
def knee_root(tmp_path: Path) -> Path:
    """Eight labelled knee studies (real DICOM) with labels.csv."""
    return write_knee(tmp_path / "knee", 8, seed=0)


def publish_weights(tmp_path: Path, model_config, num_channels: int = 2, grid: int = 64, spacing: float = 1.5,
                    seed: int = 0, name: str = "tiny", state: dict | None = None) -> Path:
    """Publish weights the way a training run does (complete checkpoint with fp32 exports,
    config.yaml naming a shard set whose manifest records the grid), via the real publisher.
    Returns the name directory (``latest`` inside)."""
    import json

    import torch
    import yaml

    from anatplane_dist.core import checkpoints as ckpt
    from anatplane_dist.core import weights
    from anatplane_dist.model import build_model, export_parts
    from anatplane_dist.publish import publish

    shards = tmp_path / f"shards-{name}"
    (shards / "train").mkdir(parents=True, exist_ok=True)
    (shards / "manifest.json").write_text(json.dumps({"config": {"grid": grid, "spacing": spacing}}))
    run_dir = tmp_path / f"run-{name}"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(
        {"data": {"shards": str(shards / "train")}, "model": model_config.to_dict()}))
    if state is None:
        torch.manual_seed(1000 + seed)
        model = build_model(model_config, num_channels)
        state = {f"{p}.{k}": v for p, sd in export_parts(model).items() for k, v in sd.items()}
    tmp = ckpt.prepare_tmp(run_dir, 10)
    ckpt.write_meta(tmp, dict(step=10, epoch=1, samples_seen=80, data_seed=seed, world_size=1, backend="single",
                              metrics={}))
    weights.export_fp32(tmp, state, model_config_yaml=model_config.to_yaml(), num_channels=num_channels, step=10)
    ckpt.finalize(tmp)
    publish(run_dir, tmp_path / "published", name)
    return tmp_path / "published" / name
