"""The admin API and its CLI, as a test drives them."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx

from tests.support import http
from tests.support.harness import Bridge

ADMIN_TOKEN = "adm-token-5f0e9c1b2a7d"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ADMIN = f"""
[admin]
tokens = ["{ADMIN_TOKEN}"]
"""



def admin(bridge: Bridge, method: str, path: str, **kwargs: object) -> httpx.Response:
    return http.request(method, f"{bridge.url}{path}", headers=AUTH, timeout=30,
                         **kwargs)  # type: ignore[arg-type]


def cli(bridge: Bridge, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BRIDGE_URL": bridge.url, "BRIDGE_ADMIN_TOKEN": ADMIN_TOKEN}
    return subprocess.run([sys.executable, "-m", "bridge", *args], input=stdin.decode()
                          if stdin else None, capture_output=True, text=True, env=env, timeout=60)
