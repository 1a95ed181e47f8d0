"""Atomic outputs and argument helpers of the phantom writers."""
from __future__ import annotations

import dataclasses

import pytest

from anatplane_dist.core.atomic import staged_dir
from anatplane_dist.sources.phantom.dsbcc_writer import write_heart_subject
from anatplane_dist.sources.phantom.io import parse_range
from tests.sources.phantom.support import HEART_CFG


def test_rewriting_a_subject_replaces_it_whole(tmp_path):
    cfg = dataclasses.replace(HEART_CFG, matrix=(16, 16), frames=(1, 1))
    stale = tmp_path / "1" / "study" / "sax_99"
    stale.mkdir(parents=True)
    (stale / "IM-0099-0001.dcm").write_bytes(b"stale")
    rec = write_heart_subject(tmp_path, 1, cfg)
    assert not stale.exists()
    assert sorted(p.name for p in (tmp_path / "1" / "study").iterdir()) == sorted(s["folder"] for s in rec["series"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1"]          # no tmp or old folder left behind


def test_a_failure_leaves_the_previous_subject_untouched(tmp_path):
    final = tmp_path / "s"
    final.mkdir()
    (final / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with staged_dir(final) as d:
            (d / "half.txt").write_text("new")
            raise RuntimeError("disk full")
    assert [p.name for p in tmp_path.iterdir()] == ["s"]
    assert (final / "keep.txt").read_text() == "old" and not (final / "half.txt").exists()


@pytest.mark.parametrize("text, expected", [("128", (128, 128)), ("160-256", (160, 256)), (64, (64, 64)),
                                            ((20, 30), (20, 30))])
def test_parse_range(text, expected):
    assert parse_range(text) == expected


@pytest.mark.parametrize("text", ["0", "30-20", "1-2-3", "abc"])
def test_parse_range_rejects(text):
    with pytest.raises(ValueError):
        parse_range(text)
