"""Profiles and the sharder config: built-ins, YAML, validation, hash."""
from __future__ import annotations

import dataclasses

import pytest
import yaml

from anatplane_dist.shards.profiles import BUILTIN_PROFILES, Profile, ShardConfig, load_profile


def test_builtin_profiles_match_the_method():
    heart, knee = BUILTIN_PROFILES["heart"], BUILTIN_PROFILES["knee"]
    assert (heart.reader, heart.input_view, heart.references, heart.reference_pick, heart.location) == \
        ("dsbcc", "sax", ("2ch", "4ch"), "first", "heart")
    assert (knee.reader, knee.input_view, knee.references, knee.reference_pick, knee.location) == \
        ("knee", "sagittal", ("coronal", "axial"), "central", "symmetric")


def test_yaml_profile_round_trip(tmp_path):
    brain = Profile(name="brain", reader="nifti", input_view="axial", references=("sagittal", "coronal"),
                    reference_pick="central", location="symmetric", stack_by="series")
    path = tmp_path / "brain.yaml"
    path.write_text(yaml.safe_dump(brain.to_dict()))
    assert load_profile(path) == brain
    assert load_profile("heart") is BUILTIN_PROFILES["heart"]


@pytest.mark.parametrize("bad, match", [
    ({"references": []}, "at least one reference"),
    ({"references": ["2ch", "2ch"]}, "repeat"),
    ({"references": ["sax"]}, "also a reference"),
    ({"location": "apex"}, "location must be one of"),
    ({"reference_pick": "last"}, "reference_pick"),
])
def test_invalid_profiles_are_refused(bad, match):
    d = dict(BUILTIN_PROFILES["heart"].to_dict(), **bad)
    with pytest.raises(ValueError, match=match):
        Profile.from_dict(d)


def test_unknown_profile_field_and_missing_file(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("input_view: sax\nreferences: [2ch]\nreader: dsbcc\ncolour: red\n")
    with pytest.raises(ValueError, match="unknown field"):
        load_profile(p)
    with pytest.raises(ValueError, match="not a built-in"):
        load_profile(tmp_path / "missing.yaml")


def test_config_hash_tracks_every_byte_changing_setting():
    cfg = ShardConfig(profile=BUILTIN_PROFILES["heart"])
    assert cfg.config_hash() == ShardConfig.from_dict(cfg.to_dict()).config_hash()
    for change in ({"grid": 64}, {"spacing": 2.0}, {"seed": 1}, {"val_fraction": 0.2}, {"shard_size": 10},
                   {"require_all_views": True}, {"profile": BUILTIN_PROFILES["knee"]}):
        assert dataclasses.replace(cfg, **change).config_hash() != cfg.config_hash(), change
    with pytest.raises(ValueError, match="val_fraction"):
        ShardConfig(profile=BUILTIN_PROFILES["heart"], val_fraction=1.0)
