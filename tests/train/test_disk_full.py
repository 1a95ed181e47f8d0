"""Issue 19 item 9: a full disk during a checkpoint save is one line naming the newest complete
checkpoint (was: 50 lines ending in torch's "[enforce fail at inline_container.cc] unexpected pos")."""
from __future__ import annotations

import shutil

from anatplane_dist.core import checkpoints as ckpt
from anatplane_dist.core.errors import ExitCode
from tests.fulldisk import disk_blocks_kib, tmpfs
from tests.train.test_resume_rules import _run


def test_a_full_disk_during_a_checkpoint_save_is_one_line(tmp_path, shards, clean_env, capsys):
    ref = tmp_path / "ref"
    assert _run(tmp_path, shards, ref, train={"epochs": 1, "ckpt_every": 4}) == 0     # checkpoints 4 and 8
    second = disk_blocks_kib(ref / "checkpoints" / "step_00000008")
    room = disk_blocks_kib(ref) - second // 2                                   # the second one cannot fit
    shutil.rmtree(ref)
    capsys.readouterr()
    with tmpfs(tmp_path / "full", room) as full:
        run = full / "run"
        assert _run(tmp_path, shards, run, train={"epochs": 1, "ckpt_every": 4}) == ExitCode.USAGE
        err = capsys.readouterr().err.strip()
        assert err.splitlines() == [
            f"anatplane pretrain: no space left on device writing checkpoint step 8 in {run}: the newest complete "
            f"checkpoint is step 4 ({run / 'checkpoints' / 'step_00000004'}); free space and rerun the same "
            "command to resume (the partial step is removed then)"]
        assert ckpt.find_latest_complete(run) == run / "checkpoints" / "step_00000004"
        ckpt.verify(run / "checkpoints" / "step_00000004")                      # intact, as the line says
