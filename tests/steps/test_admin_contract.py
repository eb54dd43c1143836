"""The admin API against its own OpenAPI document: schemathesis, every check, a real server.

The fuzzer reads `/admin/openapi.json`, generates valid and invalid parameters and bodies for
every operation (and chains them through the links it infers: list events -> show one -> replay
it), and fails on a 500, an answer the document does not declare, a response that does not fit
its schema, an invalid request accepted or a valid one refused.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.admin import ADMIN, ADMIN_TOKEN, admin
from tests.support.harness import Bridge, github_headers

pytestmark = pytest.mark.step  # a step of CI of its own: `make contract`


def test_the_admin_api_keeps_its_published_contract(make_bridge: Callable[..., Bridge],
                                                    tmp_path: Path) -> None:
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if cli is None:
        pytest.skip("schemathesis is not installed (make test installs it)")
    bridge = make_bridge(ADMIN)
    ids = []
    for i in range(3):  # some events, so the fuzzer reaches /admin/events/{id} with real ids
        body = json.dumps({"action": "opened", "n": i}).encode()
        ids.append(bridge.post("/hooks/github", body, github_headers(
            body, delivery=f"contract-{i}", event="issues")).json()["id"])
    assert admin(bridge, "GET", f"/admin/events/{ids[0]}").status_code == 200
    result = subprocess.run(
        [cli, "run", f"{bridge.url}/admin/openapi.json",
         "-H", f"Authorization: Bearer {ADMIN_TOKEN}", "--checks", "all", "--seed", "7",
         "--max-examples", "30", "--no-color", "--generation-database", "none",
         "--request-timeout", "10"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "FAILURES" not in result.stdout and " passed" in result.stdout
    assert "Traceback" not in bridge.logs()  # no input reached an unexpected error
