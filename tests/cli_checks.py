"""Running the real `rmtdeploy` entry point in a subprocess, as a user's shell would."""

from __future__ import annotations

import subprocess
import sys


def run_rmtdeploy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rmtdeploy.cli", *args], capture_output=True, text=True)


def assert_one_line_usage_error(result: subprocess.CompletedProcess, message: str) -> None:
    """Exit code 2, exactly one stderr line containing ``message``, and no traceback."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr, result.stderr
