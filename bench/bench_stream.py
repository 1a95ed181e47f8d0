#!/usr/bin/env python
"""Loader throughput against a raw read of the same shards (goal: loader >= 0.7x raw).

Baseline: ``tarfile`` + ``np.load`` of every ``.npy`` member (and ``json.loads`` of a
format-2 sample's ``meta.json``, where its targets are), one shard after the other, in this
process (no decoding checks, no checksum, no z-score, no batching). Loader: the real training stream
(``make_train_loader``: shard stage, tar reader, shuffle buffer, schema-checked decode,
z-score, batching, DataLoader) and the exact validation pass, for several worker counts.
Runs alternate baseline and loader so both see the same machine load; medians are printed,
with each loader's ratio to the baseline of the same run.

    python bench/bench_stream.py                       # 2000 synthetic 224x224 samples in a temp dir
    python bench/bench_stream.py --shards 'DIR/train-{000000..000007}.tar' --workers 0 2
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from anatplane_dist.data.config import DataConfig
from anatplane_dist.data.shardspec import all_urls, parse_sources
from anatplane_dist.data.stream import make_train_loader, make_val_loader
from tests.data.synthetic import write_shards


def raw_read(urls: list[str]) -> int:
    """The baseline: read every member the loader needs and parse it (np.load the arrays, and
    json.loads a format-2 sample's meta.json, which holds its targets); no checks, no checksum;
    returns the number of images."""
    n = 0
    for url in urls:
        with tarfile.open(url) as tar:
            key, has_lines = None, False
            for member in tar:
                if not member.isfile():
                    continue
                k, _, field = member.name.partition(".")
                if k != key:
                    key, has_lines = k, False
                if field.endswith(".npy"):
                    np.load(io.BytesIO(tar.extractfile(member).read()))
                    n += field == "image.npy"
                    has_lines |= field == "lines.npy"
                elif field == "meta.json" and not has_lines:
                    json.loads(tar.extractfile(member).read())
    return n


def loader_read(loader) -> int:
    return sum(len(batch["key"]) for batch in loader)


def timed(fn) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - t0), n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", help="existing shard pattern (default: write synthetic shards)")
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--per-shard", type=int, default=250)
    ap.add_argument("--size", type=int, default=224, help="image side of synthetic shards")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epoch-factor", type=int, default=4,
                    help="train epoch = this many times the shard set, so the shuffle buffer's refill "
                         "at each epoch start is amortised as in real (long) epochs")
    ap.add_argument("--shuffle-buffer", type=int, default=1000)
    ap.add_argument("--torch-threads", type=int, default=0,
                    help="torch intra-op threads of this process (0: torch's default); matters for "
                         "workers=0, where batches are built in the training process")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    with tempfile.TemporaryDirectory() as tmp:
        sizes = [min(args.per_shard, args.samples - i) for i in range(0, args.samples, args.per_shard)]
        pattern = args.shards or write_shards(tmp, sizes, size=args.size)
        urls = all_urls(parse_sources(pattern))
        raw_read(urls)  # page cache warm-up, like the loader runs will have
        n_raw = raw_read(urls)
        results: dict[str, list[float]] = {"raw": []}
        loaders = {}
        for w in args.workers:
            cfg = DataConfig(shards=pattern, val_shards=pattern, batch_size=args.batch, num_workers=w,
                             shuffle_buffer=args.shuffle_buffer, shuffle_initial=min(100, args.shuffle_buffer),
                             samples_per_epoch=args.epoch_factor * n_raw)
            loaders[f"train w={w}"], _ = make_train_loader(cfg)
            loaders[f"val   w={w}"] = make_val_loader(cfg)
            results[f"train w={w}"], results[f"val   w={w}"] = [], []
        for name, loader in loaders.items():  # start persistent workers outside the timing
            loader_read(loader)
        for rep in range(args.repeats):
            rate, _ = timed(lambda: raw_read(urls))
            results["raw"].append(rate)
            for name, loader in loaders.items():
                if name.startswith("train"):
                    loader.set_epoch(rep + 1)
                rate, n = timed(lambda: loader_read(loader))
                results[name].append(rate)
        base = statistics.median(results["raw"])
        side = "x".join(map(str, next(iter(loaders["val   w=" + str(args.workers[0])]))["image"].shape[-2:]))
        print(f"{len(urls)} shards, {n_raw} samples of {side}, batch {args.batch}, shuffle buffer "
              f"{args.shuffle_buffer}, train epoch {args.epoch_factor}x, torch threads {torch.get_num_threads()}, "
              f"{args.repeats} repeats (median samples/s)")
        print(f"{'raw tarfile+np.load':24s} {base:9.0f} samples/s   1.00x")
        summary = {"raw": base}
        for name, rates in results.items():
            if name == "raw":
                continue
            med = statistics.median(rates)
            summary[name] = med
            print(f"{'loader ' + name:24s} {med:9.0f} samples/s   {med / base:.2f}x")
        if args.json:
            Path(args.json).write_text(json.dumps({"median_samples_per_s": summary, "runs": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
