"""The verifiers under coverage-guided fuzzing (atheris), bounded and seeded: a step of CI of its
own (`make fuzz-check`); `make fuzz` runs open-ended."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.step


def test_coverage_guided_fuzzing_of_the_verifiers() -> None:
    """A bounded atheris run over every verifier and the envelope (fuzz/verifiers.py)."""
    pytest.importorskip("atheris", reason="atheris installs only where a wheel exists")
    script = Path(__file__).resolve().parents[2] / "fuzz" / "verifiers.py"
    # A fixed seed keeps CI repeatable; `make fuzz` runs open-ended with fresh seeds.
    result = subprocess.run([sys.executable, str(script), "-seed=1", "-atheris_runs=20000"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Done 20000" in result.stderr
