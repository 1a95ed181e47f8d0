"""The ``anatplane`` dispatcher: every registered sub-command imports and parses --help."""
from __future__ import annotations

import importlib

import pytest

from anatplane_dist import cli


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
