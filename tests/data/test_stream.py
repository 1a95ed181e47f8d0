"""The shard stream on tiny real WebDataset tars (built here with webdataset.TarWriter)."""
from __future__ import annotations

import io
import logging
import math

import numpy as np
import pytest
import torch

from anatplane_dist.core.dist import MetricSums, assert_same_across_ranks
from anatplane_dist.data.config import DataConfig
from anatplane_dist.data.shardlist import ShardList, derive_seed
from anatplane_dist.data.shardspec import parse_sources, read_sizes, shard_probabilities
from anatplane_dist.data.stats import StreamStats
from anatplane_dist.data.stream import (
    EpochPlan,
    SharedEpoch,
    make_train_loader,
    make_val_loader,
    total_samples,
)
from tests.data import synthetic
from tests.data.synthetic import all_keys, sample_key

H = W = 8
K = 2


def write_shards(root, sizes, **kw) -> str:
    return synthetic.write_shards(root, sizes, size=(H, W), k=K, **kw)


def epoch_keys(loader, epoch: int) -> list[str]:
    loader.set_epoch(epoch)
    return [k for batch in loader for k in batch["key"]]


@pytest.fixture()
def shards(tmp_path):
    sizes = [3, 7, 11, 2, 9]
    return write_shards(tmp_path / "train", sizes), sizes


# ---------------------------------------------------------------- decode / batch layout

def test_batch_shapes_dtypes_and_masking(shards):
    pattern, sizes = shards
    cfg = DataConfig(shards=pattern, batch_size=4, num_workers=0, shuffle_buffer=0)
    loader, steps = make_train_loader(cfg)
    assert steps == math.ceil(sum(sizes) / 4) == len(loader)
    batch = next(iter(loader))
    assert batch["image"].dtype == torch.float32 and batch["image"].shape == (4, 1, H, W)
    assert batch["lines"].dtype == torch.float32 and batch["lines"].shape == (4, K, 3)
    for name in ("valid", "loc", "loc_valid"):
        assert batch[name].dtype == torch.float32
    assert batch["valid"].shape == (4, K) and batch["loc"].shape == (4,) and batch["loc_valid"].shape == (4,)
    assert isinstance(batch["key"], list) and all(isinstance(k, str) for k in batch["key"])
    img = batch["image"].flatten(1)
    torch.testing.assert_close(img.mean(1), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(img.std(1, unbiased=False), torch.ones(4), atol=1e-3, rtol=0)
    for b, key in enumerate(batch["key"]):
        i = int(key.rsplit("_f", 1)[1])
        shard = int(key[len("train"):len("train") + 2])
        # NaN line -> zero row, valid 0; absent loc -> 0 with loc_valid 0
        assert batch["valid"][b, 0] == (0.0 if i % 3 == 0 else 1.0)
        if i % 3 == 0:
            assert torch.all(batch["lines"][b, 0] == 0)
        else:
            assert torch.isclose(batch["lines"][b, 0, :2].norm(), torch.tensor(1.0))
        assert batch["loc_valid"][b] == (0.0 if i % 2 else 1.0)
        assert batch["loc"][b] == (0.0 if i % 2 else float(shard * 100 + i))
    assert torch.isfinite(batch["lines"]).all() and torch.isfinite(batch["image"]).all()


# ---------------------------------------------------------------- specs and sizes

def test_shard_spec_forms_and_sizes(tmp_path):
    a = write_shards(tmp_path / "a", [4, 6], prefix="a")
    b = write_shards(tmp_path / "b", [5], prefix="b", sizes_json=False)
    two = parse_sources(f"{a}::{b}", weights="1::3")
    assert [len(s.urls) for s in two] == [2, 1] and [s.weight for s in two] == [1.0, 3.0]
    listed = parse_sources([{"path": a, "weight": 1}, {"path": b, "weight": 3}])
    assert [s.urls for s in listed] == [s.urls for s in two]
    assert parse_sources([a, b])[1].weight is None
    assert total_samples(list(parse_sources(a)[0].urls)) == 10
    assert read_sizes(list(two[1].urls)) == {}
    with pytest.raises(ValueError, match="sizes.json"):
        total_samples(list(two[1].urls))
    with pytest.raises(ValueError, match="2 shard sources"):
        parse_sources(f"{a}::{b}", weights="1")
    with pytest.raises(ValueError, match="every shard source or to none"):
        parse_sources([{"path": a, "weight": 1}, b])
    with pytest.raises(ValueError, match="'path'"):
        parse_sources([{"pth": a}])
    # unweighted: shards uniformly (a drawn shard yields all its samples: uniform over samples);
    # weighted: expected samples per source follow the weights, a = 10 samples, b = 1 shard of 5
    assert shard_probabilities(parse_sources(a)) == pytest.approx([0.5, 0.5])
    sizes_known = parse_sources([{"path": a, "weight": 1}, {"path": a.replace("a-", "a-"), "weight": 3}])
    p = shard_probabilities(sizes_known)
    assert sum(p[2:]) == pytest.approx(0.75) and p[0] == pytest.approx(p[1])
    p = shard_probabilities(two)  # b has no sizes.json: its shards count as equal, 1 shard
    assert p[0] * 10 / (p[0] * 10 + p[2] * 1) == pytest.approx(0.25)
    with pytest.raises(FileNotFoundError, match="not found"):
        make_train_loader(DataConfig(shards=str(tmp_path / "a" / "a-{000000..000003}.tar"), num_workers=0))
    with pytest.raises(ValueError, match="samples_per_epoch"):
        make_train_loader(DataConfig(shards=b, num_workers=0))
    loader, steps = make_train_loader(DataConfig(shards=b, num_workers=0, samples_per_epoch=10, batch_size=5))
    assert steps == 2


def test_data_config_rejects_bad_values():
    with pytest.raises(ValueError, match="batch_size"):
        DataConfig(batch_size=0)
    with pytest.raises(ValueError, match="num_workers"):
        DataConfig(num_workers=-1)
    with pytest.raises(ValueError, match="val_shards"):
        make_val_loader(DataConfig(shards="x.tar"))
    with pytest.raises(ValueError, match="data.shards is not set"):
        make_train_loader(DataConfig())


# ---------------------------------------------------------------- epoch arithmetic, ranks

@pytest.mark.parametrize("n,b,world,workers,steps", [
    (32, 4, 2, 0, 4), (32, 4, 2, 2, 4), (33, 4, 2, 2, 6), (100, 3, 3, 4, 12), (1, 16, 8, 2, 2)])
def test_epoch_plan(n, b, world, workers, steps):
    plan = EpochPlan(n, b, world, workers)
    assert plan.steps_per_epoch == steps
    assert plan.steps_per_epoch % max(1, workers) == 0
    assert plan.samples_per_epoch >= n
    # one step fewer would not cover the requested samples
    assert (plan.num_batches - 1) * b * world < n


@pytest.mark.parametrize("resampled", [True, False])
def test_two_ranks_in_one_process_run_equal_steps_on_uneven_shards(shards, resampled):
    pattern, sizes = shards
    cfg = DataConfig(shards=pattern, batch_size=3, num_workers=0, shuffle_buffer=8, resampled=resampled, seed=5)
    counts, keys = [], []
    for rank in range(2):
        loader, steps = make_train_loader(cfg, rank=rank, world_size=2)
        assert steps == math.ceil(sum(sizes) / (3 * 2))
        for epoch in range(2):
            got = epoch_keys(loader, epoch)
            counts.append(loader.last_report.steps)
            assert len(got) == steps * 3 and loader.last_report.samples == steps * 3
            keys.append(got)
    assert counts == [counts[0]] * 4
    assert all(set(k) <= all_keys("train", sizes) for k in keys)


def test_shard_order_is_split_after_a_shared_shuffle():
    urls = [f"s{i}.tar" for i in range(10)]
    for mode in ("permute", "resample"):
        lists = [ShardList(urls, mode=mode, rank=r, world_size=2, seed=3) for r in range(2)]
        # same global order on both ranks for a given (seed, epoch, pass)
        assert lists[0].pass_order(4, 0, 2) == lists[1].pass_order(4, 0, 2)
        assert lists[0].pass_order(4, 0, 2) != lists[0].pass_order(5, 0, 2)
        parts = [lists[r].shards_for(4, 0, w, 2) for r in range(2) for w in range(2)]
        assert sorted(u for p in parts for u in p) == sorted(lists[0].pass_order(4, 0, 2))
        if mode == "resample":  # equal shard counts per worker in every pass
            assert len({len(p) for p in parts}) == 1
        else:
            assert sorted(u for p in parts for u in p) == sorted(urls)
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3) != derive_seed(1, 2, 4)
    with pytest.raises(ValueError, match="epoch"):
        SharedEpoch().set_value(-1)


def test_permute_mode_needs_enough_shards(shards):
    pattern, _ = shards
    with pytest.raises(ValueError, match="resampled"):
        make_train_loader(DataConfig(shards=pattern, resampled=False, num_workers=3), rank=0, world_size=2)
    with pytest.raises(ValueError, match="resampled"):
        make_train_loader(DataConfig(shards=pattern, weights=[1.0], resampled=False, num_workers=0))


# ---------------------------------------------------------------- determinism

@pytest.mark.parametrize("resampled", [True, False])
def test_same_seed_and_epoch_give_the_same_order(shards, resampled):
    pattern, _ = shards
    cfg = DataConfig(shards=pattern, batch_size=4, num_workers=0, shuffle_buffer=16, seed=7, resampled=resampled)
    first, _ = make_train_loader(cfg)
    second, _ = make_train_loader(cfg)
    e0 = epoch_keys(first, 0)
    assert epoch_keys(second, 0) == e0
    assert epoch_keys(first, 0) == e0  # re-iterating the same loader at the same epoch
    e1 = epoch_keys(first, 1)
    assert e1 != e0
    other_seed, _ = make_train_loader(DataConfig(**{**cfg.__dict__, "seed": 8}))
    assert epoch_keys(other_seed, 0) != e0
    # a resumed run starts its loader directly at epoch 1
    resumed, _ = make_train_loader(cfg, epoch_state=SharedEpoch(1))
    assert [k for b in resumed for k in b["key"]] == e1


def test_report_comes_with_the_last_expected_batch_and_for_passes_left_early(shards):
    pattern, sizes = shards
    loader, steps = make_train_loader(DataConfig(shards=pattern, batch_size=4, num_workers=0))
    it = iter(loader)
    for _ in range(steps):  # a loop that calls next() exactly steps_per_epoch times
        next(it)
    assert loader.last_report.steps == steps and loader.last_report.samples == steps * 4
    it = iter(loader)
    next(it)  # consumer stops after one batch; the next pass reports it
    loader.set_epoch(1)
    next(iter(loader))
    assert loader.last_report.epoch == 0 and loader.last_report.steps == 1


def test_epoch_reaches_two_persistent_workers(shards):
    pattern, sizes = shards
    cfg = DataConfig(shards=pattern, batch_size=2, num_workers=2, shuffle_buffer=8, seed=11)
    loader, steps = make_train_loader(cfg)
    assert steps % 2 == 0
    e0 = epoch_keys(loader, 0)
    workers = loader.dataloader._iterator._workers  # persistent: the same processes next epoch
    e1 = epoch_keys(loader, 1)
    assert loader.dataloader._iterator._workers is workers
    assert e1 != e0 and len(e1) == len(e0) == steps * 2
    assert epoch_keys(loader, 0) == e0
    resumed, _ = make_train_loader(cfg, epoch_state=SharedEpoch(1))
    assert [k for b in resumed for k in b["key"]] == e1
    assert loader.last_report.stats.samples >= steps * 2


def test_weighted_sources_follow_the_weights(tmp_path):
    a = write_shards(tmp_path / "a", [5, 5, 5, 5], prefix="a")
    b = write_shards(tmp_path / "b", [20], prefix="b")
    cfg = DataConfig(shards=f"{a}::{b}", weights="1::3", batch_size=10, num_workers=0, shuffle_buffer=0,
                     samples_per_epoch=4000, seed=1)
    loader, _ = make_train_loader(cfg)
    keys = epoch_keys(loader, 0)
    share_b = sum(k.startswith("b") for k in keys) / len(keys)
    assert 0.65 < share_b < 0.85, share_b
    unweighted, _ = make_train_loader(DataConfig(**{**cfg.__dict__, "weights": None}))
    share_b = sum(k.startswith("b") for k in epoch_keys(unweighted, 0)) / 4000
    assert 0.4 < share_b < 0.6, share_b  # 20 of 40 samples are in b


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize("world,workers", [(1, 0), (2, 0), (3, 2), (7, 1)])
def test_validation_reads_each_sample_exactly_once(shards, world, workers):
    pattern, sizes = shards
    cfg = DataConfig(shards=pattern, val_shards=pattern, val_batch_size=4, num_workers=workers)
    seen: list[str] = []
    batches = []
    for rank in range(world):
        loader = make_val_loader(cfg, rank=rank, world_size=world)
        keys = [k for b in loader for k in b["key"]]
        batches.append(loader.last_report.steps)
        seen += keys
        assert [k for b in loader for k in b["key"]] == keys  # a second pass is the same
    assert len(seen) == sum(sizes) and set(seen) == all_keys("train", sizes)
    if world == 2:
        assert batches[0] != batches[1]  # uneven shards -> uneven batch counts, handled without hanging


def test_metric_sums_without_process_group():
    m = MetricSums(["angle", "loc"])
    m.add("angle", 6.0, 3)
    assert m.reduce() == {"angle": 2.0, "loc": pytest.approx(float("nan"), nan_ok=True)}
    with pytest.raises(RuntimeError, match="already"):
        m.reduce()
    with pytest.raises(ValueError):
        MetricSums(["a", "a"])
    assert_same_across_ranks(5)  # no process group: nothing to compare


# ---------------------------------------------------------------- corrupt input

def test_bad_npy_and_schema_violations_are_skipped_and_counted(tmp_path, caplog):
    truncated = io.BytesIO()
    np.save(truncated, np.zeros((H, W), np.float16))
    bad = {(0, 1): {"image.npy": b"not an npy at all"},
           (0, 2): {"lines.npy": truncated.getvalue()[:-7]},
           (1, 0): {"valid.npy": np.ones(K, np.uint8)}}  # valid flag on a NaN line (i % 3 == 0)
    sizes = [4, 4]
    pattern = write_shards(tmp_path / "t", sizes, corrupt=bad)
    cfg = DataConfig(shards=pattern, val_shards=pattern, batch_size=1, num_workers=0)
    with caplog.at_level(logging.WARNING, logger="anatplane_dist.data.stream"):
        val = make_val_loader(cfg)
        keys = [k for b in val for k in b["key"]]
    assert len(keys) == 5 and val.last_report.stats.skipped == 3 and val.last_report.stats.samples == 5
    assert "not a valid .npy" in caplog.text and "truncated .npy" in caplog.text
    assert "valid flag set on a non-finite line" in caplog.text
    train, steps = make_train_loader(cfg)
    epoch_keys(train, 0)  # the training epoch still runs its full length
    assert train.last_report.steps == steps and train.last_report.stats.skipped > 0


def test_truncated_tar_is_skipped_counted_and_warned_once(tmp_path, caplog):
    sizes = [6, 6, 6]
    pattern = write_shards(tmp_path / "t", sizes)
    path = tmp_path / "t" / "train-000001.tar"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 + 100])  # cut inside a member
    cfg = DataConfig(shards=pattern, val_shards=pattern, batch_size=2, num_workers=0, shuffle_buffer=4)
    with caplog.at_level(logging.WARNING, logger="anatplane_dist.data.stream"):
        val = make_val_loader(cfg)
        keys = {k for b in val for k in b["key"]}
    report = val.last_report.stats
    assert report.tar_errors >= 1
    intact = {sample_key("train", s, i) for s in (0, 2) for i in range(6)}
    cut = {sample_key("train", 1, i) for i in range(6)}
    assert intact <= keys and keys - intact < cut  # the cut shard's head is read, its tail is lost
    assert 0 < len(keys - intact) and report.raw == len(keys) + report.skipped
    train, steps = make_train_loader(DataConfig(**{**cfg.__dict__, "samples_per_epoch": 200}))
    epoch_keys(train, 0)
    assert train.last_report.steps == steps and train.last_report.stats.tar_errors > 1
    unreadable = [r for r in caplog.records if "unreadable tar data" in r.getMessage()]
    assert 1 <= len(unreadable) < train.last_report.stats.tar_errors  # rate-limited, not one line per error


def test_progress_guard_stops_when_every_sample_fails_decoding():
    stats = StreamStats(0)
    shards = ShardList([f"s{i}.tar" for i in range(3)], mode="resample", rank=0, world_size=1, stats=stats,
                       max_bad_samples=5)
    it = iter(shards)
    next(it)
    stats.add("raw", 3)
    stats.add("samples", 3)
    next(it)  # progress: fine
    stats.add("raw", 6)  # six samples read, none decoded
    with pytest.raises(RuntimeError, match="every sample fails decoding"):
        next(it)


def test_all_shards_corrupt_stops_with_a_clear_error(tmp_path):
    pattern = write_shards(tmp_path / "t", [3, 3])
    for p in (tmp_path / "t").glob("*.tar"):
        p.write_bytes(b"\0garbage" * 10)
    loader, _ = make_train_loader(DataConfig(shards=pattern, num_workers=0, batch_size=2))
    with pytest.raises(RuntimeError, match="every tar unreadable"):
        epoch_keys(loader, 0)


def test_a_shard_listed_but_missing_is_one_line(tmp_path, capsys):
    import argparse
    import json

    from anatplane_dist.cli import run_guarded
    from anatplane_dist.core.errors import AnatplaneError, ExitCode

    write_shards(tmp_path, [3, 4, 5])
    (tmp_path / "train-000001.tar").unlink()
    listed = [str(tmp_path / n) for n in json.loads((tmp_path / "sizes.json").read_text())]
    with pytest.raises(AnatplaneError, match=r"1 of 3 shard file\(s\) not found: .*train-000001.tar"):
        make_train_loader(DataConfig(shards=listed, num_workers=0))
    rc = run_guarded("anatplane pretrain", lambda a: make_train_loader(DataConfig(shards=listed, num_workers=0)),
                     argparse.Namespace())
    err = capsys.readouterr().err
    assert rc == ExitCode.USAGE and len(err.strip().splitlines()) == 1 and "train-000001.tar" in err
    with pytest.raises(FileNotFoundError):                    # still what older callers catch
        make_val_loader(DataConfig(val_shards=listed, num_workers=0))
