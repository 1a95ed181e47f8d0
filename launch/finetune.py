"""Fine-tune published weights on a target task (same as ``anatplane finetune``)."""
from anatplane_dist.experiment.finetune_cli import main

if __name__ == "__main__":
    from anatplane_dist.cli import launch

    raise SystemExit(launch("launch/finetune.py", main))
