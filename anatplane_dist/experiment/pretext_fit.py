"""Did a pretext memorise its training subjects, or learn nothing at all?

The model card's pretext metrics come from the pretraining *validation* subjects: a poor value
there says the pretext does not hold on unseen subjects, not why.  This module runs the
published network on the same number of samples from a training shard and from the validation
shard, through the stream's own normalisation (:func:`anatplane_dist.data.decode.zscore_`), and
measures the orientation angle error and the location MAE on both.  Good on training subjects
and poor on held-out ones is memorisation (too few pretraining subjects for what the pretext
asks; e.g. the demo's multitask location head: MAE 0.08 on its 7 training hearts, 0.21 on the
held-out one); poor on both is a pretext that was not learnt.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FIT_METRICS", "pretext_fit", "fit_verdict"]

#: (metric, title, "not learnt" threshold: values at or above it are poor), as in the report's
#: pretext-quality warnings
FIT_METRICS = (("angle_err_deg", "angle error °", 15.0), ("loc_mae", "location MAE", 0.2))


def _metrics(net: Any, samples: list[dict[str, Any]], batch: int = 64) -> dict[str, float]:
    import torch

    from anatplane_dist.data.decode import zscore_
    from anatplane_dist.objectives.validate import line_errors

    ang_sum = ang_n = loc_sum = loc_n = 0.0
    for i in range(0, len(samples), batch):
        chunk = samples[i:i + batch]
        x = zscore_(torch.from_numpy(np.stack([np.asarray(s["image"], np.float32) for s in chunk])))
        with torch.no_grad():
            out = net(x[:, None])
        if "heatmaps" in out:
            lines = torch.from_numpy(np.nan_to_num(np.stack([np.asarray(s["lines"], np.float32) for s in chunk])))
            valid = torch.from_numpy(np.stack([np.asarray(s["valid"], np.float32) for s in chunk]))
            ang, _off, mask = line_errors(out["heatmaps"], lines, valid)
            ang_sum, ang_n = ang_sum + float(ang[mask].sum()), ang_n + float(mask.sum())
        if "location" in out:
            loc = torch.tensor([float(s["loc"]) for s in chunk])
            ok = torch.isfinite(loc)
            pred = out["location"].float().reshape(-1)
            loc_sum, loc_n = loc_sum + float((pred - loc).abs()[ok].sum()), loc_n + float(ok.sum())
    res = {}
    if ang_n:
        res["angle_err_deg"] = ang_sum / ang_n
    if loc_n:
        res["loc_mae"] = loc_sum / loc_n
    return res


def _take(tars: list[Path], count: int) -> list[dict[str, Any]]:
    """Up to ``count`` samples spread evenly over the shards' samples (every slice position)."""
    from anatplane_dist.shards.reader import read_samples

    samples: list[dict[str, Any]] = []
    for tar in tars:
        samples += [s for _k, s in sorted(read_samples(tar).items())]
        if len(samples) >= 4 * count:
            break
    if len(samples) <= count:
        return samples
    return [samples[int(i)] for i in np.linspace(0, len(samples) - 1, count)]


def pretext_fit(published: str | Path, shards: str | Path, count: int = 256) -> dict[str, dict[str, float]]:
    """``{"train": {metric: value}, "held_out": {...}}`` of a published network (its heads'
    metrics only; ``held_out`` is empty when the shard set has no validation shard)."""
    from anatplane_dist.finetune.backbone import read_pretrained_info
    from anatplane_dist.publish import load_pretrained

    info = read_pretrained_info(published)
    net = load_pretrained(info.path.parent, part="full").eval()
    shards = Path(shards)
    train = sorted(shards.glob("train-*.tar"))
    val = sorted(shards.glob("val-*.tar"))
    return {"train": _metrics(net, _take(train, count)) if train else {},
            "held_out": _metrics(net, _take(val, count)) if val else {}}


def fit_verdict(fit: dict[str, dict[str, float]]) -> list[str]:
    """Per metric: 'memorised' (good on training subjects, poor held out) or 'not learnt'
    (poor on both); nothing when held-out subjects are fine."""
    out = []
    for key, title, poor in FIT_METRICS:
        tr, ho = fit.get("train", {}).get(key), fit.get("held_out", {}).get(key)
        if tr is None or ho is None or ho < poor:
            continue
        if tr < poor:
            out.append(f"{title} memorised (training subjects {tr:.3g}, held-out {ho:.3g}): more "
                       "pretraining subjects, or stronger augmentation, are what this pretext needs")
        else:
            out.append(f"{title} not learnt (training subjects {tr:.3g}, held-out {ho:.3g})")
    return out
