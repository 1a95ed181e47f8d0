"""Every wheel a GPU node needs besides torch, for nodes without internet (``make wheelhouse``).

Cluster GPU nodes often cannot reach PyPI. Their base image usually has Python, CUDA and torch;
this writes the rest into one folder, for the node's Python version and platform (not this
machine's), so that the node installs offline:

    python launch/wheelhouse.py --out wheelhouse --python 3.12 --platform manylinux_2_17_x86_64
    pip install --no-index --find-links wheelhouse anatplane_dist          # on the node

What goes in:
- this package, as a wheel;
- DeepSpeed built as a pure-Python wheel (``DS_BUILD_OPS=0``: no CUDA op is compiled here; the
  ones a run needs are JIT-built on the node, and this package uses none of the fused ones);
- binary wheels of every requirement of both (webdataset, nibabel, pydicom, submitit, pydantic,
  hjson, ...), resolved by pip for the target Python and platform, torch and its CUDA libraries
  left out (the image's torch build matches its driver; replacing it is the node admin's job).

A folder that would hold torch or an ``nvidia-*`` wheel is refused: pulling them in means a
requirement changed, and 3 GB of CUDA wheels are not what an offline install should bring.
"""
from __future__ import annotations

import argparse
import email.parser
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: provided by the node's image (or by whoever installs the right CUDA build)
EXCLUDED = re.compile(r"^(torch|triton|nvidia[-_](?!ml[-_]py).*)$", re.I)


def _pip(*args: str, env: dict | None = None) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env)


def _requirements(wheel: Path) -> list[str]:
    """``Requires-Dist`` of a wheel, without extras-only entries and without the excluded ones."""
    with zipfile.ZipFile(wheel) as z:
        meta_name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.parser.Parser().parsestr(z.read(meta_name).decode())
    out = []
    for req in meta.get_all("Requires-Dist") or []:
        if re.search(r"\bextra\s*==", req):      # optional extras ([test], [nnunet], ...) stay out
            continue
        name = re.split(r"[\s<>=!~;\[(]", req.strip(), maxsplit=1)[0]
        if not EXCLUDED.match(name):
            out.append(req.strip())            # markers kept: pip evaluates them for --python-version
    return out


def build(out: Path, python: str, platforms: list[str], deepspeed_spec: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        own = Path(tmp) / "own"
        _pip("wheel", "--no-deps", "-w", str(own), str(REPO))
        # DeepSpeed's setup.py imports torch: build it against this environment's torch, no ops
        env = {**os.environ, "DS_BUILD_OPS": "0", "DS_SKIP_CUDA_CHECK": "1"}
        _pip("wheel", "--no-deps", "--no-build-isolation", "--no-binary", "deepspeed", "-w", str(own),
             deepspeed_spec, env=env)
        wheels = sorted(own.glob("*.whl"))
        for w in wheels:
            if not w.name.endswith("-none-any.whl"):
                raise SystemExit(f"{w.name} is not a pure-Python wheel")
        reqs = sorted({r for w in wheels for r in _requirements(w)
                       if not re.match(r"^(anatplane[-_]dist|deepspeed)\b", r, re.I)})
        plat_args = [a for p in platforms for a in ("--platform", p)]
        _pip("download", "--only-binary=:all:", "--python-version", python, "--implementation", "cp",
             *plat_args, "-d", str(out), *reqs)
        for w in wheels:
            (out / w.name).write_bytes(w.read_bytes())
    got = sorted(out.glob("*.whl"))
    bad = [w.name for w in got if EXCLUDED.match(w.name.split("-")[0])]
    if bad:
        raise SystemExit(f"the wheelhouse would carry {bad}: a requirement pulls in torch/CUDA wheels")
    return got


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "wheelhouse")
    ap.add_argument("--python", default=f"{sys.version_info.major}.{sys.version_info.minor}",
                    help="the node's Python version, e.g. 3.12")
    ap.add_argument("--platform", action="append", default=None,
                    help="wheel platform tag(s) of the node (repeatable); default manylinux_2_17_x86_64")
    ap.add_argument("--deepspeed", default="", help="pip spec of DeepSpeed (default: the installed version)")
    args = ap.parse_args(argv)
    spec = args.deepspeed
    if not spec:
        from importlib.metadata import version
        spec = f"deepspeed=={version('deepspeed')}"
    wheels = build(args.out, args.python, args.platform or ["manylinux_2_17_x86_64"], spec)
    print(f"{len(wheels)} wheels in {args.out} for Python {args.python}; on the node:\n"
          f"  pip install --no-index --find-links {args.out} anatplane_dist")
    return 0


if __name__ == "__main__":
    sys.exit(main())
