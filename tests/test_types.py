"""The type checker over `bridge/`, as part of the suite: the `Store` protocol is the seam a
second store implements, so what callers use of it must be in it, and typed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_finds_nothing_in_bridge() -> None:
    out = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Success: no issues found" in out.stdout


def test_no_type_ignore_comments_hide_anything() -> None:
    found = [f"{path.relative_to(ROOT)}:{n}" for path in sorted((ROOT / "bridge").rglob("*.py"))
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if "type: ignore" in line]
    assert found == []
