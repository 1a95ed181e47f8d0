"""A small ``nnUNetPlans.json`` in nnU-Net 2.x's format, for the fast tests.

The layout (``configurations`` -> ``2d`` -> ``architecture`` with ``network_class_name``,
``arch_kwargs``, ``_kw_requires_import``; ``patch_size``, ``spacing``) is that of the plans
``nnUNetv2_plan_and_preprocess`` writes (the slow round trip in tests/nnunet plans a real one);
the network is shrunk to 3 stages of 8-32 channels at 32x32 so a build takes milliseconds.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

ARCH_2D: dict[str, Any] = {
    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "arch_kwargs": {
        "n_stages": 3, "features_per_stage": [8, 16, 32], "conv_op": "torch.nn.modules.conv.Conv2d",
        "kernel_sizes": [[3, 3], [3, 3], [3, 3]], "strides": [[1, 1], [2, 2], [2, 2]],
        "n_conv_per_stage": [2, 2, 2], "n_conv_per_stage_decoder": [2, 2], "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d", "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True}},
    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
}


def plans_dict(*, patch: int = 32, spacing: float = 1.5, configs: tuple[str, ...] = ("2d", "3d_fullres"),
               channels: int = 1) -> dict[str, Any]:
    arch3d = copy.deepcopy(ARCH_2D)
    arch3d["arch_kwargs"].update(conv_op="torch.nn.modules.conv.Conv3d",
                                 norm_op="torch.nn.modules.instancenorm.InstanceNorm3d",
                                 kernel_sizes=[[3, 3, 3]] * 3, strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]])
    confs = {
        "2d": {"data_identifier": "nnUNetPlans_2d", "batch_size": 4, "patch_size": [patch, patch],
               "spacing": [spacing, spacing], "normalization_schemes": ["ZScoreNormalization"],
               "architecture": copy.deepcopy(ARCH_2D)},
        "3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres", "batch_size": 2, "patch_size": [8, patch, patch],
                       "spacing": [8.0, spacing, spacing], "architecture": arch3d},
    }
    return {"dataset_name": "Dataset501_Phantom", "plans_name": "nnUNetPlans",
            "configurations": {k: v for k, v in confs.items() if k in configs},
            "foreground_intensity_properties_per_channel": {str(i): {"mean": 0.0} for i in range(channels)}}


def write_plans(folder: Path, **kw: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "nnUNetPlans.json"
    path.write_text(json.dumps(plans_dict(**kw), indent=1))
    return path
