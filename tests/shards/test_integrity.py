"""manifest.json states K, grid and spacing; ``read_shard_facts`` reads them without a tar."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from anatplane_dist.errors import AnatplaneError
from anatplane_dist.shards.manifest import ShardFacts, read_shard_facts
from anatplane_dist.shards.pipeline import shard_dataset
from anatplane_dist.shards.profiles import BUILTIN_PROFILES, ShardConfig

CFG = ShardConfig(profile=BUILTIN_PROFILES["heart"], grid=24, spacing=4.0, shard_size=50, val_fraction=0.0)


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
    (tmp_path / "manifest.json").write_text(json.dumps(old))
    with pytest.raises(AnatplaneError, match="does not state num_channels"):
        read_shard_facts(tmp_path)
    with pytest.raises(AnatplaneError, match="not a local file"):
        read_shard_facts(["pipe:curl -s http://x/train-000000.tar"])


def test_shard_sets_that_disagree_are_refused(tmp_path, shard_dir):
    other = tmp_path / "other"
    other.mkdir()
    m = json.loads((shard_dir / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps(dict(m, grid=64)))
    with pytest.raises(AnatplaneError, match="disagree"):
        read_shard_facts([str(shard_dir / "train-000000.tar"), str(other / "train-000000.tar")])
