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
    assert main(["phantom", "heart", "--out", str(tmp_path), "--labelled", "2", "--size", "16", "--frames", "1"]) == 2
    assert "--labelled needs --labelled-out" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["phantom", "lung", "--out", str(tmp_path)])


def test_sizes_refused_by_the_generators_exit_with_the_reason(tmp_path, capsys):
    rc = main(["phantom", "heart", "--out", str(tmp_path), "--labelled", "1", "--labelled-out", str(tmp_path / "l"),
               "--subjects", "1", "--frames", "1", "--size", "16"])
    assert rc == 2 and "frame range" in capsys.readouterr().err
    assert not (tmp_path / "1").exists()         # nothing written before the sizes were checked


@pytest.mark.parametrize("anatomy, extra, fragment", [
    ("heart", ["--size", "4"], "matrix range"), ("knee", ["--size", "4"], "matrix range"),
    ("heart", ["--subjects", "-3"], "subject count must be >= 1"),
    ("heart", ["--subjects", "0"], "subject count must be >= 1"),
    ("knee", ["--subjects", "0"], "subject count must be >= 1"),
    ("heart", ["--labelled", "-1", "--labelled-out", "L"], "--labelled must be >= 0"),
])
def test_sizes_and_counts_are_one_line_exit_2(tmp_path, capsys, anatomy, extra, fragment):
    """Issue 19 item 15: usage errors exit 2 (not 1), and zero subjects is refused (not a silent no-op)."""
    rc = main(["phantom", anatomy, "--out", str(tmp_path / "out"), "--size", "16", "--frames", "2", *extra]
              if anatomy == "heart" else ["phantom", anatomy, "--out", str(tmp_path / "out"), "--size", "16", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and fragment in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def _mine(root):
    keep = root / "1" / "study" / "mine" / "keep.dcm"
    keep.parent.mkdir(parents=True)
    keep.write_text("mine")
    return keep


HEART = ["phantom", "heart", "--subjects", "1", "--size", "16", "--frames", "2"]


def test_phantom_refuses_a_folder_holding_other_data(tmp_path, capsys):
    """Issue 19 item 1: `phantom --out X` over a real DSBCC-like folder deleted X/1 wholesale."""
    keep = _mine(tmp_path / "X")
    assert main([*HEART, "--out", str(tmp_path / "X")]) == 2
    err = capsys.readouterr().err
    assert "is not empty" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert keep.read_text() == "mine" and not (tmp_path / "X" / "phantom.json").exists()
    assert main([*HEART, "--out", str(tmp_path / "X"), "--overwrite"]) == 0       # asked for: replaced
    assert not keep.exists() and (tmp_path / "X" / "phantom.json").is_file()


def test_phantom_extends_its_own_folder_but_not_another_recipe(tmp_path, capsys):
    out = tmp_path / "X"
    assert main([*HEART, "--out", str(out)]) == 0
    assert main([*HEART, "--out", str(out), "--first-index", "2"]) == 0          # same kind and seed: a chunk
    assert sorted(s["subject"] for s in json.loads((out / "phantom.json").read_text())["subjects"]) == ["1", "2"]
    capsys.readouterr()
    assert main([*HEART, "--out", str(out), "--seed", "5"]) == 2                 # another recipe
    assert "another recipe" in capsys.readouterr().err


def test_labelled_out_is_checked_before_anything_is_written(tmp_path, capsys):
    lab = tmp_path / "acdc"
    (lab / "patient001").mkdir(parents=True)
    (lab / "patient001" / "Info.cfg").write_text("mine")
    rc = main([*HEART, "--out", str(tmp_path / "dsbcc"), "--labelled", "1", "--labelled-out", str(lab)])
    assert rc == 2 and str(lab) in capsys.readouterr().err
    assert (lab / "patient001" / "Info.cfg").read_text() == "mine"
    assert not (tmp_path / "dsbcc").exists()


def test_knee_refuses_a_folder_with_someone_elses_labels(tmp_path, capsys):
    out = tmp_path / "knee"
    out.mkdir()
    (out / "labels.csv").write_text("subject,abnormal,acl,meniscus\nreal001,1,0,1\n")
    assert main(["phantom", "knee", "--subjects", "1", "--size", "16", "--slices", "3", "--out", str(out)]) == 2
    assert "real001" in (out / "labels.csv").read_text() and not (out / "knee0001").exists()
    assert "is not empty" in capsys.readouterr().err


def test_an_interrupted_generation_is_recognised_by_the_rerun(tmp_path, monkeypatch):
    """The header is written before the subjects, so a killed run's folder is still 'ours'."""
    from anatplane_dist.sources.phantom import dsbcc_writer

    real = dsbcc_writer.write_heart_subject

    def dies_on_second(out, index, cfg):
        if index == 2:
            raise KeyboardInterrupt
        return real(out, index, cfg)

    monkeypatch.setattr(dsbcc_writer, "write_heart_subject", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        dsbcc_writer.write_heart_cohort(tmp_path / "X", dsbcc_writer.HeartCohortConfig(subjects=2, matrix=(16, 16),
                                                                                        frames=(2, 2)))
    assert (tmp_path / "X" / "1").is_dir()
    monkeypatch.setattr(dsbcc_writer, "write_heart_subject", real)
    assert main([*HEART, "--subjects", "2", "--out", str(tmp_path / "X")]) == 0
