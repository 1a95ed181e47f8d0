"""Shared test set-up: single-process distributed env for DeepSpeed, no JIT builds."""
from __future__ import annotations

import importlib
import os

import pytest

from anatplane_dist.core.dist import free_port


@pytest.fixture(scope="session", autouse=True)
def _quiet_threads():
    # 2-core CI: tests that spawn ranks must not oversubscribe
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    yield


@pytest.fixture(scope="session", autouse=True)
def _checkpoint_key(tmp_path_factory):
    """Checkpoint markers signed with a session key (inherited by launched ranks), not the user's."""
    from anatplane_dist.core.checkpoints import KEY_ENV
    old = os.environ.get(KEY_ENV)
    os.environ[KEY_ENV] = str(tmp_path_factory.mktemp("key") / "checkpoint.key")
    yield
    if old is None:
        os.environ.pop(KEY_ENV, None)
    else:
        os.environ[KEY_ENV] = old


@pytest.fixture()
def single_process_dist_env(monkeypatch):
    """RANK/WORLD_SIZE/... for one process, so deepspeed.initialize skips MPI discovery."""
    for k, v in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                     MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(k, v)
    try:  # DeepSpeed's shm comm op is a g++ JIT build (~25 s) only used for CPU inference all-reduce
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    except ImportError:
        pass
    yield
