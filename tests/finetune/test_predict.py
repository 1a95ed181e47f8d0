"""anatplane predict: NIfTI predictions on the image's own grid and affine, bad files skipped."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from anatplane_dist.cli import main as anatplane
from anatplane_dist.finetune.backbone import make_backbone
from anatplane_dist.finetune.data import GridSpec, load_acdc
from anatplane_dist.finetune.predict import PredictError, load_seg_model, prediction_path, save_seg_model
from anatplane_dist.finetune.segmentation import SegNet, SegTrainConfig, predict_volume
from anatplane_dist.model import ModelConfig

GRID = GridSpec(40, 5.0)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("acdc")
    assert anatplane(["phantom", "heart", "--subjects", "1", "--out", str(out / "cine"), "--labelled", "2",
                      "--labelled-out", str(out / "acdc"), "--size", "48"]) == 0
    return out / "acdc"


def _model(tmp_path):
    cfg = ModelConfig(name="unet", width=4, depth=2)
    bb = make_backbone("random", model_config=cfg, num_channels=2, seed=3)
    net = SegNet(bb.encoder, bb.decoder, 4)
    with __import__("torch").no_grad():                  # a non-trivial head: predictions vary
        net.decoder.head.bias.copy_(__import__("torch").tensor([0.0, 0.2, -0.1, 0.1]))
    path = save_seg_model(tmp_path / "model.pt", net, model_config_yaml=bb.model_config.to_yaml(),
                          num_channels=2, num_classes=4, grid=(GRID.size, GRID.spacing), largest_component=False)
    return net, path


def test_predictions_keep_the_affine_and_equal_the_in_memory_prediction(tmp_path, cohort):
    net, model = _model(tmp_path)
    out = tmp_path / "pred"
    assert anatplane(["predict", "--model", str(model), "--input", str(cohort), "--out", str(out)]) == 0
    subjects, _ = load_acdc(cohort, GRID)
    cfg = SegTrainConfig(num_classes=4, largest_component=False)
    loaded, _, header = load_seg_model(model)
    assert header["grid"] == GRID
    checked = 0
    for subj in subjects:
        for vol in subj.volumes:
            src = nib.load(str(cohort / vol.source))
            pred = nib.load(str(prediction_path(out, vol.source)))
            assert pred.shape == src.shape and np.allclose(pred.affine, src.affine)
            assert pred.get_data_dtype() == np.uint8
            want = np.moveaxis(predict_volume(net, vol, cfg), 0, 2)
            assert np.array_equal(np.asarray(pred.dataobj), want)
            checked += 1
    assert checked == 4                                   # 2 subjects x (ED, ES)
    assert not list(out.rglob("*_gt_pred.nii.gz"))        # ground truth is not an input


def test_a_bad_image_is_skipped_and_named_and_a_bad_model_is_one_line(tmp_path, cohort, capsys):
    _, model = _model(tmp_path)
    inp = tmp_path / "in"
    inp.mkdir()
    good = sorted(cohort.glob("*/*_frame01.nii.gz"))[0]
    (inp / good.name).write_bytes(good.read_bytes())
    (inp / "broken.nii.gz").write_bytes(b"not a nifti")
    assert anatplane(["predict", "--model", str(model), "--input", str(inp), "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "skipped broken.nii.gz" in err
    assert (tmp_path / "o" / good.name.replace(".nii.gz", "_pred.nii.gz")).is_file()
    (tmp_path / "bad.pt").write_bytes(b"junk")
    with pytest.raises(PredictError, match="unreadable model file"):
        load_seg_model(tmp_path / "bad.pt")
