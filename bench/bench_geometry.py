"""Geometry throughput: vectorised intersection lines vs one call per pair (same run, same planes).

    python bench/bench_geometry.py [--pairs 100000]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from anatplane_dist.core.geometry import Plane, intersection_lines, render_heatmaps


def random_planes(n: int, rng: np.random.Generator) -> Plane:
    q, _ = np.linalg.qr(rng.normal(size=(n, 3, 3)))
    return Plane(rng.uniform(-50, 50, (n, 3)), q[..., 0], q[..., 1], rng.uniform(0.8, 2.0, (n, 2)),
                 np.broadcast_to([224, 224], (n, 2)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pairs", type=int, default=100_000)
    ap.add_argument("--loop-pairs", type=int, default=2_000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    img, ref = random_planes(args.pairs, rng), random_planes(args.pairs, rng)
    t = time.perf_counter()
    _, valid = intersection_lines(img, ref)
    vec_s = time.perf_counter() - t
    n_loop = min(args.loop_pairs, args.pairs)
    t = time.perf_counter()
    for i in range(n_loop):
        intersection_lines(img[i], ref[i])
    loop_s = (time.perf_counter() - t) / n_loop * args.pairs
    lines, valid = intersection_lines(img[:256], ref[:256])
    t = time.perf_counter()
    render_heatmaps(lines[:, None], valid[:, None], (224, 224), 6.0)
    heat_s = time.perf_counter() - t
    print(f"vectorised intersection lines: {args.pairs / vec_s:,.0f} pairs/s ({valid.mean():.0%} valid)")
    print(f"one call per pair:             {args.pairs / loop_s:,.0f} pairs/s")
    print(f"ratio vectorised / per-pair:   {loop_s / vec_s:.1f}x")
    print(f"numpy heatmaps 224^2:          {256 / heat_s:,.0f} maps/s")


if __name__ == "__main__":
    main()
