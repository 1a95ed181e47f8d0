"""Ctrl-C in tests, whatever started the test run.

A non-interactive shell starts background jobs with SIGINT ignored, and an ignored signal stays
ignored across fork and exec; Python then installs no KeyboardInterrupt handler, so a test's
SIGINT would do nothing. The Ctrl-C tests restore what a terminal gives a program.
"""
from __future__ import annotations

import contextlib
import signal
from typing import Iterator


def sigint_default() -> None:
    """``preexec_fn`` for a child that must see Ctrl-C as a terminal delivers it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def python_sigint() -> Iterator[None]:
    """This process raises KeyboardInterrupt on SIGINT for the duration (Python's own default)."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
