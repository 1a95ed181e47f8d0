"""Integrity: manifest facts (K, grid, spacing), `--verify`, and the loader checking every sample."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from anatplane_dist.core.errors import AnatplaneError
from anatplane_dist.shards.manifest import ShardFacts, read_shard_facts, seal_manifest
from anatplane_dist.shards.pipeline import shard_dataset
from anatplane_dist.shards.profiles import BUILTIN_PROFILES, ShardConfig

CFG = ShardConfig(profile=BUILTIN_PROFILES["heart"], grid=24, spacing=4.0, shard_size=10, val_fraction=0.0)


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory, dsbcc_tree) -> Path:
    out = tmp_path_factory.mktemp("facts") / "shards"
    run = shard_dataset(dsbcc_tree, out, CFG, progress=False)
    assert run.ok
    return out


def test_manifest_states_the_facts_explicitly(shard_dir):
    m = json.loads((shard_dir / "manifest.json").read_text())
    assert (m["num_channels"], m["grid"], m["spacing_mm"], m["channels"]) == (2, 24, 4.0, ["2ch", "4ch"])


def test_read_facts_from_folder_and_urls_agree(shard_dir):
    import hashlib
    facts = read_shard_facts(shard_dir)
    assert isinstance(facts, ShardFacts)
    assert (facts.num_channels, facts.grid, facts.spacing_mm, facts.channels) == (2, 24, 4.0, ("2ch", "4ch"))
    assert facts.manifest_sha256 == hashlib.sha256((shard_dir / "manifest.json").read_bytes()).hexdigest()
    urls = [str(p) for p in sorted(shard_dir.glob("*.tar"))]
    assert read_shard_facts(urls) == facts
    with pytest.raises(AttributeError):
        facts.grid = 3          # frozen


def test_missing_or_old_manifest_is_one_clear_error(tmp_path, shard_dir):
    with pytest.raises(AnatplaneError, match="manifest.json: not found"):
        read_shard_facts(tmp_path)
    old = json.loads((shard_dir / "manifest.json").read_text())
    for k in ("num_channels", "grid", "spacing_mm"):
        old.pop(k)
    (tmp_path / "manifest.json").write_text(json.dumps(seal_manifest(old)))
    with pytest.raises(AnatplaneError, match="does not state num_channels"):
        read_shard_facts(tmp_path)
    with pytest.raises(AnatplaneError, match="not a local file"):
        read_shard_facts(["pipe:curl -s http://x/train-000000.tar"])


def test_shard_sets_that_disagree_are_refused(tmp_path, shard_dir):
    other = tmp_path / "other"
    other.mkdir()
    m = json.loads((shard_dir / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps(seal_manifest(dict(m, grid=64))))
    with pytest.raises(AnatplaneError, match="disagree"):
        read_shard_facts([str(shard_dir / "train-000000.tar"), str(other / "train-000000.tar")])


def flip_inside_first_image(tar: Path) -> str:
    """Flip one byte inside the first image member's pixel data (same size); returns its key."""
    import tarfile
    with tarfile.open(tar) as tf:
        m = next(m for m in tf.getmembers() if m.name.endswith(".image.npy"))
    data = bytearray(tar.read_bytes())
    data[m.offset_data + 200] ^= 0x10
    tar.write_bytes(bytes(data))
    return m.name.split(".", 1)[0]


def test_verify_passes_a_good_set_and_lists_a_flipped_byte(tmp_path, shard_dir, capsys):
    import shutil

    from anatplane_dist.cli import main
    from anatplane_dist.core.errors import ExitCode

    assert main(["shard", "--verify", str(shard_dir), "--no-progress"]) == ExitCode.OK
    assert "every shard matches" in capsys.readouterr().out
    copy = tmp_path / "copy"
    shutil.copytree(shard_dir, copy)
    key = flip_inside_first_image(copy / "train-000000.tar")
    (copy / "train-000001.tar").unlink()
    assert main(["shard", "--verify", str(copy), "--no-progress", "--workers", "2"]) == ExitCode.CHECK_FAILED
    err = capsys.readouterr().err
    assert "2 of 3 shard(s) bad" in err and "train-000001.tar: missing" in err
    assert "train-000000.tar: sha256" in err and f"{key}: checksum mismatch" in err
    assert main(["shard", "--verify", str(tmp_path), "--no-progress"]) == ExitCode.USAGE
    assert "manifest.json: not found" in capsys.readouterr().err


def test_loader_skips_and_counts_a_flipped_image_byte(tmp_path, shard_dir):
    import shutil

    from anatplane_dist.data.config import DataConfig
    from anatplane_dist.data.stream import make_val_loader

    copy = tmp_path / "copy"
    shutil.copytree(shard_dir, copy)
    key = flip_inside_first_image(copy / "train-000000.tar")
    total = json.loads((copy / "manifest.json").read_text())["counts"]["samples"]
    loader = make_val_loader(DataConfig(val_shards=str(copy / "train-{000000..000002}.tar"), batch_size=4,
                                        num_workers=0))
    keys = [k for batch in loader for k in batch["key"]]
    assert key not in keys and len(keys) == len(set(keys)) == total - 1
    stats = loader.last_report.stats
    assert stats.skipped == 1 and stats.corrupt == 1 and stats.samples == total - 1
    # the same shards unchanged: nothing skipped, every key
    loader = make_val_loader(DataConfig(val_shards=str(shard_dir / "train-{000000..000002}.tar"), batch_size=4,
                                        num_workers=0))
    assert key in {k for batch in loader for k in batch["key"]} and loader.last_report.stats.skipped == 0
