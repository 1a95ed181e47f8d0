"""Pretraining launcher: python | torchrun --nproc_per_node G | deepspeed --num_gpus G launch/pretrain.py --config FILE."""
from anatplane_dist.cli import exit_process, launch
from anatplane_dist.train.cli import main

exit_process(launch("launch/pretrain.py", main))
