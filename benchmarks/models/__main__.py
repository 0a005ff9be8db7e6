"""python -m benchmarks.models [--out DIR] [name ...]: write the benchmark models as .onnx files."""
from __future__ import annotations

import argparse

from . import CACHE_DIR, MODELS, build, build_all, model_stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("names", nargs="*", choices=[[]] + list(MODELS), help="models (default: all)")
    ap.add_argument("--out", default=str(CACHE_DIR), help=f"output folder (default {CACHE_DIR})")
    args = ap.parse_args()
    for name, p in build_all(args.out, args.names or None).items():
        s = model_stats(build(name))
        print(f"{name:24s} {s['nodes']:5d} nodes {s['params'] / 1e6:8.2f} M params "
              f"{s['size_mb']:7.1f} MiB  {p}")


if __name__ == "__main__":
    main()
