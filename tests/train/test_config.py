"""config.py: YAML → typed dataclasses, overrides, errors, and the generated ds_config."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from anatplane_dist.core.mapping import ConfigError, from_dict
from anatplane_dist.train.config import (
    PretrainConfig,
    apply_overrides,
    ds_config,
    dump_yaml,
    global_batch,
    load_config,
    resolve_shard_dir,
    scaled_lr,
    write_config,
)
from anatplane_dist.train.options import OptimConfig

REPO = Path(__file__).resolve().parents[2]
PRESETS = sorted((REPO / "launch" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_presets_load_and_round_trip(preset, tmp_path):
    cfg = load_config(preset)
    write_config(cfg, tmp_path)
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    assert dump_yaml(again) == (tmp_path / "config.yaml").read_text()


def test_presets_exist():
    assert {p.stem for p in PRESETS} >= {"tiny-cpu", "heart", "knee"}


def test_overrides_are_typed_by_the_field():
    cfg = load_config(REPO / "launch/configs/tiny-cpu.yaml",
                      ["optim.base_lr=1e-4", "train.epochs=7", "train.compile=true", "model.loc_hidden=[4, 5]",
                       "optim.betas=[0.8, 0.9]", "publish.dir=/tmp/x", "data.batch_size=3", "run_dir=runs/y"])
    assert cfg.optim.base_lr == 1e-4 and isinstance(cfg.optim.base_lr, float)   # YAML reads "1e-4" as str
    assert cfg.train.epochs == 7 and cfg.train.compile is True
    assert cfg.model.loc_hidden == [4, 5]
    assert cfg.optim.betas == [0.8, 0.9]
    assert cfg.publish.dir == "/tmp/x" and cfg.data.batch_size == 3 and cfg.run_dir == "runs/y"


def test_string_field_keeps_override_text():
    cfg = apply_overrides(PretrainConfig(), ["publish.name=007", "train.resume=never"])
    assert cfg.publish.name == "007" and cfg.train.resume == "never"


@pytest.mark.parametrize("override, fragment", [
    ("train.epoch=3", "train.epoch"),
    ("trian.epochs=3", "trian.epochs"),
    ("optim.base_lr=fast", "optim.base_lr"),
    ("train.epochs=2.5", "train.epochs"),
    ("train.compile=maybe", "train.compile"),
    ("train=3", "train"),
    ("no_equals_sign", "key=value"),
])
def test_override_errors_name_the_key(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        apply_overrides(PretrainConfig(), [override])


def test_unknown_yaml_key_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"train": {"epochs": 1, "warmup": 3}}))
    with pytest.raises(ConfigError, match=r"unknown config key train\.warmup"):
        load_config(path)
    path.write_text(yaml.safe_dump({"optimiser": {}}))
    with pytest.raises(ConfigError, match="unknown config key optimiser"):
        load_config(path)


def test_wrong_type_in_yaml_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": {"loc_hidden": "big"}}))
    with pytest.raises(ConfigError, match=r"model\.loc_hidden"):
        load_config(path)


def test_cross_field_validation():
    with pytest.raises(ConfigError, match="train.backend"):
        load_config(None, ["train.backend=horovod"])
    with pytest.raises(ConfigError, match="zero_stage"):
        load_config(None, ["train.zero_stage=3"])
    with pytest.raises(ConfigError, match="optim.name"):
        load_config(None, ["optim.name=adagrad"])


def test_from_dict_builds_nested_dataclasses():
    cfg = from_dict(PretrainConfig, {"optim": {"betas": [0.9, 0.99]}, "train": {"grad_accum": "4"}})
    assert isinstance(cfg.optim, OptimConfig) and cfg.train.grad_accum == 4


@pytest.mark.parametrize("rule, expected", [("linear", 4e-3), ("sqrt", 2e-3), ("none", 1e-3)])
def test_lr_scaling_rules(rule, expected):
    optim = OptimConfig(base_lr=1e-3, lr_rule=rule, ref_batch=64)
    assert scaled_lr(optim, 256) == pytest.approx(expected)


@pytest.mark.parametrize("precision, stage, optim", [("fp32", 0, "adamw"), ("bf16", 1, "lamb"), ("fp16", 2, "sgd")])
def test_ds_config_generated_from_one_batch_truth(precision, stage, optim):
    cfg = load_config(REPO / "launch/configs/tiny-cpu.yaml",
                      [f"train.precision={precision}", f"train.zero_stage={stage}", f"optim.name={optim}",
                       "train.grad_accum=3", "data.batch_size=5", "optim.clip=0.5"])
    ds = ds_config(cfg, world_size=4)
    assert ds["train_micro_batch_size_per_gpu"] == 5 and ds["gradient_accumulation_steps"] == 3
    assert "train_batch_size" not in ds                       # DeepSpeed derives it: no second truth
    assert global_batch(cfg, 4) == 5 * 3 * 4
    assert ds["bf16"]["enabled"] == (precision == "bf16") and ds["fp16"]["enabled"] == (precision == "fp16")
    assert ds["zero_optimization"]["stage"] == stage and ds["gradient_clipping"] == 0.5
    assert ds.get("data_types", {}).get("buffer_dtype") == (None if precision == "fp32" else precision)
    assert "optimizer" not in ds                              # torch optimiser passed in: no JIT build
    assert ds.get("zero_allow_untested_optimizer", False) == (stage > 0 and optim != "adamw")
    json.dumps(ds)


def test_deepspeed_engine_agrees_with_the_config(single_process_dist_env):
    """The real engine derives train_batch_size = micro × accum × world from our ds_config."""
    import deepspeed
    import torch

    cfg = load_config(REPO / "launch/configs/tiny-cpu.yaml", ["train.grad_accum=2", "data.batch_size=3",
                                                              "train.zero_stage=1"])
    net = torch.nn.Linear(4, 2)
    engine, *_ = deepspeed.initialize(model=net, optimizer=torch.optim.AdamW(net.parameters()),
                                      config=ds_config(cfg, world_size=1))
    assert engine.train_micro_batch_size_per_gpu() == 3
    assert engine.gradient_accumulation_steps() == 2
    assert engine.train_batch_size() == global_batch(cfg, 1) == 6
    assert engine.zero_optimization_stage() == 1


def test_shard_dir_expands_to_splits(tmp_path):
    (tmp_path / "sizes.json").write_text(json.dumps({"train-000001.tar": 3, "train-000000.tar": 4, "val-000000.tar": 2}))
    data = resolve_shard_dir(dataclasses.replace(PretrainConfig().data, shards=str(tmp_path)))
    assert data.shards == [str(tmp_path / "train-000000.tar"), str(tmp_path / "train-000001.tar")]
    assert data.val_shards == [str(tmp_path / "val-000000.tar")]
    (tmp_path / "sizes.json").unlink()
    with pytest.raises(ConfigError, match="sizes.json"):
        resolve_shard_dir(dataclasses.replace(PretrainConfig().data, shards=str(tmp_path)))
