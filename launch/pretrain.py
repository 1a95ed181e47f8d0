"""Pretraining launcher: python | torchrun --nproc_per_node G | deepspeed --num_gpus G launch/pretrain.py --config FILE."""
from anatplane_dist.cli import launch
from anatplane_dist.train.cli import main

raise SystemExit(launch("launch/pretrain.py", main))
