"""YAML → typed dataclasses, ``key=value`` overrides, and the generated DeepSpeed config.

Each module owns the dataclass it consumes (``DataConfig`` in ``stream``, ``ModelConfig`` in
``model``, ...); this module only composes them into :class:`PretrainConfig`, converts
YAML values to the declared field types (so a typo or a wrong type fails at start-up, with
the dotted key in the message, not hours into a job) and derives everything that must have
one source of truth: the global batch and the DeepSpeed config.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from anatplane_dist.core.atomic import atomic_write_text
from anatplane_dist.core.errors import AnatplaneError
from anatplane_dist.data.config import AugmentConfig, DataConfig
from anatplane_dist.model.config import ModelConfig
from anatplane_dist.objectives.config import LossConfig, ObjectiveConfig
from anatplane_dist.train.options import OptimConfig, PublishConfig, TrainConfig


class ConfigError(AnatplaneError, ValueError):
    """A config value or key that cannot be used; the message names the dotted key."""


@dataclass
class PretrainConfig:
    """The whole pretraining run; one YAML file maps onto it."""
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    run_dir: str = ""              #: default run directory (``--run-dir`` wins)


# ---------------------------------------------------------------------------- typed conversion
def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML/override value to annotation ``tp``; raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} matches none of {tp}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if origin in (list, tuple, collections.abc.Sequence):
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(args, value)))
        inner = args[0] if args else Any
        out = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        kt, vt = args if args else (Any, Any)
        return {_coerce(k, kt, key): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        number = None
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(number):  # a NaN LR trains NaNs for hours; no config value means inf
            raise ConfigError(f"{key}: must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return "" if value is None else str(value)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{key}: cannot convert {value!r} to {tp}")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type, data: dict[str, Any] | None, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys are an error naming the key."""
    data = dict(data or {})
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown config key {where}{unknown[0]!s} (valid keys of "
                          f"{prefix or cls.__name__}: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) for YAML/JSON."""
    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    return plain(dataclasses.asdict(cfg))


def dump_yaml(cfg: Any) -> str:
    """YAML text of a config dataclass (the form stored in run dirs and weight files)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """Return a copy of ``cfg`` with ``a.b.c=value`` overrides applied, typed by the field."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        dotted, raw = item.split("=", 1)
        path = dotted.strip().split(".")
        cfg = _set(cfg, path, raw, dotted.strip())
    return cfg


def _set(obj: Any, path: list[str], raw: str, dotted: str) -> Any:
    if not dataclasses.is_dataclass(obj):
        raise ConfigError(f"unknown config key {dotted}")
    names = {f.name for f in dataclasses.fields(obj)}
    head = path[0]
    if head not in names:
        raise ConfigError(f"unknown config key {dotted} (valid keys here: {', '.join(sorted(names))})")
    if len(path) > 1:
        return dataclasses.replace(obj, **{head: _set(getattr(obj, head), path[1:], raw, dotted)})
    tp = _hints(type(obj))[head]
    value: Any = raw if tp is str else yaml.safe_load(raw) if raw.strip() else None
    if dataclasses.is_dataclass(tp) and not isinstance(value, dict):
        raise ConfigError(f"{dotted} is a section; override its fields ({dotted}.<key>=...)")
    return dataclasses.replace(obj, **{head: _coerce(value, tp, dotted)})


# ---------------------------------------------------------------------------- load / write
def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> PretrainConfig:
    """Read a YAML file (or defaults when ``path`` is None), apply overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml_mapping(path)
    if isinstance(data.get("objective"), str):  # shorthand: `objective: simclr`
        data["objective"] = {"name": data["objective"]}
    overrides = [f"objective.name={o.split('=', 1)[1]}" if o.split("=", 1)[0].strip() == "objective" else o
                 for o in (overrides or [])]
    cfg = from_dict(PretrainConfig, data)
    cfg = apply_overrides(cfg, overrides)
    validate(cfg)
    return cfg


def read_yaml_mapping(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML file's top-level mapping; a syntax error names ``file:line:column`` in one line."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror or e}") from e
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return loaded or {}


def validate(cfg: PretrainConfig) -> None:
    """Cross-field checks that a dataclass cannot express (choices are ``Literal`` types)."""
    t, o = cfg.train, cfg.optim
    checks = [
        (t.zero_stage in (0, 1, 2), "train.zero_stage (0-2)", t.zero_stage),
        (t.grad_accum >= 1, "train.grad_accum (>= 1)", t.grad_accum),
        (t.epochs >= 1 or t.max_steps > 0, "train.epochs (>= 1)", t.epochs),
        (t.keep_last >= 1, "train.keep_last (>= 1)", t.keep_last),
        (t.log_every >= 1, "train.log_every (>= 1)", t.log_every),
        (t.global_batch >= 0, "train.global_batch (>= 0)", t.global_batch),
        (o.base_lr > 0, "optim.base_lr (> 0)", o.base_lr),
        (o.min_lr >= 0, "optim.min_lr (>= 0)", o.min_lr),
        (o.ref_batch >= 1, "optim.ref_batch (>= 1)", o.ref_batch),
        (len(o.betas) == 2, "optim.betas (two numbers)", o.betas),
        (micro_batch(cfg) >= 1, "data micro batch (>= 1)", micro_batch(cfg)),
    ]
    for ok, key, value in checks:
        if not ok:
            raise ConfigError(f"invalid {key}: {value!r}")


def write_config(cfg: PretrainConfig, run_dir: str | os.PathLike) -> Path:
    """Write the resolved config to ``<run_dir>/config.yaml`` atomically."""
    return atomic_write_text(Path(run_dir) / "config.yaml", dump_yaml(cfg))


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose value differs between two plain config dicts (added/removed keys too)."""
    a, b = flatten(old), flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k, _MISSING) != b.get(k, _MISSING))


_MISSING = object()


#: presets shipped inside the package (found after a non-editable install too)
PRESETS_DIR = Path(__file__).resolve().parents[1] / "configs"   # anatplane_dist/configs


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def resolve_config_path(name_or_path: str | os.PathLike) -> Path:
    """A config file path, or the name of a packaged preset (``tiny-cpu``, ``heart``, ``knee``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    preset = PRESETS_DIR / f"{path.name.removesuffix('.yaml')}.yaml"
    if path.parent == Path(".") or path.parent.name == "configs":
        if preset.is_file():
            return preset
    raise ConfigError(f"--config {name_or_path}: no such file, and not a preset ({', '.join(available_presets())})")


def resolve_shard_dir(data: DataConfig) -> DataConfig:
    """``data.shards`` may name a sharder output directory: expand it to its split's tar files.

    The sharder writes ``train-NNNNNN.tar`` and ``val-NNNNNN.tar`` beside one ``sizes.json``;
    a directory spec becomes the explicit list of train shards, and ``val_shards`` (when
    unset) the val shards of the same directory.
    """
    if not isinstance(data.shards, str) or not os.path.isdir(data.shards):
        spec = data.shards if isinstance(data.shards, str) else ""
        if spec and "://" not in spec and not any(c in spec for c in "{}:*?[") and not os.path.exists(spec):
            raise ConfigError(f"data.shards={spec}: no such file or directory")
        return data
    folder = Path(data.shards)
    sizes = folder / "sizes.json"
    if not sizes.is_file():
        raise ConfigError(f"data.shards={folder} is a directory without sizes.json (not a shard set)")
    names = sorted(yaml.safe_load(sizes.read_text()) or {})
    train = [str(folder / n) for n in names if n.startswith("train-") and n.endswith(".tar")]
    val = [str(folder / n) for n in names if n.startswith("val-") and n.endswith(".tar")]
    if not train:
        raise ConfigError(f"data.shards={folder}: sizes.json lists no train-*.tar shards")
    return dataclasses.replace(data, shards=train, val_shards=data.val_shards or (val or None))


# ---------------------------------------------------------------------------- batch, LR, ds_config
def micro_batch(cfg: PretrainConfig) -> int:
    """Samples per rank per forward pass: the stream's batch size (it batches in workers)."""
    return int(cfg.data.batch_size)


def global_batch(cfg: PretrainConfig, world_size: int) -> int:
    """The one truth: global batch = micro × accumulation × world."""
    return micro_batch(cfg) * cfg.train.grad_accum * world_size


def accum_for(cfg: PretrainConfig, world_size: int, target_global: int) -> int:
    """Gradient accumulation that keeps ``target_global`` samples per step on ``world_size`` ranks.

    Raises:
        ConfigError: the global batch is not a multiple of micro × world (names the fixes).
    """
    per_pass = micro_batch(cfg) * world_size
    if target_global % per_pass:
        fits = [m for m in range(1, micro_batch(cfg) + 1) if target_global % (m * world_size) == 0]
        raise ConfigError(
            f"global batch {target_global} is not a multiple of data.batch_size {micro_batch(cfg)} x "
            f"{world_size} ranks; keep it with data.batch_size={max(fits) if fits else 1} on {world_size} ranks, "
            f"or use a number of ranks that divides {target_global // micro_batch(cfg)}")
    return target_global // per_pass


def scaled_lr(optim: OptimConfig, global_bs: int) -> float:
    """Peak LR from ``base_lr`` at ``ref_batch`` by the configured rule."""
    ratio = global_bs / optim.ref_batch
    if optim.lr_rule == "linear":
        return optim.base_lr * ratio
    if optim.lr_rule == "sqrt":
        return optim.base_lr * math.sqrt(ratio)
    return optim.base_lr


def ds_config(cfg: PretrainConfig, world_size: int) -> dict[str, Any]:
    """DeepSpeed config generated from the YAML: never a hand-written global batch.

    Only ``train_micro_batch_size_per_gpu`` and ``gradient_accumulation_steps`` are set;
    DeepSpeed derives ``train_batch_size`` itself, so a change of node count cannot trip
    its batch assertion. The optimiser is a torch one passed to ``deepspeed.initialize``
    (no JIT-built fused CPU Adam); non-Adam optimisers under ZeRO need the untested flag.
    """
    t = cfg.train
    out: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch(cfg),
        "gradient_accumulation_steps": t.grad_accum,
        "gradient_clipping": float(cfg.optim.clip),
        "zero_optimization": {"stage": t.zero_stage},
        "bf16": {"enabled": t.precision == "bf16"},
        "fp16": {"enabled": t.precision == "fp16"},
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
    }
    if t.precision in ("bf16", "fp16"):
        # DeepSpeed >= 0.19 casts only parameters; BatchNorm running stats must follow them
        out["data_types"] = {"buffer_dtype": t.precision}
    if t.precision == "fp16":
        out["fp16"].update({"loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000,
                            "hysteresis": 2, "min_loss_scale": 1})
    if t.zero_stage > 0 and cfg.optim.name != "adamw":
        out["zero_allow_untested_optimizer"] = True
    return out
