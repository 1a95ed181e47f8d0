"""``make demo``: the main job end to end on the built-in phantom, on this machine.

phantom DICOM → inspect one plane pair → shards → 2-rank pretraining (torchrun, gloo on CPU)
→ publish → fine-tune (pretrained vs random init, few labels) → ``REPORT.md``.

Every stage runs the same command a user would type (printed before it runs), so the demo is
also the quickest way to learn the CLI.  Re-running resumes: finished stages are kept.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from anatplane_dist.atomic import atomic_write_text
from anatplane_dist.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], log: list[dict], stage: str, env: dict[str, str] | None = None) -> str:
    print(f"\n=== {stage}\n$ {shlex.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, **(env or {})}, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t0
    print(proc.stdout[-6000:], end="" if proc.stdout.endswith("\n") else "\n", flush=True)
    log.append({"stage": stage, "command": shlex.join(cmd), "seconds": round(seconds, 1),
                "returncode": proc.returncode})
    if proc.returncode != 0:
        raise SystemExit(f"demo stage '{stage}' failed (exit {proc.returncode}); its output is above")
    return proc.stdout


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "demo", help="everything the demo writes")
    ap.add_argument("--subjects", type=int, default=8, help="phantom subjects for pretraining")
    ap.add_argument("--labelled", type=int, default=8, help="labelled phantom subjects (ACDC layout)")
    ap.add_argument("--ranks", type=int, default=2, help="pretraining processes (torchrun, gloo on CPU)")
    ap.add_argument("--pretrain-epochs", type=int, default=24,
                    help="virtual epochs of 512 samples (24: ~770 steps, ~1.5 min on 2 cores; with the "
                         "preset's 6 the pretrained init did not yet beat random init when fine-tuning)")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    py = sys.executable
    cli = [py, "-m", "anatplane_dist.cli"]
    log: list[dict] = []
    data, acdc = out / "data" / "heart", out / "data" / "acdc"
    shards, run_dir, published = out / "shards" / "heart", out / "runs" / "heart-tiny", out / "published"

    if not (data / ".complete").exists():
        _run(cli + ["phantom", "heart", "--subjects", str(args.subjects), "--out", str(data),
                    "--labelled", str(args.labelled), "--labelled-out", str(acdc), "--seed", "0"],
             log, "1/6 phantom: cardiac cine DICOM (DSBCC layout) + labelled ACDC cohort")
        (data / ".complete").write_text("ok\n")
    subject = sorted(p for p in data.iterdir() if p.is_dir())[0]
    series = {p.name.split("_")[0]: p for p in sorted((subject / "study").iterdir())}
    _run(cli + ["inspect", str(series["sax"]), str(series["2ch"]), "--png", str(out / "sax_2ch_line.png")],
         log, "2/6 inspect: where the 2CH plane cuts a SAX image")
    if not (shards / "manifest.json").exists():
        _run(cli + ["shard", "--profile", "heart", "--input", str(data), "--out", str(shards),
                    "--grid", "64", "--spacing", "3.0", "--val-fraction", "0.25", "--workers", "2"],
             log, "3/6 shard: plane pairs → WebDataset tars with precomputed lines and locations")
    _run([py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.ranks),
          "launch/pretrain.py", "--config", "launch/configs/tiny-cpu.yaml", "--run-dir", str(run_dir),
          f"data.shards={shards}", f"train.epochs={args.pretrain_epochs}", f"publish.dir={published}",
          "publish.name=heart-tiny"],
         log, f"4/6 pretrain: multitask, {args.ranks} ranks (torchrun + gloo), publish at the end",
         env={"OMP_NUM_THREADS": "1"})
    _run(cli + ["finetune", "seg", "--data", str(acdc), "--pretrained", str(published / "heart-tiny" / "latest"),
                "--out", str(out / "finetune")],
         log, "5/6 fine-tune: ACDC-format segmentation, pretrained vs random init, few labels")
    report = out / "REPORT.md"
    _write_report(report, out, run_dir, log)
    print(f"\n=== 6/6 report: {report}\n{report.read_text()}")
    return 0


def _write_report(path: Path, out: Path, run_dir: Path, log: list[dict]) -> None:
    lines = ["# anatplane_dist demo report", "", "| stage | seconds | command |", "|---|---|---|"]
    lines += [f"| {r['stage']} | {r['seconds']} | `{r['command']}` |" for r in log]
    rows = read_metrics(run_dir)          # [] before the pretraining stage has logged anything
    if rows:
        train = [r for r in rows if "loss" in r]
        val = [r for r in rows if any(k.startswith("val/") for k in r)]
        if train:
            lines += ["", "## Pretraining", "",
                      f"- steps: {train[-1].get('step')}, loss {train[0]['loss']:.4g} → {train[-1]['loss']:.4g}"]
        if val:
            first, last = val[0], val[-1]
            for k in sorted(k for k in last if k.startswith("val/")):
                if isinstance(last[k], (int, float)) and isinstance(first.get(k), (int, float)):
                    lines.append(f"- {k}: {first[k]:.4g} → {last[k]:.4g}")
    for name in ("results.md", "report.md"):
        ft = out / "finetune" / name
        if ft.exists():
            lines += ["", "## Fine-tuning", "", ft.read_text()]
            break
    atomic_write_text(path, "\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
