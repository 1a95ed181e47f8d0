"""``anatplane shard``: exit codes, a real SIGKILL half-way + resume, disk full, --merge."""
from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from anatplane_dist.cli import main
from tests.shards.conftest import write_dsbcc_tree

REPO = Path(__file__).resolve().parents[2]
ARGS = ["--grid", "32", "--spacing", "3", "--shard-size", "4", "--val-fraction", "0.3", "--no-progress"]


def cli(*argv: str) -> int:
    return main(["shard", *argv])


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli_dsbcc")
    write_dsbcc_tree(root, n_subjects=6, n_sax=3, n_frames=2)
    return root


def test_shard_then_merge_exit_codes(tree, tmp_path, capsys):
    assert cli("--input", str(tree), "--out", str(tmp_path / "a"), "--workers", "1", *ARGS) == 0
    assert "36 samples" in capsys.readouterr().out
    for i in range(2):
        assert cli("--input", str(tree), "--out", str(tmp_path / "p"), "--workers", "1", "--part", f"{i}/2", *ARGS) == 0
    assert not (tmp_path / "p" / "manifest.json").exists()
    assert cli("--merge", "--out", str(tmp_path / "p")) == 0
    m = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert m["counts"]["samples"] == 36 and m["parts"] == 2
    # usage errors: 2; nothing sharded: 1
    assert cli("--profile", "nope", "--input", str(tree), "--out", str(tmp_path / "x"), *ARGS) == 2
    assert cli("--input", str(tree), "--out", str(tmp_path / "x"), "--part", "2/2", *ARGS) == 2
    assert cli("--input", str(tree), "--out", str(tmp_path / "a"), "--workers", "1", "--grid", "40", *ARGS[2:]) == 2
    assert "different config_hash" in capsys.readouterr().err
    empty = tmp_path / "empty"
    (empty / "0001" / "study").mkdir(parents=True)
    assert cli("--input", str(empty), "--out", str(tmp_path / "e"), "--workers", "1", *ARGS) == 1
    assert "no usable series" in (tmp_path / "e" / "skipped.jsonl").read_text()
    assert cli("--merge", "--out", str(tmp_path / "nothing")) == 1


def _complete_tars(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("*.tar"))


def test_killed_run_leaves_no_partial_shard_and_resumes_to_the_same_bytes(tree, tmp_path):
    ref = tmp_path / "ref"
    assert cli("--input", str(tree), "--out", str(ref), "--workers", "1", *ARGS) == 0
    profile = tmp_path / "slow.yaml"
    profile.write_text("name: heart\nreader: tests.shards.slow_reader\ninput_view: sax\n"
                       "references: [2ch, 4ch]\n")
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "anatplane_dist.cli", "shard", "--profile", str(profile), "--input", str(tree),
           "--out", str(out), "--workers", "1", *ARGS]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and len(_complete_tars(out) if out.exists() else []) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = _complete_tars(out)
    assert 2 <= len(done) < len(_complete_tars(ref)), "the run was not cut half-way"
    assert not (out / "manifest.json").exists()
    for name in done:                         # every final-named shard is a whole tar
        with tarfile.open(out / name) as tf:
            assert len(tf.getmembers()) % 2 == 0
    # a complete shard then changes by one byte (same size): the resume must not trust it
    victim = out / done[0]
    data = bytearray(victim.read_bytes())
    data[1000] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert subprocess.run(cmd, cwd=REPO, env=env, capture_output=True).returncode == 0
    assert _complete_tars(out) == _complete_tars(ref)
    for name in _complete_tars(ref):
        assert (out / name).read_bytes() == (ref / name).read_bytes()
    journal = (out / "_state" / "part-0000-of-0001.jsonl").read_text()
    assert all(f'"name": "{n}"' in journal for n in done)
    # the changed shard and those after it are rewritten (a resume restarts at the first bad shard)
    assert (out / done[0]).read_bytes() == (ref / done[0]).read_bytes()
    manifest = json.loads((out / "manifest.json").read_text())
    for rec in manifest["shards"]:                       # the manifest certifies what is on disk
        assert hashlib.sha256((out / rec["name"]).read_bytes()).hexdigest() == rec["sha256"]
    assert json.loads((out / "manifest.json").read_text())["counts"]["samples"] == 36


def test_disk_full_is_recorded_and_a_rerun_completes(tree, tmp_path):
    out = tmp_path / "full"
    cmd = [sys.executable, "-m", "anatplane_dist.cli", "shard", "--input", str(tree), "--out", str(out),
           "--workers", "1", *ARGS]

    def limit_file_size():                     # every file this process writes is capped at 40 kB
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    big = [a if a != "4" else "50" for a in cmd]            # 50-sample shards outgrow the cap
    res = subprocess.run(big, cwd=REPO, env=env, capture_output=True, text=True, preexec_fn=limit_file_size)
    assert res.returncode == 1, res.stderr
    assert "output error" in res.stderr and "a re-run resumes" in res.stderr
    assert not list(out.glob("*.tar")) and not list(out.glob("*.tmp"))
    assert not (out / "manifest.json").exists()
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert skipped and all("File too large" in s["reason"] for s in skipped)
    res = subprocess.run(big, cwd=REPO, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "manifest.json").read_text())["counts"]["samples"] == 36


# -- issue 19 items 11 and 17: a hostile profile and an absurd grid are one line, exit 2 -------
def test_a_python_object_tag_in_a_profile_is_refused_in_one_line(tree, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"name: evil\nreader: !!python/object/apply:os.system ['touch {marker}']\n")
    rc = cli("--profile", str(evil), "--input", str(tree), "--out", str(tmp_path / "o"), *ARGS)
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{evil}:2:9: YAML tag refused" in err
    assert not marker.exists() and not (tmp_path / "o").exists()


def test_an_absurd_grid_is_refused_before_any_work(tree, tmp_path, capsys):
    rc = cli("--input", str(tree), "--out", str(tmp_path / "o"), "--grid", "100000", "--no-progress")
    err = capsys.readouterr().err
    assert rc == 2 and "grid must be 8 to 4096 pixels, got 100000" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
