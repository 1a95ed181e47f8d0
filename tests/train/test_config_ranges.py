"""Range errors in any section are one ConfigError line naming the key, found before any process
group exists (issue 19, item 8; train.max_steps from its "also consider" list)."""
from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from anatplane_dist.core.errors import ExitCode
from anatplane_dist.core.mapping import ConfigError
from anatplane_dist.train import cli as train_cli
from anatplane_dist.train.config import load_config
from tests.train.conftest import subprocess_env

RANGE_ERRORS = [
    ("data", "batch_size", -1), ("data", "samples_per_epoch", 0), ("data", "num_workers", -1),
    ("model", "width", 0), ("model", "depth", 0), ("loss", "sigma_mm", 0), ("train", "max_steps", -1),
]


@pytest.mark.parametrize("section, key, value", RANGE_ERRORS)
def test_override_range_error_is_a_config_error(section, key, value):
    with pytest.raises(ConfigError, match=rf"{section}\.{key}"):
        load_config(None, [f"{section}.{key}={value}"])


@pytest.mark.parametrize("section, key, value", RANGE_ERRORS)
def test_yaml_range_error_is_a_config_error(tmp_path, section, key, value):
    path = tmp_path / "bad.yaml"
    path.write_text(f"{section}:\n  {key}: {value}\n")
    with pytest.raises(ConfigError, match=rf"{section}\.{key}"):
        load_config(path)


def test_refused_before_any_process_group(monkeypatch, capsys):
    def no_group(*a, **k):
        raise AssertionError("a process group was created for a config that cannot run")

    monkeypatch.setattr("anatplane_dist.core.dist.init_distributed", no_group)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    args = argparse.Namespace(config="tiny-cpu", run_dir=None, overrides=["model.width=0"],
                              allow_config_change=False, local_rank=None)
    assert train_cli.run(args) == ExitCode.USAGE
    assert capsys.readouterr().err.strip() == "anatplane pretrain: model.width must be >= 1, got 0"


def test_cli_range_error_is_one_line_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "anatplane_dist.cli", "pretrain", "--config", "tiny-cpu",
                           "--run-dir", str(tmp_path / "run"), "data.batch_size=-1"],
                          env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    assert proc.stderr.strip().splitlines() == ["anatplane pretrain: data.batch_size must be >= 1, got -1"]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("gbs, micro, world, expected", [
    (4, 4, 2, "what keeps it: data.batch_size=2 on 2 ranks, or data.batch_size=4 on 1 rank(s)"),
    (12, 4, 8, "what keeps it: data.batch_size=4 on 1 or 3 rank(s)"),
    (6, 2, 4, "what keeps it: data.batch_size=2 on 1 or 3 rank(s)"),
])
def test_world_size_refusal_says_what_works(gbs, micro, world, expected):
    """Issue 19 item 18: the message said "... or use a number of ranks that divides 1"."""
    from anatplane_dist.train.config import accum_for

    cfg = load_config(None, [f"data.batch_size={micro}"])
    with pytest.raises(ConfigError) as exc:
        accum_for(cfg, world, gbs)
    assert str(exc.value).endswith(expected) and "divides" not in str(exc.value)
