"""`make bench`: run every benchmark module; each writes bench/results/<name>.json."""
from __future__ import annotations

import importlib
import sys
import traceback

BENCHMARKS = ["bench.bench_sim", "bench.bench_memory", "bench.bench_perception", "bench.bench_policy",
              "bench.bench_loop"]


def main() -> int:
    failed = []
    for name in BENCHMARKS:
        print(f"== {name}", flush=True)
        try:
            importlib.import_module(name).main()
        except Exception:  # keep going: one broken benchmark must not hide the others
            traceback.print_exc()
            failed.append(name)
    if failed:
        print(f"benchmarks failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
