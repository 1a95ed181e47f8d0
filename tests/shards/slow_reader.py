"""The DSBCC reader, slowed down: gives tests time to kill a sharding run half-way."""
from __future__ import annotations

import time

from anatplane_dist.sources import dsbcc


def read_study(study_dir, root=None):
    time.sleep(0.4)
    return dsbcc.read_study(study_dir, root=root)
