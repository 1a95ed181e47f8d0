"""Pretrain and publish the arms of an experiment, each through the normal trainer CLI.

Each arm is one subprocess of ``anatplane pretrain`` (or ``torchrun ... -m anatplane_dist.cli
pretrain`` for several local ranks, or ``anatplane submit --wait`` on SLURM), exactly the
command a user would type; the runner never trains in-process, so a crashing objective takes
down its own arm only.  Its run directory is named by a fingerprint of everything that
defines the pretraining (preset text, overrides, objective, ranks, shards), so changing an arm
gives it a fresh run directory while the other arms keep theirs; re-running an unchanged arm
resumes (the trainer's own resume) or, once published, is skipped.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from anatplane_dist.core import weights
from anatplane_dist.core.atomic import atomic_write_json
from anatplane_dist.core.hashing import json_fingerprint, sha256_file
from anatplane_dist.experiment.spec import ArmSpec, ExperimentSpec

__all__ = ["ArmResult", "arm_fingerprint", "pretrain_command", "prepare_arm"]


@dataclass
class ArmResult:
    """What became of one arm: ``ok`` with a published version, or ``failed`` with the reason."""
    name: str
    status: str                     # ok | failed | random
    fingerprint: str = ""
    published: str | None = None    # the published version directory
    seconds: float = 0.0
    reason: str = ""
    log: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _config_path(spec: ExperimentSpec) -> Path:
    """The arm's preset: a file, or a packaged preset by name (``launch/configs/X.yaml`` names one)."""
    from anatplane_dist.train.config import resolve_config_path
    return resolve_config_path(spec.pretrain.config).absolute()


def arm_overrides(spec: ExperimentSpec, arm: ArmSpec, shards: Path) -> list[str]:
    """Trainer overrides of one arm: the shared ones, the shards, the objective, the arm's own."""
    return [f"data.shards={shards}", *spec.pretrain.overrides, f"objective.name={arm.objective}",
            *arm.overrides]


def arm_fingerprint(spec: ExperimentSpec, arm: ArmSpec, shards: Path) -> str:
    manifest = shards / "manifest.json"
    key = {"preset": _config_path(spec).read_text(), "overrides": spec.pretrain.overrides,
           "objective": arm.objective, "arm_overrides": arm.overrides, "ranks": spec.pretrain.ranks,
           "shards": sha256_file(manifest) if manifest.is_file() else str(shards)}
    return json_fingerprint(key, 12)


def pretrain_command(spec: ExperimentSpec, run_dir: Path, overrides: list[str], *,
                     slurm: bool = False, slurm_args: list[str] | None = None) -> list[str]:
    """The trainer command line of one arm (printed and logged as run)."""
    py = sys.executable
    cfg = str(_config_path(spec))
    if slurm:
        return [py, "-m", "anatplane_dist.cli", "submit", *(slurm_args or []), "--wait", "--config", cfg,
                "--run-dir", str(run_dir), "--job-name", f"anatplane-{run_dir.name}", *overrides]
    if spec.pretrain.ranks > 1:
        return [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(spec.pretrain.ranks),
                "-m", "anatplane_dist.cli", "pretrain", "--config", cfg, "--run-dir", str(run_dir), *overrides]
    return [py, "-m", "anatplane_dist.cli", "pretrain", "--config", cfg, "--run-dir", str(run_dir), *overrides]


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc; empty elsewhere)."""
    out: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            out += [child, *_descendants(child)]
    return out


def _run_group(cmd: list[str], env: dict[str, str], log_file: Any, timeout_s: float | None) -> int:
    """Run the arm's launcher; on timeout it and every rank below it are killed, so no rank
    outlives it holding the run-dir lock. It stays in the runner's process group, so whatever
    kills the runner's group (Ctrl-C, a SIGKILL of the group) takes the ranks along too.
    Returns the exit code, -1 on timeout."""
    import signal
    proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        for pid in [*_descendants(proc.pid), proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
        return -1


def prepare_arm(spec: ExperimentSpec, arm: ArmSpec, out: Path, shards: Path, *, slurm: bool = False,
                slurm_args: list[str] | None = None, log: Callable[[str], None] = print) -> ArmResult:
    """Pretrain (or resume) and publish one arm; never raises for a failing arm."""
    from anatplane_dist import publish

    if not arm.pretrained:
        return ArmResult(arm.name, "random")
    status_file = out / "arms" / f"{arm.name}.json"
    try:
        fp = arm_fingerprint(spec, arm, shards)
        overrides = arm_overrides(spec, arm, shards)
    except (RuntimeError, OSError) as exc:
        res = ArmResult(arm.name, "failed", reason=str(exc))
        atomic_write_json(status_file, res.to_dict())
        return res
    run_dir = out / "arms" / f"{arm.name}-{fp}"
    if status_file.is_file():
        try:
            old = json.loads(status_file.read_text())
        except ValueError:
            old = {}
        if old.get("status") == "ok" and old.get("fingerprint") == fp and old.get("published") \
                and weights.part_file(Path(old["published"]), "encoder") is not None:
            log(f"arm {arm.name}: pretrained and published before ({old['published']})")
            return ArmResult(**{k: old[k] for k in ArmResult.__dataclass_fields__ if k in old})
    cmd = pretrain_command(spec, run_dir, overrides, slurm=slurm, slurm_args=slurm_args)
    log_path = out / "arms" / f"{arm.name}-{fp}.log"
    log(f"arm {arm.name}: pretraining\n$ {shlex.join(cmd)}\n  (log: {log_path})")
    t0 = time.perf_counter()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with open(log_path, "ab") as fh:
        rc = _run_group(cmd, env, fh, spec.pretrain.timeout_s)
    seconds = round(time.perf_counter() - t0, 1)
    tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] if log_path.is_file() else []
    if rc != 0:
        why = "timed out" if rc == -1 else f"exit {rc}"
        res = ArmResult(arm.name, "failed", fp, None, seconds,
                        f"pretraining {why}: {tail[0] if tail else 'no output'}", str(log_path))
    else:
        try:
            version = publish.publish(run_dir, out / "published", name=arm.name)
            res = ArmResult(arm.name, "ok", fp, str(version), seconds, "", str(log_path))
        except (publish.PublishError, OSError) as exc:
            res = ArmResult(arm.name, "failed", fp, None, seconds, f"publish failed: {exc}", str(log_path))
    atomic_write_json(status_file, res.to_dict())
    log(f"arm {arm.name}: {res.status} in {seconds} s" + (f" ({res.reason})" if res.reason else ""))
    return res
