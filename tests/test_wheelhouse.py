"""``make wheelhouse`` (launch/wheelhouse.py): which requirements go into the offline folder.

The build itself needs PyPI (run by hand: ``make wheelhouse WHEEL_PY=3.12``); here, the rule
that decides what is downloaded, applied to a real wheel's METADATA.
"""
from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("wheelhouse", REPO / "launch" / "wheelhouse.py")
wheelhouse = importlib.util.module_from_spec(spec)
spec.loader.exec_module(wheelhouse)


def _wheel(tmp_path: Path, requires: list[str]) -> Path:
    path = tmp_path / "demo-1.0-py3-none-any.whl"
    meta = "Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("demo-1.0.dist-info/METADATA", meta)
    return path


def test_requirements_leave_out_torch_cuda_and_extras(tmp_path):
    wheel = _wheel(tmp_path, ["torch>=2.3", "triton", "nvidia-cublas-cu12==12.4", "nvidia-ml-py", "hjson",
                              "pydantic>=2.0.0", "webdataset<2,>=0.2.86", "pytest>=7; extra == \"test\"",
                              "tomli; python_version < \"3.11\""])
    assert wheelhouse._requirements(wheel) == ["nvidia-ml-py", "hjson", "pydantic>=2.0.0", "webdataset<2,>=0.2.86",
                                               "tomli; python_version < \"3.11\""]

