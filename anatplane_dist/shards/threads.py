"""One compute thread per sharder worker process.

Each worker runs one study at a time; its numpy/scipy (BLAS, OpenMP) and torch calls are small,
so a per-library thread pool per worker only oversubscribes the node: on a 16-core H200 node
16 workers with default pools sharded 2,360 samples in 30.9 s, with ``OMP_NUM_THREADS=1``
3,240 samples in 13.4 s (issue 16). The limits are set by the pool's initializer, which lives
in this module because it imports nothing heavy: a spawned worker unpickles (and so imports)
the initializer before the task function, so the variables are in place before numpy, scipy
or torch load their thread pools. Libraries the parent's main module already imported in the
child are limited at run time too (torch, and BLAS/OpenMP through threadpoolctl when present).
"""
from __future__ import annotations

import os
import sys

#: the variables BLAS / OpenMP / MKL / Accelerate / numexpr read when they load
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
              "NUMEXPR_NUM_THREADS", "BLIS_NUM_THREADS")


def pin_worker_threads() -> None:
    """Pool initializer: one thread for every compute library of this process."""
    for name in THREAD_ENV:
        os.environ[name] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    if "numpy" in sys.modules or "scipy" in sys.modules:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:   # optional: the variables above cover libraries not yet loaded
            return
        threadpool_limits(1)


def worker_threads() -> dict[str, int | str]:
    """What a worker runs with (for tests and benchmarks): the variables and torch's pool."""
    import torch
    out: dict[str, int | str] = {name: os.environ.get(name, "") for name in THREAD_ENV}
    out["torch"] = torch.get_num_threads()
    try:
        from threadpoolctl import threadpool_info
        out["blas_openmp_max"] = max((p["num_threads"] for p in threadpool_info()), default=1)
    except ImportError:
        pass
    return out
