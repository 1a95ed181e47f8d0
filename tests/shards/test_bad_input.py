"""Each bad input injected into an otherwise good DICOM set: recorded, and nothing good lost."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from anatplane_dist.shards.pipeline import shard_dataset
from anatplane_dist.shards.profiles import BUILTIN_PROFILES, ShardConfig
from anatplane_dist.shards.reader import read_samples
from tests.shards.conftest import write_dsbcc_tree

CFG = ShardConfig(profile=BUILTIN_PROFILES["heart"], grid=32, spacing=3.0, shard_size=10, val_fraction=0.2)


def keys_and_locs(out: Path) -> dict[str, dict]:
    found = {}
    for name in json.loads((out / "sizes.json").read_text()):
        for key, d in read_samples(out / name).items():
            found[key] = {"loc": d["loc"], "valid": bytes(d["valid"].astype(np.uint8))}
    return found


def rewrite(folder: Path, edit) -> None:
    for f in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        edit(ds)
        ds.save_as(f)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("bad")
    clean = base / "clean"
    write_dsbcc_tree(clean, n_subjects=9, n_sax=3, n_frames=2)
    bad = base / "bad"
    shutil.copytree(clean, bad)
    study = {s: bad / s / "study" for s in (f"{i:04d}" for i in range(1, 10))}
    # 0002: a corrupt file (truncated pixel data) in one SAX series
    f = sorted((study["0002"] / "sax_6").glob("*.dcm"))[1]
    f.write_bytes(f.read_bytes()[:-500])
    # 0003: a series with a missing geometry tag
    rewrite(study["0003"] / "sax_7", lambda ds: delattr(ds, "ImagePositionPatient"))
    # 0004: no 2CH
    shutil.rmtree(study["0004"] / "2ch_31")
    # 0005: the 2CH folder holds a plane parallel to the SAX stack
    sax = pydicom.dcmread(sorted((study["0005"] / "sax_5").glob("*.dcm"))[0])
    rewrite(study["0005"] / "2ch_31", lambda ds: setattr(ds, "ImageOrientationPatient", sax.ImageOrientationPatient))
    # 0006: a 4CH plane moved 500 mm along its normal: its line misses the model grid
    ds4 = pydicom.dcmread(sorted((study["0006"] / "4ch_30").glob("*.dcm"))[0])
    iop = np.array(ds4.ImageOrientationPatient, float)
    shifted = [f"{v:.6f}" for v in np.array(ds4.ImagePositionPatient, float) + 500 * np.cross(iop[:3], iop[3:])]
    rewrite(study["0006"] / "4ch_30", lambda ds: setattr(ds, "ImagePositionPatient", shifted))
    # 0007: a SAX position acquired twice (a copy of sax_6 as sax_16, other series UID)
    shutil.copytree(study["0007"] / "sax_6", study["0007"] / "sax_16")
    rewrite(study["0007"] / "sax_16", lambda ds: setattr(ds, "SeriesInstanceUID", ds.SeriesInstanceUID[:-3] + "999"))
    # 0008: a one-slice SAX stack
    shutil.rmtree(study["0008"] / "sax_6")
    shutil.rmtree(study["0008"] / "sax_7")
    # 0009: NaN pixels (Float Pixel Data) in one frame of sax_5
    f = sorted((study["0009"] / "sax_5").glob("*.dcm"))[1]
    ds = pydicom.dcmread(f)
    arr = ds.pixel_array.astype(np.float32)
    arr[3, 4] = np.nan
    del ds.PixelData
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    ds.FloatPixelData = arr.tobytes()
    ds.save_as(f)
    out_clean, out_bad = base / "out_clean", base / "out_bad"
    assert shard_dataset(clean, out_clean, CFG, progress=False).ok
    run = shard_dataset(bad, out_bad, CFG, progress=False)
    skipped = [json.loads(line) for line in (out_bad / "skipped.jsonl").read_text().splitlines()]
    return keys_and_locs(out_clean), keys_and_locs(out_bad), skipped, run


def reasons(skipped, subject):
    return " | ".join(s["reason"] for s in skipped if s["subject"] == subject)


def test_good_samples_all_present(runs):
    clean, bad, _, run = runs
    assert run.ok
    damaged = ("0002_sax_6_", "0003_sax_7_", "0007_sax_6_", "0008_", "0009_sax_5_")   # changed or deleted
    expected = {k for k in clean if not k.startswith(damaged)}
    assert expected <= set(bad)
    assert {k for k in bad if k.startswith("0002_sax_6_")} == {"0002_sax_6_s001_f000"}   # the intact frame
    assert {k for k in bad if k.startswith("0007_sax_")} == {      # the duplicate replaces its twin, once
        k.replace("sax_6", "sax_16") for k in clean if k.startswith("0007_")}
    assert {k for k in bad if k.startswith("0008_")} == {"0008_sax_5_s000_f000", "0008_sax_5_s000_f001"}


def test_each_problem_is_recorded_with_its_reason(runs):
    _, bad, skipped, _ = runs
    assert "IM-0002.dcm" in reasons(skipped, "0002")
    assert "ImagePositionPatient" in reasons(skipped, "0003")
    assert "no 2ch view: channel 0 (2ch) masked" in reasons(skipped, "0004")
    assert "nearly parallel" in reasons(skipped, "0005")
    assert "misses the 32x32 grid" in reasons(skipped, "0006")
    assert "sax_16" in reasons(skipped, "0007") or "sax_6" in reasons(skipped, "0007")
    assert "location masked" in reasons(skipped, "0008")
    assert "non-finite (NaN/inf) pixel" in reasons(skipped, "0009")
    assert reasons(skipped, "0001") == ""
    # masks reach the samples
    assert all(v["valid"] == b"\x00\x01" for k, v in bad.items() if k.startswith(("0004_", "0005_")))
    assert all(v["valid"] == b"\x01\x00" for k, v in bad.items() if k.startswith("0006_"))
    assert all(np.isnan(v["loc"]) for k, v in bad.items() if k.startswith("0008_"))
    assert all(np.isfinite(v["loc"]) for k, v in bad.items() if not k.startswith("0008_"))


def test_require_all_views_drops_the_study_and_says_so(runs, tmp_path):
    bad_root = Path(str(tmp_path_factory_root(runs)))
    strict = ShardConfig(profile=CFG.profile, grid=32, spacing=3.0, shard_size=10, val_fraction=0.2,
                         require_all_views=True)
    run = shard_dataset(bad_root, tmp_path, strict, progress=False)
    skipped = (tmp_path / "skipped.jsonl").read_text()
    assert "--require-all-views" in skipped and run.ok
    found = keys_and_locs(tmp_path)
    assert not any(k.startswith(("0004_", "0005_")) for k in found)
    assert any(k.startswith("0006_") for k in found)        # a masked line is not a missing view


def tmp_path_factory_root(runs) -> Path:
    return Path(runs[3].manifest["input_root"])
