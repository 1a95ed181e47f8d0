"""The stream under a real 2-process gloo group (torch.multiprocessing.spawn), uneven shards."""
from __future__ import annotations

import datetime
import importlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as tmp

from anatplane_dist.core.dist import MetricSums, assert_same_across_ranks, free_port
from anatplane_dist.data.config import DataConfig
from anatplane_dist.data.stream import SharedEpoch, make_train_loader, make_val_loader
from tests.data.synthetic import all_keys, write_shards

SIZES = [3, 7, 11, 2, 9]  # 32 samples in 5 shards of different sizes
WORLD = 2


def _rank_main(rank: int, port: int, pattern: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    # a rank that runs short would block the others' all_reduce: fail in a minute instead of 30
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        result: dict = {"rank": rank}
        try:
            assert_same_across_ranks(rank, "rank id")
            result["mismatch_detected"] = False
        except RuntimeError as exn:
            result["mismatch_detected"] = "rank id differs across ranks" in str(exn)
        for resampled in (True, False):
            cfg = DataConfig(shards=pattern, val_shards=pattern, batch_size=3, num_workers=1, shuffle_buffer=8,
                             seed=3, resampled=resampled)
            epoch = SharedEpoch(0)
            loader, steps = make_train_loader(cfg, rank=rank, world_size=WORLD, epoch_state=epoch)
            assert_same_across_ranks(steps)
            counts, keys = [], []
            for e in range(2):
                epoch.set_value(e)
                n = 0
                for batch in loader:
                    # one collective per step, as DDP's gradient all-reduce: hangs if a rank runs short
                    t = torch.ones(1)
                    dist.all_reduce(t)
                    assert t.item() == WORLD
                    n += 1
                    keys += batch["key"]
                counts.append(n)
            result[f"train_{resampled}"] = {"steps": steps, "counts": counts, "keys": keys}
        val = make_val_loader(cfg, rank=rank, world_size=WORLD)
        sums = MetricSums(["loc", "samples"])
        vkeys, vbatches = [], 0
        for batch in val:  # no collective inside: ranks have different batch counts
            vbatches += 1
            vkeys += batch["key"]
            sums.add("loc", float((batch["loc"] * batch["loc_valid"]).sum()), float(batch["loc_valid"].sum()))
            sums.add("samples", len(batch["key"]), 1)
        means = sums.reduce()
        result["val"] = {"keys": vkeys, "batches": vbatches, "loc_mean": means["loc"],
                         "counts": sums.counts.tolist()}
        dist.barrier()
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(300)
def test_two_gloo_ranks_equal_steps_and_exact_validation(tmp_path, monkeypatch):
    pattern = write_shards(tmp_path / "shards", SIZES)
    # spawned ranks unpickle their entry point by module name: make this file importable as one
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    rank_main = importlib.import_module("test_stream_dist")._rank_main
    tmp.spawn(rank_main, args=(free_port(), pattern, str(tmp_path)), nprocs=WORLD, join=True)
    res = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert all(r["mismatch_detected"] for r in res)
    for resampled in (True, False):
        runs = [r[f"train_{resampled}"] for r in res]
        steps = runs[0]["steps"]
        assert steps == int(np.ceil(sum(SIZES) / (3 * WORLD)))
        assert all(r["steps"] == steps and r["counts"] == [steps, steps] for r in runs)
        assert all(set(r["keys"]) <= all_keys("train", SIZES) for r in runs)
    # validation: every sample exactly once across ranks, uneven batch counts, one reduction
    v0, v1 = res[0]["val"], res[1]["val"]
    assert sorted(v0["keys"] + v1["keys"]) == sorted(all_keys("train", SIZES))
    assert v0["batches"] != v1["batches"]
    locs = [s * 100 + i for s, n in enumerate(SIZES) for i in range(n) if i % 2 == 0]
    assert v0["loc_mean"] == pytest.approx(np.mean(locs)) == v1["loc_mean"]
    assert v0["counts"] == v1["counts"] == [len(locs), v0["batches"] + v1["batches"]]
