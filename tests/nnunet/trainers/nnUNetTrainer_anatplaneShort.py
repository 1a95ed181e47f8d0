"""A short nnU-Net trainer for the round-trip test: one epoch of a few iterations, and the
network's tensors written to ``$ANATPLANE_NNUNET_DUMP`` when training starts - after
``-pretrained_weights`` were loaded, before the first step - so the test can compare what
nnU-Net loaded with what we exported.  nnU-Net's final validation (sliding-window prediction
of every validation case with test-time mirroring, ~100 s on 2 CPU cores for 2 tiny cases)
runs only with ``ANATPLANE_NNUNET_VALIDATE=1``.

nnU-Net finds it through ``nnUNet_extTrainer`` (a folder it searches for trainer classes).
"""
import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_anatplaneShort(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 1
        self.num_iterations_per_epoch = int(os.environ.get("ANATPLANE_NNUNET_ITERS", "3"))
        self.num_val_iterations_per_epoch = 1

    def on_train_start(self):
        dump = os.environ.get("ANATPLANE_NNUNET_DUMP")
        if dump:
            if not self.was_initialized:
                self.initialize()
            net = getattr(self.network, "_orig_mod", self.network)
            torch.save({k: v.detach().cpu().clone() for k, v in net.state_dict().items()}, dump)
        super().on_train_start()

    def perform_actual_validation(self, save_probabilities: bool = False):
        if os.environ.get("ANATPLANE_NNUNET_VALIDATE") == "1":
            return super().perform_actual_validation(save_probabilities)
        self.print_to_log_file("anatplane short trainer: final validation skipped")
