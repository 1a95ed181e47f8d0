"""``make demo``: the product's question end to end on the built-in phantom, on this machine.

One experiment (``experiments/demo.yaml``): phantom DICOM + a labelled ACDC-layout cohort →
shards → pretraining of each arm on 2 ranks (torchrun, gloo on CPU) → publish → few-label
fine-tuning of random init, multitask and orientation-only pretraining, 5 subset draws (seeds)
per count, a fixed test set, validation subjects → results.csv / results.md / figures.  Then
``inspect`` shows one plane pair's line.

Every stage runs the command a user would type (printed before it runs).  Re-running resumes:
finished cells are kept.  ``README-lines.md`` in the demo directory holds the lines README.md
quotes, written from the stored results (never typed by hand).
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from anatplane_dist.core.atomic import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
DEMO_SPEC = REPO / "experiments" / "demo.yaml"


def _run(cmd: list[str], log: list[dict], stage: str) -> None:
    print(f"\n=== {stage}\n$ {shlex.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    log.append({"stage": stage, "command": shlex.join(cmd), "seconds": round(time.perf_counter() - t0, 1),
                "returncode": proc.returncode})
    if proc.returncode != 0:
        raise SystemExit(f"demo stage '{stage}' failed (exit {proc.returncode}); its output is above")


def readme_lines(exp_dir: Path, seconds: float, spec: str = "experiments/demo.yaml") -> str:
    """The lines README.md quotes: the per-count reading and where the numbers come from."""
    from anatplane_dist.experiment.results import cell_stats, comparisons, load_results

    res = load_results(exp_dir)
    stats = cell_stats(res)
    comps = comparisons(res, stats)
    by = {(s.arm, s.n_labelled): s for s in stats}
    seeds = len(res.spec["protocol"]["seeds"])
    out = [f"`make demo` ({seconds / 60:.1f} min on this machine; phantom, {len(res.split['test'])} fixed test "
           f"subjects, {seeds} subset draws (seeds) per count, best-on-validation model, LR chosen per arm on "
           f"validation; Dice mean of RV/MYO/LV with a 95% CI over seeds then subjects; Δ = per-seed paired "
           f"difference to random init with that CI and the seeds it wins):", ""]
    out.append("| labelled subjects | " + " | ".join(res.arm_names) + " | " +
               " | ".join(f"Δ {a}" for a in res.arm_names if a != "random") + " |")
    out.append("|---|" + "---|" * (2 * len(res.arm_names) - 1))
    for n in res.counts:
        cells = [by[(a, n)].metric.text() if (a, n) in by else "failed" for a in res.arm_names]
        cells += [comps[(a, n)].text() if (a, n) in comps else "—" for a in res.arm_names if a != "random"]
        out.append(f"| {n} | " + " | ".join(cells) + " |")
    from anatplane_dist.experiment.stats import verdict

    readings = [f"{a} at n={n}: {verdict(comps[(a, n)])}" for n in res.counts for a in res.arm_names
                if (a, n) in comps]
    if readings:
        out += ["", "Reading (better/worse only when the seed-level interval excludes 0): " + "; ".join(readings)]
    failed = res.failed_arms()
    if failed:
        out += ["", "Failed arms: " + "; ".join(f"{a}: {why}" for a, why in failed.items())]
    out += ["", f"(from `{exp_dir}/results.md`, written by `anatplane experiment run {spec}`)"]
    return "\n".join(out) + "\n"


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "demo", help="everything the demo writes")
    ap.add_argument("--spec", type=Path, default=DEMO_SPEC, help="the experiment file (default experiments/demo.yaml)")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    cli = [sys.executable, "-m", "anatplane_dist.cli"]
    log: list[dict] = []
    t0 = time.perf_counter()
    exp = out / "experiment"
    _run(cli + ["experiment", "run", str(args.spec), "--out", str(exp)], log,
         "1/3 experiment: phantom → shards → pretrain + publish each arm → fine-tune every cell → results")
    data = exp / "data" / "heart-pretrain"
    subject = sorted(p for p in data.iterdir() if p.is_dir())[0]
    series = {p.name.split("_")[0]: p for p in sorted((subject / "study").iterdir())}
    _run(cli + ["inspect", str(series["sax"]), str(series["2ch"]), "--png", str(out / "sax_2ch_line.png")],
         log, "2/3 inspect: where the 2CH plane cuts a SAX image")
    seconds = time.perf_counter() - t0
    lines = readme_lines(exp, seconds, _shown(args.spec))
    atomic_write_text(out / "README-lines.md", lines)
    report = ["# anatplane_dist demo report", "", "| stage | seconds | command |", "|---|---|---|"]
    report += [f"| {r['stage']} | {r['seconds']} | `{r['command']}` |" for r in log]
    report += ["", "## For README.md", "", lines, "## Experiment results", "", (exp / "results.md").read_text()
               .replace("](figures/", "](experiment/figures/")]
    atomic_write_text(out / "REPORT.md", "\n".join(report) + "\n")
    print(f"\n=== 3/3 report: {out / 'REPORT.md'}\n{lines}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
