"""Random vs pretrained networks from published weights: same architecture, only weights differ."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from anatplane_dist.core import weights
from anatplane_dist.finetune.backbone import (
    PretrainedError,
    grid_from_pretrained,
    make_backbone,
    read_pretrained_info,
)
from anatplane_dist.model import ModelConfig
from anatplane_dist.publish import load_pretrained
from tests.finetune.conftest import publish_weights

TINY = ModelConfig(name="unet", width=8, depth=3, loc_hidden=[16])


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_info_and_grid_from_a_published_version(tmp_path: Path) -> None:
    name_dir = publish_weights(tmp_path, TINY, grid=64, spacing=3.0)
    info = read_pretrained_info(name_dir)                       # the name dir: follows latest
    assert info.model_config == TINY and info.num_channels == 2 and info.step == 10
    assert set(info.parts) == {"encoder", "decoder", "location_head"}
    assert grid_from_pretrained(info) == (64, 3.0)
    assert read_pretrained_info(info.path).path == info.path    # a file in the version works too


def test_grid_from_a_shard_directory_config(tmp_path: Path) -> None:
    """``data.shards`` naming the shard directory itself (as the demo's run config does)."""
    name_dir = publish_weights(tmp_path, TINY, grid=32, spacing=2.0)
    info = read_pretrained_info(name_dir)
    info.extra["data_manifests"] = []
    info.extra["config"]["data"]["shards"] = str(tmp_path / "shards-tiny")
    assert grid_from_pretrained(info) == (32, 2.0)
    info.extra["config"]["data"]["shards"] = str(tmp_path / "elsewhere")
    assert grid_from_pretrained(info) is None


def test_pretrained_loads_exactly_the_published_parts(tmp_path: Path) -> None:
    name_dir = publish_weights(tmp_path, TINY)
    enc_pub = load_pretrained(name_dir, part="encoder").state_dict()
    dec_pub = load_pretrained(name_dir, part="decoder").state_dict()
    both = make_backbone("pretrained", pretrained=name_dir, transfer="encoder+decoder", seed=0)
    assert both.transferred == ["encoder", "decoder"]
    assert _same(both.encoder.state_dict(), enc_pub)
    dec = both.decoder.state_dict()
    assert all(torch.equal(dec[k], v) for k, v in dec_pub.items() if not k.startswith("head."))

    enc_only = make_backbone("pretrained", pretrained=name_dir, transfer="encoder", seed=0)
    rand = make_backbone("random", pretrained=name_dir, seed=0)
    assert enc_only.transferred == ["encoder"] and rand.transferred == []
    assert _same(enc_only.encoder.state_dict(), enc_pub)
    # encoder-only transfer leaves the decoder exactly as random init of the same seed
    assert _same(enc_only.decoder.state_dict(), rand.decoder.state_dict())
    assert not _same(rand.encoder.state_dict(), enc_pub)
    assert _same(rand.encoder.state_dict(), make_backbone("random", pretrained=name_dir, seed=0).encoder.state_dict())
    assert not _same(rand.encoder.state_dict(), make_backbone("random", pretrained=name_dir, seed=1).encoder.state_dict())


def test_unusable_weights_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(PretrainedError, match="do not exist"):
        read_pretrained_info(tmp_path / "nothing")
    with pytest.raises(ValueError, match="needs --pretrained"):
        make_backbone("pretrained", model_config=TINY, num_channels=2)
    with pytest.raises(ValueError, match="init must be"):
        make_backbone("imagenet", model_config=TINY, num_channels=2)
    # location-only pretraining has no decoder to transfer
    loc_only = ModelConfig(name="unet", width=8, depth=3, loc_hidden=[16], orientation_head=False)
    name_dir = publish_weights(tmp_path / "loc", loc_only, name="loc")
    with pytest.raises(PretrainedError, match="no decoder published"):
        make_backbone("pretrained", pretrained=name_dir, transfer="encoder+decoder")
    assert make_backbone("pretrained", pretrained=name_dir, transfer="encoder").transferred == ["encoder"]
    # a tampered version is refused by the verified loader
    version = read_pretrained_info(name_dir).path.parent
    enc = version / "encoder.safetensors"
    obj = weights.load_weights(enc)
    next(iter(obj["state_dict"].values())).add_(1.0)
    enc.chmod(0o644)
    enc.unlink()
    weights.save_part(enc, obj["state_dict"], part="encoder", model_config_yaml=obj["model_config"],
                      num_channels=obj["num_channels"], step=obj["step"])
    with pytest.raises(PretrainedError, match="checksum"):
        make_backbone("pretrained", pretrained=name_dir, transfer="encoder")
    # a file that is not a weights file
    bad = tmp_path / "bad" / "v"
    bad.mkdir(parents=True)
    (bad / "encoder.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(PretrainedError, match="unreadable"):
        read_pretrained_info(bad)
