"""Running the `bridge` command line as a user does."""

from __future__ import annotations

import subprocess
import sys


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridge", *args], capture_output=True, text=True,
                          env=env, timeout=60)
