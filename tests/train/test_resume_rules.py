"""Resume rules, one process: a run is never destroyed by a rerun that cannot use it."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

from anatplane_dist.core import checkpoints as ckpt
from anatplane_dist.core import weights
from anatplane_dist.core.errors import ExitCode
from anatplane_dist.train.cli import main
from anatplane_dist.train.metrics import read_metrics
from anatplane_dist.train.resume_rules import HISTORY
from tests.train.synth import config_yaml

QUIET = {"progress": "none"}


def _run(tmp_path, shards, run_dir, *args, **sections) -> int:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(config_yaml(shards, **{"train": {**QUIET, **sections.pop("train", {})}, **sections}))
    return main(["--config", str(cfg), "--run-dir", str(run_dir), *args])


def _snapshot(run_dir):
    """sha256 of every file of a run dir (the lock file aside): what 'nothing changed' means."""
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name != ".lock"}


def _history(run_dir):
    return [json.loads(line) for line in (run_dir / HISTORY).read_text().splitlines()]


@pytest.fixture()
def finished(tmp_path, shards, clean_env):
    """A finished 1-epoch run (8 steps, checkpoints at 4 and 8)."""
    run = tmp_path / "run"
    assert _run(tmp_path, shards, run, train={"epochs": 1, "ckpt_every": 4}) == 0
    return run


def test_unsafe_config_change_is_refused_and_nothing_changes(tmp_path, shards, finished, capsys):
    before = _snapshot(finished)
    assert _run(tmp_path, shards, finished, "optim.base_lr=0.0004", train={"epochs": 1, "ckpt_every": 4}) == 2
    err = capsys.readouterr().err
    assert "optim.base_lr: 0.003 -> 0.0004" in err and "--allow-config-change" in err and len(err.splitlines()) == 1
    assert _snapshot(finished) == before


def test_a_model_change_does_not_destroy_the_run(tmp_path, shards, finished, capsys):
    """Finding 1: model.width=4 -> 3 used to train from step 0 and rotate the checkpoints away."""
    before = _snapshot(finished)
    assert _run(tmp_path, shards, finished, "model.width=3", train={"epochs": 1, "ckpt_every": 4}) == 2
    assert "model.width: 4 -> 3" in capsys.readouterr().err
    assert _snapshot(finished) == before


def test_allow_config_change_resumes_and_records_it(tmp_path, shards, finished):
    assert _run(tmp_path, shards, finished, "--allow-config-change", "optim.clip=0.5",
                train={"epochs": 2, "ckpt_every": 4}) == 0
    hist = _history(finished)
    assert [h["start_step"] for h in hist] == [0, 8]
    assert hist[1]["changed"] == ["optim.clip", "train.epochs"]
    assert "clip: 0.5" in (finished / "config.yaml").read_text()
    assert ckpt.step_of(ckpt.find_latest_complete(finished)) == 16


def test_safe_change_of_the_run_length_continues(tmp_path, shards, finished):
    assert _run(tmp_path, shards, finished, train={"epochs": 2, "ckpt_every": 4, "log_every": 1}) == 0
    assert ckpt.step_of(ckpt.find_latest_complete(finished)) == 16
    steps = [r["step"] for r in read_metrics(finished) if "loss" in r]
    assert steps[-8:] == list(range(9, 17)) and len(steps) == len(set(steps))
    assert _history(finished)[-1]["changed"] == ["train.epochs", "train.log_every"]


def test_no_loadable_checkpoint_stops_with_exit_2_and_keeps_everything(tmp_path, shards, finished, capsys):
    for c in ckpt.list_complete(finished):
        state = c / "state.pt"
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])    # truncated by a full disk
    before = _snapshot(finished)
    assert _run(tmp_path, shards, finished, train={"epochs": 1, "ckpt_every": 4}) == 2
    err = capsys.readouterr().err
    assert "none can be resumed" in err and "step_00000008" in err and "step_00000004" in err
    assert _snapshot(finished) == before


def test_a_tampered_newest_checkpoint_falls_back_to_a_verified_one(tmp_path, shards, finished):
    newest, older = ckpt.list_complete(finished)
    data = bytearray((newest / "state.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF                                      # one byte, same size
    (newest / "state.pt").write_bytes(bytes(data))
    reference = weights.load_part(newest / "fp32", "encoder")["state_dict"]
    assert _run(tmp_path, shards, finished, train={"epochs": 1, "ckpt_every": 4}) == 0
    refused = finished / "checkpoints" / ckpt.REFUSED / newest.name
    assert "differs from the sha256" in (refused / "REFUSED.txt").read_text()
    again = ckpt.find_latest_complete(finished)
    assert ckpt.step_of(again) == 8 and _history(finished)[-1]["start_step"] == 4
    ckpt.verify(again)
    for k, v in weights.load_part(again / "fp32", "encoder")["state_dict"].items():
        assert torch.equal(v, reference[k]), k                     # retrained 5..8 exactly as before


def test_resume_never_and_must(tmp_path, shards, finished, capsys, clean_env):
    before = _snapshot(finished)
    assert _run(tmp_path, shards, finished, "train.resume=never", train={"epochs": 1}) == 2
    assert "train.resume=never" in capsys.readouterr().err and _snapshot(finished) == before
    assert _run(tmp_path, shards, tmp_path / "empty", "train.resume=must", train={"epochs": 1}) == 2
    assert "train.resume=must" in capsys.readouterr().err
    assert not ckpt.has_checkpoints(tmp_path / "empty")


def test_init_from_starts_a_new_run_from_verified_weights(tmp_path, shards, finished, capsys):
    source = ckpt.find_latest_complete(finished)
    run = tmp_path / "from-init"
    # an LR of ~0 keeps the first step's weights at the initial ones (to float precision)
    assert _run(tmp_path, shards, run, f"train.init_from={source / 'fp32'}", "optim.base_lr=1e-20",
                "optim.min_lr=0", "optim.weight_decay=0", train={"max_steps": 1}) == 0
    got = weights.load_part(ckpt.find_latest_complete(run) / "fp32", "decoder")["state_dict"]
    want = weights.load_part(source / "fp32", "decoder")["state_dict"]
    for k, v in want.items():
        if v.is_floating_point() and "running" not in k:
            torch.testing.assert_close(got[k], v, rtol=0, atol=1e-12)
    (source / "fp32" / "decoder.safetensors").write_bytes(b"tampered")
    assert _run(tmp_path, shards, tmp_path / "bad-init", f"train.init_from={source}", train={"max_steps": 1}) == 2
    assert "decoder.safetensors" in capsys.readouterr().err
    assert not (tmp_path / "bad-init" / "checkpoints").exists()


@pytest.mark.parametrize("override, message", [
    ("data.shards=/does/not/exist", "data.shards=/does/not/exist: no such file or directory"),
    ("optim.base_lr=nan", "optim.base_lr: must be a finite number"),
    ("train.resume=/some/path", "train.resume: '/some/path' is not one of"),
])
def test_bad_values_are_one_line_errors(tmp_path, shards, clean_env, capsys, override, message):
    assert _run(tmp_path, shards, tmp_path / "run", override) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_yaml_syntax_error_names_file_and_line(tmp_path, clean_env, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: 2\n  keep_last: [1,\n")
    assert main(["--config", str(bad), "--run-dir", str(tmp_path / "run")]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert f"{bad}:4:1: YAML syntax error" in err and len(err.strip().splitlines()) == 1


def test_a_run_killed_before_its_first_checkpoint_restarts_with_a_new_config(tmp_path, shards, clean_env):
    run = tmp_path / "run"
    assert _run(tmp_path, shards, run, train={"epochs": 1, "ckpt_every": 4}) == 0
    for c in ckpt.list_complete(run):
        import shutil
        shutil.rmtree(c)                      # as if killed before the first save
    rows_before = (run / "metrics.jsonl").read_text()
    assert _run(tmp_path, shards, run, "optim.base_lr=0.001", train={"epochs": 1, "ckpt_every": 4}) == 0
    assert (run / "metrics.jsonl.1").read_text() == rows_before    # the earlier attempt's rows are kept
    assert [h["start_step"] for h in _history(run)] == [0, 0]


def test_publishing_into_an_unwritable_folder_is_one_line(tmp_path, finished, capsys):
    """Finding 7: a destination that cannot be written (here: under a regular file, which fails the
    same way as a read-only folder and also as root) is one line and exit 2, nothing half-written."""
    from anatplane_dist.cli import main as anatplane
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    assert anatplane(["publish", str(finished), "--to", str(blocker / "models"), "--name", "tiny"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and str(blocker) in err


def test_a_step_dir_without_marker_is_set_aside_not_a_dead_end(tmp_path, shards, finished):
    """A save killed between rename and marker (older versions) must not block step 8 forever."""
    newest = ckpt.find_latest_complete(finished)
    (newest / ckpt.COMPLETE).unlink()
    assert _run(tmp_path, shards, finished, train={"epochs": 1, "ckpt_every": 4}) == 0
    assert ckpt.step_of(ckpt.find_latest_complete(finished)) == 8
    kept = finished / "checkpoints" / ckpt.REFUSED / newest.name
    assert "no COMPLETE marker" in (kept / "REFUSED.txt").read_text()
