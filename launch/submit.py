"""Submit pretraining to SLURM with submitit (one task per GPU, requeue + resume): see docs/slurm.md."""
from anatplane_dist.cli import launch
from anatplane_dist.train.submit import main

raise SystemExit(launch("launch/submit.py", main))
