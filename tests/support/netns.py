"""A private network for tests: a network namespace behind a packet filter that drops every
inbound connection, joined to the test's host by a veth pair (tests only).

Inside, processes reach the host side's address (`host_ip`); nothing outside can open a
connection to the namespace's address (`inside_ip`) or to anything listening in it. Needs root,
`ip` and `nft`; where they are missing the tests skip with the reason, unless
`BRIDGE_REQUIRE_NETNS=1` (set by CI), where they fail.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from typing import Any

import pytest

RULES = """
table inet firewall {
  chain input {
    type filter hook input priority 0; policy drop;
    iif "lo" accept
    ct state established,related accept
  }
}
"""


def unavailable() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (Debian: iproute2, nftables)"
    return None


def require() -> None:
    reason = unavailable()
    if reason is None:
        return
    if os.environ.get("BRIDGE_REQUIRE_NETNS") == "1":
        pytest.fail(f"firewall tests are required here but cannot run: {reason}")
    pytest.skip(reason)


class PrivateNetwork:
    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.name = f"wb-{tag}"
        self.host_if = f"wbh{tag}"
        block = int(tag[:2], 16)
        self.host_ip = f"10.213.{block}.1"
        self.inside_ip = f"10.213.{block}.2"

    def run(self, *args: str) -> None:
        subprocess.run(args, check=True, capture_output=True)

    def create(self) -> PrivateNetwork:
        inside_if = self.host_if.replace("wbh", "wbn")
        self.run("ip", "netns", "add", self.name)
        try:
            self.run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", inside_if)
            self.run("ip", "link", "set", inside_if, "netns", self.name)
            self.run("ip", "addr", "add", f"{self.host_ip}/24", "dev", self.host_if)
            self.run("ip", "link", "set", self.host_if, "up")
            self.exec_check("ip", "addr", "add", f"{self.inside_ip}/24", "dev", inside_if)
            self.exec_check("ip", "link", "set", inside_if, "up")
            self.exec_check("ip", "link", "set", "lo", "up")
            subprocess.run(["ip", "netns", "exec", self.name, "nft", "-f", "-"], input=RULES,
                           text=True, check=True, capture_output=True)
        except BaseException:
            self.destroy()
            raise
        return self

    def destroy(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)

    def command(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def exec_check(self, *args: str) -> None:
        self.run(*self.command(*args))

    def popen(self, args: list[str], log_path: str, env: dict[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
        log = open(log_path, "ab")  # noqa: SIM115 - the child owns it
        try:
            return subprocess.Popen(self.command(*args), stdout=log, stderr=subprocess.STDOUT,
                                    env={**os.environ, **(env or {})})
        finally:
            log.close()

    def get_json(self, url: str, timeout: float = 10.0) -> Any:
        """GET a URL from inside the namespace (where only its own processes can connect)."""
        script = ("import sys, urllib.request\n"
                  "print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())")
        out = subprocess.run(self.command(sys.executable, "-c", script, url),
                             capture_output=True, text=True, timeout=timeout, check=True)
        return json.loads(out.stdout)
