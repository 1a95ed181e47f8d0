"""Sample decoding: .npy parsing, schema checks, batched z-score, collation."""
from __future__ import annotations

import io

import numpy as np
import numpy.lib.format as npformat
import pytest
import torch

from anatplane_dist.data.decode import collate, zscore_
from anatplane_dist.shards.format import SampleError, _all_finite, decode_sample, load_npy


def npy(arr: np.ndarray, version: tuple[int, int] | None = None, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    if version is None:
        np.save(buf, arr, allow_pickle=allow_pickle)
    else:
        npformat.write_array(buf, arr, version=version)
    return buf.getvalue()


def raw_sample(**override) -> dict:
    lines = np.array([[0.6, 0.8, -3.0], [np.nan] * 3], np.float32)
    sample = {"__key__": "subj_ser_s000_f000", "image.npy": npy(np.arange(12, dtype=np.float16).reshape(3, 4)),
              "lines.npy": npy(lines), "valid.npy": npy(np.array([1, 0], np.uint8)),
              "loc.npy": npy(np.array(2.5, np.float32))}
    sample.update(override)
    return sample


@pytest.mark.parametrize("arr", [np.arange(6, dtype=np.float16).reshape(2, 3), np.array(1.5, np.float32),
                                 np.arange(3, dtype=np.uint8), np.asfortranarray(np.arange(6.0).reshape(2, 3))])
def test_load_npy_round_trips(arr):
    out = load_npy(npy(arr))
    assert out.dtype == arr.dtype and out.shape == arr.shape and np.array_equal(out, arr)
    assert np.array_equal(load_npy(npy(arr, version=(2, 0))), arr)


def test_header_cache_keeps_shapes_apart():
    a, b = np.zeros((8, 8), np.float16), np.ones((4, 2), np.float16)
    for _ in range(2):
        assert load_npy(npy(a)).shape == (8, 8) and load_npy(npy(b)).shape == (4, 2)


@pytest.mark.parametrize("data,reason", [
    (b"garbage bytes here", "npy"),
    (npy(np.zeros((4, 4), np.float32))[:-5], "truncated"),
    (npy(np.array([{"a": 1}], dtype=object), allow_pickle=True), "npy"),
    (b"\x93NUMPY\x07\x00" + b"\0" * 20, "npy"),
])
def test_load_npy_rejects_bad_bytes(data, reason):
    with pytest.raises(SampleError) as info:
        load_npy(data, "x.npy")
    assert info.value.reason == reason and "x.npy" in str(info.value)


def test_finite_check_on_float16_bits():
    x = np.array([0.0, 65504.0, -65504.0, 6e-8], np.float16)
    assert _all_finite(x)
    for bad in (np.inf, -np.inf, np.nan):
        y = x.copy()
        y[1] = bad
        assert not _all_finite(y) and not _all_finite(y.astype(np.float32))


def test_zscore_per_image_and_constant_images():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((3, 5, 7)).astype(np.float32) * np.array([1, 10, 100], np.float32)[:, None, None])
    x[2] = 4.0  # constant image: zeros, not NaN
    ref = x.clone()
    zscore_(x)
    for i in range(2):
        want = (ref[i] - ref[i].mean()) / ref[i].std(unbiased=False)
        torch.testing.assert_close(x[i], want, atol=1e-5, rtol=1e-5)
    assert torch.all(x[2] == 0)


def test_decode_sample_masks_and_accepts_variants():
    s = decode_sample(raw_sample())
    assert s["lines"].tolist() == [[pytest.approx(0.6), pytest.approx(0.8), -3.0], [0.0, 0.0, 0.0]]
    assert s["valid"].tolist() == [1.0, 0.0] and s["loc"] == 2.5 and s["loc_valid"] == 1.0
    # a finite line whose flag is 0 is masked too (the flag decides); loc as (1,) and NaN
    lines = np.array([[0.6, 0.8, -3.0], [1.0, 0.0, 2.0]], np.float32)
    s = decode_sample(raw_sample(**{"lines.npy": npy(lines), "loc.npy": npy(np.array([np.nan], np.float32)),
                                    "image.npy": npy(np.ones((3, 4), np.float32))}))
    assert s["valid"].tolist() == [1.0, 0.0] and s["lines"][1].tolist() == [0, 0, 0]
    assert s["loc"] == 0.0 and s["loc_valid"] == 0.0 and s["image"].dtype == np.float32


@pytest.mark.parametrize("override,reason", [
    ({"loc.npy": None}, "missing"),
    ({"lines.npy": npy(np.zeros((2, 2), np.float32))}, "shape"),
    ({"valid.npy": npy(np.ones(3, np.uint8))}, "shape"),
    ({"image.npy": npy(np.zeros((2, 3, 4), np.float16))}, "shape"),
    ({"image.npy": npy(np.zeros((3, 4), np.int16))}, "shape"),
    ({"loc.npy": npy(np.zeros(2, np.float32))}, "shape"),
    ({"image.npy": npy(np.array([[1, np.inf]], np.float16))}, "nonfinite"),
    ({"valid.npy": npy(np.ones(2, np.uint8))}, "flags"),
])
def test_decode_sample_rejects_schema_violations(override, reason):
    raw = raw_sample(**{k: v for k, v in override.items() if v is not None})
    for k, v in override.items():
        if v is None:
            del raw[k]
    with pytest.raises(SampleError) as info:
        decode_sample(raw)
    assert info.value.reason == reason and "subj_ser_s000_f000" in str(info.value)


def test_collate_layout_and_shape_mismatch():
    a = decode_sample(raw_sample())
    batch = collate([a, a])
    assert batch["image"].shape == (2, 1, 3, 4) and batch["image"].dtype == torch.float32
    assert batch["lines"].shape == (2, 2, 3) and batch["loc"].shape == (2,) and batch["key"] == [a["key"]] * 2
    b = decode_sample(raw_sample(**{"image.npy": npy(np.ones((5, 4), np.float16))}))
    with pytest.raises(ValueError, match="same grid"):
        collate([a, b])


# ------------------------------------------------------------ format 2: sealed image + meta.json

def sealed(lines=([0.6, 0.8, -3.0], None), valid=(True, False), loc=2.5, **meta_extra) -> dict:
    from anatplane_dist.shards.seal import seal_meta
    image = npy(np.arange(12, dtype=np.float16).reshape(3, 4))
    meta = {"format": "anatplane-shard/2", "references": [{"view": v, "valid": ok} for v, ok in zip("ab", valid)],
            "location": {"value": loc}, "lines": list(lines), **meta_extra}
    return {"__key__": "s_x_s000_f000", "image.npy": image, "meta.json": seal_meta(meta, image)}


def test_sealed_sample_decodes_like_format_1():
    new, old = decode_sample(sealed()), decode_sample(raw_sample())
    for k in ("lines", "valid", "loc", "loc_valid"):
        assert np.array_equal(new[k], old[k]) and np.asarray(new[k]).dtype == np.asarray(old[k]).dtype
    assert np.array_equal(new["image"], old["image"])
    absent = decode_sample(sealed(loc=None))
    assert absent["loc_valid"] == 0 and absent["loc"] == 0


@pytest.mark.parametrize("member,offset", [("image.npy", -3), ("image.npy", 130), ("meta.json", 5),
                                           ("meta.json", -12)])
def test_any_changed_byte_is_a_checksum_skip(member, offset):
    raw = sealed()
    data = bytearray(raw[member])
    data[offset] ^= 0x04
    raw[member] = bytes(data)
    with pytest.raises(SampleError) as info:
        decode_sample(raw)
    assert info.value.reason in ("checksum",) and "s_x_s000_f000" in str(info.value)


def test_unsealed_or_inconsistent_meta_is_rejected():
    raw = sealed()
    raw["meta.json"] = b'{"lines": []}'
    with pytest.raises(SampleError, match="does not end with its crc32"):
        decode_sample(raw)
    with pytest.raises(SampleError) as info:
        decode_sample(sealed(valid=(True, True)))
    assert info.value.reason == "flags"
    with pytest.raises(SampleError) as info:
        decode_sample(sealed(lines=([0.6, 0.8],)))
    assert info.value.reason in ("meta", "shape", "flags")


def test_joined_bodies_are_the_bytes_of_one_dumps():
    from anatplane_dist.shards.seal import dumps, join_bodies, seal_body, seal_error, seal_meta
    common, own = {"a": [1.5, None], "s": "pé"}, {"frame": 3, "file": "x/y.dcm", "t": None}
    image = b"\x93NUMPY-bytes"
    assert seal_body(join_bodies(dumps(common)[:-1], own), image) == seal_meta(dict(common, **own), image)
    assert seal_error(image, seal_meta(common, image)) == ""
