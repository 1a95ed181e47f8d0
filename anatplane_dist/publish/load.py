"""Loading published weights back: a verified version -> a ``torch.nn.Module`` ready to fine-tune."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from anatplane_dist.core import weights
from anatplane_dist.publish.card import CARD
from anatplane_dist.publish.versions import resolve_version, verify

__all__ = ["LOADABLE_PARTS", "load_pretrained"]

#: parts every published version may hold, plus "full"; any other part a version lists loads too
LOADABLE_PARTS = (*weights.CORE_PARTS, "full")


def _network_of(version: Path, model_cfg: Any, num_channels: int) -> Any:
    """The network the published weights were trained in: built by their pretraining objective
    (a genesis decoder ends in image channels, SimCLR adds a projection head), read from the
    published ``config.yaml``; the multitask network when there is none (older versions)."""
    from anatplane_dist.model import build_model

    path = version / "config.yaml"
    if path.is_file():
        import yaml

        from anatplane_dist.core.mapping import from_dict
        from anatplane_dist.objectives import get_objective
        from anatplane_dist.objectives.config import LossConfig, ObjectiveConfig
        config = yaml.safe_load(path.read_text()) or {}
        objective = from_dict(ObjectiveConfig, config.get("objective"), "objective")
        loss = from_dict(LossConfig, config.get("loss"), "loss")
        # only the network is built: the loss's ridge width (which needs a spacing) plays no part
        return get_objective(objective, loss, grid_spacing_mm=loss.spacing_mm or 1.0).build_model(
            model_cfg, num_channels)
    return build_model(model_cfg, num_channels)


def load_pretrained(path_or_dir: str | os.PathLike, part: str = "encoder"):
    """Verified published weights -> ``torch.nn.Module`` ready for fine-tuning.

    ``part`` is ``encoder``, ``decoder``, ``location_head`` or ``full`` (the whole
    multitask network, with every published part loaded).  The module is rebuilt with
    :func:`anatplane_dist.model.build_model` from the stored ``ModelConfig``, in train mode.

    Raises:
        VerificationError: partial version, missing/extra files or a checksum mismatch.
        ValueError: unknown part, or a part this version does not contain.
    """
    from anatplane_dist.model import ModelConfig, load_parts

    version = resolve_version(path_or_dir)
    verify(version)
    card = json.loads((version / CARD).read_text())
    available = list(card.get("parts", {}))
    if part != "full" and part not in (*LOADABLE_PARTS, *available):
        raise ValueError(f"part must be one of {(*available, 'full')}, got {part!r}")
    wanted = available if part == "full" else [part]
    missing = [p for p in wanted if p not in available]
    if missing:
        raise ValueError(f"{version} has no {missing[0]} (published parts: {available})")
    loaded = {p: weights.load_part(version, p) for p in wanted}
    first = next(iter(loaded.values()))
    model = _network_of(version, ModelConfig.from_yaml(first["model_config"]), int(first["num_channels"]))
    load_parts(model, {p: obj["state_dict"] for p, obj in loaded.items()})
    model.train()
    return model if part == "full" else getattr(model, part)
