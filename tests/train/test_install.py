"""A non-editable install (a built wheel, outside the checkout) finds its presets and trains."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.train.conftest import subprocess_env
from tests.train.launch import REPO, tail


@pytest.mark.slow
def test_wheel_install_trains_the_tiny_preset(tmp_path, shards):
    wheel_dir, target, work = tmp_path / "wheel", tmp_path / "site", tmp_path / "elsewhere"
    work.mkdir()
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    built = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheel_dir), str(REPO)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, tail(built)
    wheel = next(wheel_dir.glob("anatplane_dist-*.whl"))
    inst = subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert inst.returncode == 0, tail(inst)
    env = {**subprocess_env(), "PYTHONPATH": str(target)}
    where = subprocess.run([sys.executable, "-c", "import anatplane_dist; print(anatplane_dist.__file__)"],
                           env=env, cwd=work, capture_output=True, text=True)
    assert where.stdout.startswith(str(target)), where.stdout + where.stderr
    run = subprocess.run([sys.executable, "-m", "anatplane_dist.cli", "pretrain", "--config", "tiny-cpu",
                          "--run-dir", str(work / "run"), f"data.shards={shards}", "data.samples_per_epoch=32",
                          "train.epochs=1", "train.progress=none", "model.depth=2"],
                         env=env, cwd=work, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, tail(run)
    assert "done: 4 steps" in run.stderr
