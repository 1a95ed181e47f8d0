"""The weights of MODEL, a run directory or a published model, read the one verified way."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anatplane_dist.core import checkpoints as ckpt
from anatplane_dist.core import weights
from anatplane_dist.core.errors import AnatplaneError

__all__ = ["ModelSourceError", "ModelWeights", "read_model"]


class ModelSourceError(AnatplaneError):
    """MODEL is neither a run with a complete checkpoint nor a whole published model."""


@dataclass
class ModelWeights:
    """Every part of a model (name -> the loaded weights file) and where it came from."""

    parts: dict[str, dict[str, Any]]
    source: str

    @property
    def model_config_yaml(self) -> str:
        return str(self.parts["encoder"]["model_config"])

    @property
    def num_channels(self) -> int:
        return int(self.parts["encoder"]["num_channels"])


def read_model(path: str | Path) -> ModelWeights:
    """A run dir (its newest complete checkpoint's ``fp32/`` parts) or a published version /
    name dir (checksums verified first, as ``load_pretrained`` does).

    Raises:
        ModelSourceError: neither, no encoder, or a part that is not a weights file.
    """
    from anatplane_dist.publish import VerificationError, resolve_version, verify

    p = Path(path)
    if not p.exists():
        raise ModelSourceError(f"{p} does not exist (MODEL is a run directory or a published model)")
    if (p / "checkpoints").is_dir():
        ck = ckpt.latest_verified(p)
        if ck is None:
            raise ModelSourceError(f"{p}: no complete checkpoint that verifies against its signed marker "
                                   "(checkpoints/step_*/COMPLETE)")
        folder, source = ck / "fp32", f"{p} checkpoint {ck.name}"
    else:
        try:
            folder = resolve_version(p)
            verify(folder)
        except (FileNotFoundError, VerificationError) as exc:
            raise ModelSourceError(f"{p}: not a run directory, and not a whole published model ({exc})") from exc
        source = f"published {folder}"
    files = weights.find_parts(folder)
    if "encoder" not in files:
        raise ModelSourceError(f"{folder}: no encoder{weights.SUFFIX}")
    try:
        parts = {name: weights.load_weights(f) for name, f in files.items()}
    except (weights.WeightsFormatError, OSError) as exc:
        raise ModelSourceError(str(exc)) from exc
    return ModelWeights(parts, source)
