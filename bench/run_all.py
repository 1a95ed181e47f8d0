"""Run every benchmark in turn (``make bench``); each prints ratios against a same-run baseline.

    python bench/run_all.py [--only geometry,shard,stream,model,train]

Benchmarks are not tests: they measure, they do not assert. Record what they print in
docs/performance.md together with the machine they ran on.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = {
    "geometry": ["bench_geometry.py"],
    "shard": ["bench_shard.py"],
    "stream": ["bench_stream.py"],
    "model": ["bench_model.py"],
    "train": ["bench_train.py", "--skip-heart"],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(BENCHES), help="comma-separated subset of " + ",".join(BENCHES))
    args = ap.parse_args()
    failed = []
    for name in args.only.split(","):
        script, *extra = BENCHES[name]
        print(f"\n##### {name}: {script} {' '.join(extra)}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, str(HERE / script), *extra])
        print(f"##### {name}: exit {rc} in {time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
