"""One exit-code table: errors.EXIT_CODES is what README.md and docs/training.md show, and what the CLI returns."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from anatplane_dist.cli import main
from anatplane_dist.core.errors import EXIT_CODES, AnatplaneError, ExitCode

REPO = Path(__file__).resolve().parents[2]


def _table(md: str, heading: str) -> dict[int, str]:
    section = md.split(heading, 1)[1]
    return {int(code): text.strip() for code, text in re.findall(r"^\| (\d+) \| (.+?) \|$", section, re.M)}


@pytest.mark.parametrize("doc, heading", [("README.md", "## Exit codes"), ("docs/training.md", "## Exit codes")])
def test_documented_exit_codes_are_the_table(doc, heading):
    assert _table((REPO / doc).read_text(), heading) == {int(k): v for k, v in EXIT_CODES.items()}


def test_every_domain_error_is_an_anatplane_error():
    from anatplane_dist.core.checkpoints import CheckpointVerifyError
    from anatplane_dist.core.mapping import ConfigError
    from anatplane_dist.train.checkpointing import ResumeRefused
    from anatplane_dist.train.resume_rules import ConfigChangeRefused
    from anatplane_dist.train.runlock import RunLockedError
    from anatplane_dist.train.trainer import NonFiniteLossError
    for cls in (ConfigError, CheckpointVerifyError, ResumeRefused, ConfigChangeRefused, RunLockedError):
        assert issubclass(cls, AnatplaneError) and cls.exit_code == ExitCode.USAGE
    assert NonFiniteLossError.exit_code == ExitCode.NONFINITE


def test_environment_errors_are_one_line(tmp_path, capsys):
    """Writing under a path whose parent is a file (as a read-only or missing folder would fail)."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc = main(["phantom", "heart", "--subjects", "1", "--out", str(blocker / "out")])
    err = capsys.readouterr().err
    assert rc == ExitCode.USAGE and "Traceback" not in err and len(err.strip().splitlines()) == 1
