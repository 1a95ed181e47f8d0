"""Fine-tune published weights on a target task (same as ``anatplane finetune``)."""
from anatplane_dist.experiment.finetune_cli import main

if __name__ == "__main__":
    raise SystemExit(main())
