"""Do a lattice fringe's phase vortices mark dislocation cores, or are they everywhere?

    python tests/benchmarks/bench_fringe_signal.py [--d-spacing 0.245] [--width 0.25] \\
        [--avoid-003] [--pixel-size 0.1] [--n 10] [--doses 100,5000] [--noisy]

On `bench_accuracy`'s fixed test images (its nearly noise-free twins unless
``--noisy``), the winding of the fringe image of spacing ``--d-spacing`` [nm] is read on a
0.5 nm circle (`dislotrack.models.fringes.fringe_winding`, mask ``--width`` as in
`FringeChannels`; 0.25 is what the network sees; ``--avoid-003`` picks the reflection
away from the (003) direction, as the network's in-layer channels do) around basal-b
cores, misfit cores, and random points of layered crystal at least 1.5 nm from every
core, outside rock salt (cores inside rock salt are counted apart). ``--pixel-size``
renders the same 25.6 nm fields at another pixel size. A fringe can show
a core only if the winding is more frequent at the cores than at the random points.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from bench_accuracy import MODES, TWIN_DOSE, test_set

from dislotrack.data_gen.conventions import D003_LINIO2_NM
from dislotrack.models.fringes import fringe_winding
from dislotrack.models.normalise import normalise_image

RADIUS_NM = 0.5
#: Random points per image, kept where they are layered and far from every core.
N_RANDOM, MIN_CORE_DISTANCE_NM = 40, 1.5


def winding_rows(sample, d_spacing_nm: float, width: float, rng: np.random.Generator,
                 avoid_003: bool = False) -> list[dict]:
    """Per point of one sample: its kind (basal, misfit, either in rock salt, crystal)
    and whether it winds."""
    ps = sample.meta["pixel_size"]
    ny, nx = sample.image.shape
    cores = sample.cores[["x", "y"]].to_numpy(float).reshape(-1, 2)
    basal = np.hypot(sample.cores.bx_nm, sample.cores.by_nm).to_numpy() < 0.4
    margin = RADIUS_NM / ps + 1
    pts = rng.uniform([margin, margin], [nx - 1 - margin, ny - 1 - margin], (N_RANDOM, 2))
    layered = sample.rs_mask[np.round(pts[:, 1]).astype(int), np.round(pts[:, 0]).astype(int)] == 0
    far = (np.hypot(*(pts[:, None] - cores[None]).transpose(2, 0, 1)).min(axis=1) * ps
           > MIN_CORE_DISTANCE_NM) if len(cores) else np.ones(len(pts), bool)
    pts = pts[layered & far]
    ij = np.clip(np.round(cores[:, ::-1]).astype(int), 0, [ny - 1, nx - 1])
    in_rs = sample.rs_mask[ij[:, 0], ij[:, 1]] > 0
    kinds = np.r_[np.char.add(np.where(basal, "basal", "misfit"), np.where(in_rs, " in RS", "")),
                  np.full(len(pts), "crystal")]
    winds = fringe_winding(normalise_image(sample.image), np.r_[cores, pts],
                           period_px=d_spacing_nm / ps, radius_px=RADIUS_NM / ps, width=width,
                           avoid_period_px=D003_LINIO2_NM / ps if avoid_003 else None)
    return [{"zone": sample.meta["zone"], "point": k, "winds": w != 0}
            for k, w in zip(kinds, winds, strict=True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d-spacing", type=float, default=0.245, help="fringe spacing [nm]")
    ap.add_argument("--width", type=float, default=0.25, help="mask width (FringeChannels)")
    ap.add_argument("--n", type=int, default=10, help="images per mode and dose")
    ap.add_argument("--avoid-003", action="store_true",
                    help="pick the reflection >= 20 deg from the (003) direction")
    ap.add_argument("--pixel-size", type=float, default=0.1, help="nm/px of the renders")
    ap.add_argument("--size", type=int, default=None, help="px (default: 25.6 nm fields)")
    ap.add_argument("--doses", default="100,5000", help="test-set doses [e/A^2]")
    ap.add_argument("--noisy", action="store_true", help="the test images, not their twins")
    args = ap.parse_args()
    size = args.size or round(25.6 / args.pixel_size)
    rng = np.random.default_rng(0)
    rows = []
    for mode in MODES:
        for dose in map(float, args.doses.split(",")):
            render = {} if args.noisy else {"render_dose": TWIN_DOSE}
            for s in test_set(mode, dose, args.n, size, pixel_size=args.pixel_size, **render):
                rows += [{"mode": mode, **r}
                         for r in winding_rows(s, args.d_spacing, args.width, rng, args.avoid_003)]
    df = pd.DataFrame(rows)
    table = df.pivot_table(index=["mode", "zone"], columns="point", values="winds",
                           aggfunc=["mean", "size"])
    print(f"## winding of the {args.d_spacing} nm fringes (width {args.width}, "
          f"{'away from (003), ' if args.avoid_003 else ''}{args.pixel_size} nm/px, "
          f"{'noisy' if args.noisy else 'noise-free twins'}): fraction of points, count")
    print(table.round(2).to_string())


if __name__ == "__main__":
    main()
