"""Segmentation predictions as NIfTI: a fine-tuned model file, and ``anatplane predict``.

    anatplane predict --model CELL/model.pt --input FOLDER --out DIR

A prediction is written next to where its image would be in an ACDC-layout tree
(``DIR/<relative path of the image>`` with ``_pred`` before ``.nii.gz``), on the image's own
voxel grid with the image's affine, so any viewer overlays it and any ACDC evaluation script
pairs it with the ground truth by name.  The model file records the grid it was trained on,
so new images are resampled exactly as the training images were.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from anatplane_dist.core.atomic import atomic_path
from anatplane_dist.core.errors import AnatplaneError
from anatplane_dist.core.geometry import Plane, plane_from_nifti

__all__ = ["MODEL_FORMAT", "PredictError", "save_seg_model", "load_seg_model", "image_volume",
           "prediction_path", "write_prediction", "predict_folder", "add_arguments", "run"]

MODEL_FORMAT = "anatplane-segmodel/1"


class PredictError(AnatplaneError):
    """A model file or input image that cannot be used (the message says which and why)."""


def save_seg_model(path: str | Path, net: torch.nn.Module, *, model_config_yaml: str, num_channels: int,
                   num_classes: int, grid: tuple[int, float], largest_component: bool) -> Path:
    """A fine-tuned segmentation network with what is needed to rebuild and feed it."""
    obj = {"format": MODEL_FORMAT, "model_config": model_config_yaml, "num_channels": int(num_channels),
           "num_classes": int(num_classes), "grid_size": int(grid[0]), "grid_spacing": float(grid[1]),
           "largest_component": bool(largest_component),
           "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()}}
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def load_seg_model(path: str | Path) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """(SegNet, SegTrainConfig for prediction, header) from :func:`save_seg_model`'s file."""
    from anatplane_dist.finetune.backbone import make_backbone
    from anatplane_dist.finetune.data import GridSpec
    from anatplane_dist.finetune.segmentation import SegNet, SegTrainConfig
    from anatplane_dist.model import ModelConfig

    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise PredictError(f"model file {path} does not exist") from exc
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file; name the file
        raise PredictError(f"{path}: unreadable model file ({exc})") from exc
    if not isinstance(obj, dict) or obj.get("format") != MODEL_FORMAT:
        raise PredictError(f"{path}: not an {MODEL_FORMAT} file (written by 'anatplane experiment run')")
    cfg = ModelConfig.from_yaml(obj["model_config"])
    backbone = make_backbone("random", model_config=cfg, num_channels=obj["num_channels"])
    net = SegNet(backbone.encoder, backbone.decoder, obj["num_classes"])
    net.load_state_dict(obj["state_dict"], strict=True)
    net.eval()
    header = {k: v for k, v in obj.items() if k != "state_dict"}
    header["grid"] = GridSpec(obj["grid_size"], obj["grid_spacing"])
    tcfg = SegTrainConfig(num_classes=obj["num_classes"], largest_component=obj["largest_component"])
    return net, tcfg, header


def image_volume(path: Path, grid: Any, root: Path | None = None):
    """An unlabelled 3D NIfTI image as a :class:`~anatplane_dist.finetune.data.SegVolume`
    (labels all background), prepared exactly like the training frames."""
    from anatplane_dist.finetune.data import SegVolume, _load_3d, slice_to_grid

    data, affine = _load_3d(path)
    n = data.shape[2]
    planes = plane_from_nifti(affine, data.shape, np.arange(n), axis=2)
    imgs, grids = [], []
    for k in range(n):
        img, _, g = slice_to_grid(np.asarray(data[:, :, k], dtype=np.float32), planes[k], grid)
        imgs.append(img)
        grids.append(g)
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    empty = np.zeros((n,) + data.shape[:2], np.uint8)
    vol = SegVolume(subject=path.parent.name, phase="", image=np.stack(imgs),
                    label=np.zeros((n, grid.size, grid.size), np.uint8), native_label=empty,
                    native_planes=planes, grids=Plane.stack(grids),
                    voxel_mm=(float(zooms[2]), float(zooms[0]), float(zooms[1])),
                    source=str(path.relative_to(root)) if root else path.name)
    return vol, affine


def prediction_path(out: Path, rel: str | Path) -> Path:
    """``out/<rel>`` with ``_pred`` before the NIfTI suffix (``patient001_frame01_pred.nii.gz``)."""
    rel = Path(rel)
    suffix = ".nii.gz" if rel.name.endswith(".nii.gz") else ".nii"
    return out / rel.parent / (rel.name[: -len(suffix)] + "_pred" + suffix)


def write_prediction(path: Path, labels_slice_first: np.ndarray, affine: np.ndarray) -> Path:
    """(S, rows, cols) labels -> a uint8 NIfTI on the image's grid, with the image's affine."""
    data = np.moveaxis(np.asarray(labels_slice_first, np.uint8), 0, 2)
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


def predict_folder(model: str | Path, folder: str | Path, out: str | Path) -> tuple[list[Path], list[str]]:
    """Predict every 3D NIfTI image under ``folder`` (ground-truth ``_gt`` files left out).

    Returns (written files, skipped "path: reason" lines): an unreadable image is skipped and
    named, the others still run.
    """
    from anatplane_dist.finetune.segmentation import predict_volume

    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        raise PredictError(f"input folder {folder} does not exist")
    net, tcfg, header = load_seg_model(model)
    images = sorted(p for p in folder.rglob("*.nii*") if p.name.endswith((".nii", ".nii.gz"))
                    and not p.name.endswith(("_gt.nii.gz", "_gt.nii", "_pred.nii.gz", "_pred.nii")))
    if not images:
        raise PredictError(f"{folder}: no .nii / .nii.gz images")
    written, skipped = [], []
    for p in images:
        try:
            vol, affine = image_volume(p, header["grid"], folder)
        except Exception as exc:  # noqa: BLE001 - a bad file is named and skipped, the rest go on
            skipped.append(f"{p.relative_to(folder)}: {type(exc).__name__}: {exc}")
            continue
        labels = predict_volume(net, vol, tcfg)
        written.append(write_prediction(prediction_path(out, vol.source), labels, affine))
    return written, skipped


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True,
                        help="fine-tuned model file (model.pt in an experiment cell)")
    parser.add_argument("--input", type=Path, required=True, help="folder of 3D NIfTI images (searched recursively)")
    parser.add_argument("--out", type=Path, required=True, help="where the _pred.nii.gz files go")


def run(args: argparse.Namespace) -> int:
    written, skipped = predict_folder(args.model, args.input, args.out)
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    print(f"wrote {len(written)} prediction(s) under {args.out}; {len(skipped)} skipped")
    return 0 if written else 1
