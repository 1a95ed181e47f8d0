"""``--slurm-array``: parts as submitit array tasks (local processes here; real SLURM when marked)."""
from __future__ import annotations

import argparse
import json

import pytest

from anatplane_dist.shards.cli import add_arguments, config_from_args
from anatplane_dist.shards.pipeline import shard_dataset
from anatplane_dist.shards.slurm_array import submit_array


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(argv))


def test_array_of_parts_merges_to_the_single_run_result(dsbcc_tree, tmp_path, capsys):
    args = parse("--input", str(dsbcc_tree), "--out", str(tmp_path / "arr"), "--grid", "32", "--spacing", "3",
                 "--shard-size", "5", "--val-fraction", "0.3", "--workers", "1", "--slurm-array", "3")
    cfg = config_from_args(args)
    assert submit_array(args, cfg, cluster="local") == 0
    assert "merged 3 parts" in capsys.readouterr().out
    single = shard_dataset(dsbcc_tree, tmp_path / "one", cfg, progress=False)
    m = json.loads((tmp_path / "arr" / "manifest.json").read_text())
    assert m["parts"] == 3 and m["counts"]["samples"] == single.samples
    assert m["subjects"] == single.manifest["subjects"] and m["config_hash"] == single.manifest["config_hash"]


@pytest.mark.slurm
def test_array_on_a_real_slurm_cluster(dsbcc_tree, tmp_path, monkeypatch):
    from tests.slurm.cluster import ClusterUnavailable, SlurmCluster, unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(f"no SLURM cluster on this machine: {reason}")
    try:
        cluster = SlurmCluster().start()
    except ClusterUnavailable as exc:
        pytest.skip(f"no SLURM cluster on this machine: {exc}")
    try:
        monkeypatch.setenv("SLURM_CONF", cluster.env["SLURM_CONF"])
        args = parse("--input", str(dsbcc_tree), "--out", str(tmp_path / "arr"), "--grid", "32", "--spacing", "3",
                     "--shard-size", "5", "--val-fraction", "0.3", "--workers", "1", "--slurm-array", "2",
                     "--slurm-time-min", "5")
        assert submit_array(args, config_from_args(args), cluster="slurm") == 0
        m = json.loads((tmp_path / "arr" / "manifest.json").read_text())
        assert m["parts"] == 2 and m["counts"]["samples"] == 24
    finally:
        cluster.stop()


@pytest.mark.parametrize("flag, value", [("--slurm-partition", "gpu\n#SBATCH --uid=0"), ("--out", "o\ntouch PWNED")])
def test_a_control_character_bound_for_the_array_script_is_refused(dsbcc_tree, tmp_path, capsys, flag, value):
    """Issue 19 item 2: the partition and the output folder (its log paths) are written into sbatch text."""
    out = str(tmp_path / value) if flag == "--out" else str(tmp_path / "arr")
    extra = [flag, value] if flag == "--slurm-partition" else []
    args = parse("--input", str(dsbcc_tree), "--out", out, "--grid", "32", "--spacing", "3", "--workers", "1",
                 "--slurm-array", "2", *extra)
    assert submit_array(args, config_from_args(args), cluster="local") == 2
    err = capsys.readouterr().err
    assert f"{flag} " in err and "control character" in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())
