"""Every input the readers list is accounted for: links, unreadable files and folders get a
record at their own level, and the rest of the study is kept (real DICOM, phantom layout)."""
from __future__ import annotations

import os
from pathlib import Path

from anatplane_dist.shards.pipeline import shard_dataset
from anatplane_dist.shards.profiles import BUILTIN_PROFILES, ShardConfig
from anatplane_dist.sources import dsbcc


def unreadable(monkeypatch, folder: Path) -> None:
    """Make listing ``folder`` fail with the real EACCES: by its mode bits, and, since root
    ignores those, by the one ``os.scandir`` call on it (everything else stays real)."""
    os.chmod(folder, 0)
    if os.geteuid() == 0:
        real = os.scandir

        def scandir(path="."):
            if Path(path) == folder:
                raise PermissionError(13, "Permission denied", str(path))
            return real(path)
        monkeypatch.setattr(os, "scandir", scandir)


def test_dangling_link_in_place_of_a_frame_is_recorded(tmp_path, kit):
    kit.write_heart_study(tmp_path, "S1")
    frame = sorted((tmp_path / "S1" / "study" / "sax_12").glob("*.dcm"))[1]
    frame.unlink()
    frame.symlink_to(tmp_path / "gone.dcm")
    st = dsbcc.read_study(tmp_path / "S1", root=tmp_path)
    recs = [s for s in st.skipped if s.path == f"S1/study/sax_12/{frame.name}"]
    assert len(recs) == 1 and recs[0].level == "file" and "dangling symbolic link" in recs[0].reason
    assert len(st.views["sax"]) == 5
    assert sorted(len(s.frames) for s in st.views["sax"]) == [2, 3, 3, 3, 3]      # the other frames kept


def test_dangling_series_link_and_folder_link_are_recorded(tmp_path, kit):
    kit.write_heart_study(tmp_path, "S1")
    study = tmp_path / "S1" / "study"
    (study / "sax_30").symlink_to(tmp_path / "nowhere")
    (study / "sax_12" / "extra").mkdir()
    st = dsbcc.read_study(tmp_path / "S1", root=tmp_path)
    levels = {s.path: (s.level, s.reason) for s in st.skipped}
    assert levels["S1/study/sax_30"][0] == "series" and "dangling" in levels["S1/study/sax_30"][1]
    assert levels["S1/study/sax_12/extra"][0] == "series" and "sub-folder" in levels["S1/study/sax_12/extra"][1]


def test_one_unreadable_series_folder_costs_that_series_only(tmp_path, kit, monkeypatch):
    root = tmp_path / "data"
    kit.write_heart_study(root, "S1")
    bad = root / "S1" / "study" / "sax_12"
    unreadable(monkeypatch, bad)
    try:
        st = dsbcc.read_study(root / "S1", root=root)
        rec = [s for s in st.skipped if s.path == "S1/study/sax_12"]
        assert len(rec) == 1 and rec[0].level == "series" and "folder unreadable" in rec[0].reason
        assert [s.series for s in st.views["sax"]] == ["sax_14", "sax_13", "sax_11", "sax_10"]
        # through the sharder: 4 of 5 SAX slices x 3 frames kept, the record in skipped.jsonl
        cfg = ShardConfig(profile=BUILTIN_PROFILES["heart"], grid=16, spacing=4.0, val_fraction=0.0)
        run = shard_dataset(root, tmp_path / "out", cfg, progress=False)
        assert run.ok and run.samples == 12
        assert "S1/study/sax_12" in (tmp_path / "out" / "skipped.jsonl").read_text()
    finally:
        os.chmod(bad, 0o755)


def test_knee_unreadable_subfolder_and_dangling_link(tmp_path, kit, monkeypatch):
    from anatplane_dist.sources import knee
    from tests.sources.test_knee import write_knee

    write_knee(tmp_path, kit)
    exam = tmp_path / "K" / "exam"
    (exam / "series_003" / "999.dcm").symlink_to(tmp_path / "missing.dcm")
    (exam / "linked").symlink_to(exam / "series_001")
    unreadable(monkeypatch, exam / "ax_pd_fs")
    try:
        st = knee.read_study(tmp_path / "K", root=tmp_path)
    finally:
        os.chmod(exam / "ax_pd_fs", 0o755)
    got = {s.path: s.level for s in st.skipped}
    assert got == {"K/exam/ax_pd_fs": "series", "K/exam/linked": "series", "K/exam/series_003/999.dcm": "file"}
    assert sorted(st.views) == ["axial", "sagittal"] and len(st.views["sagittal"]) == 7


def test_dangling_subject_link_is_a_study_record(tmp_path, kit):
    root = tmp_path / "data"
    kit.write_heart_study(root, "S1")
    (root / "S2").symlink_to(tmp_path / "unmounted")
    cfg = ShardConfig(profile=BUILTIN_PROFILES["heart"], grid=16, spacing=4.0, val_fraction=0.0)
    run = shard_dataset(root, tmp_path / "out", cfg, progress=False)
    assert run.ok and run.samples == 15 and run.subjects == 2
    import json
    recs = [json.loads(x) for x in (tmp_path / "out" / "skipped.jsonl").read_text().splitlines()]
    assert [(r["subject"], r["level"]) for r in recs] == [("S2", "study")]


def test_adversarial_subject_names_keep_every_sample_apart(tmp_path, kit):
    """Subject folders p.1, p-1, p 1, pé1 (one key each before: 'p-1'): every sample keeps its
    own key, tar extraction gives every member, meta.json maps each key back to its subject."""
    import json
    import tarfile
    root = tmp_path / "data"
    names = ["p.1", "p-1", "p 1", "pé1"]
    for n in names:
        kit.write_heart_study(root, n, n_sax=3, frames=2)
    cfg = ShardConfig(profile=BUILTIN_PROFILES["heart"], grid=16, spacing=4.0, val_fraction=0.0)
    run = shard_dataset(root, tmp_path / "out", cfg, progress=False)
    assert run.ok and run.samples == 4 * 3 * 2
    members, subjects = [], {}
    for rec in run.shards:
        with tarfile.open(tmp_path / "out" / rec.name) as tf:
            tf.extractall(tmp_path / "x", filter="data")
            for m in tf.getmembers():
                members.append(m.name)
                if m.name.endswith(".meta.json"):
                    subjects[m.name.split(".")[0]] = json.loads(tf.extractfile(m).read())["subject"]
    assert len(set(members)) == len(members) == 2 * run.samples
    assert len(list((tmp_path / "x").iterdir())) == len(members)
    assert sorted(set(subjects.values())) == sorted(names) and len(subjects) == run.samples
