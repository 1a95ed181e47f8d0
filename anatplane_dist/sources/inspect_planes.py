"""``anatplane inspect A B [B ...] [--png out.png]``: where plane B cuts image A.

Users run it on their own data before sharding, to see that the geometry the targets come
from is right: it prints, as JSON, the line where each reference plane B cuts image A in A's
native pixel grid (``a*x + b*y + c = 0``, x = column, y = row, ``a^2 + b^2 = 1``), its
direction, and its two end points clipped to the image; ``--png`` draws the lines on A.
A and B are DICOM files, or series folders (then the first image in cine order is used).

Planes in different frames of reference, (nearly) parallel planes, and lines that miss the
image give ``"valid": false`` with a ``"reason"`` and null line fields -- never a made-up line.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from anatplane_dist.core.atomic import atomic_path
from anatplane_dist.core.errors import ExitCode
from anatplane_dist.core.geometry import clip_lines, intersection_lines, line_angle_deg
from anatplane_dist.sources.base import ReaderError
from anatplane_dist.sources.dicom_read import (
    DicomHeader,
    angle_between_normals_deg,
    list_dicom_files,
    load_pixels,
    read_header,
)

__all__ = ["add_arguments", "run", "resolve_image", "line_report", "render_png"]

#: line colours in the PNG, one per reference, in argument order
COLOURS = [(230, 25, 25), (40, 110, 255), (30, 200, 60), (250, 200, 0), (220, 0, 220), (0, 210, 210)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", metavar="A", type=Path,
                        help="DICOM file, or series folder (first image in cine order), whose pixel grid the line is in")
    parser.add_argument("references", metavar="B", type=Path, nargs="+",
                        help="DICOM file(s)/folder(s) whose plane cuts A; several B print a JSON list")
    parser.add_argument("--png", type=Path, default=None, help="write A (windowed) with the line(s) drawn")
    parser.add_argument("--min-angle", type=float, default=5.0,
                        help="planes closer to parallel than this (degrees) give no line (default 5)")


def resolve_image(path: Path) -> DicomHeader:
    """Header of a DICOM file, or of the first image (TriggerTime, InstanceNumber, name) of a folder.

    Raises:
        ReaderError: unreadable file, bad geometry, or a folder without a readable image.
    """
    path = Path(path)
    if not path.is_dir():
        return read_header(path)
    headers, errors = [], []
    for f in list_dicom_files(path):
        try:
            headers.append(read_header(f))
        except ReaderError as exc:
            errors.append(str(exc))
    if not headers:
        detail = f" ({errors[0]})" if errors else ""
        raise ReaderError(f"{path}: no readable DICOM image in this folder{detail}")
    return min(headers, key=lambda h: h.frame_sort_key)


def _num(x: float) -> float | None:
    return None if not math.isfinite(x) else float(x)


def line_report(image: DicomHeader, reference: DicomHeader, min_angle_deg: float = 5.0) -> dict[str, Any]:
    """The JSON-ready description of the line where ``reference``'s plane cuts ``image``."""
    plane_angle = angle_between_normals_deg(image.plane.normal, reference.plane.normal)
    out: dict[str, Any] = {
        "image": str(image.path), "reference": str(reference.path),
        "image_shape": [int(s) for s in image.plane.shape],
        "a": None, "b": None, "c": None, "valid": False, "angle_deg": None, "endpoints": None,
        "plane_angle_deg": round(plane_angle, 4),
    }
    fa, fb = image.frame_of_reference, reference.frame_of_reference
    if fa and fb and fa != fb:
        out["plane_angle_deg"] = None        # directions in two frames cannot be compared
        out["reason"] = f"planes are in different frames of reference ({fa} vs {fb})"
        return out
    if not (fa and fb):
        out["warning"] = "FrameOfReferenceUID missing: planes assumed to share one patient frame"
    line, valid = intersection_lines(image.plane, reference.plane, min_angle_deg=min_angle_deg)
    if not bool(valid):
        out["reason"] = (f"planes are (nearly) parallel ({plane_angle:.2f} deg < {min_angle_deg:g} deg)"
                         if plane_angle < min_angle_deg else "the line misses the image (outside the field of view)")
        return out
    p0, p1, _ = clip_lines(line, image.plane.shape)
    out.update(a=_num(line[0]), b=_num(line[1]), c=_num(line[2]), valid=True,
               angle_deg=_num(float(line_angle_deg(line))),
               endpoints=[[_num(p0[0]), _num(p0[1])], [_num(p1[0]), _num(p1[1])]])
    return out


def _window(pixels: np.ndarray) -> np.ndarray:
    """uint8 display of an MR image: 0.5th-99.5th percentile window (robust to outliers,
    and independent of WindowCenter/Width tags that many exports get wrong)."""
    lo, hi = np.percentile(pixels, [0.5, 99.5])
    scaled = (pixels - lo) / max(float(hi - lo), 1e-6)
    return (np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8)


def render_png(image: DicomHeader, reports: Sequence[dict[str, Any]], out: Path, *, min_size: int = 384) -> Path:
    """Write A with every valid line drawn (one colour per reference); atomic (tmp + rename)."""
    from PIL import Image, ImageDraw

    gray = _window(load_pixels(image.path))
    rows, cols = gray.shape
    scale = max(1, int(math.ceil(min_size / max(rows, cols))))
    canvas = Image.fromarray(gray).resize((cols * scale, rows * scale), Image.NEAREST).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    for i, rep in enumerate(reports):
        colour = COLOURS[i % len(COLOURS)]
        label = Path(rep["reference"]).parent.name or Path(rep["reference"]).name
        if rep["valid"]:
            # pixel centre x (column) sits at x*scale + (scale-1)/2 on the enlarged canvas
            pts = [(x * scale + (scale - 1) / 2, y * scale + (scale - 1) / 2) for x, y in rep["endpoints"]]
            draw.line(pts, fill=colour, width=max(1, scale))
        else:
            label += " (no line)"
        draw.text((4, 4 + 12 * i), label, fill=colour)
    with atomic_path(out) as tmp:
        canvas.save(tmp, format="PNG")
    return Path(out)


def run(args: argparse.Namespace) -> int:
    try:
        image = resolve_image(args.image)
        refs = [resolve_image(p) for p in args.references]
        reports = [line_report(image, r, args.min_angle) for r in refs]
        if args.png is not None:
            render_png(image, reports, args.png)
    except ReaderError as exc:
        print(f"anatplane inspect: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    print(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2))
    return 0
