"""Our fine-tuning route on an nnU-Net backbone: published nnunet weights -> SegNet."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("nnunetv2")

from anatplane_dist.finetune.backbone import make_backbone  # noqa: E402
from anatplane_dist.finetune.segmentation import SegNet  # noqa: E402
from anatplane_dist.model import ModelConfig  # noqa: E402
from anatplane_dist.publish import load_pretrained  # noqa: E402
from tests.finetune.conftest import publish_weights  # noqa: E402


def _write_plans(folder: Path) -> Path:
    """tests/model/nnunet_plans.py's small plans file (tests/model is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("nnunet_plans", Path(__file__).parents[1] / "model" / "nnunet_plans.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.write_plans(folder)


def test_nnunet_weights_fine_tune_with_our_segnet(tmp_path: Path) -> None:
    cfg = ModelConfig(name="nnunet", plans=str(_write_plans(tmp_path / "pre")), loc_hidden=[8])
    name_dir = publish_weights(tmp_path, cfg, grid=32, spacing=1.5)
    bb = make_backbone("pretrained", pretrained=name_dir, transfer="encoder+decoder", seed=0)
    assert bb.transferred == ["encoder", "decoder"] and bb.model_config.name == "nnunet"
    published = load_pretrained(name_dir, part="decoder").state_dict()
    ours = bb.decoder.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in published.items() if not k.startswith("head."))
    net = SegNet(bb.encoder, bb.decoder, num_classes=4)
    assert net(torch.randn(2, 1, 32, 32)).shape == (2, 4, 32, 32)
