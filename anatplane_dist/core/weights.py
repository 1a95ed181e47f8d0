"""The one weights file format: a model part's fp32 tensors plus what is needed to rebuild it.

Every pretrained-weights file the package writes (a checkpoint's ``fp32/<part>.safetensors``, a
published ``<part>.safetensors``) is a safetensors file (the one exception is the nnU-Net export,
whose loader wants a torch checkpoint: :mod:`anatplane_dist.export.nnunet_weights`): tensors with part-local names
(``conv.weight``, not ``encoder.conv.weight``), and in the safetensors metadata (str -> str)
``format`` (:data:`WEIGHTS_FORMAT`), ``part``, ``model_config`` (the ``ModelConfig`` YAML),
``num_channels`` and ``step``.  safetensors has no pickle, so loading a file from someone else
cannot run code; and the file is readable by any safetensors tool (Hugging Face, nnU-Net
conversions) without this package.

Runs written before the switch hold ``<part>.pt`` (``torch.save`` of a dict with the same
keys); :func:`load_weights` still reads those, with ``torch.load(weights_only=True)``, so they
stay publishable and fine-tunable.  Writers never produce ``.pt`` any more.

A *part* is a top-level submodule of the network (``encoder``, ``decoder``,
``location_head``, and whatever heads a pretraining objective adds, e.g. ``projection``).
Parts are split generically from a whole-model state dict; :data:`CORE_PARTS` only fixes the
order in which they are listed.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from anatplane_dist.core.atomic import atomic_path
from anatplane_dist.core.errors import AnatplaneError

__all__ = ["WEIGHTS_FORMAT", "CORE_PARTS", "SUFFIX", "LEGACY_SUFFIX", "WeightsFormatError", "fp32_cpu",
           "order_parts", "split_parts", "save_part", "export_fp32", "load_weights", "part_file",
           "find_parts", "load_part", "content_digest", "atomic_torch_save"]

WEIGHTS_FORMAT = "anatplane-weights/1"
#: the parts every network has (when enabled), listed first in this order; others follow
CORE_PARTS = ("encoder", "decoder", "location_head")
SUFFIX = ".safetensors"
LEGACY_SUFFIX = ".pt"
_META_KEYS = ("format", "part", "model_config", "num_channels", "step")


class WeightsFormatError(AnatplaneError, ValueError):
    """A file that is not an ``anatplane-weights/1`` weights file (the message names it)."""


def fp32_cpu(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies, floating point as fp32 (bf16/fp16 training precision must not
    leak into what users load), integer buffers (``num_batches_tracked``) kept as they are."""
    return {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous().clone()
            for k, v in state_dict.items()}


def order_parts(names: Iterable[str]) -> list[str]:
    """``CORE_PARTS`` first (those present), then the others in their given order."""
    names = list(dict.fromkeys(names))
    return [p for p in CORE_PARTS if p in names] + [p for p in names if p not in CORE_PARTS]


def split_parts(state_dict: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Split a whole-model state dict by top-level submodule (``encoder.*`` -> ``encoder``).

    Raises:
        ValueError: tensors that belong to no submodule (a bare parameter on the network):
            they would silently be missing from every export.
    """
    out: dict[str, dict[str, torch.Tensor]] = {}
    leftovers = []
    for name, t in state_dict.items():
        head, _, rest = name.partition(".")
        if rest:
            out.setdefault(head, {})[rest] = t
        else:
            leftovers.append(name)
    if leftovers:
        raise ValueError(f"model tensors outside any submodule: {leftovers[:5]} - they would be "
                         f"missing from the export")
    return {p: out[p] for p in order_parts(out)}


def _metadata(part: str, model_config_yaml: str, num_channels: int, step: int) -> dict[str, str]:
    return {"format": WEIGHTS_FORMAT, "part": part, "model_config": model_config_yaml,
            "num_channels": str(int(num_channels)), "step": str(int(step))}


def save_part(path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], *, part: str,
              model_config_yaml: str, num_channels: int, step: int) -> Path:
    """Write one part as a safetensors file, atomically (a reader never sees a partial file)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != SUFFIX:
        raise ValueError(f"{path}: weights are written as {SUFFIX} files")
    with atomic_path(path) as tmp:
        save_file(fp32_cpu(state_dict), str(tmp), metadata=_metadata(part, model_config_yaml, num_channels, step))
    return path


def export_fp32(ckpt_dir: Path, state_dict: Mapping[str, torch.Tensor], *, model_config_yaml: str,
                num_channels: int, step: int) -> dict[str, Path]:
    """Write ``<ckpt_dir>/fp32/<part>.safetensors`` for each part of a whole-model state dict:
    world-size and wrapper independent, fp32, pickle-free.  A head switched off in the config
    has no tensors and gets no file."""
    written = {}
    for part, sd in split_parts(state_dict).items():
        if sd:
            written[part] = save_part(Path(ckpt_dir) / "fp32" / f"{part}{SUFFIX}", sd, part=part,
                                      model_config_yaml=model_config_yaml, num_channels=num_channels, step=step)
    return written


def _load_safetensors(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = dict(f.metadata() or {})
        sd = {k: f.get_tensor(k) for k in f.keys()}
    if meta.get("format") != WEIGHTS_FORMAT:
        raise WeightsFormatError(f"{path}: not an {WEIGHTS_FORMAT} file (safetensors metadata "
                                 f"format={meta.get('format')!r})")
    try:
        num_channels, step = int(meta["num_channels"]), int(meta.get("step", -1))
    except (KeyError, ValueError) as exc:
        raise WeightsFormatError(f"{path}: bad num_channels/step in the safetensors metadata ({exc})") from exc
    return {"format": WEIGHTS_FORMAT, "part": meta.get("part"), "state_dict": sd,
            "model_config": meta.get("model_config", ""), "num_channels": num_channels, "step": step}


def load_weights(path: str | os.PathLike) -> dict[str, Any]:
    """Read a weights file (``.safetensors``, or a legacy ``.pt`` with ``weights_only=True``):
    ``{"format", "part", "state_dict", "model_config", "num_channels", "step"}``.

    Raises:
        WeightsFormatError: not a weights file of this format (including an unreadable one).
        FileNotFoundError: no such file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    try:
        if path.suffix == SUFFIX:
            return _load_safetensors(path)
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except WeightsFormatError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch/safetensors raise many types for a bad file
        raise WeightsFormatError(f"{path}: unreadable weights file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict) or obj.get("format") != WEIGHTS_FORMAT or not isinstance(obj.get("state_dict"), dict):
        raise WeightsFormatError(f"{path}: not an {WEIGHTS_FORMAT} file")
    return obj


def part_file(directory: str | os.PathLike, part: str) -> Path | None:
    """``<directory>/<part>.safetensors``, else the legacy ``<part>.pt``, else None."""
    for suffix in (SUFFIX, LEGACY_SUFFIX):
        f = Path(directory) / f"{part}{suffix}"
        if f.is_file():
            return f
    return None


def find_parts(directory: str | os.PathLike) -> dict[str, Path]:
    """Every part file in ``directory`` (safetensors preferred over a same-named ``.pt``),
    core parts first."""
    d = Path(directory)
    names = [p.name[: -len(s)] for s in (SUFFIX, LEGACY_SUFFIX) for p in sorted(d.glob(f"*{s}"))
             if p.is_file() and not p.name.startswith(".")]
    found = {n: part_file(d, n) for n in order_parts(names)}
    return {n: f for n, f in found.items() if f is not None}


def load_part(directory: str | os.PathLike, part: str) -> dict[str, Any]:
    """:func:`load_weights` of ``part`` in ``directory`` (either suffix); checks the part tag."""
    f = part_file(directory, part)
    if f is None:
        raise FileNotFoundError(f"{directory}: no {part}{SUFFIX} (or legacy {part}{LEGACY_SUFFIX})")
    obj = load_weights(f)
    if obj.get("part") not in (None, part):
        raise WeightsFormatError(f"{f}: holds the {obj.get('part')!r} part, not {part!r}")
    return obj


def content_digest(obj: Mapping[str, Any]) -> str:
    """sha256 of a loaded weights file's content (metadata + tensor names, dtypes, shapes,
    bytes), independent of the container: the same weights give the same digest whether read
    from ``.pt`` or ``.safetensors`` (safetensors does not fix its metadata order on disk)."""
    h = hashlib.sha256(json.dumps({k: str(obj.get(k)) for k in _META_KEYS}, sort_keys=True).encode())
    for name in sorted(obj["state_dict"]):
        t = obj["state_dict"][name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def atomic_torch_save(obj: Any, path: Path) -> Path:
    """``torch.save`` through :func:`anatplane_dist.core.atomic.atomic_path` (never a truncated file);
    for engine state and for the nnU-Net export, whose loader expects a torch checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)
