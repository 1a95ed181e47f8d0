"""Shard specifications: brace patterns, weighted sources and ``sizes.json``.

A spec names one or more *sources*, each a brace pattern of tar files:

* ``"shards/train-{000000..000009}.tar"`` — one source;
* ``"heart/train-{0..9}.tar::knee/train-{0..3}.tar"`` with ``weights="1::3"`` — two sources;
* ``[{"path": "heart/train-{0..9}.tar", "weight": 1}, {"path": "knee/...", "weight": 3}]``.

A source's weight is its share of the *samples* drawn when shards are resampled; without
weights sampling is uniform over all samples. Both need the sample counts from the
``sizes.json`` the sharder writes next to each shard set (``{"train-000000.tar": n, ...}``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import braceexpand

from anatplane_dist.core.errors import AnatplaneError

ShardSpec = str | Sequence[str | Mapping[str, Any]]


class ShardSpecError(AnatplaneError, ValueError):
    """A shard spec, weight list or ``sizes.json`` that cannot be used (a ``ValueError`` too,
    for callers that caught those before)."""


class MissingShardError(AnatplaneError, FileNotFoundError):
    """Local shards named by the spec (or by ``sizes.json``) that are not on disk: one line."""


@dataclass(frozen=True)
class ShardSource:
    """One source of shards: its pattern, the expanded shard paths and an optional weight."""

    pattern: str
    urls: tuple[str, ...]
    weight: float | None = None


def _expand(pattern: str) -> tuple[str, ...]:
    pattern = os.path.expandvars(os.path.expanduser(pattern.strip()))
    urls = tuple(braceexpand.braceexpand(pattern))
    if not pattern or not urls:
        raise ShardSpecError(f"shard pattern {pattern!r} expands to no files")
    return urls


def _weights_list(weights: str | Sequence[float] | None, n: int) -> list[float | None]:
    if weights is None:
        return [None] * n
    values = [float(w) for w in (weights.split("::") if isinstance(weights, str) else weights)]
    if len(values) != n:
        raise ShardSpecError(f"{len(values)} weights given for {n} shard sources")
    return list(values)


def parse_sources(spec: ShardSpec, weights: str | Sequence[float] | None = None) -> list[ShardSource]:
    """Turn a shard spec (string with ``::``, list of patterns, or list of ``{path, weight}``) into sources.

    Raises:
        ValueError: empty spec, a pattern that expands to nothing, a negative or all-zero weight,
            weights given twice, or a weight count that does not match the sources.
    """
    if isinstance(spec, str):
        patterns = [p for p in spec.split("::")]
        per_source = _weights_list(weights, len(patterns))
    else:
        patterns, per_source = [], []
        for item in spec:
            if isinstance(item, str):
                patterns.append(item)
                per_source.append(None)
            elif isinstance(item, Mapping):
                unknown = set(item) - {"path", "weight"}
                if "path" not in item or unknown:
                    raise ShardSpecError(f"shard source {dict(item)!r}: expected keys 'path' and optional 'weight'")
                patterns.append(str(item["path"]))
                per_source.append(None if item.get("weight") is None else float(item["weight"]))
            else:
                raise ShardSpecError(f"shard source {item!r}: expected a pattern string or a {{path, weight}} mapping")
        if weights is not None:
            if any(w is not None for w in per_source):
                raise ShardSpecError("weights given both in the shard list and separately")
            per_source = _weights_list(weights, len(patterns))
    if not patterns:
        raise ShardSpecError("empty shard spec")
    sources = [ShardSource(p.strip(), _expand(p), w) for p, w in zip(patterns, per_source)]
    given = [s.weight for s in sources if s.weight is not None]
    if given and len(given) != len(sources):
        raise ShardSpecError("give a weight to every shard source or to none")
    if any(w < 0 for w in given) or (given and sum(given) <= 0):
        raise ShardSpecError(f"shard source weights must be >= 0 and not all 0, got {given}")
    return sources


def all_urls(sources: Sequence[ShardSource]) -> list[str]:
    """Every shard of every source, in spec order."""
    return [u for s in sources for u in s.urls]


def is_local(url: str) -> bool:
    """True for plain file paths (not ``pipe:``, ``http://``, ...), which can be checked up front."""
    return "://" not in url and not url.startswith("pipe:")


def check_exist(urls: Sequence[str]) -> None:
    """Fail early, naming the files, when local shards are missing (instead of a skip per read).

    Raises:
        MissingShardError: an ``AnatplaneError``, so the CLI prints one line, not a traceback.
    """
    missing = [u for u in urls if is_local(u) and not os.path.isfile(u)]
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        folder = os.path.dirname(missing[0]) or "."
        raise MissingShardError(f"{len(missing)} of {len(urls)} shard file(s) not found: "
                                f"{', '.join(missing[:5])}{more}; re-run `anatplane shard` into {folder} "
                                f"(it resumes) or check it with `anatplane shard --verify {folder}`")


def read_sizes(urls: Sequence[str]) -> dict[str, int]:
    """Sample count of each shard that a ``sizes.json`` beside it lists (keys: shard basenames).

    Shards without an entry are left out; callers decide whether that is an error.

    Raises:
        ValueError: a ``sizes.json`` that is not a JSON object of non-negative integers.
    """
    tables: dict[str, dict[str, int] | None] = {}
    out: dict[str, int] = {}
    for url in urls:
        if not is_local(url):
            continue
        folder, name = os.path.split(url)
        if folder not in tables:
            path = os.path.join(folder, "sizes.json")
            tables[folder] = None
            if os.path.isfile(path):
                try:
                    with open(path, encoding="utf-8") as fh:
                        table = json.load(fh)
                except ValueError as exc:
                    raise ShardSpecError(f"{path}: not JSON ({exc})") from None
                if not isinstance(table, dict) or not all(
                        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in table.values()):
                    raise ShardSpecError(f"{path}: expected {{\"shard.tar\": non-negative int, ...}}")
                tables[folder] = table
        table = tables[folder]
        if table is not None and name in table:
            out[url] = table[name]
    return out


def total_samples(urls: Sequence[str]) -> int:
    """Sum of the shard sizes from ``sizes.json``; every shard must be listed.

    Raises:
        ValueError: a shard has no ``sizes.json`` entry (set ``samples_per_epoch`` instead).
    """
    sizes = read_sizes(urls)
    unknown = [u for u in urls if u not in sizes]
    if unknown:
        raise ShardSpecError(f"no sizes.json entry for {len(unknown)} shard(s), e.g. {unknown[0]}; "
                         "write sizes.json beside the shards or set samples_per_epoch")
    return sum(sizes[u] for u in urls)


def shard_probabilities(sources: Sequence[ShardSource]) -> list[float]:
    """Probability of drawing each shard (in :func:`all_urls` order) when resampling.

    A drawn shard yields *all* its samples, so drawing shards uniformly is already uniform
    over samples in expectation; that is the unweighted case. With weights, every shard of
    source ``i`` is drawn with probability proportional to ``weight_i / samples_i``, which
    makes source ``i``'s expected share of the samples ``weight_i / sum(weights)`` whatever
    its shard sizes. Sizes come from ``sizes.json``; without them shards count as equal.
    """
    if all(s.weight is None for s in sources):
        n = len(all_urls(sources))
        return [1.0 / n] * n
    sizes = read_sizes(all_urls(sources))
    probs: list[float] = []
    for s in sources:
        known = all(u in sizes for u in s.urls)
        samples = float(sum(sizes[u] for u in s.urls)) if known else float(len(s.urls))
        probs.extend([float(s.weight) / samples if samples > 0 else 0.0] * len(s.urls))
    norm = sum(probs)
    if norm <= 0:
        raise ShardSpecError("no shard can be drawn: zero weights or zero samples in sizes.json")
    return [p / norm for p in probs]
