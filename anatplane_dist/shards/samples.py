"""One study -> its samples: every input slice and cine frame, with precomputed targets.

All targets of a study come from a handful of vectorised geometry calls (lines for every
slice x reference channel at once, locations for a whole stack at once); pixels are read one
slice at a time (all frames together) and dropped once encoded, so a worker never holds more
than one study's encoded samples.

Nothing good is lost and nothing bad is silent: a missing reference view or one in another
frame of reference masks that channel, parallel planes or a line outside the grid mask it
for that slice, a one-slice stack masks the location, a frame with non-finite pixels is left
out, an unreadable slice is left out -- and every one of these is a ``Skip`` with a reason.
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from anatplane_dist.core.geometry import (
    Plane,
    heart_locations,
    intersection_lines,
    resample_to_grid,
    stack_positions,
    symmetric_locations,
    target_grid,
)
from anatplane_dist.core.intensity import robust_range
from anatplane_dist.shards.profiles import ShardConfig
from anatplane_dist.shards.seal import dumps, join_bodies, seal_body
from anatplane_dist.sources.base import Skip, Slice, Study
from anatplane_dist.sources.plausible import stack_outliers

__all__ = ["Sample", "StudySamples", "study_samples", "sample_key", "key_part", "npy_bytes", "MEMBERS",
           "MAX_KEY_BYTES", "PERCENTILE_SAMPLES", "to_float16"]

#: tar members of one sample, in the order the writer stores them (TarWriter sorts them); the
#: targets (lines, valid flags, location) live in meta.json, which also seals the sample (``seal``)
MEMBERS = ("image.npy", "meta.json")

#: |values| of a rescaled image are clipped here so that float16 never overflows to inf
_FLOAT16_SAFE = 1.0e4
#: a USTAR member name holds 100 bytes; the longest member suffix is ``.image.npy``
MAX_KEY_BYTES = 100 - len(".image.npy")
_SUBJECT_KEEP = re.compile(r"[A-Za-z0-9]")
_SERIES_KEEP = re.compile(r"[A-Za-z0-9_]")


@dataclass
class Sample:
    """One encoded sample: its ``__key__``, the bytes of each tar member, and its source file
    (relative to the input root; for skip records, not written as a member)."""

    key: str
    members: dict[str, bytes]
    source: str = ""


@dataclass
class StudySamples:
    """What one study gave: samples in a fixed order, and everything left out."""

    subject: str
    samples: list[Sample] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)


def key_part(name: str, keep: re.Pattern[str]) -> str:
    """``name`` with every character outside ``keep`` written as ``-XX`` per UTF-8 byte (upper
    hex). Injective: ``-`` is always the start of an escape, so the name can be read back."""
    return "".join(c if keep.fullmatch(c) else "".join(f"-{b:02X}" for b in c.encode("utf-8")) for c in name)


def sample_key(subject: str, series: str, slice_index: int, frame: int) -> str:
    """``<subject>_<series>_s<slice:03d>_f<frame:03d>``, unique by construction.

    WebDataset splits member names at the first dot and ``/`` would make folders, so names are
    escaped (:func:`key_part`), never replaced: the subject keeps only ``[A-Za-z0-9]`` (so the
    first ``_`` ends it), the series also keeps ``_`` (the fixed ``_sNNN_fNNN`` tail ends it).
    Distinct ``(subject, series, slice, frame)`` thus always give distinct keys: ``p.1``,
    ``p-1``, ``p 1`` and ``pé1`` become ``p-2E1``, ``p-2D1``, ``p-201`` and ``p-C3-A91``. DSBCC
    names (``1``, ``sax_20``) are unchanged.
    """
    return f"{key_part(subject, _SUBJECT_KEEP)}_{key_part(series, _SERIES_KEEP)}_s{slice_index:03d}_f{frame:03d}"


def npy_bytes(array: np.ndarray) -> bytes:
    """``.npy`` encoding (what ``np.load`` and WebDataset's decoder read)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return buf.getvalue()


# -- references -------------------------------------------------------------------------------

def _pick_reference(candidates: list[Slice], pick: str) -> Slice:
    """``first`` candidate, or the ``central`` slice (by position) of the first series listed."""
    if pick == "first":
        return candidates[0]
    series = candidates[0].series
    stack = [s for s in candidates if s.series == series]
    if len(stack) == 1:
        return stack[0]
    order = np.argsort(stack_positions(Plane.stack([s.plane for s in stack])), kind="stable")
    return stack[int(order[(len(order) - 1) // 2])]


def _reference_record(view: str, ref: Slice) -> dict[str, Any]:
    return {"view": view, "series": ref.series, "path": ref.frames[0].path if ref.frames else "",
            "series_uid": ref.series_uid, "frame_of_reference": ref.frame_of_reference,
            "plane": ref.plane.to_dict()}


# -- stacks and locations ----------------------------------------------------------------------

def _stacks(inputs: list[Slice], stack_by: str) -> list[list[Slice]]:
    """Input slices grouped into stacks (never across frames of reference), in first-seen order."""
    groups: dict[tuple[str, ...], list[Slice]] = {}
    for s in inputs:
        key = (s.frame_of_reference,) if stack_by == "view" else (s.frame_of_reference, s.series)
        groups.setdefault(key, []).append(s)
    return list(groups.values())


def _locate(stack: list[Slice], rule: str, long_axis: np.ndarray | None
            ) -> tuple[list[Slice], np.ndarray, dict[str, Any]]:
    """The stack ordered along its axis (heart: base -> apex), each slice's location (NaN when
    absent) and the rule's record."""
    planes = Plane.stack([s.plane for s in stack])
    if rule == "heart":
        locs, info = heart_locations(planes, long_axis=long_axis)
        positions = stack_positions(planes, np.asarray(info["axis"]))
    elif rule == "symmetric":
        locs, info = symmetric_locations(planes)
        positions = stack_positions(planes)
    else:
        locs, info = None, {"rule": "none", "reason": "profile has no location target"}
        positions = stack_positions(planes)
    order = np.argsort(positions, kind="stable")
    values = np.full(len(stack), np.nan) if locs is None else np.asarray(locs, dtype=np.float64)
    info = dict(info, name=rule)
    return [stack[i] for i in order], values[order], info


def _drop_off_stack(subject: str, stack: list[Slice], skipped: list[Skip]) -> list[Slice]:
    """The stack without slices far off its line of positions (``sources.plausible``), each
    recorded: one would otherwise set the stack's extent and squash every other location."""
    bad = stack_outliers(Plane.stack([s.plane for s in stack])) if len(stack) >= 3 else {}
    for i, why in sorted(bad.items()):
        sl = stack[i]
        skipped.append(Skip(subject, f"slice left out: {why}", sl.frames[0].path if sl.frames else sl.series,
                            "slice"))
    return [s for i, s in enumerate(stack) if i not in bad]


def _duplicate_skips(subject: str, ordered: list[Slice], positions: np.ndarray) -> list[Skip]:
    """Record slices of one stack at (nearly) the same position: both are kept, same location."""
    out = []
    for i in range(1, len(ordered)):
        if abs(positions[i] - positions[i - 1]) < 1e-2:
            a, b = ordered[i - 1], ordered[i]
            out.append(Skip(subject, f"duplicated position: {b.series} at the same position as {a.series} "
                                     "(both kept, one location target)",
                            b.frames[0].path if b.frames else b.series, "slice"))
    return out


def _plane_angles_deg(image: Plane, reference: Plane) -> np.ndarray:
    cos = np.abs(np.einsum("...k,...k->...", image.normal, reference.normal))
    return np.degrees(np.arccos(np.clip(cos, 0.0, 1.0)))


# -- the study ----------------------------------------------------------------------------------

def study_samples(study: Study, cfg: ShardConfig) -> StudySamples:
    """Every sample of ``study`` (slices ordered along each stack, frames in time order)."""
    prof = cfg.profile
    out = StudySamples(study.subject, skipped=list(study.skipped))
    subj = study.subject
    inputs = list(study.views.get(prof.input_view, []))
    if not inputs:
        out.skipped.append(Skip(subj, f"no {prof.input_view} slices: study left out", "", "study"))
        return out

    refs: list[Slice | None] = []
    for view in prof.references:
        cands = study.views.get(view, [])
        refs.append(_pick_reference(cands, prof.reference_pick) if cands else None)
    missing = [v for v, r in zip(prof.references, refs) if r is None]
    if missing and cfg.require_all_views:
        out.skipped.append(Skip(subj, f"no {', '.join(missing)} view: study left out (--require-all-views)",
                                "", "study"))
        return out
    for k, view in enumerate(prof.references):
        if refs[k] is None:
            out.skipped.append(Skip(subj, f"no {view} view: channel {k} ({view}) masked in every sample",
                                    "", "channel"))

    long_axis = None
    if prof.location == "heart" and all(r is not None for r in refs) and len(refs) >= 2 \
            and refs[0].frame_of_reference == refs[1].frame_of_reference:
        la = np.cross(refs[0].plane.normal, refs[1].plane.normal)
        long_axis = la if np.linalg.norm(la) > 1e-6 else None

    for stack in _stacks(inputs, prof.stack_by):
        stack = _drop_off_stack(subj, stack, out.skipped)
        ordered, locs, loc_info = _locate(stack, prof.location, long_axis)
        if "reason" in loc_info and prof.location != "none":
            out.skipped.append(Skip(subj, f"location masked for {len(ordered)} slice(s): {loc_info['reason']}",
                                    ordered[0].frames[0].path if ordered[0].frames else ordered[0].series,
                                    "series"))
        planes = Plane.stack([s.plane for s in ordered])
        positions = stack_positions(planes, np.asarray(loc_info["axis"]) if "axis" in loc_info else None)
        out.skipped.extend(_duplicate_skips(subj, ordered, positions))
        grids = target_grid(planes, cfg.grid, cfg.spacing)
        lines, valid, reasons = _stack_lines(ordered, grids, refs, cfg)
        for i, sl in enumerate(ordered):
            where = sl.frames[0].path if sl.frames else sl.series
            for k, reason in enumerate(reasons[i]):
                if reason and refs[k] is not None:
                    out.skipped.append(Skip(subj, f"channel {k} ({prof.references[k]}) masked: {reason}",
                                            where, "channel"))
            try:
                samples, skips = _slice_samples(study, sl, i, grids[i], lines[i], valid[i], reasons[i],
                                                float(locs[i]), loc_info, refs, cfg)
            except Exception as exc:  # one bad slice never costs the study its other slices
                out.skipped.append(Skip(subj, f"slice left out: {type(exc).__name__}: {exc}", where, "slice"))
                continue
            out.samples.extend(samples)
            out.skipped.extend(skips)
    _refuse_bad_keys(out)
    if not out.samples:
        out.skipped.append(Skip(subj, "study gave no sample", "", "study"))
    return out


def _refuse_bad_keys(out: StudySamples) -> None:
    """Drop (with a record) samples whose key a tar cannot hold or another sample already has.

    Keys are injective in (subject, series, slice, frame) and subjects are distinct folders, so
    a repeat can only come from one study holding two stacks with the same series name (e.g.
    two knee folders ``a/T1`` and ``b/T1``); the first one keeps the key, nothing is overwritten.
    """
    seen: set[str] = set()
    kept: list[Sample] = []
    for smp in out.samples:
        where = smp.source or smp.key
        if len(smp.key.encode()) > MAX_KEY_BYTES:
            out.skipped.append(Skip(out.subject, f"sample left out: key {smp.key[:40]}... is {len(smp.key.encode())} "
                                    f"bytes, a tar member name holds {MAX_KEY_BYTES} (shorten the subject or "
                                    "series name)", where, "file"))
        elif smp.key in seen:
            out.skipped.append(Skip(out.subject, f"sample left out: key {smp.key} already used by another "
                                    "sample of this study (two stacks with the same series name)", where, "file"))
        else:
            seen.add(smp.key)
            kept.append(smp)
    out.samples = kept


def _stack_lines(ordered: list[Slice], grids: Plane, refs: list[Slice | None], cfg: ShardConfig
                 ) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
    """Lines (S, K, 3), valid (S, K) and a reason per masked (slice, channel), in one call."""
    prof = cfg.profile
    s_count, k_count = len(ordered), len(refs)
    lines = np.full((s_count, k_count, 3), np.nan)
    valid = np.zeros((s_count, k_count), dtype=bool)
    reasons = [[""] * k_count for _ in range(s_count)]
    present = [k for k, r in enumerate(refs) if r is not None]
    for k in range(k_count):
        if refs[k] is None:
            for i in range(s_count):
                reasons[i][k] = f"no {prof.references[k]} view"
    if present:
        ref_planes = Plane.stack([refs[k].plane for k in present])
        img = grids[:, None]
        ref = ref_planes[None, :]
        ln, ok = intersection_lines(img, ref, min_angle_deg=prof.min_angle_deg,
                                    min_visible_px=prof.min_visible_px)
        angles = _plane_angles_deg(img, ref)
        for j, k in enumerate(present):
            for i, sl in enumerate(ordered):
                if sl.frame_of_reference != refs[k].frame_of_reference:
                    reasons[i][k] = (f"reference {refs[k].series} is in another frame of reference "
                                     f"({refs[k].frame_of_reference or '?'} != {sl.frame_of_reference or '?'})")
                elif angles[i, j] < prof.min_angle_deg:
                    reasons[i][k] = f"planes nearly parallel ({angles[i, j]:.2f} deg < {prof.min_angle_deg} deg)"
                elif not ok[i, j]:
                    reasons[i][k] = (f"line misses the {cfg.grid}x{cfg.grid} grid (visible part shorter "
                                     f"than {prof.min_visible_px} px)")
                else:
                    lines[i, k] = ln[i, j]
                    valid[i, k] = True
    return lines, valid, reasons


def to_float16(src: np.ndarray, out: np.ndarray) -> None:
    """``out[...] = src`` for float32 -> float16, through torch's vectorised cast.

    numpy 2.4's float16 cast is scalar code: ~450 us for a 224^2 frame, the largest cost of
    the sharder after resampling; torch's (F16C) takes ~6 us and rounds identically (round to
    nearest even, tested bit for bit). torch is imported on first use (a worker pays it once).
    """
    import torch
    torch.from_numpy(out).copy_(torch.from_numpy(src))


#: the intensity percentiles of a slice come from at most this many of its pixels (all frames)
PERCENTILE_SAMPLES = 1 << 16


def _slice_samples(study: Study, sl: Slice, index: int, grid: Plane, lines: np.ndarray, valid: np.ndarray,
                   reasons: list[str], loc: float, loc_info: dict[str, Any], refs: list[Slice | None],
                   cfg: ShardConfig) -> tuple[list[Sample], list[Skip]]:
    """Read one slice (all frames), rescale, resample, encode one sample per usable frame."""
    prof = cfg.profile
    skips: list[Skip] = []
    frames = sl.load()
    finite = np.isfinite(frames).all(axis=(1, 2))
    for f in np.flatnonzero(~finite):
        bad = int((~np.isfinite(frames[f])).sum())
        skips.append(Skip(study.subject, f"frame {sl.frames[f].index} left out: {bad} non-finite pixel(s)",
                          sl.frames[f].path or sl.series, "file"))
    if not finite.any():
        raise ValueError("every frame holds non-finite pixels")
    keep = np.flatnonzero(finite)
    good = frames if finite.all() else frames[keep]
    del frames
    lo, hi = robust_range(good, cfg.percentiles, max_samples=PERCENTILE_SAMPLES)
    if not hi > lo:
        raise ValueError(f"constant intensity ({lo:g}) over all frames: nothing to learn from")
    good -= lo
    good *= 1.0 / (hi - lo)
    # one 2D resample per frame: measured ~1.8x faster than one 3D call over all frames (which
    # interpolates trilinearly along the frame axis too), and only one float32 frame at a time
    images = np.empty((len(keep),) + tuple(int(v) for v in grid.shape), dtype=np.float16)
    for j in range(len(keep)):
        frame = resample_to_grid(good[j], sl.plane, grid)
        np.clip(frame, -_FLOAT16_SAFE, _FLOAT16_SAFE, out=frame)
        to_float16(frame, images[j])
    del good

    references = []
    for k, view in enumerate(prof.references):
        rec = {"view": view}
        if refs[k] is not None:
            rec.update(_reference_record(view, refs[k]))
        rec["valid"] = bool(valid[k])
        if reasons[k]:
            rec["reason"] = reasons[k]
        references.append(rec)
    common = {
        "format": cfg.format, "subject": study.subject, "view": sl.view, "series": sl.series,
        "slice": index, "n_frames": len(sl.frames),
        "series_uid": sl.series_uid, "frame_of_reference": sl.frame_of_reference,
        "channels": list(prof.references), "references": references,
        "grid": grid.to_dict(), "source_plane": sl.plane.to_dict(),
        "location": {"value": None if np.isnan(loc) else loc, **loc_info},
        "intensity": {"percentiles": list(cfg.percentiles), "values": [lo, hi]},
    }
    # the targets, folded into meta.json: per channel the line (null when masked; valid is
    # references[k].valid) and the location (location.value); float64 here, float32 in the batch
    common["lines"] = [[float(v) for v in row] if ok else None for row, ok in zip(lines, valid)]
    samples = []
    shared = dumps(common)[:-1]           # serialised once per slice, not once per frame
    for j, f in enumerate(keep):
        fr = sl.frames[f]
        body = join_bodies(shared, {"frame": fr.index, "file": fr.path, "sop_uid": fr.sop_uid,
                                    "trigger_time": fr.trigger_time})
        image = npy_bytes(images[j])
        samples.append(Sample(sample_key(study.subject, sl.series, index, fr.index),
                              {"image.npy": image, "meta.json": seal_body(body, image)}, fr.path or sl.series))
    return samples, skips
