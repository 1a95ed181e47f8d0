"""Issue 19 items 3 and 4: a hand-edited manifest is caught by verify, the trainer and publish;
verify and the stream check every sample against the manifest's grid, channels and spacing; every
shard's size (and on request sha256) is checked against its manifest record before streaming."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from anatplane_dist.cli import main
from anatplane_dist.core.errors import ExitCode
from anatplane_dist.data.config import DataConfig
from anatplane_dist.data.stream import make_train_loader, make_val_loader
from anatplane_dist.shards.manifest import ShardFactsError, read_shard_facts, seal_manifest
from anatplane_dist.shards.pipeline import shard_dataset
from tests.shards.test_integrity import CFG, flip_inside_first_image

SHARDS = "train-{000000..000002}.tar"


@pytest.fixture(scope="module")
def sets(tmp_path_factory, dsbcc_tree) -> tuple[Path, Path]:
    """The same subjects sharded at 4.0 mm and at 5.0 mm (same grid, same channels)."""
    root = tmp_path_factory.mktemp("seal")
    for name, cfg in (("a", CFG), ("b", dataclasses.replace(CFG, spacing=5.0))):
        assert shard_dataset(dsbcc_tree, root / name, cfg, progress=False).ok
    return root / "a", root / "b"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit(folder: Path, reseal: bool = False, **changes) -> None:
    m = json.loads((folder / "manifest.json").read_text())
    m.update(changes)
    (folder / "manifest.json").write_text(json.dumps(seal_manifest(m) if reseal else m, indent=1))


def test_merged_manifests_are_sealed(sets):
    m = json.loads((sets[0] / "manifest.json").read_text())
    assert len(m["seal"]) == 64
    read_shard_facts(sets[0])


@pytest.mark.parametrize("key, value", [("grid", 16), ("spacing_mm", 1.0), ("num_channels", 3)])
def test_a_hand_edited_manifest_fails_verify_and_is_refused_by_the_trainer(tmp_path, sets, capsys, key, value):
    copy = _copy(sets[0], tmp_path / "copy")
    _edit(copy, **{key: value})
    assert main(["shard", "--verify", str(copy), "--no-progress"]) == ExitCode.CHECK_FAILED
    assert "manifest.json: was changed after the sharder wrote it" in capsys.readouterr().err
    with pytest.raises(ShardFactsError, match="changed after the sharder wrote it"):
        read_shard_facts(copy)             # what the trainer's setup reads first


def test_a_manifest_without_its_seal_is_refused(tmp_path, sets):
    copy = _copy(sets[0], tmp_path / "copy")
    m = json.loads((copy / "manifest.json").read_text())
    del m["seal"]
    (copy / "manifest.json").write_text(json.dumps(dict(m, grid=16)))
    with pytest.raises(ShardFactsError, match="has no seal"):
        read_shard_facts(copy)


def test_verify_checks_every_sample_against_the_manifest_facts(tmp_path, sets, capsys):
    """Even a re-sealed edit (spacing 4 -> 1 with a recomputed seal) does not match the samples."""
    copy = _copy(sets[0], tmp_path / "copy")
    _edit(copy, reseal=True, spacing_mm=1.0)
    assert main(["shard", "--verify", str(copy), "--no-progress"]) == ExitCode.CHECK_FAILED
    err = capsys.readouterr().err
    assert "grid spacing [4.0, 4.0] mm, the manifest says 1.0 mm" in err
    assert main(["shard", "--verify", str(sets[0]), "--no-progress"]) == ExitCode.OK


def test_a_shard_of_another_size_is_refused_at_start_naming_it(tmp_path, sets):
    a, b = sets
    copy = _copy(a, tmp_path / "copy")
    with open(copy / "train-000001.tar", "ab") as fh:       # e.g. a shard from a bigger sharding
        fh.write(b"\0" * 10240)
    cfg = DataConfig(shards=str(copy / SHARDS), batch_size=2, num_workers=0, samples_per_epoch=8)
    with pytest.raises(ShardFactsError, match=r"train-000001\.tar: 71680 bytes, .*manifest.json says 61440"):
        make_train_loader(cfg, expect=read_shard_facts(copy))


def test_a_shard_from_another_sharding_is_refused_with_sha256(tmp_path, sets):
    """The 5.0 mm shard has the very size of the 4.0 mm one it replaces (tar blocks): only its
    bytes tell, so ``data.verify: sha256`` refuses it at start (and without it: next test)."""
    a, b = sets
    copy = _copy(a, tmp_path / "copy")
    shutil.copyfile(b / "train-000001.tar", copy / "train-000001.tar")
    cfg = DataConfig(shards=str(copy / SHARDS), batch_size=2, num_workers=0, samples_per_epoch=8,
                     verify="sha256")
    with pytest.raises(ShardFactsError, match=r"train-000001\.tar: sha256 differs"):
        make_train_loader(cfg, expect=read_shard_facts(copy))


def test_a_same_size_shard_of_another_spacing_is_a_counted_skip(tmp_path, sets):
    """The manifest records made to agree (size, sha256, seal): the samples still say 5.0 mm."""
    a, b = sets
    copy = _copy(a, tmp_path / "copy")
    shutil.copyfile(b / "train-000001.tar", copy / "train-000001.tar")
    m = json.loads((copy / "manifest.json").read_text())
    other = {r["name"]: r for r in json.loads((b / "manifest.json").read_text())["shards"]}
    m["shards"] = [other["train-000001.tar"] if r["name"] == "train-000001.tar" else r for r in m["shards"]]
    (copy / "manifest.json").write_text(json.dumps(seal_manifest(m)))
    facts = read_shard_facts(copy)
    loader = make_val_loader(DataConfig(val_shards=str(copy / SHARDS), batch_size=4, num_workers=0), expect=facts)
    keys = [k for batch in loader for k in batch["key"]]
    stats = loader.last_report.stats
    assert stats.skipped == other["train-000001.tar"]["count"] > 0
    assert len(keys) == m["counts"]["samples"] - stats.skipped
    # without the facts (the old stream) every sample of the 5 mm shard went into training
    loader = make_val_loader(DataConfig(val_shards=str(copy / SHARDS), batch_size=4, num_workers=0))
    assert loader.last_report is None and sum(len(b["key"]) for b in loader) == m["counts"]["samples"]


def test_a_flipped_byte_is_refused_at_start_only_with_sha256(tmp_path, sets):
    copy = _copy(sets[0], tmp_path / "copy")
    flip_inside_first_image(copy / "train-000000.tar")
    cfg = DataConfig(shards=str(copy / SHARDS), batch_size=2, num_workers=0, samples_per_epoch=8)
    make_train_loader(cfg)                             # same size: the per-sample crc32 catches it later
    with pytest.raises(ShardFactsError, match=r"train-000000\.tar: sha256 differs"):
        make_train_loader(dataclasses.replace(cfg, verify="sha256"))


def test_a_shard_not_in_the_manifest_is_refused(tmp_path, sets):
    copy = _copy(sets[0], tmp_path / "copy")
    shutil.copyfile(copy / "train-000000.tar", copy / "train-000009.tar")
    cfg = DataConfig(shards=[str(copy / SHARDS), str(copy / "train-000009.tar")],
                     batch_size=2, num_workers=0, samples_per_epoch=8)
    with pytest.raises(ShardFactsError, match=r"train-000009\.tar: not listed"):
        make_train_loader(cfg)
