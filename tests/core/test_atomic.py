"""Atomic writes: whole file or nothing, readable permissions, no litter on failure."""
from __future__ import annotations

import json
import os
import stat

import pytest

from anatplane_dist.core.atomic import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text


def test_write_replaces_whole_file_with_shared_fs_permissions(tmp_path):
    target = tmp_path / "sub" / "a.json"
    atomic_write_json(target, {"b": 1, "a": [1, 2]})
    assert json.loads(target.read_text()) == {"a": [1, 2], "b": 1}
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o644
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.json"]


def test_json_lines(tmp_path):
    target = atomic_write_json(tmp_path / "x.jsonl", [{"a": 1}, {"b": 2}], lines=True)
    assert target.read_text().splitlines() == ['{"a": 1}', '{"b": 2}']


def test_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = atomic_write_bytes(tmp_path / "w.bin", b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["w.bin"]


def test_temporary_is_hidden_and_keeps_the_extension(tmp_path):
    with atomic_path(tmp_path / "img.nii.gz") as tmp:
        assert tmp.name.startswith(".") and tmp.name.endswith(".nii.gz")
        assert tmp.parent == tmp_path
        tmp.write_bytes(b"x")
    assert (tmp_path / "img.nii.gz").read_bytes() == b"x"


def test_a_full_disk_names_the_destination_and_keeps_the_old_file(tmp_path):
    """Issue 19 item 9: ENOSPC is one DiskFullError naming what was being written (a copy used to
    name its source); the file already there is intact and no temporary is left."""
    import pytest

    from anatplane_dist.core.atomic import atomic_write_bytes, copy_durable
    from anatplane_dist.core.errors import DiskFullError
    from tests.fulldisk import tmpfs

    src = tmp_path / "weights.bin"
    src.write_bytes(b"w" * 200_000)
    with tmpfs(tmp_path / "full", 128) as full:
        atomic_write_bytes(full / "card.json", b"old")
        with pytest.raises(DiskFullError, match=f"writing {full / 'card.json'}; nothing complete was replaced"):
            atomic_write_bytes(full / "card.json", b"x" * 200_000)
        assert (full / "card.json").read_bytes() == b"old" and sorted(p.name for p in full.iterdir()) == ["card.json"]
        with pytest.raises(DiskFullError) as exc:
            copy_durable(src, full / "copy.bin")
        assert str(full / "copy.bin") in str(exc.value) and str(src) not in str(exc.value)
