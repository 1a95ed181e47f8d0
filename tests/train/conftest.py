"""Fixtures for the training tests: synthetic shard sets and a clean distributed env."""
from __future__ import annotations

import os

import pytest

from tests.train.synth import write_shards

DIST_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(scope="session")
def shards(tmp_path_factory):
    """Uneven train shards (3 shards: 24, 15, 9 samples) and two val shards (10, 5)."""
    return write_shards(tmp_path_factory.mktemp("shards"), [24, 15, 9], [10, 5])


@pytest.fixture()
def clean_env(monkeypatch):
    """No launcher variables, and whatever the run exports is undone afterwards."""
    for k in DIST_KEYS + ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_JOB_ID", "SLURM_LOCALID", "SLURM_JOB_NODELIST"):
        monkeypatch.delenv(k, raising=False)
    saved = {k: os.environ.get(k) for k in DIST_KEYS}
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def subprocess_env() -> dict[str, str]:
    """Environment for launcher subprocesses: no inherited rank variables, one thread per rank."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_KEYS}
    env["OMP_NUM_THREADS"] = "1"
    return env
