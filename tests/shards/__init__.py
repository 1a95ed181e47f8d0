"""Tests of anatplane_dist.shards (mirrors the package)."""
