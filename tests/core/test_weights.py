"""weights.py: safetensors part files with metadata, legacy .pt still read, generic parts."""
from __future__ import annotations

import json
import struct

import pytest
import torch

from anatplane_dist.core import weights


def _state() -> dict[str, torch.Tensor]:
    return {"encoder.conv.weight": torch.randn(2, 1, 3, 3, dtype=torch.bfloat16),
            "encoder.bn.num_batches_tracked": torch.tensor(3),
            "decoder.out.weight": torch.randn(2, 2), "location_head.fc.bias": torch.zeros(1),
            "projection.fc.weight": torch.randn(3, 2)}


def test_export_writes_safetensors_with_metadata_and_no_pickle(tmp_path):
    sd = _state()
    files = weights.export_fp32(tmp_path, sd, model_config_yaml="name: unet\n", num_channels=2, step=7)
    assert list(files) == ["encoder", "decoder", "location_head", "projection"]   # core parts first
    assert all(f.suffix == ".safetensors" and f.parent == tmp_path / "fp32" for f in files.values())
    raw = files["encoder"].read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])                        # a plain safetensors header
    assert header["__metadata__"] == {"format": "anatplane-weights/1", "part": "encoder",
                                      "model_config": "name: unet\n", "num_channels": "2", "step": "7"}
    assert header["conv.weight"]["dtype"] == "F32" and header["bn.num_batches_tracked"]["dtype"] == "I64"
    enc = weights.load_weights(files["encoder"])
    assert enc["format"] == weights.WEIGHTS_FORMAT and enc["part"] == "encoder" and enc["step"] == 7
    assert enc["num_channels"] == 2 and enc["model_config"] == "name: unet\n"
    assert torch.equal(enc["state_dict"]["conv.weight"], sd["encoder.conv.weight"].float())
    assert enc["state_dict"]["bn.num_batches_tracked"].dtype == torch.int64
    assert weights.load_part(tmp_path / "fp32", "decoder")["state_dict"].keys() == {"out.weight"}
    assert not list((tmp_path / "fp32").glob(".*"))          # no temporary left behind


def test_export_skips_absent_heads_and_refuses_stray_tensors(tmp_path):
    files = weights.export_fp32(tmp_path, {"encoder.w": torch.ones(1)}, model_config_yaml="", num_channels=1, step=0)
    assert set(files) == {"encoder"}
    with pytest.raises(ValueError, match="outside any submodule"):
        weights.export_fp32(tmp_path, {"encoder.w": torch.ones(1), "extra": torch.ones(1)},
                            model_config_yaml="", num_channels=1, step=0)


def test_legacy_pt_is_read_with_weights_only_and_has_the_same_digest(tmp_path):
    sd = {"w": torch.randn(3, 2), "n": torch.tensor(4)}
    legacy = {"format": weights.WEIGHTS_FORMAT, "part": "encoder", "state_dict": sd,
              "model_config": "name: unet\n", "num_channels": 2, "step": 5}
    torch.save(legacy, tmp_path / "encoder.pt")
    old = weights.load_part(tmp_path, "encoder")
    assert torch.equal(old["state_dict"]["w"], sd["w"]) and old["step"] == 5
    weights.save_part(tmp_path / "encoder.safetensors", sd, part="encoder", model_config_yaml="name: unet\n",
                      num_channels=2, step=5)
    assert weights.part_file(tmp_path, "encoder").suffix == ".safetensors"     # preferred when both exist
    new = weights.load_part(tmp_path, "encoder")
    assert weights.content_digest(new) == weights.content_digest(old)
    new["state_dict"]["w"][0, 0] += 1
    assert weights.content_digest(new) != weights.content_digest(old)
    # a pickle that would run code is refused by weights_only, as a format error naming the file
    torch.save({"format": weights.WEIGHTS_FORMAT, "state_dict": {}, "obj": _Evil()}, tmp_path / "decoder.pt")
    with pytest.raises(weights.WeightsFormatError, match="decoder.pt: unreadable"):
        weights.load_part(tmp_path, "decoder")


class _Evil:
    def __reduce__(self):
        return (print, ("pickle ran",))


def test_foreign_and_broken_files_are_format_errors(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.ones(1)}, str(tmp_path / "encoder.safetensors"), metadata={"format": "other"})
    with pytest.raises(weights.WeightsFormatError, match="not an anatplane-weights/1 file"):
        weights.load_part(tmp_path, "encoder")
    (tmp_path / "encoder.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(weights.WeightsFormatError, match="unreadable"):
        weights.load_part(tmp_path, "encoder")
    with pytest.raises(weights.WeightsFormatError, match="holds the 'decoder' part"):
        weights.save_part(tmp_path / "x.safetensors", {"w": torch.ones(1)}, part="decoder",
                          model_config_yaml="", num_channels=1, step=0)
        (tmp_path / "x.safetensors").rename(tmp_path / "encoder.safetensors")
        weights.load_part(tmp_path, "encoder")
    with pytest.raises(FileNotFoundError, match="no location_head.safetensors"):
        weights.load_part(tmp_path, "location_head")
