"""``anatplane phantom heart|knee`` through the real dispatcher."""
from __future__ import annotations

import json
import re

import pytest

from anatplane_dist.cli import main


def test_heart_with_labelled_cohort(tmp_path, capsys):
    out, lab = tmp_path / "dsbcc", tmp_path / "acdc"
    rc = main(["phantom", "heart", "--subjects", "2", "--out", str(out), "--labelled", "1",
               "--labelled-out", str(lab), "--seed", "3", "--size", "24-32", "--frames", "2-3", "--mess"])
    assert rc == 0
    truth = json.loads((out / "phantom.json").read_text())
    assert [s["subject"] for s in truth["subjects"]] == ["1", "2"] and truth["seed"] == 3
    assert [s["mess"] for s in truth["subjects"]] == ["clean", "missing_2ch"]
    for s in truth["subjects"]:
        assert 24 <= s["matrix"] <= 32 and 2 <= s["n_frames"] <= 3
        assert (out / s["subject"] / "study").is_dir()
    assert (lab / "patient001" / "Info.cfg").is_file()
    printed = capsys.readouterr().out
    assert re.search(r"phantom heart: 3 subjects in [\d.]+ s \([\d.]+ subjects/s\)", printed), printed


def test_knee(tmp_path, capsys):
    rc = main(["phantom", "knee", "--subjects", "1", "--out", str(tmp_path), "--size", "24", "--slices", "3",
               "--first-index", "7"])
    assert rc == 0
    assert (tmp_path / "labels.csv").read_text().splitlines()[1].startswith("knee0007,")
    assert len(list((tmp_path / "knee0007").rglob("*.dcm"))) == 9
    assert "subjects/s" in capsys.readouterr().out


def test_bad_arguments_fail_clearly(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["phantom", "heart", "--out", str(tmp_path), "--size", "64-32"])
    assert exc.value.code == 2 and "invalid range" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--labelled needs --labelled-out"):
        main(["phantom", "heart", "--out", str(tmp_path), "--labelled", "2", "--size", "16", "--frames", "1"])
    with pytest.raises(SystemExit):
        main(["phantom", "lung", "--out", str(tmp_path)])


def test_sizes_refused_by_the_generators_exit_with_the_reason(tmp_path):
    with pytest.raises(SystemExit, match="frame range"):
        main(["phantom", "heart", "--out", str(tmp_path), "--labelled", "1", "--labelled-out", str(tmp_path / "l"),
              "--subjects", "1", "--frames", "1", "--size", "16"])
    assert not (tmp_path / "1").exists()         # nothing written before the sizes were checked
