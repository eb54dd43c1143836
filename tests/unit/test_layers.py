"""The tree's layers (docs/architecture.md): every import of every module points down the path
an event takes, never back up and never sideways into another stage."""

from __future__ import annotations

import ast
from pathlib import Path

BRIDGE = Path(__file__).resolve().parents[2] / "bridge"
# A module may import its own package and any package of a lower rank; equal ranks are
# different stages and may not borrow from each other.
RANK = {"core": 0, "web": 1, "signing": 1, "devtools": 2, "config": 2, "store": 3,
        "ingest": 4, "delivery": 5, "tracking": 6, "callbacks": 7, "channels": 8,
        "operate": 9, "app": 10, "cli": 11, "__main__": 12}


def imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bridge"):
            found += ([f"bridge.{a.name}" for a in node.names] if node.module == "bridge"
                      else [node.module])
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("bridge.")]
    return found


def test_every_import_points_down_the_path() -> None:
    wrong = []
    for path in sorted(BRIDGE.rglob("*.py")):
        parts = path.relative_to(BRIDGE).with_suffix("").parts
        if parts == ("__init__",):
            continue
        mine = parts[0]
        assert mine in RANK, f"{path}: a package the layers do not name"
        for module in imports(path):
            theirs = module.split(".")[1]
            if theirs in ("__version__", mine):
                continue
            if RANK[theirs] >= RANK[mine]:
                wrong.append(f"{path.relative_to(BRIDGE)} imports {module}")
    assert wrong == []


def test_no_module_grows_past_six_hundred_lines() -> None:
    long = {str(p.relative_to(BRIDGE)): n for p in BRIDGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 600}
    assert long == {}
