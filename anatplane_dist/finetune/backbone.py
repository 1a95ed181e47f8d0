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
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anatplane_dist.core import weights
from anatplane_dist.core.errors import AnatplaneError
from anatplane_dist.model import ModelConfig, build_model

__all__ = ["INITS", "TRANSFERS", "PretrainedError", "PretrainedInfo", "Backbone", "BackboneFactory", "read_pretrained_info", "make_backbone",
           "grid_from_pretrained", "verify_pretrained"]

INITS = ("random", "pretrained")
TRANSFERS = ("encoder", "encoder+decoder")


class PretrainedError(AnatplaneError, ValueError):
    """Published weights that cannot be used for fine-tuning (the message says why)."""


@dataclass
class PretrainedInfo:
    """What a published weights set says about itself."""

    path: Path                     # the encoder weights file in the published version
    model_config: ModelConfig
    num_channels: int
    step: int
    parts: list[str]               # parts present next to the encoder file
    extra: dict[str, Any] = field(default_factory=dict)   # the model card, when published


@dataclass
class Backbone:
    """A target network's starting point and how it was made (recorded with each run)."""

    encoder: nn.Module
    decoder: nn.Module | None
    model_config: ModelConfig
    num_channels: int
    init: str
    transferred: list[str]


def read_pretrained_info(path: str | Path) -> PretrainedInfo:
    """Header of published weights (architecture, K, step, parts, model card) without
    building anything.  ``path`` is what :func:`anatplane_dist.publish.load_pretrained`
    accepts: a version directory, a name directory (its ``latest``), or a file in a version.

    Raises:
        PretrainedError: missing, or no ``anatplane-weights/1`` encoder (``encoder.safetensors``,
            or the legacy ``encoder.pt``) in the version.
    """
    from anatplane_dist.publish import CARD, resolve_version

    try:
        version = resolve_version(path)
    except FileNotFoundError as exc:
        raise PretrainedError(f"pretrained weights {path} do not exist") from exc
    f = weights.part_file(version, "encoder")
    if f is None:
        raise PretrainedError(f"{version}: no encoder{weights.SUFFIX} (expected a published version, see "
                              f"'anatplane publish')")
    try:
        obj = weights.load_weights(f)
    except (weights.WeightsFormatError, OSError) as exc:
        raise PretrainedError(str(exc)) from exc
    if obj.get("part") != "encoder":
        raise PretrainedError(f"{f}: holds the {obj.get('part')!r} part; fine-tuning needs the encoder")
    try:
        cfg = ModelConfig.from_yaml(obj["model_config"])
        k = int(obj["num_channels"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PretrainedError(f"{f}: unreadable model_config/num_channels ({exc})") from exc
    card: dict[str, Any] = {}
    if (version / CARD).is_file():
        try:
            card = json.loads((version / CARD).read_text())
        except ValueError:
            card = {}
    parts = list(card.get("parts", {})) or list(weights.find_parts(version))
    return PretrainedInfo(f, cfg, k, int(obj.get("step", -1)), parts, card)


def verify_pretrained(path: str | Path) -> PretrainedInfo:
    """Read the header *and* check every checksum of a published version, before any work uses
    it (a corrupted file must not be found after the random-init runs trained).

    Raises:
        PretrainedError: missing, unreadable, partial or tampered weights.
    """
    from anatplane_dist.publish import VerificationError
    from anatplane_dist.publish.versions import verify

    info = read_pretrained_info(path)
    try:
        verify(info.path.parent)
    except (VerificationError, OSError) as exc:
        raise PretrainedError(f"pretrained weights {path} fail verification: {exc}") from exc
    return info


def _manifest_paths(card: dict[str, Any]) -> list[Path]:
    """Shard-set manifests a model card points at: the ones it lists, then those next to the
    ``data.shards`` of its resolved config (a shard directory, or a brace pattern inside one)."""
    paths = [Path(str(m.get("path", ""))) for m in card.get("data_manifests", []) or []
             if isinstance(m, dict) and m.get("path")]   # cards published before manifests were copied
    data = (card.get("config") or {}).get("data") or {}
    for key in ("shards", "train_shards", "val_shards"):
        value = data.get(key)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict):
                item = item.get("path")
            if not isinstance(item, str) or not item:
                continue
            for pattern in item.split("::"):
                base = Path(pattern.split("{")[0])
                paths += [base / "manifest.json", base.parent / "manifest.json",
                          base.parent.parent / "manifest.json"]
    return paths


def grid_from_pretrained(info: PretrainedInfo) -> tuple[int, float] | None:
    """The model grid (size px, spacing mm) the weights were pretrained on, or None.

    Read from the model card's ``data_grid`` when present, else from the ``config`` (grid,
    spacing) of the shard set's ``manifest.json`` (when it is still reachable).
    """
    card = info.extra
    g = card.get("data_grid")
    if isinstance(g, dict) and "size" in g and "spacing" in g:
        return int(g["size"]), float(g["spacing"])
    copied = [info.path.parent / str(m["file"]) for m in card.get("data_manifests", []) or []
              if isinstance(m, dict) and m.get("file")]   # the manifest published with the weights
    for path in [*copied, *_manifest_paths(card)]:
        if not path.is_file():
            continue
        try:
            cfg = json.loads(path.read_text()).get("config", {})
            return int(cfg["grid"]), float(cfg["spacing"])
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return None


def _published_state(info: PretrainedInfo, part: str) -> dict[str, torch.Tensor]:
    """State dict of one published part via the one verified loader (checksums included)."""
    from anatplane_dist.publish import VerificationError, load_pretrained

    try:
        return load_pretrained(info.path.parent, part=part).state_dict()
    except (VerificationError, ValueError, OSError) as exc:
        raise PretrainedError(f"{info.path.parent}: cannot load the {part}: {exc}") from exc


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
    if init == "pretrained" and pretrained is None:
        raise ValueError("init 'pretrained' needs --pretrained weights")
    info = read_pretrained_info(pretrained) if pretrained is not None else None
    if info is not None:
        model_config, num_channels = info.model_config, info.num_channels
    if model_config is None or num_channels is None:
        raise ValueError("random init needs an architecture: pretrained weights or a model config")
    # the target network: always with a decoder, never with the location head
    cfg = dataclasses.replace(model_config, orientation_head=True, location_head=False)
    torch.manual_seed(seed)
    net = build_model(cfg, num_channels)
    transferred: list[str] = []
    if info is not None and init == "pretrained":
        enc_state = _published_state(info, "encoder")
        net.encoder.load_state_dict(enc_state, strict=True)
        transferred.append("encoder")
        if transfer == "encoder+decoder":
            if "decoder" not in info.parts:
                raise PretrainedError(f"{info.path.parent}: no decoder published (orientation head off "
                                      f"in pretraining); use --transfer encoder")
            state = {k: v for k, v in _published_state(info, "decoder").items() if not k.startswith("head.")}
            missing, unexpected = net.decoder.load_state_dict(state, strict=False)
            if unexpected or any(not k.startswith("head.") for k in missing):
                raise PretrainedError(f"decoder weights do not fit the architecture: missing {missing}, "
                                      f"unexpected {unexpected}")
            transferred.append("decoder")
    return Backbone(net.encoder, net.decoder, cfg, num_channels, init, transferred)


@dataclass(frozen=True)
class BackboneFactory:
    """``factory(init, seed) -> Backbone`` with the rest fixed: what the protocol calls per run
    (a plain, picklable object, so runs can go to worker processes)."""

    pretrained: str | None = None
    transfer: str = "encoder+decoder"
    model_config: ModelConfig | None = None
    num_channels: int | None = None

    def __call__(self, init: str, seed: int) -> Backbone:
        return make_backbone(init, pretrained=self.pretrained, transfer=self.transfer,
                             model_config=self.model_config, num_channels=self.num_channels, seed=seed)

