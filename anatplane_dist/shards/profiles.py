"""What to shard and how: the anatomy profile and the sharder's own settings.

A ``Profile`` is data, not code: which view is the model input, which views are the reference
channels (in a fixed order: channel k of every sample is the same view), how a reference slice
is picked, and which location rule applies.  The two built-in profiles below are plain
instances; any other anatomy is a YAML file with the same fields, so adding one (e.g. brain:
axial input, sagittal + coronal references) needs no code change.

``ShardConfig`` holds everything else that changes the bytes of a shard.  Its hash is what a
resumed run and a merge of parts compare: same hash, same shards.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anatplane_dist.core.hashing import json_fingerprint
from anatplane_dist.core.mapping import from_dict, read_yaml_mapping

__all__ = ["Profile", "ShardConfig", "BUILTIN_PROFILES", "load_profile", "FORMAT_VERSION"]

#: bumped whenever the sample layout or the target computation changes
FORMAT_VERSION = "anatplane-shard/2"

_PICKS = ("first", "central")
_LOCATIONS = ("heart", "symmetric", "none")
_STACK_BY = ("view", "series")


@dataclass(frozen=True)
class Profile:
    """One anatomy's view roles.

    Attributes:
        name: profile name, recorded in every manifest.
        reader: ``anatplane_dist.sources.<reader>`` module (or a dotted module path) that
            exposes ``read_study(study_dir, root=...)``.
        input_view: the view whose slices (every cine frame) become samples.
        references: reference views, one heatmap channel each, in this order.
        reference_pick: ``first`` candidate of a view (heart: the reader lists the one to use
            first) or ``central`` slice of the first series' stack (knee).
        location: ``heart`` (base 0 -> apex 1), ``symmetric`` (``|2t-1|``) or ``none``.
        stack_by: input slices that form one stack for the location target: the whole
            ``view`` (DSBCC: one series per SAX position) or each ``series`` (knee stacks).
        min_angle_deg: planes closer to parallel than this give no line (channel masked).
        min_visible_px: a line with less visible length in the model grid is masked.
    """

    name: str
    reader: str
    input_view: str
    references: tuple[str, ...]
    reference_pick: str = "first"
    location: str = "heart"
    stack_by: str = "view"
    min_angle_deg: float = 5.0
    min_visible_px: float = 2.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "references", tuple(str(r) for r in self.references))
        if not self.references:
            raise ValueError(f"profile {self.name!r}: needs at least one reference view")
        if len(set(self.references)) != len(self.references):
            raise ValueError(f"profile {self.name!r}: reference views repeat: {list(self.references)}")
        if self.input_view in self.references:
            raise ValueError(f"profile {self.name!r}: input view {self.input_view!r} is also a reference")
        for what, value, allowed in (("reference_pick", self.reference_pick, _PICKS),
                                     ("location", self.location, _LOCATIONS),
                                     ("stack_by", self.stack_by, _STACK_BY)):
            if value not in allowed:
                raise ValueError(f"profile {self.name!r}: {what} must be one of {allowed}, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["references"] = list(self.references)
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Profile":
        return from_dict(Profile, d, "profile", kind="field")


BUILTIN_PROFILES: dict[str, Profile] = {
    "heart": Profile(name="heart", reader="dsbcc", input_view="sax", references=("2ch", "4ch"),
                     reference_pick="first", location="heart", stack_by="view"),
    "knee": Profile(name="knee", reader="knee", input_view="sagittal", references=("coronal", "axial"),
                    reference_pick="central", location="symmetric", stack_by="series"),
}


def load_profile(spec: str | Path) -> Profile:
    """A built-in profile by name, or a YAML file holding the ``Profile`` fields."""
    if str(spec) in BUILTIN_PROFILES:
        return BUILTIN_PROFILES[str(spec)]
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"profile {spec!r}: not a built-in ({', '.join(BUILTIN_PROFILES)}) nor a YAML file")
    data = read_yaml_mapping(path, "profile")   # a !!python/object tag is one line, never run
    data.setdefault("name", path.stem)
    return Profile.from_dict(data)


#: model grid bounds (pixels): below 8 no network downsamples; above 4096 one float32 image
#: is over 64 MiB and a batch no longer fits any accelerator, so it is a typo, refused up front
MIN_GRID, MAX_GRID = 8, 4096


@dataclass(frozen=True)
class ShardConfig:
    """Everything that changes shard bytes (and nothing that does not, e.g. worker count).

    Attributes:
        profile: the anatomy profile.
        grid: model grid size in pixels (square).
        spacing: model grid spacing in mm.
        val_fraction: expected fraction of subjects in the validation split.
        seed: split seed.
        shard_size: samples per shard (the last shard of a split holds the rest).
        require_all_views: drop a study missing a reference view instead of masking it.
        percentiles: robust intensity range of a slice (over all its frames).
        compress: ``none`` (plain tar) or ``gz`` (the tar stream gzip'd; same ``.tar`` name,
            tar readers detect it): see ``shards/FORMAT.md`` for the measured trade-off.
    """

    profile: Profile
    grid: int = 224
    spacing: float = 1.26
    val_fraction: float = 0.1
    seed: int = 0
    shard_size: int = 1000
    require_all_views: bool = False
    percentiles: tuple[float, float] = (0.5, 99.5)
    compress: str = "none"
    format: str = field(default=FORMAT_VERSION)

    def __post_init__(self) -> None:
        object.__setattr__(self, "percentiles", tuple(float(p) for p in self.percentiles))
        if not MIN_GRID <= self.grid <= MAX_GRID:   # 100000 px would be 37 GiB per float32 image
            raise ValueError(f"grid must be {MIN_GRID} to {MAX_GRID} pixels, got {self.grid}")
        if not self.spacing > 0:
            raise ValueError(f"spacing must be positive, got {self.spacing}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be positive, got {self.shard_size}")
        if self.compress not in ("none", "gz"):
            raise ValueError(f"compress must be 'none' or 'gz', got {self.compress!r}")
        lo, hi = self.percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(f"percentiles must satisfy 0 <= lo < hi <= 100, got {self.percentiles}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["profile"] = self.profile.to_dict()
        d["percentiles"] = list(self.percentiles)
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "ShardConfig":
        d = dict(d)
        d["profile"] = Profile.from_dict(d["profile"])
        return ShardConfig(**d)

    def config_hash(self) -> str:
        """sha256 of the canonical JSON of this config (first 16 hex digits)."""
        return json_fingerprint(self.to_dict(), compact=True)
