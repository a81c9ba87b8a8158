"""Runs every benchmark (``make bench``) and prints each figure next to its baseline."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

BENCHMARKS = ["bench_machines", "bench_software", "bench_flow_runs", "bench_fanout", "bench_aws", "bench_gcp"]


def main() -> int:
    sys.path.insert(0, str(Path(__file__).parent))
    for name in BENCHMARKS:
        module = importlib.import_module(name)
        print(f"== {name}: {module.__doc__.strip().splitlines()[0]}", flush=True)
        for line in module.main():
            print(f"   {line}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
