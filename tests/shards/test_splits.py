"""Subject split and part partition."""
from __future__ import annotations

import pytest

from anatplane_dist.shards.splits import assign_splits, parse_part, part_subjects


def test_split_is_by_subject_deterministic_and_stable_under_additions():
    subjects = [f"{i:04d}" for i in range(200)]
    a = assign_splits(subjects, 0.2, seed=3)
    assert a == assign_splits(list(reversed(subjects)), 0.2, seed=3)
    assert 20 <= sum(v == "val" for v in a.values()) <= 60
    more = assign_splits(subjects + [f"x{i}" for i in range(50)], 0.2, seed=3)
    assert all(more[s] == a[s] for s in subjects)
    assert assign_splits(subjects, 0.2, seed=4) != a


def test_tiny_cohorts_still_get_both_splits():
    for n in range(2, 6):
        s = assign_splits([f"s{i}" for i in range(n)], 0.01, seed=0)
        assert set(s.values()) == {"train", "val"}
    assert set(assign_splits(["a", "b", "c"], 0.0, seed=0).values()) == {"train"}


def test_parts_cover_every_subject_once():
    subjects = [f"s{i:03d}" for i in range(17)]
    parts = [part_subjects(subjects, i, 4) for i in range(4)]
    assert sorted(sum(parts, [])) == sorted(subjects)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert parse_part("3/4") == (3, 4)
    for bad in ("4/4", "x", "1/0", "-1/2"):
        with pytest.raises(ValueError):
            parse_part(bad)
