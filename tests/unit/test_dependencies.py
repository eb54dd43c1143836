"""The locked dependency set: complete, and free of known vulnerabilities (pip-audit)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"


def locked() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def test_every_runtime_dependency_is_locked() -> None:
    pins = locked()
    required = metadata.requires("webhook-bridge") or []
    runtime = [r for r in required if "extra ==" not in r]
    assert runtime
    for requirement in runtime:
        name = requirement.split(";")[0]
        for mark in "<>=![ ":
            name = name.split(mark)[0]
        assert name.lower().replace("_", "-") in pins, f"{name} is not in requirements.lock"


def _service() -> str | None:
    """Which vulnerability service pip-audit can reach from here: PyPI's per-release JSON API
    or OSV. None when neither answers."""
    name, version = "starlette", locked().get("starlette", "1.10.0")
    probes = [("pypi", "GET", f"https://pypi.org/pypi/{name}/{version}/json", None),
              ("osv", "POST", "https://api.osv.dev/v1/query",
               {"package": {"name": name, "ecosystem": "PyPI"}, "version": version})]
    for service, method, url, body in probes:
        try:
            if httpx.request(method, url, json=body, timeout=10).status_code == 200:
                return service
        except httpx.HTTPError:
            continue
    return None


def test_locked_dependencies_have_no_known_vulnerabilities() -> None:
    auditor = shutil.which("pip-audit", path=str(Path(sys.executable).parent))
    if auditor is None:
        pytest.skip("pip-audit is not installed (it comes with the test extras)")
    service = _service()
    if service is None:
        pytest.skip("no vulnerability service is reachable from this machine (PyPI's "
                    "per-release JSON API and api.osv.dev both failed), so pip-audit would "
                    "audit nothing; `make audit` runs it where they are reachable")
    result = subprocess.run([auditor, "--strict", "--no-deps", "--disable-pip",
                             "--vulnerability-service", service, "-r", str(LOCK)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_installed_versions_are_the_locked_ones() -> None:
    """`make run` and `make test` install with requirements.lock as constraints: what runs is
    what was locked (and audited), not whatever was newest on the day of the install."""
    drift = {}
    for name, version in locked().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # locked for another platform or Python (atheris)
        if installed != version:
            drift[name] = f"{installed} installed, {version} locked"
    assert not drift, f"not the locked versions: {drift}"


def test_the_uvicorn_protocol_override_still_takes_effect() -> None:
    """`bridge/web/server.py` replaces parts of uvicorn's httptools protocol (not a public API):
    every method it overrides or calls must still be there, and be the one that runs. A
    uvicorn release that renames one fails here, loudly, instead of silently dropping the
    head limits (the 431 answers are tested end to end in test_hardening)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from bridge.web.server import BoundedHttpTools

    for name in ("data_received", "on_message_begin", "on_header", "on_headers_complete",
                 "_unset_keepalive_if_required", "_should_upgrade", "handle_websocket_upgrade",
                 "_unsupported_upgrade_warning", "send_400_response"):
        assert callable(getattr(HttpToolsProtocol, name, None)), f"uvicorn has no {name}"
    for name in ("data_received", "on_message_begin", "on_header", "on_headers_complete"):
        assert getattr(BoundedHttpTools, name) is not getattr(HttpToolsProtocol, name)
