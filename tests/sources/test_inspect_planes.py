"""``anatplane inspect`` on real DICOM files, checked against a brute-force intersection."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from anatplane_dist.cli import main
from anatplane_dist.core.geometry import Plane
from anatplane_dist.sources.dicom_write import SeriesInfo, deterministic_uid, write_mr_image
from anatplane_dist.sources.reslice import plane_through


def write(path: Path, plane: Plane, *, frame_of_reference: str = "1.2.826.0.1.3680043.10.1432.7",
          instance: int = 1, trigger: float | None = None) -> Path:
    info = SeriesInfo(patient_id="P", study_uid=deterministic_uid("st"), series_uid=deterministic_uid(path.parent),
                      frame_of_reference_uid=frame_of_reference, series_number=1, series_description=path.parent.name)
    rows, cols = (int(s) for s in plane.shape)
    rr, cc = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    pixels = 1000 + 600 * np.sin(rr / 5.0) * np.cos(cc / 7.0) + 10 * instance
    return write_mr_image(path, pixels, plane, info, instance_number=instance, trigger_time_ms=trigger,
                          sop_uid=deterministic_uid(path))


def inspect_json(capsys, *args) -> tuple[int, object, str]:
    rc = main(["inspect", *map(str, args)])
    out = capsys.readouterr()
    return rc, (json.loads(out.out) if out.out.strip() else None), out.err


# An oblique image with anisotropic, non-square pixels, and an oblique reference plane.
A_PLANE = plane_through([10.0, -20.0, 30.0], [0.8, 0.5, 0.3], [-0.3, 0.7, -0.6], (1.3, 0.8), (50, 70))
B_PLANE = plane_through([14.0, -16.0, 28.0], [0.2, -0.4, 0.9], [0.9, 0.3, -0.1], (1.1, 1.7), (40, 36))


def brute_force_crossings(a: Plane, b: Plane, n: int = 400) -> np.ndarray:
    """Points (x=col, y=row) of A where sampled points of plane B cross A's plane: along many
    lines of B, find where the signed distance to A changes sign and interpolate."""
    rows = np.linspace(-200, 200, n)
    cols = np.linspace(-200, 200, n)
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    world = b.pixel_to_world(rr, cc)                       # B extended beyond its matrix
    r_a, c_a, off = a.world_to_pixel(world)
    s = np.sign(off)
    hits = []
    for i in range(n):
        k = np.nonzero(s[i, :-1] * s[i, 1:] < 0)[0]
        for j in k:
            t = off[i, j] / (off[i, j] - off[i, j + 1])
            hits.append([c_a[i, j] + t * (c_a[i, j + 1] - c_a[i, j]), r_a[i, j] + t * (r_a[i, j + 1] - r_a[i, j])])
    return np.array(hits)


def test_line_matches_brute_force(tmp_path: Path, capsys):
    fa, fb = write(tmp_path / "a" / "a.dcm", A_PLANE), write(tmp_path / "b" / "b.dcm", B_PLANE)
    rc, rep, _ = inspect_json(capsys, fa, fb)
    assert rc == 0 and rep["valid"] is True and "reason" not in rep
    assert set(rep) >= {"a", "b", "c", "valid", "angle_deg", "endpoints"}
    a, b, c = rep["a"], rep["b"], rep["c"]
    assert a * a + b * b == pytest.approx(1.0)
    hits = brute_force_crossings(A_PLANE, B_PLANE)
    assert len(hits) > 100
    # every sampled point of B that lies in A's plane is on the reported line (to DS rounding)
    assert np.abs(a * hits[:, 0] + b * hits[:, 1] + c).max() < 1e-3
    # end points: the extreme crossings inside the image
    rows, cols = rep["image_shape"]
    inside = hits[(hits[:, 0] >= -0.5) & (hits[:, 0] <= cols - 0.5) & (hits[:, 1] >= -0.5) & (hits[:, 1] <= rows - 0.5)]
    assert len(inside) > 20
    d = np.array([-b, a])
    t = inside @ d
    ends = np.array(rep["endpoints"])
    lo, hi = sorted(ends @ d)
    assert t.min() >= lo - 1e-6 and t.max() <= hi + 1e-6
    assert t.min() - lo < 2.0 and hi - t.max() < 2.0                  # sampling step of the brute force
    for x, y in ends:                                                    # on the image border
        assert min(abs(x + 0.5), abs(x - cols + 0.5), abs(y + 0.5), abs(y - rows + 0.5)) < 1e-6
    direction = inside[np.argmax(t)] - inside[np.argmin(t)]
    assert rep["angle_deg"] == pytest.approx(np.degrees(np.arctan2(direction[1], direction[0])) % 180, abs=1e-3)


def test_horizontal_and_vertical_lines(tmp_path: Path, capsys):
    axial = plane_through([0, 0, 0], [1, 0, 0], [0, 1, 0], (2.0, 1.0), (30, 40))   # x = col, y = row
    coronal = plane_through([0, 5.0, 0], [1, 0, 0], [0, 0, -1], 1.0, 20)             # y = 5 mm
    sagittal = plane_through([-6.0, 0, 0], [0, 1, 0], [0, 0, -1], 1.0, 20)           # x = -6 mm
    f_ax = write(tmp_path / "ax" / "1.dcm", axial)
    rc, reps, _ = inspect_json(capsys, f_ax, write(tmp_path / "cor" / "1.dcm", coronal),
                               write(tmp_path / "sag" / "1.dcm", sagittal))
    assert rc == 0 and isinstance(reps, list) and len(reps) == 2
    hor, ver = reps
    # row of y = 5 mm: centre row 14.5 + 5 / 2.0;  column of x = -6 mm: 19.5 - 6 / 1.0
    assert abs(hor["a"]) < 1e-9 and -hor["c"] / hor["b"] == pytest.approx(17.0)
    assert hor["angle_deg"] == pytest.approx(0.0, abs=1e-6) or hor["angle_deg"] == pytest.approx(180.0, abs=1e-6)
    assert abs(ver["b"]) < 1e-9 and -ver["c"] / ver["a"] == pytest.approx(13.5)
    assert ver["angle_deg"] == pytest.approx(90.0)
    assert sorted(p[0] for p in hor["endpoints"]) == pytest.approx([-0.5, 39.5])


def test_invalid_cases(tmp_path: Path, capsys):
    fa = write(tmp_path / "a" / "a.dcm", A_PLANE)
    other_for = write(tmp_path / "o" / "o.dcm", B_PLANE, frame_of_reference="1.2.3.4")
    parallel = write(tmp_path / "p" / "p.dcm", plane_through(A_PLANE.center + 8 * A_PLANE.normal,
                                                              A_PLANE.row_dir, A_PLANE.col_dir, 1.0, 20))
    far = B_PLANE
    far = Plane(far.origin + 500 * A_PLANE.row_dir, far.row_dir, far.col_dir, far.spacing, far.shape)
    outside = write(tmp_path / "f" / "f.dcm", far)
    rc, reps, _ = inspect_json(capsys, fa, other_for, parallel, outside)
    assert rc == 0
    for rep in reps:
        assert rep["valid"] is False and rep["endpoints"] is None and rep["a"] is None
    assert "different frames of reference" in reps[0]["reason"] and "1.2.3.4" in reps[0]["reason"]
    assert reps[1]["reason"].startswith("planes are (nearly) parallel (0.00 deg")
    assert reps[2]["reason"].startswith("the line misses the image")


def test_folder_input_uses_first_cine_frame(tmp_path: Path, capsys):
    series = tmp_path / "sax_5"
    for inst, trig in ((1, 80.0), (2, 0.0), (3, 40.0)):
        write(series / f"IM-{inst}.dcm", A_PLANE, instance=inst, trigger=trig)
    (series / "junk.dcm").write_text("x")
    ref = tmp_path / "2ch_3"
    write(ref / "IM-1.dcm", B_PLANE)
    rc, rep, _ = inspect_json(capsys, series, ref)
    assert rc == 0 and rep["valid"] and Path(rep["image"]).name == "IM-2.dcm"


def test_bad_files_give_clear_errors(tmp_path: Path, capsys):
    fa = write(tmp_path / "a" / "a.dcm", A_PLANE)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\x00" * 10)
    rc, rep, err = inspect_json(capsys, fa, junk)
    assert rc == 2 and rep is None and "not a DICOM file" in err
    nogeo = write(tmp_path / "g" / "g.dcm", B_PLANE)
    ds = pydicom.dcmread(nogeo)
    del ds.ImageOrientationPatient
    ds.save_as(nogeo, enforce_file_format=True)
    rc, _, err = inspect_json(capsys, nogeo, fa)
    assert rc == 2 and "missing geometry tag(s) ImageOrientationPatient" in err
    (tmp_path / "empty").mkdir()
    rc, _, err = inspect_json(capsys, fa, tmp_path / "empty")
    assert rc == 2 and "no readable DICOM image in this folder" in err


def test_png_draws_the_line(tmp_path: Path, capsys):
    fa, fb = write(tmp_path / "a" / "a.dcm", A_PLANE), write(tmp_path / "b" / "b.dcm", B_PLANE)
    png = tmp_path / "out" / "line.png"
    rc, rep, _ = inspect_json(capsys, fa, fb, "--png", png)
    assert rc == 0 and png.exists() and not list(png.parent.glob("*.tmp"))
    img = np.asarray(Image.open(png).convert("RGB")).astype(int)
    rows, cols = rep["image_shape"]
    scale = img.shape[0] // rows
    assert img.shape == (rows * scale, cols * scale, 3) and scale >= 2
    red = (img[..., 0] > 200) & (img[..., 1] < 60) & (img[..., 2] < 60)
    (x0, y0), (x1, y1) = rep["endpoints"]
    on_line = 0
    for t in np.linspace(0.2, 0.8, 7):
        x, y = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
        on_line += red[int(round(y * scale + (scale - 1) / 2)), int(round(x * scale + (scale - 1) / 2))]
    assert on_line == 7
    # the red pixels hug the line (the legend text in the corner aside)
    yy, xx = np.nonzero(red[40:])
    yy = yy + 40
    d = np.abs(rep["a"] * (xx - (scale - 1) / 2) / scale + rep["b"] * (yy - (scale - 1) / 2) / scale + rep["c"])
    assert np.percentile(d, 99) < 1.5


def test_console_entry_point(tmp_path: Path):
    fa, fb = write(tmp_path / "a" / "a.dcm", A_PLANE), write(tmp_path / "b" / "b.dcm", B_PLANE)
    proc = subprocess.run([sys.executable, "-m", "anatplane_dist.cli", "inspect", str(fa), str(fb)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["valid"] is True
