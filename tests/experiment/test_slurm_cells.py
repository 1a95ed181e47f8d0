"""``--slurm-args``: exactly what ``anatplane submit`` accepts (plus ``--array-parallelism``), checked
before anything runs, and turned into the cells' sbatch file."""
from __future__ import annotations

import pytest

from anatplane_dist.experiment.slurm_cells import (
    cell_executor,
    parse_slurm_args,
    pretrain_submit_args,
)
from anatplane_dist.experiment.spec import SpecError


def _sbatch(args: list[str], tmp_path) -> str:
    ex = cell_executor(parse_slurm_args(args), tmp_path / "slurm-cells")
    if "--array-parallelism" in args:       # applied when the array is submitted, not in the file
        assert ex.parameters["array_parallelism"] == int(args[args.index("--array-parallelism") + 1])
    return ex._make_submission_file_text(ex._submitit_command_str, uid="test")  # noqa: SLF001


def test_every_resource_option_of_submit_reaches_the_cells_sbatch_file(tmp_path):
    script = _sbatch(["--partition", "gpu", "--account", "lab", "--qos", "high", "--time", "90",
                      "--gpus-per-node", "4", "--nodes", "2", "--cpus-per-task", "8", "--mem", "64G",
                      "--constraint", "h100", "--exclude", "node[01-02]", "--job-name", "knee",
                      "--signal-delay-s", "60", "--array-parallelism", "16"], tmp_path)
    for line in ["--partition=gpu", "--account=lab", "--qos=high", "--time=90", "--cpus-per-task=8",
                 "--mem=64G", "--constraint=h100", "--exclude='node[01-02]'", "--job-name=knee-cells",
                 "--signal=USR2@60", "--gpus-per-node=1"]:
        assert f"#SBATCH {line}\n" in script, line
    assert "--nodes=2" not in script                        # pretraining's: a cell is one task


def test_a_cell_asks_for_one_gpu_by_default_and_none_on_a_cpu_partition(tmp_path):
    assert "#SBATCH --gpus-per-node=1\n" in _sbatch([], tmp_path)
    cpu = _sbatch(["--gpus-per-node", "0"], tmp_path)
    assert "gpus-per-node" not in cpu and "#SBATCH --cpus-per-task=4\n" in cpu


@pytest.mark.parametrize("args, says", [
    (["--partiton", "gpu"], "unrecognized arguments: --partiton gpu"),
    (["--part", "gpu"], "unrecognized arguments: --part"),               # no silent abbreviation
    (["--time", "soon"], "invalid int value: 'soon'"),
    (["--time", "0"], "--time >= 1 minute"),
    (["--time", "1", "--signal-delay-s", "120"], "--signal-delay-s < --time"),
    (["--array-parallelism", "0"], "--array-parallelism >= 1"),
    (["--wait"], "--wait is set by the experiment itself"),
    (["--config=x.yaml"], "--config is set by the experiment itself"),
    (["--partition", "gpu\n#SBATCH --qos=top"], "control character"),
])
def test_bad_slurm_args_are_one_line_errors(args, says):
    with pytest.raises(SpecError) as exc:
        parse_slurm_args(args)
    assert says in str(exc.value) and "\n" not in str(exc.value)
    assert str(exc.value).startswith("--slurm-args: ")


def test_pretraining_gets_every_option_but_the_array_parallelism():
    args = ["--partition", "gpu", "--array-parallelism", "8", "--nodes", "2", "--array-parallelism=4", "--local"]
    assert pretrain_submit_args(args) == ["--partition", "gpu", "--nodes", "2", "--local"]


def test_a_typo_in_slurm_args_fails_before_the_experiment_writes_anything(tmp_path):
    from anatplane_dist.experiment.runner import run_experiment

    with pytest.raises(SpecError, match="unrecognized arguments: --gpus 4"):
        run_experiment(None, tmp_path / "exp", slurm=True, slurm_args=["--gpus", "4"])  # type: ignore[arg-type]
    assert not (tmp_path / "exp").exists()
