"""README.md's shell blocks, run as a user would run them, top to bottom, at tiny sizes.

Why: the README is a newcomer's first hour, and every command in it must work as written
(issue 12). This test reads the ```sh blocks of README.md, applies the substitutions declared
in ONE place below (:data:`SUBSTITUTIONS`: sizes, GPU counts, free ports, ``/shared``), and runs
every command for real in one fresh working directory, in README order, so each name a command
uses must have been made by an earlier line. What cannot run here is declared next to them:
:data:`DRY_RUN` (commands that need a cluster run with ``--dry-run``) and :data:`SKIPPED` (each
with its reason); a skipped command still gets a static check (its program exists, its
arguments parse, the repository files it names exist). Any other command runs for real.
``ANATPLANE_README_NNUNET=1`` also runs the nnU-Net block (nnU-Net's planning: minutes).

``python tests/test_readme.py`` prints every README command with how this test runs it.
"""
from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from anatplane_dist.core.dist import free_port

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BIN = Path(sys.executable).parent          # the venv's python, anatplane, torchrun, deepspeed, nnUNetv2_*

# ----------------------------------------------------------------------------------------------
# The one place where this test departs from the README's text. Applied in order with re.sub to
# every command (continuation lines joined, trailing comment removed); {shared} is this test's
# stand-in for /shared, {port} a free TCP port picked for that command.
TINY_TRAIN = ("model.width=8 model.depth=3 model.loc_hidden=[32] data.batch_size=2 data.num_workers=1 "
              "data.shuffle_buffer=16 data.shuffle_initial=4 data.samples_per_epoch=16 "
              "train.max_steps=2 train.val_batches=1 train.progress=none train.compile=false")
SUBSTITUTIONS: list[tuple[str, str, str]] = [
    # (pattern, replacement, why)
    (r"^(anatplane phantom heart .*)--subjects 20(.*)--labelled 10(.*)$", r"\1--subjects 3\2--labelled 4\3 --size 64 --frames 4",
     "sizes: 3 cine subjects + 4 labelled patients at 64^2, 4 frames"),
    (r"^(anatplane phantom knee .*)--subjects 20(.*)$", r"\1--subjects 6\2 --size 64 --slices 8",
     "sizes: 6 knee studies at 64^2, 8 slices (enough for a two-class test set)"),
    (r"--grid 224 --spacing 1\.26", "--grid 64 --spacing 3.0", "sizes: the 64^2, 3 mm grid"),
    (r"(anatplane shard .*)--workers 8", r"\1--workers 1", "tiny inputs: one in-process worker beats a spawned pool"),
    (r"^torchrun --nproc_per_node 8 ", "torchrun --nproc_per_node 2 --master_port {port} ",
     "GPU count: 2 CPU ranks (gloo); a free port"),
    (r"^deepspeed --num_gpus 8 ", "deepspeed --num_gpus 2 --master_port {port} ",
     "GPU count: 2 CPU ranks (gloo); a free port"),
    (r"^(.*launch/pretrain\.py .*)$", r"\1 " + TINY_TRAIN,
     "sizes: a width-8 U-Net, 2 optimiser steps, not compiled (the GPU presets compile; ~1 min per rank on CPU)"),
    (r"--labels 1,2,4,all --seeds 0,1 (.*)$", r"--labels 1,all --seeds 0 \1 --steps 3 --workers 1",
     "sizes: the tiny pools hold fewer than 4 subjects; one seed, 3 fine-tune steps, in-process"),
    (r"/shared/", "{shared}/", "/shared is a folder of this test's working directory"),
]
#: commands that need a cluster: run with --dry-run appended (pattern, why)
DRY_RUN: list[tuple[str, str]] = [
    (r"^python launch/submit\.py (?!.*--dry-run)", "submits to a 4-node GPU SLURM cluster"),
]
_NNUNET = ("needs nnU-Net's plans from nnUNetv2_plan_and_preprocess (about 70 s on 2 cores) and then "
           "nnU-Net's own training; this route runs for real at tiny sizes in tests/nnunet/test_roundtrip.py (slow)")
#: ANATPLANE_README_NNUNET=1 runs the nnU-Net block too, up to (not including) nnUNetv2_train
RUN_NNUNET = os.environ.get("ANATPLANE_README_NNUNET") == "1"
#: commands not run here (pattern, why); each still gets a static check
SKIPPED: list[tuple[str, str]] = [
    (r"^make test\b", "it would run this test inside itself"),
    (r"^make demo\b", "the demo itself (minutes): its stages are the experiment runner, tested in tests/experiment/"),
    (r"^anatplane experiment run experiments/smoke\.yaml ",
     "runs for real, as written, in tests/experiment/test_smoke_preset.py (slow, about 4 min)"),
    *([] if RUN_NNUNET else [
        (r"^nnUNetv2_plan_and_preprocess ", _NNUNET),
        (r"^(GRID|SPACING)=", _NNUNET),
        (r"shards/heart-nnunet|model\.name=nnunet|--format nnunet runs/nnunet", _NNUNET)]),
    (r"^nnUNetv2_train ", _NNUNET),
]
# ----------------------------------------------------------------------------------------------


@dataclass
class Step:
    """One README command and how this test runs it."""
    index: int
    readme: str          #: the command as README.md writes it (continuations joined)
    how: str             #: "run" | "dry-run" | "skip"
    command: str         #: what runs (substituted); "" when skipped
    why: str             #: the substitutions/reason, for the report


def sh_blocks(text: str) -> list[str]:
    """The bodies of the README's ```sh fences, in order."""
    return re.findall(r"^```sh\n(.*?)^```", text, flags=re.S | re.M)


def commands(block: str) -> list[str]:
    """A block's commands: backslash continuations joined, comment lines and trailing comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in joined.splitlines():
        line = re.sub(r"\s+#\s.*$", "", line).strip()   # a trailing "  # comment"
        if line and not line.startswith("#"):
            out.append(" ".join(line.split()) if "'" not in line and '"' not in line else line)
    return out


def plan(text: str, shared: str = "/tmp/shared") -> list[Step]:
    """Every README command with how it is run (the substitutions already applied)."""
    steps = []
    for i, cmd in enumerate(c for block in sh_blocks(text) for c in commands(block)):
        skip = next((why for pat, why in SKIPPED if re.search(pat, cmd)), None)
        if skip is not None:
            steps.append(Step(i, cmd, "skip", "", skip))
            continue
        new, whys = cmd, []
        for pat, repl, why in SUBSTITUTIONS:
            changed = re.sub(pat, repl, new)
            if changed != new:
                whys.append(why)
            new = changed
        how = "run"
        for pat, why in DRY_RUN:
            if re.search(pat, cmd):
                new, how = new + " --dry-run", "dry-run"
                whys.append(why)
        if "{port}" in new:
            new = new.replace("{port}", str(free_port()))
        steps.append(Step(i, cmd, how, new.replace("{shared}", shared), "; ".join(whys) or "as written"))
    return steps


# --------------------------------------------------------------------------- running
def workspace(root: Path) -> Path:
    """A fresh working directory laid out like a clone's root: launch/ and experiments/ from the repo."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("launch", "experiments"):
        (root / name).symlink_to(REPO / name)
    return root


def environment(work: Path) -> dict[str, str]:
    """The user's shell: the venv first on PATH, one thread per rank, no inherited rank variables."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1",
               ANATPLANE_CACHE=str(work / "cache"), nnUNet_n_proc_DA="1", nnUNet_def_n_proc="1")
    return env


MARK = "@@readme-step"


def script(steps: list[Step]) -> str:
    """One bash script, as a user's session: shell variables carry over, the first failure stops it."""
    lines = ["set -eo pipefail"]
    for s in steps:
        if s.how != "skip":
            lines += [f"printf '\\n{MARK} {s.index} %s\\n' \"$(date +%s.%N)\"", s.command]
    lines.append(f"printf '\\n{MARK} end %s\\n' \"$(date +%s.%N)\"")
    return "\n".join(lines) + "\n"


def run_steps(steps: list[Step], work: Path, timeout: float = 1500) -> dict[int, float]:
    """Run the steps in ``work``; seconds per step, or AssertionError naming the failing README command."""
    log = work / "readme.log"
    with open(log, "w") as f:
        proc = subprocess.run(["bash", "-c", script(steps)], cwd=work, env=environment(work), stdout=f,
                              stderr=subprocess.STDOUT, timeout=timeout)
    text = log.read_text(errors="replace")
    marks = [(m.group(1), float(m.group(2))) for m in re.finditer(rf"^{MARK} (\S+) (\S+)$", text, flags=re.M)]
    if proc.returncode != 0 or not marks or marks[-1][0] != "end":
        last = int(marks[-1][0]) if marks and marks[-1][0] != "end" else None
        step = next((s for s in steps if s.index == last), None)
        tail = text[text.rfind(MARK):][-4000:] if marks else text[-4000:]
        raise AssertionError(f"README command failed (exit {proc.returncode}):\n  {step.readme if step else '?'}\n"
                             f"run as:\n  {step.command if step else '?'}\n--- output ---\n{tail}")
    return {int(a): round(t1 - t0, 1) for (a, t0), (_, t1) in zip(marks, marks[1:])}


def static_check(step: Step, work: Path) -> None:
    """A skipped command must still name a program that exists, arguments that parse, files that exist."""
    words = step.readme.split()
    if re.match(r"^[A-Z_]+=", words[0]):      # a shell assignment (its value is another skipped command's)
        return
    assert shutil.which(words[0], path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"), \
        f"{step.readme}: {words[0]} is not installed"
    if words[0] == "anatplane" and "$" not in step.readme:
        from anatplane_dist import cli
        argv = shlex.split(step.readme)[1:]
        module = importlib.import_module(cli.COMMANDS[argv[0]][0])
        import argparse
        parser = argparse.ArgumentParser(prog=f"anatplane {argv[0]}")
        module.add_arguments(parser)
        parser.parse_args(argv[1:])             # a renamed or removed flag fails here (SystemExit)
    for word in words[1:]:
        if re.fullmatch(r"(experiments|launch)/\S+\.ya?ml", word):
            assert (work / word).is_file(), f"{step.readme}: {word} does not exist"
            if word.startswith("experiments/"):
                from anatplane_dist.experiment.spec import load_spec
                load_spec(work / word)


# --------------------------------------------------------------------------- tests
def test_every_readme_command_has_a_plan_and_every_rule_is_used(tmp_path):
    """The rules above stay in step with the README: a rule that matches nothing is stale."""
    steps = plan(README.read_text())
    assert len(steps) >= 20, [s.readme for s in steps]
    for pat, *_, why in SUBSTITUTIONS + DRY_RUN + SKIPPED:
        assert any(re.search(pat, s.readme) for s in steps), f"rule matches no README command: {pat} ({why})"
    # only the make lines and nnU-Net's own planning/training (and what needs its plans) are skipped
    assert all(s.readme.startswith(("make ", "anatplane experiment run experiments/smoke.yaml")) or s.why == _NNUNET
               for s in steps if s.how == "skip"), [s.readme for s in steps if s.how == "skip"]
    # every launcher appears, and each runs (a substitution never turns one into a no-op)
    for launcher in ("python launch/pretrain.py", "torchrun ", "deepspeed ", "python launch/submit.py"):
        assert any(s.readme.startswith(launcher) and s.how != "skip" for s in steps), launcher
    work = workspace(tmp_path / "w")
    for s in steps:
        if s.how == "skip":
            static_check(s, work)


def test_a_broken_readme_command_fails_the_run_and_is_named(tmp_path):
    """The issue's first bug (a series folder the phantom does not write) must fail, naming the line."""
    text = ("```sh\nanatplane phantom heart --subjects 1 --out data/heart --size 32 --frames 2\n"
            "anatplane inspect data/heart/1/study/sax_12 data/heart/1/study/2ch_6\n```\n")
    steps = plan(text)
    with pytest.raises(AssertionError, match=r"(?s)exit 2.*anatplane inspect data/heart/1/study/sax_12 "
                                             r"data/heart/1/study/2ch_6"):
        run_steps(steps, workspace(tmp_path / "w"), timeout=300)


def test_readme_quotes_no_numbers_of_its_own():
    """Results in the README come from the demo's report (demo/README-lines.md), never typed by hand."""
    text = README.read_text()
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    assert not re.search(r"Dice\s+\d|\d+(\.\d+)?\s*°|error from \d|\d+(\.\d+)?\s*minutes", prose), \
        "README quotes a result: take it from demo/README-lines.md (written by make demo) instead"
    assert "demo/README-lines.md" in text and "demo/REPORT.md" in text
    demo_src = (REPO / "anatplane_dist" / "demo.py").read_text()
    assert '"README-lines.md"' in demo_src and '"REPORT.md"' in demo_src   # the files the README points at


@pytest.mark.slow
def test_readme_commands_run_top_to_bottom(tmp_path):
    """Every README command, in order, in one fresh directory (about 5 min on 2 loaded cores)."""
    work = workspace(tmp_path / "w")
    steps = plan(README.read_text(), shared=str(work / "shared"))
    t0 = time.perf_counter()
    seconds = run_steps(steps, work)
    print(f"\nREADME commands: {len(seconds)} run in {time.perf_counter() - t0:.0f} s")
    for s in steps:
        print(f"  {seconds.get(s.index, '-'):>6} s  {s.how:8} {s.readme}")
    # the path really made what the later lines use
    assert (work / "lines.png").stat().st_size > 0
    assert (work / "shards/heart/manifest.json").is_file() and (work / "shards/knee/manifest.json").is_file()
    for model in ("heart-unet", "knee-unet"):
        assert (work / "shared/models" / model / "latest").exists(), model
    # the presets mean what they say: ZeRO-1 runs DeepSpeed under torchrun too, and the dry run says so
    for run, launcher in (("heart", "deepspeed"), ("knee", "torchrun")):
        starts = [json.loads(line) for line in (work / "shared/runs" / run / "config-history.jsonl").open()]
        assert [(r["backend"], r["world_size"]) for r in starts] == [("deepspeed", 2)], (launcher, starts)
    log = (work / "readme.log").read_text()
    assert log.count("# training: backend deepspeed, ZeRO stage 1, world size 32 (4 node(s) x 8 task(s))") == 2
    for task in ("heart", "knee"):      # the two-arm experiment's files (random vs pretrained)
        assert (work / f"ft/{task}/results.csv").is_file() and (work / f"ft/{task}/results.md").is_file()
    assert (work / "nnUNet_raw/Dataset501_ACDC/dataset.json").is_file()
    if RUN_NNUNET:
        assert (work / "pretrained.pth").stat().st_size > 0


if __name__ == "__main__":   # the list for a report: each README command and how this test runs it
    for step in plan(README.read_text()):
        print(f"- [{step.how}] `{step.readme}`\n    {step.why}" + (f"\n    runs: `{step.command}`"
                                                                 if step.how != "skip" and step.command != step.readme else ""))
