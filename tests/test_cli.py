"""The ``anatplane`` dispatcher: every registered sub-command imports and parses --help."""
from __future__ import annotations

import importlib

import pytest

from anatplane_dist import cli
from tests.sigint import python_sigint, sigint_default


def test_no_arguments_prints_help(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_unknown_command_is_an_error(capsys):
    assert cli.main(["frobnicate"]) == 2


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_each_command_module_has_the_sub_command_interface(name):
    module = importlib.import_module(cli.COMMANDS[name][0])
    assert callable(module.add_arguments) and callable(module.run)
    with pytest.raises(SystemExit) as exc:
        cli.main([name, "--help"])
    assert exc.value.code == 0


# -- issue 19 item 10: Ctrl-C is one line and exit 130 -----------------------------------------
def test_ctrl_c_in_a_sub_command_is_one_line_exit_130(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from anatplane_dist.core.errors import ExitCode

    out = tmp_path / "dsbcc"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "anatplane_dist.cli", "phantom", "heart", "--subjects", "200",
                             "--size", "48", "--frames", "4", "--out", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=sigint_default)
    deadline = time.monotonic() + 120
    while not (out / "1").is_dir() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.CANCELLED == 130, err
    assert "Traceback" not in err
    assert err.strip().split("\n")[-1] == ("anatplane phantom: cancelled (Ctrl-C); finished outputs are kept, "
                                            "rerun to continue")
    assert (out / "1" / "study").is_dir()                                       # a finished subject is kept
    assert not [p for p in out.iterdir() if p.name.startswith(".staging-")]     # nothing half-written


def test_launchers_map_ctrl_c_to_130(capsys):
    import os
    import signal

    def interrupted_main(argv):
        os.kill(os.getpid(), signal.SIGINT)      # a real SIGINT, delivered to this (main) thread
        raise AssertionError("not reached")

    with python_sigint():
        assert cli.launch("launch/pretrain.py", interrupted_main) == 130
    assert "launch/pretrain.py: cancelled (Ctrl-C)" in capsys.readouterr().err
