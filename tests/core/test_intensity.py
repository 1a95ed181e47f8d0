"""robust_rescale: percentiles to 0/1, unclipped like the shards, safe on degenerate input."""
from __future__ import annotations

import numpy as np

from anatplane_dist.core.intensity import robust_rescale


def test_percentiles_map_to_zero_and_one_unclipped() -> None:
    x = np.arange(4096, dtype=np.float32).reshape(64, 64)      # 12-bit range, never wrapped
    y = robust_rescale(x)
    lo, hi = np.percentile(x, [0.5, 99.5])
    assert y.dtype == np.float32
    assert np.isclose(np.percentile(y, 0.5), 0, atol=1e-5) and np.isclose(np.percentile(y, 99.5), 1, atol=1e-5)
    assert y.min() < 0 and y.max() > 1                          # beyond the percentiles: kept
    np.testing.assert_allclose(y, (x - lo) / (hi - lo), rtol=1e-5, atol=1e-6)
    assert robust_rescale(x, clip=True).max() == 1.0


def test_all_frames_share_one_range_and_degenerate_inputs() -> None:
    frames = np.stack([np.full((8, 8), 100.0), np.full((8, 8), 300.0)])
    y = robust_rescale(frames)
    assert y[0].max() < 0.01 and y[1].min() > 0.99              # one range over both frames
    assert not robust_rescale(np.full((5, 5), 7.0)).any()
    z = np.arange(100, dtype=np.float32).reshape(10, 10)
    z[0, 0] = np.nan
    out = robust_rescale(z)
    assert np.isfinite(out).all() and abs(out[0, 0]) < 1e-6
