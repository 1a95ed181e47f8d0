"""checkpoint.py: atomic directories, newest-complete lookup, pruning, signed markers (weights: test_weights.py)."""
from __future__ import annotations

import json
import os

import pytest

from anatplane_dist.core import checkpoints as ckpt


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


def test_finalize_never_replaces_a_checkpoint(tmp_path):
    first = _complete(tmp_path, 4, b"old")
    with pytest.raises(FileExistsError):
        _complete(tmp_path, 4, b"new")
    assert (first / "state.bin").read_bytes() == b"old"
    ckpt.verify(first)


def test_marker_lists_every_file_with_its_sha256_and_verifies(tmp_path):
    done = _complete(tmp_path, 4, b"payload")
    marker = json.loads((done / ckpt.COMPLETE).read_text())
    assert marker["format"] == ckpt.MARKER_FORMAT and set(marker["files"]) == {"state.bin", "meta.json"}
    import hashlib
    assert marker["files"]["state.bin"] == hashlib.sha256(b"payload").hexdigest()
    ckpt.verify(done)


@pytest.mark.parametrize("tamper, reason", [
    (lambda d: (d / "state.bin").write_bytes(b"payloaX"), "differs from the sha256"),      # same size
    (lambda d: (d / "evil.pt").write_bytes(b"x"), "not in the signed list"),
    (lambda d: (d / "state.bin").unlink(), "missing"),
    (lambda d: (d / ckpt.COMPLETE).write_bytes(b""), "older version"),                    # an unsigned marker
], ids=["changed-byte", "added-file", "removed-file", "legacy-marker"])
def test_tampered_checkpoint_is_refused(tmp_path, tamper, reason):
    done = _complete(tmp_path, 4, b"payload")
    tamper(done)
    with pytest.raises(ckpt.CheckpointVerifyError, match=reason):
        ckpt.verify(done)


def test_a_forged_marker_without_the_key_is_refused(tmp_path, monkeypatch):
    done = _complete(tmp_path, 4, b"payload")
    (done / "state.bin").write_bytes(b"evil!!!")
    doc = json.loads((done / ckpt.COMPLETE).read_text())
    import hashlib
    doc["files"]["state.bin"] = hashlib.sha256(b"evil!!!").hexdigest()   # the attacker rewrites the list
    (done / ckpt.COMPLETE).write_text(json.dumps(doc))
    with pytest.raises(ckpt.CheckpointVerifyError, match="signature"):
        ckpt.verify(done)
    monkeypatch.setenv(ckpt.KEY_ENV, str(tmp_path / "other.key"))           # another user's key
    good = _complete(tmp_path / "b", 4)
    monkeypatch.setenv(ckpt.KEY_ENV, str(tmp_path / "third.key"))
    with pytest.raises(ckpt.CheckpointVerifyError, match="signature"):
        ckpt.verify(good)


def test_key_file_is_private_and_created_once(tmp_path, monkeypatch):
    monkeypatch.setenv(ckpt.KEY_ENV, str(tmp_path / "k" / "key"))
    assert ckpt.checkpoint_key() is None
    key = ckpt.checkpoint_key(create=True)
    assert len(key) == 32 and ckpt.checkpoint_key(create=True) == key
    assert os.stat(tmp_path / "k" / "key").st_mode & 0o777 == 0o600


def test_set_aside_keeps_a_refused_checkpoint_with_its_reason(tmp_path):
    done = _complete(tmp_path, 4)
    moved = ckpt.set_aside(done, "sha256 mismatch")
    assert not done.exists() and moved.parent.name == ckpt.REFUSED
    assert (moved / "REFUSED.txt").read_text().strip() == "sha256 mismatch"
    assert ckpt.find_latest_complete(tmp_path) is None
    again = ckpt.set_aside(_complete(tmp_path, 4), "second")
    assert again != moved and again.exists() and moved.exists()


def test_prune_keeps_last_k(tmp_path):
    for step in range(1, 6):
        _complete(tmp_path, step)
    removed = ckpt.prune(tmp_path, 2)
    assert sorted(ckpt.step_of(p) for p in removed) == [1, 2, 3]
    assert [ckpt.step_of(p) for p in ckpt.list_complete(tmp_path)] == [5, 4]


def test_meta_is_json(tmp_path):
    ckpt.write_meta(tmp_path, {"step": 3, "metrics": {"val/loss": 0.5}})
    assert json.loads((tmp_path / "meta.json").read_text())["metrics"]["val/loss"] == 0.5
