"""The network a target task starts from: random or pretrained, built from one architecture.

Random and pretrained initialisation must differ in their weights only, so both are built
from the architecture recorded in the published weights (``model_config`` + ``num_channels``)
with :func:`anatplane_dist.model.build_model`; "pretrained" then loads the published parts
(:func:`anatplane_dist.publish.load_pretrained`) into it.  Which parts were transferred is
recorded, because the paper's fine-tuning transfers encoder *and* decoder, which favours it
over encoder-only baselines.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from ..model import ModelConfig, build_model

__all__ = ["INITS", "TRANSFERS", "PretrainedInfo", "Backbone", "read_pretrained_info", "make_backbone",
           "grid_from_pretrained"]

INITS = ("random", "pretrained")
TRANSFERS = ("encoder", "encoder+decoder")
_WEIGHTS_FORMAT = "anatplane-weights/1"


class PretrainedError(ValueError):
    """Published weights that cannot be used for fine-tuning (the message says why)."""


@dataclass
class PretrainedInfo:
    """What a published weights set says about itself."""

    path: Path                     # the encoder weights file
    model_config: ModelConfig
    num_channels: int
    step: int
    parts: list[str]               # parts present next to the encoder file
    extra: dict[str, Any] = field(default_factory=dict)   # e.g. the data grid, when published


@dataclass
class Backbone:
    encoder: nn.Module
    decoder: nn.Module | None
    model_config: ModelConfig
    num_channels: int
    init: str
    transferred: list[str]

    def describe(self) -> dict[str, Any]:
        return {"init": self.init, "transferred": list(self.transferred),
                "model_config": dataclasses.asdict(self.model_config), "num_channels": self.num_channels}


def _encoder_file(path: Path) -> Path:
    """The encoder file of a published weights set: the file itself, or ``encoder.pt`` in the
    directory (or its ``fp32/``)."""
    if path.is_file():
        return path
    for cand in (path / "encoder.pt", path / "fp32" / "encoder.pt"):
        if cand.is_file():
            return cand
    raise PretrainedError(f"{path}: no encoder.pt (expected a published weights directory or file)")


def read_pretrained_info(path: str | Path) -> PretrainedInfo:
    """Header of published weights (architecture, K, step) without building anything.

    Raises:
        PretrainedError: missing, or not an ``anatplane-weights/1`` encoder file.
    """
    p = Path(path)
    if not p.exists():
        raise PretrainedError(f"pretrained weights {p} do not exist")
    f = _encoder_file(p)
    obj = torch.load(f, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or obj.get("format") != _WEIGHTS_FORMAT:
        raise PretrainedError(f"{f}: not an {_WEIGHTS_FORMAT} weights file")
    if obj.get("part") != "encoder":
        raise PretrainedError(f"{f}: holds the {obj.get('part')!r} part; fine-tuning needs the encoder")
    try:
        cfg = ModelConfig.from_yaml(obj["model_config"])
        k = int(obj["num_channels"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PretrainedError(f"{f}: unreadable model_config/num_channels ({exc})") from exc
    parts = [q.stem for q in sorted(f.parent.glob("*.pt"))]
    extra: dict[str, Any] = {}
    for meta in (f.parent / "manifest.json", f.parent / "meta.json"):
        if meta.is_file():
            try:
                extra = yaml.safe_load(meta.read_text()) or {}
            except yaml.YAMLError:
                extra = {}
            break
    return PretrainedInfo(f, cfg, k, int(obj.get("step", -1)), parts, extra)


def grid_from_pretrained(info: PretrainedInfo) -> tuple[int, float] | None:
    """The model grid (size, spacing mm) the weights were pretrained on, when published."""
    for key in ("grid", "data_grid"):
        g = info.extra.get(key)
        if isinstance(g, dict) and "size" in g and "spacing" in g:
            return int(g["size"]), float(g["spacing"])
    return None


def make_backbone(init: str, *, pretrained: str | Path | None = None, transfer: str = "encoder+decoder",
                  model_config: ModelConfig | None = None, num_channels: int | None = None,
                  seed: int = 0) -> Backbone:
    """A fresh encoder + decoder (architecture from ``pretrained`` when given, else from
    ``model_config``/``num_channels``), with the pretrained parts loaded when ``init`` is
    ``"pretrained"``.

    Raises:
        ValueError: unknown init/transfer, or no architecture to build.
        PretrainedError: unusable weights, or ``encoder+decoder`` transfer from weights
            published without a decoder (location-only pretraining).
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if transfer not in TRANSFERS:
        raise ValueError(f"transfer must be one of {TRANSFERS}, got {transfer!r}")
    info = read_pretrained_info(pretrained) if pretrained is not None else None
    if info is not None:
        model_config, num_channels = info.model_config, info.num_channels
    if model_config is None or num_channels is None:
        if init == "pretrained":
            raise ValueError("init 'pretrained' needs --pretrained weights")
        raise ValueError("random init needs an architecture: pretrained weights or a model config")
    # the target network: always with a decoder, never with the location head
    cfg = dataclasses.replace(model_config, orientation_head=True, location_head=False)
    torch.manual_seed(seed)
    net = build_model(cfg, num_channels)
    transferred: list[str] = []
    if init == "pretrained":
        from ..publish import load_pretrained  # the one loader of published weights
        assert info is not None
        enc = load_pretrained(info.path.parent, part="encoder")
        net.encoder.load_state_dict(enc.state_dict(), strict=True)
        transferred.append("encoder")
        if transfer == "encoder+decoder":
            if "decoder" not in info.parts:
                raise PretrainedError(f"{info.path.parent}: no decoder published (orientation head off "
                                      f"in pretraining); use --transfer encoder")
            dec = load_pretrained(info.path.parent, part="decoder")
            state = {k: v for k, v in dec.state_dict().items() if not k.startswith("head.")}
            missing, unexpected = net.decoder.load_state_dict(state, strict=False)
            if unexpected or any(not k.startswith("head.") for k in missing):
                raise PretrainedError(f"decoder weights do not fit the architecture: missing {missing}, "
                                      f"unexpected {unexpected}")
            transferred.append("decoder")
    return Backbone(net.encoder, net.decoder, cfg, num_channels, init, transferred)
