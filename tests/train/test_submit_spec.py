"""launch/submit.py without a cluster: resource rules, the sbatch script, dry run, the requeue hook."""
from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import submitit

from anatplane_dist.core import checkpoints as ckpt
from anatplane_dist.train import submit as slurm

REPO = Path(__file__).resolve().parents[2]
TINY = (REPO / "launch" / "configs" / "tiny-cpu.yaml").resolve()  # the packaged preset behind the symlink


def opts(tmp_path: Path, **kw) -> slurm.SubmitOptions:
    return slurm.SubmitOptions(config=TINY, run_dir=tmp_path / "run", **kw)


def test_one_task_per_gpu_and_cpu_tasks():
    assert slurm.resolve_tasks_per_node(8, None) == 8
    assert slurm.resolve_tasks_per_node(8, 8) == 8
    assert slurm.resolve_tasks_per_node(0, None) == 1
    assert slurm.resolve_tasks_per_node(0, 2) == 2
    with pytest.raises(ValueError, match="one task per GPU"):
        slurm.resolve_tasks_per_node(4, 2)
    with pytest.raises(ValueError, match="tasks-per-node must be >= 1"):
        slurm.resolve_tasks_per_node(0, 0)
    with pytest.raises(ValueError, match="gpus-per-node"):
        slurm.resolve_tasks_per_node(-1, None)


def test_option_validation(tmp_path):
    with pytest.raises(ValueError, match="shorter than the time limit"):
        opts(tmp_path, time_min=2, signal_delay_s=120)
    with pytest.raises(ValueError, match="nodes"):
        opts(tmp_path, nodes=0)
    with pytest.raises(ValueError, match="module:function"):
        opts(tmp_path, entry="anatplane_dist.train.cli")
    with pytest.raises(ValueError, match="--local runs on this machine"):
        slurm.build_executor(opts(tmp_path, nodes=2), local=True)
    assert opts(tmp_path, nodes=4, gpus_per_node=8).world_size == 32


def test_sbatch_script_for_a_multi_node_gpu_job(tmp_path):
    o = opts(tmp_path, nodes=4, gpus_per_node=8, partition="gpu", account="proj", qos="high", time_min=720,
             cpus_per_task=10, mem="480G", constraint="h100", exclude="node[01-02]", signal_delay_s=180,
             overrides=["train.epochs=3"])
    script = slurm.sbatch_script(o)
    flags = dict(re.findall(r"^#SBATCH --([\w-]+)=(.*)$", script, flags=re.M))
    assert flags == {
        "nodes": "4", "ntasks-per-node": "8", "gpus-per-node": "8", "cpus-per-task": "10", "partition": "gpu",
        "account": "proj", "qos": "high", "time": "720", "mem": "480G", "constraint": "h100",
        "exclude": "'node[01-02]'", "signal": "USR2@180", "job-name": "anatplane", "open-mode": "append",
        "wckey": "submitit",
        "output": f"{o.log_dir}/%j_0_log.out", "error": f"{o.log_dir}/%j_0_log.err"}
    # one srun step starts every task; no ssh/pdsh launcher
    srun = [line for line in script.splitlines() if line.startswith("srun")]
    assert len(srun) == 1 and "-m submitit.core._submit" in srun[0] and sys.executable in srun[0]
    assert "%j" not in str(o.run_dir) and "%j" not in " ".join(o.train_argv())
    assert o.train_argv() == ["--config", str(TINY), "--run-dir", str(tmp_path / "run"), "train.epochs=3"]


def test_cpu_job_has_no_gpu_request(tmp_path):
    script = slurm.sbatch_script(opts(tmp_path, tasks_per_node=2))
    assert "--ntasks-per-node=2" in script and "gpus" not in script
    spec = slurm.job_spec(opts(tmp_path, tasks_per_node=2, time_min=10, signal_delay_s=60))
    assert spec["world_size"] == 2
    assert any("counts as a timeout" in w for w in spec["warnings"])


def test_default_run_dir_is_the_pretrain_rule_and_has_no_job_id(tmp_path):
    """submit and pretrain name the same run for the same command (re-submitting resumes)."""
    from anatplane_dist.train.config import run_dir_for
    assert run_dir_for(TINY, "", None, tmp_path) == tmp_path / "tiny-cpu"
    assert run_dir_for(TINY, "cfg-dir", None) == Path("cfg-dir")
    assert run_dir_for(TINY, "cfg-dir", tmp_path / "given") == tmp_path / "given"
    import argparse
    args = argparse.Namespace(config=str(TINY), run_dir=None, overrides=[], nodes=1, gpus_per_node=0,
                              tasks_per_node=None, partition=None, account=None, qos=None, time_min=10,
                              cpus_per_task=None, mem=None, constraint=None, exclude=None, signal_delay_s=60,
                              max_num_timeout=3, job_name="x", entry=slurm.DEFAULT_ENTRY)
    assert slurm.options_from_args(args).run_dir == (Path("runs") / "tiny-cpu").resolve()


def test_dry_run_prints_spec_and_script_and_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    step = 7
    tmp = ckpt.prepare_tmp(run_dir, step)
    ckpt.finalize(tmp)  # an existing complete checkpoint: the submission would resume from it
    proc = subprocess.run(
        [sys.executable, str(REPO / "launch" / "submit.py"), "--nodes", "2", "--gpus-per-node", "4",
         "--partition", "gpu", "--time", "240", "--config", str(TINY), "--run-dir", str(run_dir),
         "--dry-run", "train.epochs=2"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    spec, end = json.JSONDecoder().raw_decode(proc.stdout)
    _, _, script = proc.stdout[end:].partition("\n# sbatch script")
    assert spec["world_size"] == 8 and spec["tasks_per_node"] == 4
    assert (spec["backend"], spec["zero_stage"]) == ("ddp", 0)  # tiny-cpu: zero_stage 0, 8 ranks
    assert "# training: backend ddp, ZeRO stage 0, world size 8 (2 node(s) x 4 task(s)), resume from " \
           f"{run_dir / 'checkpoints' / 'step_00000007'}" in proc.stdout
    assert spec["resume_from"] == str(run_dir / "checkpoints" / "step_00000007")
    assert spec["train_argv"][-1] == "train.epochs=2"
    assert "#SBATCH --gpus-per-node=4" in script and "#SBATCH --signal=USR2@120" in script
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoints"]  # no slurm/ dir, no jobs


def _dry_run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "launch" / "submit.py"), "--run-dir", str(tmp_path / "r"),
                           "--dry-run", *args], capture_output=True, text=True, cwd=tmp_path, timeout=120)


@pytest.mark.parametrize("args, backend, zero_stage", [
    # heart/knee set zero_stage 1: DeepSpeed under SLURM too, on 4 x 8 ranks
    (["--nodes", "4", "--gpus-per-node", "8", "--config", "heart"], "deepspeed", 1),
    (["--nodes", "2", "--gpus-per-node", "8", "--config", "knee"], "deepspeed", 1),
    (["--tasks-per-node", "2", "--config", "tiny-cpu"], "ddp", 0),
    (["--config", "tiny-cpu"], "single", 0),
    (["--tasks-per-node", "2", "--config", "tiny-cpu", "train.zero_stage=2"], "deepspeed", 2),
    (["--nodes", "2", "--gpus-per-node", "4", "--config", "heart", "train.backend=deepspeed",
      "train.zero_stage=0"], "deepspeed", 0),
])
def test_dry_run_prints_the_backend_and_zero_stage_the_trainer_will_use(tmp_path, args, backend, zero_stage):
    from anatplane_dist.train.config import load_config, resolve_config_path
    from anatplane_dist.train.options import resolve_backend

    proc = _dry_run(tmp_path, *args)
    assert proc.returncode == 0, proc.stderr
    spec, _ = json.JSONDecoder().raw_decode(proc.stdout)
    assert (spec["backend"], spec["zero_stage"]) == (backend, zero_stage)
    assert f"# training: backend {backend}, ZeRO stage {zero_stage}, world size {spec['world_size']}" in proc.stdout
    # the same decision the trainer makes for that world size under the SLURM launcher
    cfg = load_config(resolve_config_path(spec["config"]), spec["overrides"])
    assert resolve_backend(cfg.train, spec["world_size"], "slurm") == backend


@pytest.mark.parametrize("override, message", [
    ("train.backend=ddp", "train.zero_stage=1 is a DeepSpeed option but train.backend=ddp"),
    ("train.backend=single", "train.zero_stage=1 is a DeepSpeed option but train.backend=single"),
])
def test_dry_run_refuses_a_zero_stage_without_deepspeed(tmp_path, override, message):
    proc = _dry_run(tmp_path, "--nodes", "2", "--gpus-per-node", "4", "--config", "heart", override)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().startswith("submit: ") and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_config_errors_fail_before_submission(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "launch" / "submit.py"), "--config", str(TINY), "--run-dir",
         str(tmp_path / "r"), "--dry-run", "train.epochz=2"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "train.epochz" in proc.stderr
    proc = subprocess.run(
        [sys.executable, str(REPO / "launch" / "submit.py"), "--gpus-per-node", "4", "--tasks-per-node", "2",
         "--config", str(TINY), "--dry-run"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "one task per GPU" in proc.stderr


def test_checkpoint_requeues_the_same_command():
    job = slurm.TrainJob(["--config", "c.yaml", "--run-dir", "/runs/x", "a=1"], "/runs/x")
    delayed = job.checkpoint()
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    again = delayed.function
    assert isinstance(again, slurm.TrainJob) and again is not job
    assert (again.argv, again.run_dir, again.entry) == (job.argv, job.run_dir, job.entry)
    assert delayed.args == () and delayed.kwargs == {}
    # what submitit writes to disk for the requeued job must load back
    assert pickle.loads(pickle.dumps(delayed)).function == job


def test_resolve_entry():
    from anatplane_dist.train import cli
    assert slurm.resolve_entry(slurm.DEFAULT_ENTRY) is cli.main
    with pytest.raises(ImportError, match="no callable 'nope'"):
        slurm.resolve_entry("anatplane_dist.train.cli:nope")


def test_signal_delay_is_checked_against_the_recorded_save_time(tmp_path):
    tmp = ckpt.prepare_tmp(tmp_path / "run", 3)
    ckpt.write_meta(tmp, {"step": 3, "save_s": 100.0})
    ckpt.finalize(tmp)
    assert any("not comfortably above" in w for w in slurm.spec_warnings(opts(tmp_path, signal_delay_s=120)))
    assert not any("not comfortably above" in w for w in slurm.spec_warnings(opts(tmp_path, signal_delay_s=300)))


def test_no_sbatch_is_a_clear_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PATH"}
    env["PATH"] = str(tmp_path)  # nothing on it
    proc = subprocess.run(
        [sys.executable, str(REPO / "launch" / "submit.py"), "--config", str(TINY), "--run-dir",
         str(tmp_path / "r")], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and "sbatch not found" in proc.stderr
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- --local, for real
def gloo_probe(argv: list[str]) -> int:
    """A training entry point stand-in for the --local test: real gloo across the job's tasks."""
    import torch
    import torch.distributed as dist

    run_dir = Path(argv[argv.index("--run-dir") + 1])
    if os.environ.get("PROBE_FAIL"):
        return 1
    dist.init_process_group("gloo")
    x = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(x)
    keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    (run_dir / f"probe-{dist.get_rank()}.json").write_text(json.dumps(
        {"sum": x.item(), "argv": argv, **{k: os.environ[k] for k in keys}}))
    dist.destroy_process_group()
    return 0


def test_local_executor_runs_the_tasks_with_a_torch_distributed_env(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "OMP_NUM_THREADS": "1",
           "MASTER_PORT": "1"}  # a stale MASTER_PORT in the shell must not be used
    cmd = [sys.executable, str(REPO / "launch" / "submit.py"), "--local", "--tasks-per-node", "2",
           "--time", "10", "--entry", "test_submit_spec:gloo_probe", "--config", str(TINY)]
    proc = subprocess.run(cmd + ["--run-dir", str(tmp_path / "ok"), "train.epochs=1"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "submitted job" in proc.stdout and "(local)" in proc.stdout and "2 task(s) succeeded" in proc.stdout
    probes = [json.loads((tmp_path / "ok" / f"probe-{r}.json").read_text()) for r in (0, 1)]
    assert [p["RANK"] for p in probes] == ["0", "1"] and {p["WORLD_SIZE"] for p in probes} == {"2"}
    assert {p["sum"] for p in probes} == {3.0}
    assert probes[0]["MASTER_PORT"] == probes[1]["MASTER_PORT"] != "1"
    assert probes[0]["argv"] == ["--config", str(TINY), "--run-dir", str(tmp_path / "ok"), "train.epochs=1"]

    proc = subprocess.run(cmd + ["--run-dir", str(tmp_path / "bad")], env={**env, "PROBE_FAIL": "1"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "did not succeed" in proc.stdout, proc.stdout + proc.stderr


# -- issue 19 item 2: no value reaches the sbatch script with a control character -------------
HOSTILE = {
    "job_name": "x\ntouch PWNED #", "partition": "gpu\n#SBATCH --uid=0", "account": "a\rb", "qos": "q\x00",
    "mem": "4G\n#SBATCH --mem=0", "constraint": "h100\nrm -rf ~", "exclude": "n1\x7f", "entry": "m:f\nid",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_control_characters_are_refused_in_every_script_value(tmp_path, name):
    value = HOSTILE[name]
    safe = opts(tmp_path, nodes=1, gpus_per_node=1)
    setattr(safe, name, value.split("\n")[0].split("\r")[0].replace("\x00", "").replace("\x7f", ""))
    clean_script = slurm.sbatch_script(safe)   # the real text: the benign value sits on its own line
    if name != "entry":
        assert any(getattr(safe, name) in line for line in clean_script.splitlines())
    with pytest.raises(ValueError, match="control character"):
        opts(tmp_path, **{name: value})
    setattr(safe, name, value)                  # changed after validation: the script is still refused
    with pytest.raises(ValueError, match="control character"):
        slurm.sbatch_script(safe)


def test_a_newline_in_the_run_dir_or_an_override_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--run-dir"):
        slurm.SubmitOptions(config=TINY, run_dir=tmp_path / "r\ntouch PWNED")
    with pytest.raises(ValueError, match="override"):
        opts(tmp_path, overrides=["train.epochs=1\nid"])


def test_submit_cli_refuses_an_injected_job_name_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "launch/submit.py", "--config", str(TINY), "--run-dir", str(tmp_path / "r"),
                           "--job-name", "x\ntouch PWNED #", "--dry-run"],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "control character" in proc.stderr
    assert "touch PWNED" not in proc.stdout
