"""Tar shards: readable by plain tarfile and WebDataset, deterministic bytes, atomic, resumable."""
from __future__ import annotations

import hashlib
import json
import tarfile

import numpy as np
import pytest
import webdataset as wds

from anatplane_dist.shards.samples import Sample, npy_bytes
from anatplane_dist.shards.writer import Journal, ResumeMismatch, SplitWriter


def fake_samples(n: int, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    return [Sample(f"s{i:03d}_sax-1_s000_f{i:03d}", {
        "image.npy": npy_bytes(rng.random((8, 8)).astype(np.float16)),
        "lines.npy": npy_bytes(np.zeros((2, 3), np.float32)), "loc.npy": npy_bytes(np.array(0.5, np.float32)),
        "meta.json": json.dumps({"i": i}).encode(), "valid.npy": npy_bytes(np.ones(2, np.uint8))})
        for i in range(n)]


def write_all(out, samples, shard_size=4):
    recs = []
    w = SplitWriter(out, "train", "train", shard_size, 0, recs.append)
    for j, s in enumerate(samples):
        w.add(s, (j, 0))
    w.finish((len(samples), 0))
    return recs


def test_shards_hold_whole_samples_in_order_with_fixed_headers(tmp_path):
    samples = fake_samples(10)
    recs = write_all(tmp_path, samples)
    assert [r.name for r in recs] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert [r.count for r in recs] == [4, 4, 2]
    assert [r.end for r in recs] == [(4, 0), (8, 0), (10, 0)]
    assert not list(tmp_path.glob("*.tmp"))
    names = []
    for r in recs:
        data = (tmp_path / r.name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == r.sha256 and len(data) == r.bytes
        with tarfile.open(tmp_path / r.name) as tf:
            for m in tf.getmembers():
                assert (m.mtime, m.uid, m.gid, m.uname, m.mode) == (0, 0, 0, "anatplane", 0o444)
                names.append(m.name)
    assert names[:5] == [f"s000_sax-1_s000_f000.{m}" for m in ("image.npy", "lines.npy", "loc.npy",
                                                                "meta.json", "valid.npy")]
    ds = wds.WebDataset([str(tmp_path / r.name) for r in recs], shardshuffle=False).decode()
    got = list(ds)
    assert [g["__key__"] for g in got] == [s.key for s in samples]
    assert got[3]["meta.json"] == {"i": 3} and got[3]["image.npy"].dtype == np.float16


def test_same_samples_give_byte_identical_shards(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    ra, rb = write_all(a, fake_samples(9)), write_all(b, fake_samples(9))
    assert [r.sha256 for r in ra] == [r.sha256 for r in rb]
    assert all((a / r.name).read_bytes() == (b / r.name).read_bytes() for r in ra)


def test_abort_leaves_no_partial_shard(tmp_path):
    w = SplitWriter(tmp_path, "val", "val", 100, 0, lambda r: None)
    for j, s in enumerate(fake_samples(3)):
        w.add(s, (j, 0))
    assert [p.name for p in tmp_path.iterdir()] == ["val-000000.tar.tmp"]
    w.abort()
    assert list(tmp_path.iterdir()) == []


def test_journal_keeps_complete_prefix_and_removes_the_rest(tmp_path):
    header = {"config_hash": "abc", "subjects_hash": "s", "part": [0, 1]}
    j = Journal(tmp_path / "_state" / "p.jsonl", header)
    assert j.load(tmp_path, {"train": "train"}, False).end("train") == (0, 0)
    recs = []
    w = SplitWriter(tmp_path, "train", "train", 4, 0, lambda r: (recs.append(r), j.shard_done(r)))
    for k, s in enumerate(fake_samples(10)):
        w.add(s, (k, 0))
        j.append({"type": "subject", "split": "train", "pos": k, "subject": s.key, "samples": 1, "skipped": []})
    w.finish((10, 0))
    # simulate a kill: last shard lost, a stale tmp and a torn journal line left behind
    (tmp_path / "train-000002.tar").unlink()
    (tmp_path / "train-000002.tar.tmp").write_bytes(b"partial")
    with open(j.path, "a") as fh:
        fh.write('{"type": "shard", "na')
    state = Journal(j.path, header).load(tmp_path, {"train": "train"}, False)
    assert [r.name for r in state.shards["train"]] == ["train-000000.tar", "train-000001.tar"]
    assert state.end("train") == (8, 0) and state.next_index("train") == 2
    assert [r["pos"] for r in state.subjects["train"]] == list(range(8))
    assert sorted(p.name for p in tmp_path.glob("train-*")) == ["train-000000.tar", "train-000001.tar"]
    # a corrupted (truncated) complete shard is not kept either
    with open(tmp_path / "train-000001.tar", "r+b") as fh:
        fh.truncate(100)
    state = Journal(j.path, header).load(tmp_path, {"train": "train"}, False)
    assert state.end("train") == (4, 0) and not (tmp_path / "train-000001.tar").exists()


def test_resume_checks_complete_shards_by_content_not_size(tmp_path):
    header = {"config_hash": "abc", "subjects_hash": "s", "part": [0, 1]}
    j = Journal(tmp_path / "p.jsonl", header)
    j.load(tmp_path, {"train": "train"}, False)
    for r in write_all(tmp_path, fake_samples(12)):
        j.shard_done(r)
    path = tmp_path / "train-000001.tar"
    size = path.stat().st_size
    data = bytearray(path.read_bytes())
    data[700] ^= 0x01                                    # one bit, inside the first member's data
    path.write_bytes(bytes(data))
    assert path.stat().st_size == size
    state = Journal(j.path, header).load(tmp_path, {"train": "train"}, False)
    assert [r.name for r in state.shards["train"]] == ["train-000000.tar"] and not path.exists()


def test_journal_of_another_config_is_refused_unless_overwrite(tmp_path):
    j = Journal(tmp_path / "p.jsonl", {"config_hash": "abc", "subjects_hash": "s", "part": [0, 1]})
    j.load(tmp_path, {"train": "train"}, False)
    recs = write_all(tmp_path, fake_samples(5))
    for r in recs:
        j.shard_done(r)
    other = Journal(tmp_path / "p.jsonl", {"config_hash": "xyz", "subjects_hash": "s", "part": [0, 1]})
    with pytest.raises(ResumeMismatch, match="config_hash"):
        other.load(tmp_path, {"train": "train"}, False)
    state = other.load(tmp_path, {"train": "train"}, True)
    assert state.end("train") == (0, 0) and not list(tmp_path.glob("train-*"))


def test_gzip_shards_are_deterministic_and_read_by_tarfile_and_webdataset(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    out = []
    for d in (a, b):
        recs = []
        w = SplitWriter(d, "train", "train", 4, 0, recs.append, compress="gz")
        for j, s in enumerate(fake_samples(6)):
            w.add(s, (j, 0))
        w.finish((6, 0))
        out.append(recs)
    assert [r.sha256 for r in out[0]] == [r.sha256 for r in out[1]]
    data = (a / "train-000000.tar").read_bytes()
    assert data[:2] == b"\x1f\x8b" and hashlib.sha256(data).hexdigest() == out[0][0].sha256
    with tarfile.open(a / "train-000000.tar") as tf:
        assert len(tf.getmembers()) == 4 * 5
    got = list(wds.WebDataset([str(a / r.name) for r in out[0]], shardshuffle=False).decode())
    assert [g["__key__"] for g in got] == [s.key for s in fake_samples(6)]


def test_sha256_of_large_shards_hashed_on_the_helper_thread(tmp_path):
    """Shards of several MiB: the digest handed over in 1 MiB batches is that of the file."""
    import os
    big = [Sample(f"s{i:03d}", {"image.npy": os.urandom(300_000 + i), "meta.json": b"{}"}) for i in range(20)]
    recs = write_all(tmp_path, big, shard_size=8)
    assert [r.count for r in recs] == [8, 8, 4] and recs[0].bytes > 2 * (1 << 20)
    for r in recs:
        assert hashlib.sha256((tmp_path / r.name).read_bytes()).hexdigest() == r.sha256


def test_abort_stops_the_hashing_thread(tmp_path):
    import threading
    w = SplitWriter(tmp_path, "train", "train", 100, 0, lambda rec: None)
    for j, s in enumerate(fake_samples(3)):
        w.add(s, (j, 0))
    assert any(t.name == "shard-sha256" for t in threading.enumerate())
    w.abort()
    assert not any(t.name == "shard-sha256" for t in threading.enumerate())
    assert not list(tmp_path.glob("*"))
