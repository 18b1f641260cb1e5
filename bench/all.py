"""Run every benchmark scenario with its default (short) size.

./run bench all [--full]
"""

from __future__ import annotations

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SCENARIOS = (
    "throughput",
    "batch_phases",
    "latency",
    "write_cost",
    "memory",
    "subtransactions",
    "email_e2e",
    "causation",
)


def main() -> None:
    extra = ["--full"] if "--full" in sys.argv[1:] else []
    failed = []
    for name in SCENARIOS:
        # Scenario 6 is 5,000 comments (10,000, the figure of issue 2, with --full).
        args = ["--comments", "10000" if extra else "5000"] if name == "email_e2e" else extra
        code = subprocess.call([sys.executable, os.path.join(HERE, f"{name}.py"), *args])
        if code:
            failed.append(name)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
