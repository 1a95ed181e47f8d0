"""Re-state a stored segmentation ``results.csv`` under the engine's statistics (the seed as the
replicate), without its cell files: how verdicts written under older statistics read now.

    python -m anatplane_dist.experiment.restate docs/figures/heart-quick/results.csv

Prints one markdown row per (arm, count): the cell mean with its hierarchical CI, and against
``random`` the per-seed paired difference, its CI, the wins out of seeds and the verdict.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from anatplane_dist.experiment.results import STRUCTURES
from anatplane_dist.experiment.spec import RANDOM
from anatplane_dist.experiment.stats import hierarchical_mean, paired_seed_difference, verdict

__all__ = ["restate", "main"]


def _obs(rows: list[dict[str, str]]) -> dict[tuple[str, int], dict[tuple[int, str], float]]:
    """(arm, n) -> (seed, subject) -> mean Dice over RV/MYO/LV."""
    acc: dict[tuple[str, int], dict[tuple[int, str], list[float]]] = {}
    for r in rows:
        if r["structure"] not in STRUCTURES or r["dice"] == "":
            continue
        key = (r["arm"], int(r["n_labelled"]))
        acc.setdefault(key, {}).setdefault((int(r["seed"]), r["subject"]), []).append(float(r["dice"]))
    return {k: {kk: float(np.mean(v)) for kk, v in d.items()} for k, d in acc.items()}


def restate(csv_path: str | Path) -> str:
    with open(csv_path) as fh:
        rows = list(csv.DictReader(fh))
    obs = _obs(rows)
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    counts = sorted({n for _, n in obs})
    lines = ["| arm | n | seeds | Dice [95% CI over seeds, then subjects] | Δ vs random [95% CI], wins | verdict |",
             "|---|---|---|---|---|---|"]
    for arm in arms:
        for n in counts:
            o = obs.get((arm, n))
            if not o:
                continue
            by_seed: dict[int, list[float]] = {}
            for (seed, _s), v in sorted(o.items()):
                by_seed.setdefault(seed, []).append(v)
            est = hierarchical_mean(by_seed)
            if arm == RANDOM or (RANDOM, n) not in obs:
                lines.append(f"| {arm} | {n} | {est.n} | {est.text()} | — | — |")
                continue
            p = paired_seed_difference(o, obs[(RANDOM, n)])
            lines.append(f"| {arm} | {n} | {est.n} | {est.text()} | {p.text()} | {verdict(p)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", type=Path, help="a segmentation results.csv written by 'anatplane experiment'")
    args = ap.parse_args(argv)
    if not args.csv.is_file():
        print(f"restate: {args.csv} does not exist")
        return 2
    print(restate(args.csv), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
