"""A real full disk for tests: a small tmpfs mounted over a test folder (needs root; skipped
otherwise, since faking ENOSPC would test the fake, not the filesystem's answer)."""
from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest


def disk_blocks_kib(path: Path) -> int:
    """KiB a folder takes on disk (allocated blocks, as tmpfs counts them)."""
    return sum(p.stat().st_blocks for p in Path(path).rglob("*") if p.is_file()) // 2


@contextmanager
def tmpfs(mount_point: Path, size_kib: int) -> Iterator[Path]:
    """``mount -t tmpfs -o size=<size_kib>k`` over ``mount_point``; unmounted afterwards."""
    mount_point.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("a real full disk needs root to mount a small tmpfs")
    size = max(8, (size_kib + 3) // 4 * 4)
    rc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}k", "tmpfs", str(mount_point)],
                        capture_output=True, text=True)
    if rc.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {rc.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
