"""Knee reader on real DICOM trees: views from normals, stacks by position, messy series."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from anatplane_dist.core.geometry import Plane, stack_positions, symmetric_locations
from anatplane_dist.sources import knee
from anatplane_dist.sources.dicom_write import write_mr_image
from anatplane_dist.sources.reslice import plane_through

#: (row_dir, col_dir) of each orientation, slightly oblique like a real prescription
ORIENT = {
    "sagittal": ([0.05, 1.0, 0.0], [0.0, 0.0, -1.0]),     # normal ~ -x
    "coronal": ([1.0, 0.0, 0.08], [0.0, 0.0, -1.0]),      # normal ~ +y
    "axial": ([1.0, 0.0, 0.0], [0.0, 1.0, 0.1]),          # normal ~ +z
}


def stack(view: str, n: int, gap: float = 3.0, shape: int = 20) -> list[Plane]:
    r, c = ORIENT[view]
    p0 = plane_through(np.zeros(3), r, c, 1.5, shape)
    return [plane_through(p0.center + (k - (n - 1) / 2) * gap * p0.normal, r, c, 1.5, shape) for k in range(n)]


def write_stack(folder: Path, planes: list[Plane], kit, subject: str = "K", *, instances=None,
                frame_of_reference: str | None = None) -> None:
    info = kit.series_info(subject, folder.name, 1,
                           frame_of_reference=frame_of_reference)
    instances = instances or list(range(1, len(planes) + 1))
    for plane, inst in zip(planes, instances):
        write_mr_image(folder / f"{inst:03d}.dcm", kit.image_of(plane), plane, info, instance_number=inst)


def write_knee(root: Path, kit, subject: str = "K", views=("sagittal", "coronal", "axial")) -> Path:
    """Folder names deliberately say nothing (or the wrong thing) about the orientation."""
    names = {"sagittal": "series_003", "coronal": "ax_pd_fs", "axial": "series_001"}
    sizes = {"sagittal": 7, "coronal": 5, "axial": 4}
    for v in views:
        planes = stack(v, sizes[v])
        order = np.random.default_rng(len(v)).permutation(len(planes)) + 1   # shuffled InstanceNumbers
        write_stack(root / subject / "exam" / names[v], planes, kit, subject, instances=order.tolist())
    return root / subject


def test_classify_normal():
    assert knee.classify_normal([-0.99, 0.1, 0.05]) == "sagittal"
    assert knee.classify_normal([0.1, 0.98, -0.1]) == "coronal"
    assert knee.classify_normal([0.0, 0.2, -0.97]) == "axial"
    assert knee.classify_normal([0.7071, 0.7071, 0.0]) is None


def test_clean_knee(tmp_path: Path, kit):
    write_knee(tmp_path, kit)
    write_knee(tmp_path, kit, subject="J")
    studies = list(knee.iter_studies(tmp_path))
    assert [s.subject for s in studies] == ["J", "K"]
    st = studies[1]
    assert st.skipped == [] and st.meta["missing_views"] == []
    assert {v: (len(s), s[0].series) for v, s in st.views.items()} == {
        "sagittal": (7, "series_003"), "coronal": (5, "ax_pd_fs"), "axial": (4, "series_001")}
    for view, n in (("sagittal", 7), ("coronal", 5), ("axial", 4)):
        slices = st.views[view]
        assert all(s.view == view and len(s.frames) == 1 for s in slices)
        pos = stack_positions(Plane.stack([s.plane for s in slices]))
        np.testing.assert_allclose(np.diff(pos), 3.0, atol=1e-4)       # sorted by position, not instance
    sag = st.views["sagittal"]
    expected = stack("sagittal", 7)
    got = [s.plane.origin for s in sag]
    # same stack, possibly in reverse direction: match the first slice to one end
    if np.allclose(got[0], expected[-1].origin, atol=1e-4):
        expected = expected[::-1]
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e.origin, atol=1e-4)
    px = sag[3].load()
    assert px.shape == (1, 20, 20)
    np.testing.assert_array_equal(px[0], kit.stored(kit.image_of(expected[3])))
    loc, _ = symmetric_locations(Plane.stack([s.plane for s in sag]))
    np.testing.assert_allclose(loc, [1, 2 / 3, 1 / 3, 0, 1 / 3, 2 / 3, 1], atol=1e-6)


def test_several_series_of_one_orientation_and_localizer(tmp_path: Path, kit):
    write_knee(tmp_path, kit)
    exam = tmp_path / "K" / "exam"
    write_stack(exam / "sag_t1", stack("sagittal", 4), kit)
    # a 3-plane localizer: one series, one slice per orientation
    loc_planes = [stack(v, 1, shape=16)[0] for v in ("sagittal", "coronal", "axial")]
    write_stack(exam / "localizer", loc_planes, kit)
    st = knee.read_study(tmp_path / "K")
    assert {v: (len(s), s[0].series) for v, s in st.views.items()} == {
        "sagittal": (7, "series_003"), "coronal": (5, "ax_pd_fs"), "axial": (4, "series_001")}
    reasons = sorted((s.path, s.reason) for s in st.skipped)
    assert reasons == [
        ("K/exam/localizer", "another axial series: 1 slice(s) dropped, K/exam/series_001 with 4 slice(s) kept"),
        ("K/exam/localizer", "another coronal series: 1 slice(s) dropped, K/exam/ax_pd_fs with 5 slice(s) kept"),
        ("K/exam/localizer", "another sagittal series: 1 slice(s) dropped, K/exam/series_003 with 7 slice(s) kept"),
        ("K/exam/sag_t1", "another sagittal series: 4 slice(s) dropped, K/exam/series_003 with 7 slice(s) kept"),
    ]


def test_oblique_other_frame_duplicates_and_bad_files(tmp_path: Path, kit):
    write_knee(tmp_path, kit, views=("sagittal", "coronal"))
    exam = tmp_path / "K" / "exam"
    oblique = [plane_through(np.zeros(3), [1, 1, 0], [0, 0, -1], 1.5, 16)]
    write_stack(exam / "oblique", oblique, kit)
    write_stack(exam / "ax_other_for", stack("axial", 4), kit, frame_of_reference="1.2.3")
    # a repeated image at one position of the sagittal series, and two broken files
    sag_dir = exam / "series_003"
    p = stack("sagittal", 7)[2]
    info = kit.series_info("K", "series_003", 1)
    write_mr_image(sag_dir / "099.dcm", kit.image_of(p, 1), p, info, instance_number=99)
    (sag_dir / "bad.dcm").write_bytes(b"\x00" * 132)
    data = (sag_dir / "001.dcm").read_bytes()
    (sag_dir / "001.dcm").write_bytes(data[:-50])
    st = knee.read_study(tmp_path / "K")
    assert sorted(st.views) == ["coronal", "sagittal"] and st.meta["missing_views"] == ["axial"]
    assert len(st.views["sagittal"]) == 6                 # 001.dcm truncated: one position lost, recorded
    by_path = {s.path: s for s in st.skipped}
    assert "series too oblique to classify" in by_path["K/exam/oblique"].reason
    assert "another frame of reference (1.2.3)" in by_path["K/exam/ax_other_for"].reason
    assert by_path["K/exam/series_003/099.dcm"].reason.startswith("duplicated slice position in series_003")
    assert "not a DICOM file" in by_path["K/exam/series_003/bad.dcm"].reason
    assert "truncated pixel data" in by_path["K/exam/series_003/001.dcm"].reason
    assert len(st.skipped) == 5


def test_one_slice_stack_and_empty_subjects(tmp_path: Path, kit):
    write_stack(tmp_path / "A" / "s1", stack("coronal", 1), kit, "A")
    write_stack(tmp_path / "A" / "s2", stack("sagittal", 3), kit, "A")
    (tmp_path / "B" / "empty").mkdir(parents=True)
    (tmp_path / "C").mkdir()
    (tmp_path / "C" / "x.dcm").write_text("nope")
    a, b, c = knee.iter_studies(tmp_path)
    assert len(a.views["coronal"]) == 1 and len(a.views["sagittal"]) == 3
    assert [(s.level, s.reason) for s in a.skipped] == [
        ("channel", "coronal stack has a single slice: no relative-location target")]
    assert symmetric_locations(Plane.stack([s.plane for s in a.views["coronal"]]))[0] is None
    assert b.views == {} and [s.level for s in b.skipped] == ["study"]
    assert c.views == {} and [s.level for s in c.skipped] == ["file", "study"]


def test_requested_missing_subject(tmp_path: Path, kit):
    write_knee(tmp_path, kit)
    got = [(s.subject, bool(s.views), [k.reason for k in s.skipped]) for s in knee.iter_studies(tmp_path, ["K", "Z"])]
    assert got == [("K", True, []), ("Z", False, ["subject folder not found"])]


@pytest.mark.parametrize("view", ["sagittal", "coronal", "axial"])
def test_each_orientation_alone(tmp_path: Path, kit, view: str):
    write_knee(tmp_path, kit, views=(view,))
    st = knee.read_study(tmp_path / "K")
    assert list(st.views) == [view]
