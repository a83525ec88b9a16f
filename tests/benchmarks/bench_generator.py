"""Generator throughput: labelled samples per second on one core.

    python tests/benchmarks/bench_generator.py [--size 256] [--n 40] [--variants 1,4,16]

A labelled sample = image + exact cores + RS mask + dense targets (heatmap, h
field). Runs single-threaded (OMP/MKL threads = 1, scipy.fft workers = 1).
``variants`` = images per generated structure (the cached-exit-wave recipe:
one structure, several lens/dose draws).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from dislotrack.data_gen.sample import GeneratorConfig, make_samples  # noqa: E402


def rate(mode: str, size: int, n: int, variants: int, seed: int = 0) -> float:
    cfg = GeneratorConfig(size=size, mode=mode)
    rng = np.random.default_rng(seed)
    make_samples(rng, cfg, n_variants=variants)  # warm caches
    done, t0 = 0, time.perf_counter()
    while done < n:
        for s in make_samples(rng, cfg, n_variants=variants):
            s.targets()
            done += 1
    return done / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--variants", default="1,4,16", help="images per structure, comma-separated")
    args = ap.parse_args()
    print(f"# {platform.processor() or platform.machine()}, 1 thread, {args.size}x{args.size} px")
    ap_variants = [int(v) for v in args.variants.split(",")]
    print("| mode | variants/structure | samples/s |")
    print("|---|---|---|")
    for mode in ("hrtem", "stem"):
        for v in ap_variants:
            print(f"| {mode} | {v} | {rate(mode, args.size, max(args.n, v), v):.1f} |")


if __name__ == "__main__":
    main()
