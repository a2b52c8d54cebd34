"""Helpers of the hostile-input tests (``tests/test_hostile_*.py``): a command that refuses an
input must do it in one line, with exit status 2, without a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence

import pytest


def refusal(main: Callable[[list[str]], int], argv: Sequence[str], capsys) -> str:
    """Run ``main(argv)`` in-process; assert it exits with status 2 and prints exactly one
    error line (notes aside) and no traceback; return that line."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    captured = capsys.readouterr()
    assert exit_info.value.code == 2, (exit_info.value.code, captured.err[-2000:])
    return one_error_line(captured.err)


def one_error_line(err: str) -> str:
    """The single error line of ``err`` (lines starting with ``note:`` are ignored)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line and not line.startswith("note:")]
    assert len(lines) == 1, lines
    return lines[0]


def run_module(module: str, argv: Sequence[str], env: dict | None = None, timeout: int = 300):
    """``python -m module argv`` in a subprocess (JAX on the CPU): its CompletedProcess."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
