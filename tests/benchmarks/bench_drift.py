"""Drift registration against the generator's truth on the tracking benchmark's movies.

    python tests/benchmarks/bench_drift.py [--seed 31] [--movies 20] [--no-layer]

Per movie of `bench_tracking`'s set: the largest distance [px] over its frames between
the drift `measure_drift` measures (as `analyze` runs it: frame 0's in-layer reflections
where `Lattice.registration_reflections` trusts them, unless ``--no-layer``) and the true
drift, and how many frames' drift along a dominant set of fringes could not be seen.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
from bench_tracking import movie

from dislotrack.data_gen.conventions import D003_LINIO2_NM
from dislotrack.infer.drift import UNSEEN_ALONG_FRINGES, measure_drift
from dislotrack.infer.lattice import measure_lattice

#: A movie whose drift is off by more than this [px] somewhere counts as failed.
OFF_PX = 2.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=31)
    ap.add_argument("--movies", type=int, default=20)
    ap.add_argument("--no-layer", action="store_true", help="no in-layer reflections (0.1.29)")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    errors = []
    for i in range(args.movies):
        m, _, mode, dose = movie(i, 30, 256, args.seed)
        ps = m.meta["pixel_size"]
        lattice = measure_lattice([m.frames[0]], pixel_size_nm=ps, d_spacing_nm=D003_LINIO2_NM)
        layer = None if args.no_layer or lattice is None else lattice.registration_reflections(ps)
        drift = measure_drift(list(m.frames), layer_reflections=layer, warn=False)
        err = np.hypot(*(drift[["dx", "dy"]].to_numpy() - m.drift[["dx", "dy"]].to_numpy()).T).max()
        errors.append(err)
        print(f"movie {i:2d} {mode:5s} {dose:6.0f} {m.meta['zone']:7s} largest error {err:6.2f} px, "
              f"in-layer spots {'used' if layer is not None else '-   '}, frames unseen along "
              f"the fringes {drift.attrs[UNSEEN_ALONG_FRINGES]}", flush=True)
    e = np.array(errors)
    print(f"seed {args.seed}: {int((e > OFF_PX).sum())} of {len(e)} movies off by more than {OFF_PX} px; "
          f"median largest error {np.median(e):.2f} px")


if __name__ == "__main__":
    main()
