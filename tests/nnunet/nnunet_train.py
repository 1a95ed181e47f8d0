"""``nnUNetv2_train`` - nnU-Net's own console entry point, same arguments - with the short test
trainer registered under its name.

Why not the console script itself: nnU-Net looks a ``-tr`` name up by importing every trainer
module it ships before it looks in ``nnUNet_extTrainer``, and its Primus trainers import timm,
which imports torchvision, whose PyPI wheel is built for CUDA torch and does not load next to
the CPU torch of these machines.  The default trainer (what users run) is found before that
search reaches them, so the plain ``nnUNetv2_train`` command works for users; only a custom
trainer needs this.  Argument parsing, training and ``-pretrained_weights`` loading are nnU-Net's.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "trainers"))

from nnUNetTrainer_anatplaneShort import nnUNetTrainer_anatplaneShort  # noqa: E402
from nnunetv2.run import run_training  # noqa: E402

_find = run_training.recursive_find_trainer_class_by_name


def _find_with_short(name: str):
    return nnUNetTrainer_anatplaneShort if name == nnUNetTrainer_anatplaneShort.__name__ else _find(name)


run_training.recursive_find_trainer_class_by_name = _find_with_short

if __name__ == "__main__":
    sys.exit(run_training.run_training_entry())
