"""Run ``launch/pretrain.py`` under a real launcher (torchrun / deepspeed) in a subprocess."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from anatplane_dist.core.dist import free_port
from tests.train.conftest import subprocess_env

REPO = Path(__file__).resolve().parents[2]
PRETRAIN = str(REPO / "launch" / "pretrain.py")


def torchrun(nproc: int, config: Path, run_dir: Path, *overrides: str, env: dict | None = None,
             timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           PRETRAIN, "--config", str(config), "--run-dir", str(run_dir), *overrides]
    return subprocess.run(cmd, env={**subprocess_env(), **(env or {})}, capture_output=True, text=True,
                          timeout=timeout, cwd=run_dir.parent)


def deepspeed_launcher(nproc: int, config: Path, run_dir: Path, *overrides: str,
                       timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", str(nproc), "--master_port", str(free_port()),
           PRETRAIN, "--config", str(config), "--run-dir", str(run_dir), *overrides]
    return subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout,
                          cwd=run_dir.parent)


def tail(proc: subprocess.CompletedProcess, n: int = 3000) -> str:
    return (proc.stdout + proc.stderr)[-n:]
