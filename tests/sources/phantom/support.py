"""Sizes and helpers shared by the phantom tests (imported relatively, not via conftest)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from anatplane_dist.sources.phantom import AcdcCohortConfig, HeartCohortConfig, KneeCohortConfig

#: five subjects with mess: one clean study plus one of each DSBCC problem (tiny, CPU-cheap)
HEART_CFG = HeartCohortConfig(subjects=5, seed=7, matrix=(40, 48), frames=(3, 4), mess=True)
ACDC_CFG = AcdcCohortConfig(patients=2, seed=7, matrix=(48, 48), frames=(4, 4))
KNEE_CFG = KneeCohortConfig(subjects=3, seed=7, matrix=(40, 40), slices=6)


def dciodvfy_errors(path: Path) -> list[str]:
    """``Error`` lines that dciodvfy prints for ``path`` (skips the test when it is absent)."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed")
    res = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    return [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("Error")]
