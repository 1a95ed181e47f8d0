"""Sharder workers run one compute thread each, whatever the parent's environment says."""
from __future__ import annotations

import os

from anatplane_dist.shards.pipeline import worker_pool
from anatplane_dist.shards.threads import THREAD_ENV, worker_threads


def test_spawned_workers_pin_every_thread_pool_to_one(monkeypatch):
    for name in THREAD_ENV:
        monkeypatch.setenv(name, "4")       # what a worker would otherwise inherit
    with worker_pool(2) as pool:
        reports = [f.result(timeout=120) for f in [pool.submit(worker_threads) for _ in range(2)]]
    for r in reports:
        assert all(r[name] == "1" for name in THREAD_ENV), r
        assert r["torch"] == 1, r
        assert r.get("blas_openmp_max", 1) == 1, r
    assert os.environ["OMP_NUM_THREADS"] == "4"   # the parent's own setting is left alone
