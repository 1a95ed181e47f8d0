"""checkpoint.py: atomic directories, newest-complete lookup, pruning (weights files: test_weights.py)."""
from __future__ import annotations

import json

from anatplane_dist import checkpoint as ckpt


def _complete(run_dir, step, payload=b"x"):
    tmp = ckpt.prepare_tmp(run_dir, step)
    (tmp / "state.bin").write_bytes(payload)
    ckpt.write_meta(tmp, {"step": step})
    return ckpt.finalize(tmp)


def test_no_checkpoints(tmp_path):
    assert ckpt.find_latest_complete(tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    assert ckpt.find_latest_complete(tmp_path) is None


def test_newest_complete_by_step_number_not_name_or_mtime(tmp_path):
    for step in (900, 10000, 80):
        _complete(tmp_path, step)
    latest = ckpt.find_latest_complete(tmp_path)
    assert latest.name == "step_00010000" and ckpt.read_meta(latest)["step"] == 10000
    assert [ckpt.step_of(p) for p in ckpt.list_complete(tmp_path)] == [10000, 900, 80]


def test_tmp_dir_left_by_a_kill_is_ignored_and_cleaned(tmp_path):
    _complete(tmp_path, 4)
    killed = ckpt.prepare_tmp(tmp_path, 8)           # a save interrupted before the rename
    (killed / "half.bin").write_bytes(b"\0" * 10)
    assert ckpt.find_latest_complete(tmp_path).name == "step_00000004"
    assert ckpt.remove_stale_tmp(tmp_path) == [killed] and not killed.exists()


def test_renamed_dir_without_marker_is_incomplete(tmp_path):
    _complete(tmp_path, 4)
    tmp = ckpt.prepare_tmp(tmp_path, 8)
    final = tmp.with_name("step_00000008")
    tmp.rename(final)                                   # killed between rename and marker
    assert not ckpt.is_complete(final)
    assert ckpt.find_latest_complete(tmp_path).name == "step_00000004"


def test_finalize_writes_marker_last_and_replaces_a_resave(tmp_path):
    first = _complete(tmp_path, 4, b"old")
    second = _complete(tmp_path, 4, b"new")
    assert first == second and (second / ckpt.COMPLETE).is_file()
    assert (second / "state.bin").read_bytes() == b"new"
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))


def test_prune_keeps_last_k(tmp_path):
    for step in range(1, 6):
        _complete(tmp_path, step)
    removed = ckpt.prune(tmp_path, 2)
    assert sorted(ckpt.step_of(p) for p in removed) == [1, 2, 3]
    assert [ckpt.step_of(p) for p in ckpt.list_complete(tmp_path)] == [5, 4]


def test_meta_is_json(tmp_path):
    ckpt.write_meta(tmp_path, {"step": 3, "metrics": {"val/loss": 0.5}})
    assert json.loads((tmp_path / "meta.json").read_text())["metrics"]["val/loss"] == 0.5
