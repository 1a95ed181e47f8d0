"""anatplane export: nnU-Net pretrained weights from runs / published models, nnU-Net raw datasets."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

pytest.importorskip("nnunetv2")

from anatplane_dist import publish as pub  # noqa: E402
from anatplane_dist.cli import main as anatplane  # noqa: E402
from anatplane_dist.core import checkpoints as ckpt  # noqa: E402
from anatplane_dist.core import weights  # noqa: E402
from anatplane_dist.model import ModelConfig, build_model, export_parts  # noqa: E402
from anatplane_dist.model.nnunet import build_nnunet_network  # noqa: E402
from anatplane_dist.sources.phantom.acdc import AcdcCohortConfig, write_acdc_cohort  # noqa: E402
from tests.model.nnunet_plans import write_plans  # noqa: E402

K = 2


def _run(tmp_path: Path, cfg: ModelConfig, step: int = 5) -> tuple[Path, torch.nn.Module]:
    """A run dir as the trainer leaves it (complete checkpoint, fp32 safetensors parts)."""
    run = tmp_path / "run"
    torch.manual_seed(step)
    model = build_model(cfg, K)
    state = {f"{p}.{k}": v for p, sd in export_parts(model).items() for k, v in sd.items()}
    tmp = ckpt.prepare_tmp(run, step)
    ckpt.write_meta(tmp, {"step": step, "epoch": 0, "world_size": 1, "backend": "single"})
    weights.export_fp32(tmp, state, model_config_yaml=cfg.to_yaml(), num_channels=K, step=step)
    ckpt.finalize(tmp)
    return run, model


def _nnunet_cfg(tmp_path: Path) -> ModelConfig:
    return ModelConfig(name="nnunet", plans=str(write_plans(tmp_path / "pre")), loc_hidden=[8])


def test_nnunet_export_loads_with_nnunets_own_loader(tmp_path, capsys):
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

    cfg = _nnunet_cfg(tmp_path)
    run, model = _run(tmp_path, cfg)
    out = tmp_path / "pretrained.pth"
    assert anatplane(["export", "--format", "nnunet", str(run), str(out)]) == 0
    assert "-pretrained_weights" in capsys.readouterr().out
    saved = torch.load(out, weights_only=True)
    assert not any(k.startswith(("module.", "_orig_mod.")) or ".seg_layers." in k or "head" in k
                   for k in saved["network_weights"])
    # the target network nnU-Net builds for a 4-class dataset, loaded by nnU-Net's function. Like
    # nnUNetv2_train on a CPU, no process group: nnU-Net maps the file to cuda:<rank> when one exists
    # (an earlier in-process test may have left one behind)
    import torch.distributed as tdist
    if tdist.is_initialized():
        tdist.destroy_process_group()
    target = build_nnunet_network(cfg.nnunet, 1, 4)
    load_pretrained_weights(target, str(out))
    ours = model.state_dict()
    for k, v in target.state_dict().items():
        if ".seg_layers." in k:
            continue
        src = k[len("decoder."):] if k.startswith("decoder.encoder.") else k
        assert torch.equal(v, ours[src]), k
    assert saved["anatplane"]["step"] == 5 and saved["anatplane"]["configuration"] == "2d"


def test_nnunet_export_from_a_published_model_and_refusals(tmp_path, capsys):
    cfg = _nnunet_cfg(tmp_path)
    run, _ = _run(tmp_path, cfg)
    version = pub.publish(run, tmp_path / "pub", name="nn")
    assert anatplane(["export", "--format", "nnunet", str(version.parent), str(tmp_path / "a.pth")]) == 0
    a = torch.load(tmp_path / "a.pth", weights_only=True)["network_weights"]
    assert anatplane(["export", "--format", "nnunet", str(run), str(tmp_path / "r.pth")]) == 0
    r = torch.load(tmp_path / "r.pth", weights_only=True)["network_weights"]
    assert a.keys() == r.keys() and all(torch.equal(a[k], r[k]) for k in a)   # published == the run's
    # a tampered published file is refused by the verification, before anything is read
    enc = version / "encoder.safetensors"
    raw = bytearray(enc.read_bytes())
    raw[-3] ^= 0xFF
    enc.write_bytes(bytes(raw))
    capsys.readouterr()
    assert anatplane(["export", "--format", "nnunet", str(version), str(tmp_path / "b.pth")]) == 2
    err = capsys.readouterr().err
    assert "checksum mismatch" in err and err.count("\n") == 1 and not (tmp_path / "b.pth").exists()
    # another backbone: refused, naming it
    other, _ = _run(tmp_path / "unet", ModelConfig(name="unet", width=4, depth=2, loc_hidden=[8]))
    assert anatplane(["export", "--format", "nnunet", str(other), str(tmp_path / "c.pth")]) == 2
    assert "pretrained with the 'unet' backbone" in capsys.readouterr().err
    # no decoder (location-only pretraining): nnU-Net needs encoder and decoder
    loc = ModelConfig(**{**cfg.to_dict(), "orientation_head": False})
    loc_run, _ = _run(tmp_path / "loc", loc)
    assert anatplane(["export", "--format", "nnunet", str(loc_run), str(tmp_path / "d.pth")]) == 2
    assert "no decoder" in capsys.readouterr().err
    assert anatplane(["export", "--format", "nnunet", str(tmp_path / "nothing"), str(tmp_path / "e.pth")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_nnunet_dataset_from_an_acdc_cohort(tmp_path, capsys):
    acdc = tmp_path / "acdc"
    write_acdc_cohort(acdc, AcdcCohortConfig(patients=2, matrix=(32, 32), frames=(3, 3)))
    # one broken frame: a ground truth of another shape - left out and reported
    bad = acdc / "patient002"
    frame = sorted(bad.glob("patient002_frame*_gt.nii.gz"))[0]
    img = nib.load(str(frame))
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 2), np.uint8), img.affine), str(frame))
    raw = tmp_path / "nnUNet_raw"
    assert anatplane(["export", "--format", "nnunet-dataset", str(acdc), str(raw), "--dataset-id", "7",
                      "--dataset-name", "Phantom"]) == 0
    out = capsys.readouterr().out
    ds = raw / "Dataset007_Phantom"
    meta = json.loads((ds / "dataset.json").read_text())
    cases = sorted(p.name[: -len("_0000.nii.gz")] for p in (ds / "imagesTr").iterdir())
    assert meta["numTraining"] == len(cases) == 3 and meta["file_ending"] == ".nii.gz"
    assert meta["labels"] == {"background": 0, "RV": 1, "MYO": 2, "LV": 3} and meta["channel_names"] == {"0": "cineMRI"}
    assert sorted(p.name[: -len(".nii.gz")] for p in (ds / "labelsTr").iterdir()) == cases
    assert "skipped patient002/" in out and "ground truth shape" in out
    assert json.loads((ds / "skipped.json").read_text())[0]["file"].startswith("patient002/")
    first = cases[0].split("_")[0]
    src = acdc / first / f"{cases[0]}.nii.gz"
    assert (ds / "imagesTr" / f"{cases[0]}_0000.nii.gz").read_bytes() == src.read_bytes()   # geometry untouched
    assert not list(raw.glob(".*staging*"))
    # an existing dataset is never overwritten; an empty cohort is refused
    assert anatplane(["export", "--format", "nnunet-dataset", str(acdc), str(raw), "--dataset-id", "7",
                      "--dataset-name", "Phantom"]) == 2
    assert "exists" in capsys.readouterr().err
    empty = tmp_path / "empty" / "patient001"
    empty.mkdir(parents=True)
    assert anatplane(["export", "--format", "nnunet-dataset", str(empty.parent), str(raw)]) == 2
    assert "no usable labelled frame" in capsys.readouterr().err
    shutil.rmtree(ds)


def test_nnunet_dataset_never_overwrites_a_case_with_a_duplicate_patient(tmp_path, capsys):
    """Issue 19 item 6: patient002/ and patient002_copy/ made '10 training cases' with 8 files."""
    acdc = tmp_path / "acdc"
    write_acdc_cohort(acdc, AcdcCohortConfig(patients=2, matrix=(24, 24), frames=(2, 2)))
    shutil.copytree(acdc / "patient002", acdc / "patient002_copy")
    shutil.copytree(acdc / "patient001", acdc / ".hidden")                  # not a subject
    raw = tmp_path / "raw"
    assert anatplane(["export", "--format", "nnunet-dataset", str(acdc), str(raw), "--dataset-id", "8"]) == 0
    out = capsys.readouterr().out
    ds = raw / "Dataset008_ACDC"
    meta = json.loads((ds / "dataset.json").read_text())
    images = sorted((ds / "imagesTr").iterdir())
    assert meta["numTraining"] == len(images) == len(list((ds / "labelsTr").iterdir())) == 4
    assert "patient002_copy/" in out and "duplicate case patient002_frame01" in out
    left_out = json.loads((ds / "skipped.json").read_text())
    assert {e["file"].split("/")[0] for e in left_out} == {"patient002_copy"}
    assert (ds / "imagesTr" / "patient002_frame01_0000.nii.gz").read_bytes() == \
        (acdc / "patient002" / "patient002_frame01.nii.gz").read_bytes()
