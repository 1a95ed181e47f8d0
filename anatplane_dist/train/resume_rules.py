"""Which config changes a resumed run accepts, and the run's config history.

A resume continues *the same* run, so its config must be the one the run was trained with,
except for keys that cannot change what has been learnt so far:

- the run length (``train.epochs``, ``train.max_steps``) and the cadence of logging,
  validation, checkpoints and the progress display;
- where to publish, and ``train.resume`` / ``train.init_from`` themselves;
- ``data.batch_size`` / ``train.grad_accum``, which a world-size change adapts to keep the
  run's fixed global batch (the trainer refuses a world size that cannot keep it);
- the data paths, when the shard manifest they point at has the same sha256 (moved data).

Anything else (model, loss, optimiser, augmentation, seeds, ...) is refused with the keys
named, unless the user passes ``--allow-config-change``; every start appends the config it
ran with to ``config-history.jsonl`` and writes it to ``config.yaml`` atomically.
"""
from __future__ import annotations

import datetime
import socket
from pathlib import Path
from typing import Any

from anatplane_dist.core.atomic import atomic_write_text
from anatplane_dist.core.errors import AnatplaneError
from anatplane_dist.core.jsonl import append_jsonl, iter_jsonl
from anatplane_dist.train.config import changed_keys, read_yaml_mapping

HISTORY = "config-history.jsonl"
CONFIG = "config.yaml"

#: keys (or prefixes ending in ".") that a resume may change freely
SAFE_KEYS = ("train.epochs", "train.max_steps", "train.log_every", "train.val_every", "train.val_batches",
             "train.ckpt_every", "train.keep_last", "train.progress", "train.resume", "train.init_from",
             "train.grad_accum", "train.compile", "train.channels_last", "train.phase_times", "data.batch_size",
             "data.val_batch_size", "publish.", "run_dir")
#: data paths: safe when the shard manifest hash is unchanged
DATA_PATH_KEYS = ("data.shards", "data.val_shards")


class ConfigChangeRefused(AnatplaneError):
    """The resumed run's config differs from the saved one in keys that are not safe to change."""


def _is_safe(key: str) -> bool:
    return any(key == s or (s.endswith(".") and key.startswith(s)) for s in SAFE_KEYS)


def _is_data_path(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") or key.startswith(k + "[") for k in DATA_PATH_KEYS)


def saved_config(run_dir: Path) -> dict[str, Any] | None:
    """The config the run last ran with (``config.yaml``), or None for a new run dir."""
    path = run_dir / CONFIG
    return read_yaml_mapping(path) if path.is_file() else None


def last_manifest_hash(run_dir: Path) -> str | None:
    """The shard manifest sha256 the run last trained on (from its history)."""
    last = None
    for row in iter_jsonl(run_dir / HISTORY):     # a torn last line from a kill is skipped
        last = row.get("shards_manifest_sha256") or last
    return last


def check_config_change(run_dir: Path, new: dict[str, Any], manifest_hash: str | None, *,
                        allow: bool) -> list[str]:
    """The changed keys of a resume (possibly empty); raises when an unsafe one changed.

    Raises:
        ConfigChangeRefused: names every unsafe key with its old and new value.
    """
    from anatplane_dist.core.checkpoints import list_complete
    old = saved_config(run_dir)
    if old is None or not list_complete(run_dir):   # nothing to resume: a fresh start may differ
        return []
    if not new.get("train", {}).get("global_batch"):  # 0 = "derive it": a resume keeps the run's own
        new = {**new, "train": {**new["train"], "global_batch": old.get("train", {}).get("global_batch", 0)}}
    changed = changed_keys(old, new)
    same_data = manifest_hash is not None and manifest_hash == last_manifest_hash(run_dir)
    unsafe = [k for k in changed if not _is_safe(k) and not (_is_data_path(k) and same_data)]
    if unsafe and not allow:
        from anatplane_dist.train.config import flatten
        a, b = flatten(old), flatten(new)
        shown = "; ".join(f"{k}: {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}" for k in unsafe[:6])
        more = f" and {len(unsafe) - 6} more" if len(unsafe) > 6 else ""
        raise ConfigChangeRefused(
            f"{run_dir} was trained with another config ({shown}{more}); resume with the saved config "
            f"({run_dir / CONFIG}), use a new --run-dir, or pass --allow-config-change")
    return changed


def record_start(run_dir: Path, config: dict[str, Any], config_yaml: str, *, world_size: int, backend: str,
                 start_step: int, changed: list[str], manifest_hash: str | None) -> None:
    """Append this start to the history and make ``config.yaml`` the config it runs with."""
    row = {"time": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "host": socket.gethostname(), "world_size": world_size, "backend": backend,
           "start_step": start_step, "changed": changed, "shards_manifest_sha256": manifest_hash,
           "config": config}
    append_jsonl(run_dir / HISTORY, row, durable=True)   # append-only; one line per start
    atomic_write_text(run_dir / CONFIG, config_yaml)
