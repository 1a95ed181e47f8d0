"""Issue 19 item 16 + "also consider": one resolver of published models (publish.resolve_version)
for load_pretrained and train.init_from; a ``latest`` leading outside its name dir is not followed."""
from __future__ import annotations

import os
import shutil

import pytest

from anatplane_dist import publish as pub
from anatplane_dist.train.init_weights import InitFromError, verified_parts_dir
from tests.publish.test_publish import make_run


@pytest.fixture()
def published(tmp_path):
    run = tmp_path / "runs" / "tiny"
    make_run(run, steps=(4,))
    version = pub.publish(run, tmp_path / "models", name="heart")
    return tmp_path / "models" / "heart", version


def test_init_from_accepts_a_published_name_dir_like_load_pretrained(published):
    name_dir, version = published
    assert verified_parts_dir(name_dir) == version.resolve()
    assert pub.resolve_version(name_dir) == version
    pub.load_pretrained(name_dir, part="encoder")          # the same path, the same answer


def test_a_latest_link_out_of_the_models_directory_is_not_followed(published, tmp_path):
    name_dir, version = published
    elsewhere = tmp_path / "elsewhere" / version.name
    shutil.copytree(version, elsewhere)                    # verifies fine: the checksums travel with it
    (name_dir / "latest").unlink()
    os.symlink(str(elsewhere), name_dir / "latest")
    with pytest.raises(pub.PublishError, match="not followed"):
        pub.load_pretrained(name_dir, part="encoder")
    with pytest.raises(InitFromError, match="not followed"):
        verified_parts_dir(name_dir)
    (name_dir / "latest").unlink()
    os.symlink(f"../../elsewhere/{version.name}", name_dir / "latest")
    with pytest.raises(pub.PublishError, match="not followed"):
        pub.resolve_version(name_dir)


def test_publish_refuses_a_hand_edited_shard_manifest(tmp_path):
    """Issue 19 item 3: the card said data_grid 48 for a set sharded at 64 after a hand edit."""
    import json

    from anatplane_dist.shards.manifest import ShardFactsError

    run = tmp_path / "runs" / "tiny"
    make_run(run, steps=(4,))
    manifest = tmp_path / "runs" / "shards-tiny" / "manifest.json"
    m = json.loads(manifest.read_text())
    manifest.write_text(json.dumps(dict(m, grid=48)))
    with pytest.raises(ShardFactsError, match="changed after the sharder wrote it"):
        pub.publish(run, tmp_path / "models", name="heart")
    assert not (tmp_path / "models" / "heart").exists() or not pub.list_versions(tmp_path / "models" / "heart")


def test_publishing_to_a_full_target_names_the_target(tmp_path, capsys):
    """Issue 19 item 9: the message named the source weights file, not the full target."""
    from anatplane_dist.cli import main as anatplane
    from tests.fulldisk import disk_blocks_kib, tmpfs

    run = tmp_path / "runs" / "tiny"
    make_run(run, steps=(4,))
    needs = disk_blocks_kib(pub.publish(run, tmp_path / "ref", name="heart"))
    capsys.readouterr()
    with tmpfs(tmp_path / "full", needs // 2) as full:
        rc = anatplane(["publish", str(run), "--to", str(full), "--name", "heart"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1, err
        assert f"no space left on device publishing to {full / 'heart'}/step00000004-" in err
        assert str(run) not in err
        assert not pub.list_versions(full / "heart") and not (full / "heart" / "latest").exists()
        assert not [p for p in (full / "heart").iterdir() if p.name.startswith(".staging")]
