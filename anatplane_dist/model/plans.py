"""nnU-Net plans files read as plain data: which 2d network a ``model.name: nnunet`` run builds.

Torch-free on purpose: :class:`anatplane_dist.model.config.ModelConfig` reads the plans while a
config is validated (also on a login node by ``submit --dry-run``), long before any network is
built by :mod:`anatplane_dist.model.nnunet`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from anatplane_dist.core.errors import AnatplaneError

__all__ = ["CONFIGURATION", "PlansError", "read_plans"]

#: the only nnU-Net configuration we pretrain: our samples are 2D planes
CONFIGURATION = "2d"


class PlansError(AnatplaneError, ValueError):
    """A plans file (or data, or a model) that does not fit nnU-Net's 2d network."""


def _channel_count(plans_path: Path, plans: dict[str, Any]) -> int | None:
    """Input channels of the dataset the plans were made for: ``dataset.json`` next to the
    plans (nnU-Net's preprocessed folder), else the per-channel intensity statistics."""
    ds = plans_path.parent / "dataset.json"
    if ds.is_file():
        try:
            meta = json.loads(ds.read_text())
        except ValueError:
            meta = {}
        names = meta.get("channel_names") or meta.get("modality") if isinstance(meta, dict) else None
        if isinstance(names, dict) and names:
            return len(names)
    stats = plans.get("foreground_intensity_properties_per_channel")
    return len(stats) if isinstance(stats, dict) and stats else None


def read_plans(path: str | Path, in_channels: int) -> dict[str, Any]:
    """The 2d network of an ``nnUNetPlans.json`` as plain data (what ``ModelConfig.nnunet`` holds).

    Raises:
        PlansError: unreadable file, no ``2d`` configuration (a 3d-only plans file), a 2d
            configuration that is not 2D, or a channel count other than ``in_channels``.
    """
    p = Path(path)
    try:
        plans = json.loads(p.read_text())
        configs = plans["configurations"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PlansError(f"model.plans={p}: not a readable nnU-Net plans file ({type(exc).__name__}: {exc})") from exc
    if CONFIGURATION not in configs:
        raise PlansError(f"model.plans={p}: no '{CONFIGURATION}' configuration (it has {sorted(configs)}); "
                         f"pretraining uses nnU-Net's 2d network - plan with 'nnUNetv2_plan_and_preprocess -c 2d'")
    cfg = dict(configs[CONFIGURATION])
    parent = cfg.get("inherits_from")
    if parent and "architecture" not in cfg and parent in configs:
        cfg = {**configs[parent], **cfg}
    arch = cfg.get("architecture") or {}
    kwargs = dict(arch.get("arch_kwargs") or {})
    if not arch.get("network_class_name") or not kwargs:
        raise PlansError(f"model.plans={p}: the '{CONFIGURATION}' configuration has no architecture "
                         f"(nnU-Net >= 2.4 plans are needed)")
    if not str(kwargs.get("conv_op", "")).endswith("Conv2d"):
        raise PlansError(f"model.plans={p}: the '{CONFIGURATION}' configuration builds {kwargs.get('conv_op')}, "
                         f"not a 2D network")
    channels = _channel_count(p, plans)
    if channels is not None and channels != in_channels:
        raise PlansError(f"model.plans={p}: the dataset has {channels} input channel(s), the model "
                         f"model.in_channels={in_channels}; our planes are single-channel images")
    return {
        "plans_file": str(path), "plans_name": plans.get("plans_name"), "dataset_name": plans.get("dataset_name"),
        "configuration": CONFIGURATION, "network_class_name": arch["network_class_name"],
        "arch_kwargs": kwargs, "arch_kwargs_requires_import": list(arch.get("_kw_requires_import") or []),
        "patch_size": [int(s) for s in cfg["patch_size"]], "spacing": [float(s) for s in cfg["spacing"]],
        "input_channels": channels if channels is not None else in_channels,
    }
