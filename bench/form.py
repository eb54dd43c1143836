"""Form bodies as glue reads them: 10,000 fields all named alike (a list of 10,000 values)
against 10,000 distinct names, in one run. Repeats cost what distinct fields cost when the
parse is linear; a list copied on every repeat made the first ~20x the second (130-180 ms of
the event loop for a 40 KB body).

    python bench/form.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bridge.ingest.filters import form  # noqa: E402


def best(text: str, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        form(text)
        times.append(time.perf_counter() - started)
    return min(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    repeated = "&".join(["a=xx"] * 10_000)
    distinct = "&".join(f"a{i}=xx" for i in range(10_000))
    r, d = best(repeated, rounds), best(distinct, rounds)
    print(f"10,000 repeated fields ({len(repeated)} bytes): {r:.2f} ms")
    print(f"10,000 distinct fields ({len(distinct)} bytes): {d:.2f} ms")
    print(f"ratio repeated/distinct: {r / d:.2f}x")


if __name__ == "__main__":
    main()
