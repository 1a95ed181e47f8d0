"""Shared phantom fixtures: tiny cohorts written once per session (CPU-cheap sizes)."""
from __future__ import annotations

from pathlib import Path

import pytest

from anatplane_dist.sources.phantom import write_acdc_cohort, write_heart_cohort, write_knee_cohort
from tests.sources.phantom.support import ACDC_CFG, HEART_CFG, KNEE_CFG


@pytest.fixture(scope="session")
def heart_cohort(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("phantom_heart")
    return out, write_heart_cohort(out, HEART_CFG)


@pytest.fixture(scope="session")
def acdc_cohort(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("phantom_acdc")
    return out, write_acdc_cohort(out, ACDC_CFG)


@pytest.fixture(scope="session")
def knee_cohort(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("phantom_knee")
    return out, write_knee_cohort(out, KNEE_CFG)
