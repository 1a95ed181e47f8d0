"""``anatplane export --format nnunet MODEL OUT.pth``: pretrained weights nnU-Net fine-tunes from.

``nnUNetv2_train DATASET 2d FOLD -pretrained_weights OUT.pth`` reads ``network_weights`` from a
torch checkpoint and requires every tensor of its network but the ``seg_layers``, under its own
names and shapes.  So the file holds the encoder and decoder in nnU-Net's names (no ``module.``
or ``_orig_mod.`` prefix, no heads of ours), and before writing it the export builds nnU-Net's
network from the same plans and checks every key and shape itself: a mismatch is our error
message, not an assertion inside nnU-Net's trainer.

Written with ``torch.save`` because nnU-Net's loader expects that container (like the fine-tuned
cell models of ``anatplane_dist.finetune.predict``, read back with ``weights_only=True``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from anatplane_dist.core import weights
from anatplane_dist.core.errors import AnatplaneError
from anatplane_dist.export.source import read_model
from anatplane_dist.model import ModelConfig
from anatplane_dist.model.nnunet import build_nnunet_network, nnunet_state_dict

__all__ = ["NnUNetExportError", "to_nnunet", "export_nnunet"]

_SKIP = ".seg_layers."   # what nnU-Net's load_pretrained_weights never transfers


class NnUNetExportError(AnatplaneError):
    """The model cannot become nnU-Net pretrained weights (the message says why)."""


def to_nnunet(parts: dict[str, dict[str, Any]]) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    """nnU-Net's ``network_weights`` from our encoder + decoder parts, checked against the
    network nnU-Net builds from the same plans.

    Raises:
        NnUNetExportError: another backbone, no decoder, or keys/shapes nnU-Net would refuse.
    """
    cfg = ModelConfig.from_yaml(str(parts["encoder"]["model_config"]))
    if cfg.name != "nnunet":
        raise NnUNetExportError(f"the model was pretrained with the {cfg.name!r} backbone; --format nnunet "
                                f"needs one pretrained with model.name=nnunet and model.plans=<nnUNetPlans.json>")
    if "decoder" not in parts:
        raise NnUNetExportError("the model has no decoder (pretrained without the orientation head); "
                                "nnU-Net's -pretrained_weights needs encoder and decoder")
    sd = nnunet_state_dict(parts["encoder"]["state_dict"], parts["decoder"]["state_dict"])
    ref = build_nnunet_network(cfg.nnunet, cfg.in_channels, 2).state_dict()
    wanted = {k: v.shape for k, v in ref.items() if _SKIP not in k}
    missing = sorted(set(wanted) - set(sd))
    extra = sorted(set(sd) - set(wanted))
    wrong = sorted(k for k in set(wanted) & set(sd) if tuple(sd[k].shape) != tuple(wanted[k]))
    if missing or extra or wrong:
        raise NnUNetExportError(f"weights do not fit nnU-Net's {cfg.nnunet['network_class_name']} from the plans: "
                                f"missing {missing[:3]}, unexpected {extra[:3]}, other shape {wrong[:3]}")
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}, cfg


def export_nnunet(model: str | Path, out: str | Path) -> Path:
    """Write ``out`` (a ``.pth``) for ``nnUNetv2_train ... -pretrained_weights out``."""
    mw = read_model(model)
    sd, cfg = to_nnunet(mw.parts)
    out = Path(out)
    payload = {"network_weights": sd,
               "anatplane": {"format": "anatplane-nnunet-pretrained/1", "source": mw.source,
                             "plans_name": cfg.nnunet.get("plans_name"), "dataset_name": cfg.nnunet.get("dataset_name"),
                             "configuration": cfg.nnunet.get("configuration"),
                             "step": int(mw.parts["encoder"].get("step", -1))}}
    return weights.atomic_torch_save(payload, out)
