"""In-memory studies built from exact geometry (no files): the sharder's unit-test inputs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from anatplane_dist.core.geometry import Plane
from anatplane_dist.shards.profiles import BUILTIN_PROFILES, ShardConfig
from anatplane_dist.sources.base import Frame, Slice, Study


def _unit(v):
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v)


def _basis(normal):
    n = _unit(normal)
    a = _unit(np.cross(n, [0.0, 0.0, 1.0] if abs(n[2]) < 0.9 else [1.0, 0.0, 0.0]))
    return a, np.cross(n, a)            # row_dir, col_dir with row x col = n


def plane_through(center, row_dir, col_dir, spacing=(2.0, 2.0), shape=(40, 48)) -> Plane:
    """A plane whose image centre is ``center``."""
    row_dir, col_dir = _unit(row_dir), _unit(col_dir)
    rows, cols = shape
    origin = (np.asarray(center, float) - (cols - 1) / 2 * spacing[1] * row_dir
              - (rows - 1) / 2 * spacing[0] * col_dir)
    return Plane(origin, row_dir, col_dir, spacing, shape)


def make_slice(view, series, plane, n_frames=3, for_uid="1.2.3.9", seed=0, pixels=None, path_prefix="") -> Slice:
    rng = np.random.default_rng(seed)
    rows, cols = (int(v) for v in plane.shape)
    if pixels is None:
        yy, xx = np.mgrid[0:rows, 0:cols]
        base = 100 + 400 * np.exp(-((yy - rows / 2) ** 2 + (xx - cols / 2) ** 2) / (2 * (rows / 4) ** 2))
        pixels = np.stack([base * (1 + 0.1 * f) + rng.normal(0, 5, (rows, cols)) for f in range(n_frames)])
    pixels = np.asarray(pixels, dtype=np.float32)
    frames = [Frame(path=f"{path_prefix}{series}/IM-{f:04d}.dcm", index=f, sop_uid=f"1.2.3.{seed}.{f}",
                    trigger_time=30.0 * f) for f in range(n_frames)]
    return Slice(view, series, plane, frames, for_uid, f"1.2.3.{seed}", lambda p=pixels: p.copy())


def heart_study(subject="sub-01", n_sax=5, n_frames=3, gap_mm=8.0, with_2ch=True, with_4ch=True,
                for_2ch="1.2.3.9", seed=0) -> Study:
    """A SAX stack along an oblique long axis (apex left/anterior/inferior) with 2CH and 4CH planes."""
    rng = np.random.default_rng(seed)
    axis = _unit(np.array([1.0, -1.0, -1.0]) + rng.normal(0, 0.1, 3))
    row, col = _basis(axis)
    centre = np.array([10.0, -20.0, 30.0]) + rng.normal(0, 3, 3)
    sax = []
    for i in range(n_sax):
        c = centre + (i - (n_sax - 1) / 2) * gap_mm * axis
        sax.append(make_slice("sax", f"sax_{i + 5}", plane_through(c, row, col), n_frames, seed=seed * 100 + i,
                              path_prefix=f"{subject}/study/"))
    views = {"sax": sax}
    if with_4ch:   # contains the long axis and ``row``
        views["4ch"] = [make_slice("4ch", "4ch_30", plane_through(centre, row, axis, shape=(44, 44)), n_frames,
                                   seed=seed * 100 + 50, path_prefix=f"{subject}/study/")]
    if with_2ch:   # contains the long axis and ``col``
        views["2ch"] = [make_slice("2ch", "2ch_31", plane_through(centre, col, axis, shape=(44, 44)), n_frames,
                                   for_uid=for_2ch, seed=seed * 100 + 51, path_prefix=f"{subject}/study/")]
    return Study(subject=subject, root=Path("/nonexistent"), views=views)


@pytest.fixture()
def heart_cfg() -> ShardConfig:
    return ShardConfig(profile=BUILTIN_PROFILES["heart"], grid=32, spacing=3.0, shard_size=7)


# -- real DICOM trees in the DSBCC layout (written with the package's MR Image writer) ---------

def write_dsbcc_study(root: Path, study: Study) -> None:
    """Write every slice of ``study`` as MR Image DICOM under ``root/<subject>/study/<series>/``."""
    from anatplane_dist.sources.dicom_write import SeriesInfo, deterministic_uid, write_mr_image

    study_uid = deterministic_uid("study", study.subject)
    for v, slices in study.views.items():
        for sl in slices:
            info = SeriesInfo(patient_id=study.subject, study_uid=study_uid,
                              series_uid=deterministic_uid("series", study.subject, sl.series),
                              frame_of_reference_uid=deterministic_uid("for", study.subject, sl.frame_of_reference),
                              series_number=int(sl.series.split("_")[-1]), series_description=sl.series)
            pixels = sl.load()
            for f, fr in enumerate(sl.frames):
                write_mr_image(root / study.subject / "study" / sl.series / f"IM-{f + 1:04d}.dcm", pixels[f],
                               sl.plane, info, instance_number=f + 1, trigger_time_ms=fr.trigger_time)


def write_dsbcc_tree(root: Path, n_subjects: int = 4, n_sax: int = 3, n_frames: int = 2) -> list[str]:
    """A small clean DSBCC-layout data set; returns the subject ids."""
    names = []
    for i in range(n_subjects):
        name = f"{i + 1:04d}"
        write_dsbcc_study(root, heart_study(subject=name, n_sax=n_sax, n_frames=n_frames, seed=i + 1))
        names.append(name)
    return names


@pytest.fixture(scope="session")
def dsbcc_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dsbcc")
    write_dsbcc_tree(root)
    return root
