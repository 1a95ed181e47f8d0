"""The DSBCC reader, except that reading subject 0002 kills its process (a decoder crash)."""
from __future__ import annotations

import os
import signal
from pathlib import Path

from anatplane_dist.sources import dsbcc


def read_study(study_dir, root=None):
    if Path(study_dir).name == "0002":
        os.kill(os.getpid(), signal.SIGKILL)
    return dsbcc.read_study(study_dir, root=root)
