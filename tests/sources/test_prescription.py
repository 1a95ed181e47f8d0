"""Prescribed planes against their landmarks: stack normals along the prescribed axis (0.1 deg),
reference planes through the landmarks (0.1 mm), for heart, brain and generic prescriptions,
with landmarks given directly, from a file, or as label-map centroids."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from anatplane_dist.sources.prescription import (
    PrescriptionError,
    ViewPrescription,
    landmarks_from_file,
    landmarks_from_labels,
    prescribe,
)


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Angle between two lines (unsigned), degrees."""
    c = abs(float(a @ b)) / (np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.degrees(np.arccos(min(1.0, c))))


def distance_mm(plane, point) -> float:
    return abs(float(plane.world_to_pixel(np.asarray(point, float))[2]))


def random_heart(rng):
    mitral = rng.uniform(-20, 20, 3)
    u = rng.normal(size=3)
    u /= np.linalg.norm(u)
    apex = mitral + rng.uniform(70, 95) * u
    side = np.cross(u, rng.normal(size=3))
    side /= np.linalg.norm(side)
    other = np.cross(u, side)
    return {"apex": apex, "mitral": mitral, "rv_ant": mitral + 30 * u + 25 * side + 20 * other,
            "rv_inf": mitral + 35 * u + 25 * side - 20 * other}


@pytest.mark.parametrize("seed", range(5))
def test_heart_views_follow_the_landmarks(seed: int):
    lm = random_heart(np.random.default_rng(seed))
    rx = ViewPrescription(kind="heart", n_slices=9, matrix=64, spacing_mm=1.5)
    views = prescribe(rx, lm)
    assert set(views) == {"sax", "2ch", "4ch"}
    sax = views["sax"]
    long_axis = lm["apex"] - lm["mitral"]
    assert len(sax) == 9
    for k in range(9):
        assert angle_deg(sax[k].normal, long_axis) < 0.1
    # base -> apex: first slice through the mitral centre, last through the apex
    assert distance_mm(sax[0], lm["mitral"]) < 0.1 and distance_mm(sax[8], lm["apex"]) < 0.1
    pos = sax.origin @ (long_axis / np.linalg.norm(long_axis))
    assert np.all(np.diff(pos) > 0)
    for name in ("2ch", "4ch"):                 # long-axis views hold the long axis
        assert distance_mm(views[name], lm["apex"]) < 0.1 and distance_mm(views[name], lm["mitral"]) < 0.1
        assert abs(90.0 - angle_deg(views[name].normal, long_axis)) < 0.1
    # 4CH through the RV (midpoint of the insertions); 2CH parallel to the septum line
    assert distance_mm(views["4ch"], 0.5 * (lm["rv_ant"] + lm["rv_inf"])) < 0.1
    septum = lm["rv_inf"] - lm["rv_ant"]
    assert abs(90.0 - angle_deg(views["2ch"].normal, septum - (septum @ long_axis) / (long_axis @ long_axis) * long_axis)) < 0.1


@pytest.mark.parametrize("seed", range(5))
def test_brain_views_follow_ac_pc(seed: int):
    rng = np.random.default_rng(100 + seed)
    ac = rng.uniform(-5, 5, 3)
    a = rng.normal(size=3) * 0.1 + np.array([0.0, 1.0, 0.0])     # roughly posterior (LPS +y)
    a /= np.linalg.norm(a)
    pc = ac + 26.0 * a
    up = np.cross(a, [1.0, 0.0, 0.0])
    up = -up if up[2] < 0 else up
    midsag = ac + 12 * a + 55 * up
    rx = ViewPrescription(kind="brain", n_slices=7, stack_range_mm=(-30, 60), matrix=64, spacing_mm=2.0)
    views = prescribe(rx, {"ac": ac, "pc": pc, "midsag": midsag})
    axial, sag, cor = views["axial"], views["sagittal"], views["coronal"]
    ms_normal = np.cross(pc - ac, midsag - ac)
    for k in range(7):
        assert abs(90.0 - angle_deg(axial[k].normal, pc - ac)) < 0.1        # parallel to AC-PC
        assert abs(90.0 - angle_deg(axial[k].normal, ms_normal)) < 0.1      # perpendicular to mid-sagittal
    pos = axial.origin @ axial[0].normal
    assert np.all(np.diff(pos) > 0) and (midsag - ac) @ axial[0].normal > 0   # inferior -> superior
    # the slice at position 0 is the AC-PC plane itself
    zero = int(np.argmin(np.abs(np.linspace(-30, 60, 7))))
    assert np.linspace(-30, 60, 7)[zero] == 0.0
    for p in (ac, pc):
        assert distance_mm(axial[zero], p) < 0.1
    for p in (ac, pc, midsag):
        assert distance_mm(sag, p) < 0.1
    assert distance_mm(cor, ac) < 0.1 and angle_deg(cor.normal, pc - ac) < 0.1


def test_generic_stack_and_reference_planes():
    p3 = [[0.0, 0.0, 0.0], [10.0, 0.0, 5.0], [0.0, 10.0, 0.0]]
    rx = ViewPrescription(kind="generic", stack_view="sag", n_slices=5, matrix=32, spacing_mm=1.0,
                          stack_normal=(1.0, 0.2, 0.0), stack_center=(3.0, 4.0, 5.0),
                          references={"cor": {"points": p3}, "ax": {"point": [1.0, 2.0, 3.0], "normal": [0, 0.1, 1]}})
    views = prescribe(rx)
    assert list(views) == ["sag", "cor", "ax"]
    for k in range(5):
        assert angle_deg(views["sag"][k].normal, np.array([1.0, 0.2, 0.0])) < 0.1
    for p in p3:
        assert distance_mm(views["cor"], p) < 0.1
    assert distance_mm(views["ax"], [1.0, 2.0, 3.0]) < 0.1
    assert angle_deg(views["ax"].normal, np.array([0, 0.1, 1])) < 0.1


def test_landmarks_from_file_and_label_map(tmp_path: Path):
    f = tmp_path / "lm.yaml"
    f.write_text("space: RAS\nac: [1, 2, 3]\npc: [1, -24, 3]\n")
    lm = landmarks_from_file(f)
    np.testing.assert_allclose(lm["ac"], [-1, -2, 3])          # RAS -> LPS once
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:5, 4:7, 6:9] = 3                                   # centroid voxel (3, 5, 7)
    labels[10:12, 10:12, 10:12] = 7
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = [-10, -10, -10]
    got = landmarks_from_labels(labels, aff, {"a": 3, "both": [3, 7]})
    np.testing.assert_allclose(got["a"], [-(2 * 3 - 10), -(2 * 5 - 10), 2 * 7 - 10])
    with pytest.raises(PrescriptionError, match="absent"):
        landmarks_from_labels(labels, aff, {"x": 9})


def test_bad_landmarks_are_one_line_errors():
    rx = ViewPrescription(kind="brain")
    with pytest.raises(PrescriptionError, match="missing"):
        prescribe(rx, {"ac": [0, 0, 0], "pc": [0, 25, 0]})
    with pytest.raises(PrescriptionError, match="degenerate"):
        prescribe(rx, {"ac": [0, 0, 0], "pc": [0, 25, 0], "midsag": [0, 50, 0]})    # on the AC-PC line
    with pytest.raises(PrescriptionError, match="kind"):
        ViewPrescription(kind="knee")
    with pytest.raises(PrescriptionError, match="unknown"):
        ViewPrescription.from_dict({"kind": "brain", "slices": 3})


def test_generic_points_may_name_landmarks():
    rx = ViewPrescription(kind="generic", stack_view="axial", n_slices=3, matrix=16, spacing_mm=1.0,
                          stack_normal=(0.0, 0.0, 1.0), stack_center="centre",
                          references={"sagittal": {"point": "centre", "normal": [1, 0, 0]}})
    lm = {"centre": np.array([4.0, -3.0, 7.0])}
    views = prescribe(rx, lm)
    assert distance_mm(views["sagittal"], lm["centre"]) < 0.1
    np.testing.assert_allclose(views["axial"][1].center, lm["centre"], atol=1e-9)
    with pytest.raises(PrescriptionError, match="missing"):
        prescribe(rx, {})
