"""experiments/brain-real.yaml in a small form: real brains -> pseudo-acquisitions -> shards ->
pretraining validated on the held-out brains -> fine-tuning on MNI152, tested on the ITK brain."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from anatplane_dist.experiment.runner import run_experiment
from anatplane_dist.experiment.spec import load_spec
from anatplane_dist.sources.volumes import anatomy_dirs

REPO = Path(__file__).resolve().parents[2]
PRESET = REPO / "experiments" / "brain-real.yaml"
COHORT = REPO / "experiments" / "brain-real" / "cohort.yaml"


def _missing() -> str:
    names = ["mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz", "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
             "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz", "KmeansTest_T1UCharRaw.nii.gz",
             "KmeansTest_T1KmeansPrelimSegmentation.nii.gz"]
    gone = [n for n in names if not any((d / n).is_file() for d in anatomy_dirs())]
    if not Path("/usr/share/mricron/templates/ch2.nii.gz").is_file():
        gone.append("ch2.nii.gz (mricron-data)")
    return f"real brains not installed ({', '.join(gone)}): run `make anatomy`" if gone else ""


@pytest.mark.skipif(bool(_missing()), reason=_missing() or "installed")
def test_brain_real_small(tmp_path: Path):
    cohort = yaml.safe_load(COHORT.read_text())
    cohort["poses"] = {"pretrain": 2, "heldout": 1, "labelled": 2}
    for v in cohort["volumes"]:
        lm = v.get("landmarks", {})
        if "file" in lm:
            lm["file"] = str(COHORT.parent / lm["file"])
    (tmp_path / "cohort.yaml").write_text(yaml.safe_dump(cohort))
    spec = yaml.safe_load(PRESET.read_text())
    spec["data"]["volumes"] = "cohort.yaml"
    spec["pretrain"].update(ranks=1, overrides=["train.epochs=1", "data.samples_per_epoch=16", "train.log_every=2",
                                                "data.num_workers=0"])
    spec["arms"] = [a for a in spec["arms"] if a["name"] in ("random", "multitask")]
    spec["finetune"].update(steps=4, batch_size=4, predictions=False)
    spec["protocol"]["seeds"] = [0]
    spec["workers"] = 1
    (tmp_path / "brain.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "run"
    summary = run_experiment(load_spec(tmp_path / "brain.yaml"), out, log=lambda _m: None)
    assert summary["cell_failures"] == [] and summary["cells"] == 2
    split = json.loads((out / "split.json").read_text())
    # one brain = one subject: the test brain never reaches pretraining, not even as a pose
    assert split["test"] == ["itk"] and split["pool"] == ["mni152"]
    data = out / "data"
    pretrained = {p.name for p in (data / "pretrain").iterdir() if p.is_dir()}
    assert pretrained == {"colin27-p00", "colin27-p01"}
    manifest = json.loads((data / "shards" / "manifest.json").read_text())
    assert manifest["counts"]["samples"] == 2 * 10
    # the pretext error on the held-out brains is what pretraining validated on
    arms = json.loads((out / "arms.json").read_text())
    log = Path(arms["multitask"]["log"]).with_suffix("") / "metrics.jsonl"     # the arm's run directory
    vals = [json.loads(line) for line in log.read_text().splitlines() if "val/angle_err_deg" in line]
    assert vals and vals[-1]["val/samples"] == 2 * 10
    cell = json.loads((out / "cells" / "multitask" / "n001-seed0.json").read_text())
    assert cell["test"] == ["itk"] and cell["train"] == ["mni152"]
    # the heatmap figure shows what the network predicts on its training-time input (z-scored)
    import torch

    from anatplane_dist.data.decode import collate
    from anatplane_dist.experiment.figures import heatmap_panels
    from anatplane_dist.finetune.backbone import read_pretrained_info
    from anatplane_dist.publish import load_pretrained
    from anatplane_dist.shards.format import decode_sample
    from anatplane_dist.shards.reader import iter_raw_samples

    published = arms["multitask"]["published"]
    heldout = data / "heldout-shards"
    panels = heatmap_panels(published, heldout, count=1)
    raw = {r["__key__"]: r for t in sorted(heldout.glob("*.tar")) for r in iter_raw_samples(t)}
    batch = collate([decode_sample(raw[panels[0]["key"]])])
    net = load_pretrained(read_pretrained_info(published).path.parent, part="full").eval()
    with torch.no_grad():
        expected = net(batch["image"])["heatmaps"][0].numpy()
    assert abs(panels[0]["pred"] - expected).max() < 1e-5


def test_volumes_data_source_in_the_spec(tmp_path: Path):
    from anatplane_dist.experiment.spec import SpecError

    spec = yaml.safe_load(PRESET.read_text())
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(spec))
    assert load_spec(tmp_path / "ok.yaml").data.volumes == "brain-real/cohort.yaml"
    spec["data"]["phantom"] = {"kind": "heart"}
    (tmp_path / "both.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(SpecError, match="phantom or volumes"):
        load_spec(tmp_path / "both.yaml")
