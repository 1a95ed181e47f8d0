"""``anatplane export --format {nnunet,nnunet-dataset} SRC OUT``."""
from __future__ import annotations

import argparse
from pathlib import Path

FORMATS = ("nnunet", "nnunet-dataset")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", required=True, choices=FORMATS,
                        help="nnunet: MODEL -> OUT.pth for nnUNetv2_train -pretrained_weights; "
                             "nnunet-dataset: ACDC root -> nnU-Net raw dataset under OUT (nnUNet_raw)")
    parser.add_argument("src", type=Path, help="nnunet: a run directory or a published model; "
                                                "nnunet-dataset: an ACDC-format root (patientXXX/...)")
    parser.add_argument("out", type=Path, help="nnunet: the .pth to write; nnunet-dataset: the nnUNet_raw folder")
    parser.add_argument("--dataset-id", type=int, default=501, help="nnunet-dataset: DatasetXXX id (default 501)")
    parser.add_argument("--dataset-name", default="ACDC", help="nnunet-dataset: dataset name (default ACDC)")


def run(args: argparse.Namespace) -> int:
    if args.format == "nnunet":
        from anatplane_dist.export.nnunet_weights import export_nnunet

        out = export_nnunet(args.src, args.out)
        print(f"wrote {out}\nuse: nnUNetv2_train DATASET 2d FOLD -pretrained_weights {out}")
        return 0
    from anatplane_dist.export.nnunet_dataset import export_acdc_dataset

    res = export_acdc_dataset(args.src, args.out, dataset_id=args.dataset_id, name=args.dataset_name)
    for f, why in res.skipped:
        print(f"skipped {f}: {why}")
    print(f"wrote {res.path}: {len(res.cases)} training cases, {len(res.skipped)} frame(s) left out\n"
          f"next: nnUNet_raw={res.path.parent} nnUNetv2_plan_and_preprocess -d {args.dataset_id} -c 2d")
    return 0
