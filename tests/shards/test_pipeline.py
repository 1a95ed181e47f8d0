"""End to end on real DICOM trees: DSBCC layout -> reader -> shards -> plain tarfile + numpy."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from anatplane_dist.shards.manifest import MergeError, merge_parts
from anatplane_dist.shards.pipeline import shard_dataset
from anatplane_dist.shards.profiles import BUILTIN_PROFILES, ShardConfig
from anatplane_dist.shards.reader import read_samples
from anatplane_dist.shards.writer import ResumeMismatch

CFG = ShardConfig(profile=BUILTIN_PROFILES["heart"], grid=32, spacing=3.0, shard_size=5, val_fraction=0.3)


def as_fields(d: dict) -> dict:
    """A decoded sample under the field names of the sample's contents (lines NaN where masked)."""
    return {"image.npy": d["image"], "lines.npy": d["lines"], "valid.npy": d["valid"],
            "loc.npy": np.float32(d["loc"]), "meta.json": d["meta"]}


def read_shards(out: Path) -> dict[str, dict]:
    """Every sample of every shard listed in sizes.json, checked and decoded from plain tarfile."""
    samples: dict[str, dict] = {}
    sizes = json.loads((out / "sizes.json").read_text())
    for name, count in sizes.items():
        got = read_samples(out / name)
        assert len(got) == count
        for key, d in got.items():
            samples[key] = dict(as_fields(d), __shard__=name)
    return samples


def header_plane(path: Path):
    ds = pydicom.dcmread(path)
    iop = np.array(ds.ImageOrientationPatient, float)
    return (np.array(ds.ImagePositionPatient, float), iop[:3], iop[3:], np.array(ds.PixelSpacing, float), ds)


def check_round_trip(root: Path, out: Path, grid: int) -> dict[str, dict]:
    """Every sample against its sources: UIDs, grid geometry, lines (3x3 solve from the DICOM
    headers), pixels (independent bilinear resampling of the DICOM pixels), split by subject."""
    samples = read_shards(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(samples) == manifest["counts"]["samples"] > 0
    assert manifest["input_root"] == str(root.resolve())
    for s in samples.values():
        meta = s["meta.json"]
        g = meta["grid"]
        go, gr, gc, gs = (np.array(g[k], float) for k in ("origin", "row_dir", "col_dir", "spacing"))
        # the grid is the source image's plane: same directions, same centre
        so, sr, sc, ss, ds = header_plane(root / meta["file"])
        assert ds.SOPInstanceUID == meta["sop_uid"] and ds.SeriesInstanceUID == meta["series_uid"]
        assert ds.FrameOfReferenceUID == meta["frame_of_reference"]
        assert np.allclose(gr, sr, atol=1e-6) and np.allclose(gc, sc, atol=1e-6)
        src_centre = so + (ds.Columns - 1) / 2 * ss[1] * sr + (ds.Rows - 1) / 2 * ss[0] * sc
        assert np.allclose(go + (grid - 1) / 2 * gs[0] * (gr + gc), src_centre, atol=1e-3)
        n_g = np.cross(gr, gc)
        for k, ref in enumerate(meta["references"]):
            if not s["valid.npy"][k]:
                assert np.all(np.isnan(s["lines.npy"][k])) and ref.get("reason")
                continue
            ro, rr, rc, _, rds = header_plane(root / ref["path"])
            assert rds.SeriesInstanceUID == ref["series_uid"]
            n_r = np.cross(rr, rc)
            d = np.cross(n_g, n_r)
            p = np.linalg.solve(np.stack([n_g, n_r, d]), [n_g @ go, n_r @ ro, 0.0])
            a, b, c = s["lines.npy"][k].astype(float)
            for t in (-60.0, 60.0):
                q = p + t * d / np.linalg.norm(d) - go
                x, y = q @ gr / gs[1], q @ gc / gs[0]
                assert abs(a * x + b * y + c) < 0.1
        # pixels: independent resampling of the stored DICOM pixels
        raw = ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1) or 1) \
            + float(ds.get("RescaleIntercept", 0) or 0)
        lo, hi = meta["intensity"]["values"]
        rows, cols = np.mgrid[0:grid, 0:grid]
        world = go + (cols[..., None] * gs[1]) * gr + (rows[..., None] * gs[0]) * gc
        src_r, src_c = (world - so) @ sc / ss[0], (world - so) @ sr / ss[1]
        expected = ndimage.map_coordinates((raw - lo) / (hi - lo), [src_r, src_c], order=1, cval=0.0)
        assert np.max(np.abs(s["image.npy"].astype(np.float64) - expected)) < 5e-3
    # split by subject, disjoint, as in the manifest
    split_of = manifest["subjects"]
    for s in samples.values():
        assert s["__shard__"].startswith(split_of[s["meta.json"]["subject"]] + "-")
    return samples


def test_round_trip_lines_pixels_split(dsbcc_tree, tmp_path):
    run = shard_dataset(dsbcc_tree, tmp_path, CFG, progress=False)
    assert run.ok and run.samples == 4 * 3 * 2
    samples = check_round_trip(dsbcc_tree, tmp_path, 32)
    assert len(samples) == 24
    assert set(json.loads((tmp_path / "manifest.json").read_text())["subjects"].values()) == {"train", "val"}


def test_same_input_same_bytes_for_any_worker_count(dsbcc_tree, tmp_path):
    a = shard_dataset(dsbcc_tree, tmp_path / "a", CFG, workers=1, progress=False)
    b = shard_dataset(dsbcc_tree, tmp_path / "b", CFG, workers=2, progress=False)
    assert [r.sha256 for r in a.shards] == [r.sha256 for r in b.shards] and len(a.shards) >= 4
    for r in a.shards:
        assert (tmp_path / "a" / r.name).read_bytes() == (tmp_path / "b" / r.name).read_bytes()
    assert (tmp_path / "a" / "manifest.json").read_text().replace(str(tmp_path / "a"), "") == \
        (tmp_path / "b" / "manifest.json").read_text().replace(str(tmp_path / "b"), "")


def test_rerun_keeps_complete_shards_and_resumes_a_cut_run(dsbcc_tree, tmp_path):
    first = shard_dataset(dsbcc_tree, tmp_path, CFG, progress=False)
    stats = {r.name: (tmp_path / r.name).stat() for r in first.shards}
    again = shard_dataset(dsbcc_tree, tmp_path, CFG, progress=False)
    assert [r.sha256 for r in again.shards] == [r.sha256 for r in first.shards]
    for r in first.shards:      # nothing rewritten
        assert (tmp_path / r.name).stat().st_mtime_ns == stats[r.name].st_mtime_ns
    # cut: the last shard of each split lost, a temporary one left
    last = {}
    for r in first.shards:
        last[r.split] = r
    for r in last.values():
        (tmp_path / r.name).unlink()
    (tmp_path / (list(last.values())[0].name + ".tmp")).write_bytes(b"x" * 100)
    resumed = shard_dataset(dsbcc_tree, tmp_path, CFG, progress=False)
    assert [(r.name, r.sha256) for r in resumed.shards] == [(r.name, r.sha256) for r in first.shards]
    assert not list(tmp_path.glob("*.tmp"))
    other = ShardConfig(profile=CFG.profile, grid=40, spacing=3.0, shard_size=5, val_fraction=0.3)
    with pytest.raises(ResumeMismatch, match="config_hash"):
        shard_dataset(dsbcc_tree, tmp_path, other, progress=False)


def test_parts_shard_disjoint_subjects_and_merge_refuses_mixed_configs(dsbcc_tree, tmp_path):
    whole = shard_dataset(dsbcc_tree, tmp_path / "whole", CFG, progress=False)
    out = tmp_path / "parts"
    runs = [shard_dataset(dsbcc_tree, out, CFG, part=(i, 3), progress=False) for i in range(3)]
    assert not (out / "manifest.json").exists()          # parts never merge by themselves
    m = merge_parts(out)
    assert m["counts"]["samples"] == whole.samples == sum(r.samples for r in runs)
    assert m["subjects"] == whole.manifest["subjects"]
    names = [s["name"] for s in m["shards"]]
    assert len(set(names)) == len(names) and all("-p000" in n for n in names)
    subjects_per_part = [set(json.loads((out / "_parts" / f"part-{i:04d}-of-0003.json").read_text())["subjects"])
                         for i in range(3)]
    assert not (subjects_per_part[0] & subjects_per_part[1]) and not (subjects_per_part[1] & subjects_per_part[2])
    assert json.loads((out / "sizes.json").read_text()) == {s["name"]: s["count"] for s in m["shards"]}

    mixed = tmp_path / "mixed"
    shard_dataset(dsbcc_tree, mixed, CFG, part=(0, 2), progress=False)
    with pytest.raises(MergeError, match=r"part\(s\) \[1\] of 2 not written"):
        merge_parts(mixed)
    other = ShardConfig(profile=CFG.profile, grid=32, spacing=2.0, shard_size=5, val_fraction=0.3)
    shard_dataset(dsbcc_tree, mixed, other, part=(1, 2), progress=False)
    with pytest.raises(MergeError, match="different configs"):
        merge_parts(mixed)


def test_a_worker_killed_by_one_study_costs_only_that_study(dsbcc_tree, tmp_path):
    import dataclasses
    crashing = dataclasses.replace(CFG, profile=dataclasses.replace(CFG.profile, reader="tests.shards.crash_reader"))
    run = shard_dataset(dsbcc_tree, tmp_path, crashing, workers=2, progress=False)
    assert run.ok and run.samples == 3 * 3 * 2
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["subject_samples"] == {"0001": 6, "0002": 0, "0003": 6, "0004": 6}
    skipped = [json.loads(x) for x in (tmp_path / "skipped.jsonl").read_text().splitlines()]
    assert [s["subject"] for s in skipped] == ["0002"] and "worker process died" in skipped[0]["reason"]


def test_a_second_writer_of_the_same_part_is_refused(dsbcc_tree, tmp_path):
    import fcntl
    import os

    from anatplane_dist.shards.pipeline import PartBusy
    (tmp_path / "_state").mkdir(parents=True)
    fd = os.open(tmp_path / "_state" / "part-0000-of-0001.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(PartBusy, match="another run is writing"):
            shard_dataset(dsbcc_tree, tmp_path, CFG, progress=False)
    finally:
        os.close(fd)
    assert shard_dataset(dsbcc_tree, tmp_path, CFG, progress=False).ok


def test_output_folder_inside_the_input_is_not_a_subject(dsbcc_tree, tmp_path):
    import shutil
    root = tmp_path / "data"
    shutil.copytree(dsbcc_tree, root)
    run = shard_dataset(root, root / "shards", CFG, progress=False)
    again = shard_dataset(root, root / "shards", CFG, progress=False)     # its own output is not read
    assert run.ok and again.ok and run.subjects == again.subjects == 4
