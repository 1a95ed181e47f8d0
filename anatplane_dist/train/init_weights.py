"""``train.init_from``: start a new run from verified weights (a checkpoint or a published model).

Accepted: a published model version (or its name directory or ``latest`` link, resolved by
:func:`anatplane_dist.publish.resolve_version` as ``load_pretrained`` does; verified against its
``SHA256SUMS`` by :func:`anatplane_dist.publish.verify`), a checkpoint dir (verified against
its signed marker) or that checkpoint's ``fp32/`` folder. Weights that cannot be verified
are refused: loading is the point where a tampered file would do harm.
"""
from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from anatplane_dist.core import checkpoints as ckpt
from anatplane_dist.core import weights
from anatplane_dist.core.errors import AnatplaneError

log = logging.getLogger("anatplane.train")


class InitFromError(AnatplaneError):
    """``train.init_from`` names weights that cannot be verified or do not fit the model."""


def verified_parts_dir(path: str | Path) -> Path:
    """The folder of part files under ``path``, after verifying ``path``'s checksums."""
    p = Path(path).expanduser()
    if not p.exists():
        raise InitFromError(f"train.init_from={p}: no such file or directory")
    from anatplane_dist.publish import resolve_version
    try:   # the resolver of load_pretrained and finetune: a name dir means its latest version
        p = resolve_version(p)
    except AnatplaneError as e:
        raise InitFromError(f"train.init_from={path}: {e}") from None
    if (p / "SHA256SUMS").is_file():
        from anatplane_dist import publish
        try:
            publish.verify(p)
        except Exception as e:  # noqa: BLE001 — any verification failure refuses the weights
            raise InitFromError(f"train.init_from={p}: {e}") from None
        return p.resolve()
    marked = p if (p / ckpt.COMPLETE).is_file() else p.parent if (p.parent / ckpt.COMPLETE).is_file() else None
    if marked is None:
        raise InitFromError(f"train.init_from={p}: not a published model (no SHA256SUMS) nor a checkpoint "
                            f"(no {ckpt.COMPLETE} marker): its files cannot be verified")
    ckpt.verify(marked)
    return marked / "fp32" if marked == p else p


def load_init_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Load every part of the verified weights that ``model`` has; returns the parts loaded.

    Raises:
        InitFromError: unverifiable weights, no part in common, or tensors that do not fit.
    """
    from anatplane_dist.model import unwrap_model

    folder = verified_parts_dir(path)
    net = unwrap_model(model)
    loaded, skipped = [], []
    for part, file in weights.find_parts(folder).items():
        module = getattr(net, part, None)
        if not isinstance(module, nn.Module):
            skipped.append(part)
            continue
        try:
            module.load_state_dict(weights.load_weights(file)["state_dict"])
        except (RuntimeError, ValueError) as e:
            raise InitFromError(f"train.init_from={path}: {part} does not fit this model "
                                f"({' '.join(str(e).split())[:300]})") from None
        loaded.append(part)
    if not loaded:
        raise InitFromError(f"train.init_from={path}: no part of {folder} matches this model's parts "
                            f"({', '.join(n for n, _ in net.named_children())})")
    log.info("initialised %s from %s%s", ", ".join(loaded), folder,
             f" (not in this model: {', '.join(skipped)})" if skipped else "")
    return loaded
