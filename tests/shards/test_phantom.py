"""The built-in phantoms (``anatplane phantom``) through the real readers into shards."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from anatplane_dist.cli import main
from tests.shards.test_pipeline import check_round_trip


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantoms")
    assert main(["phantom", "heart", "--subjects", "5", "--out", str(root / "heart"), "--size", "64",
                 "--frames", "3", "--mess", "--seed", "1"]) == 0
    assert main(["phantom", "knee", "--subjects", "2", "--out", str(root / "knee"), "--size", "64",
                 "--slices", "7", "--seed", "1"]) == 0
    return root


def shard(profile: str, root: Path, out: Path) -> int:
    return main(["shard", "--profile", profile, "--input", str(root), "--out", str(out), "--grid", "48",
                 "--spacing", "3", "--val-fraction", "0.3", "--workers", "1", "--shard-size", "20",
                 "--no-progress"])


def test_heart_phantom_with_dsbcc_mess_round_trips(phantoms, tmp_path):
    assert shard("heart", phantoms / "heart", tmp_path) == 0
    samples = check_round_trip(phantoms / "heart", tmp_path, 48)
    truth = json.loads((phantoms / "heart" / "phantom.json").read_text())
    skipped = [json.loads(x) for x in (tmp_path / "skipped.jsonl").read_text().splitlines()]
    assert any("no 2ch view" in s["reason"] for s in skipped)           # the mess: a missing 2CH ...
    assert any("duplicated slice position" in s["reason"] for s in skipped)   # ... and a repeated SAX
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["counts"]["subjects_with_samples"] == 5
    long_axis = {str(t["index"]): np.array(t["long_axis"]) for t in truth["subjects"]}
    by_subject: dict[str, list] = {}
    for s in samples.values():
        by_subject.setdefault(s["meta.json"]["subject"], []).append(s)
    for subject, ss in by_subject.items():
        locs = sorted({float(s["loc.npy"]) for s in ss})
        assert locs[0] == 0.0 and locs[-1] == 1.0, subject        # base and apex slices are there
        # the location axis runs base -> apex along the phantom's true long axis
        axis = np.array(ss[0]["meta.json"]["location"]["axis"])
        assert axis @ long_axis[subject] > np.cos(np.deg2rad(15)), subject


def test_knee_phantom_round_trips_with_symmetric_locations(phantoms, tmp_path):
    assert shard("knee", phantoms / "knee", tmp_path) == 0
    samples = check_round_trip(phantoms / "knee", tmp_path, 48)
    assert len(samples) == 2 * 7
    for s in samples.values():
        meta = s["meta.json"]
        assert meta["channels"] == ["coronal", "axial"] and meta["view"] == "sagittal"
        assert meta["location"]["name"] == "symmetric"
    locs = sorted(float(s["loc.npy"]) for s in samples.values())
    assert locs[-1] == pytest.approx(1.0) and locs[0] < 0.2            # ends 1, centre ~0
    assert np.mean([s["valid.npy"].all() for s in samples.values()]) > 0.5
