"""Does dipoles.csv tell a dipole that expands by glide from one that expands by climb?

Generated movies full of dipoles are analysed with the bundled model; each measured
pair is matched to the true pair whose midpoint lies nearest (within 1 nm, in the
pair's middle frame), and over their common frames the range of ``|spacing|`` along b
and along h (max - min) is compared with the truth's (`dislotrack.infer.dipoles`, the
same function applied to the generator's cores). A pair expands by glide where its range
along b exceeds that along h.

Usage::

    python tests/benchmarks/bench_dipoles.py [--n 6] [--size 256] [--frames 40] [--seed 11]
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import pandas as pd
import torch

from dislotrack.data_gen.movie import make_movie
from dislotrack.data_gen.sample import GeneratorConfig
from dislotrack.infer import analyze
from dislotrack.infer.dipoles import dipole_separations


def spacing_range(s: pd.Series) -> float:
    """max - min of ``|s|`` [nm]."""
    a = np.abs(s.to_numpy(float))
    return float(a.max() - a.min())


def matched_pairs(res, cores: pd.DataFrame, pixel_size_nm: float) -> list[dict]:
    """Each measured pair's spacing ranges beside those of its true pair."""
    first = cores.groupby("particle")
    summary = first.agg(kind=("kind", "first"), partner=("partner", "first")).reset_index()
    truth = dipole_separations(cores, summary, pixel_size_nm=pixel_size_nm)
    rows = []
    t = res.tracks.set_index(["particle", "frame"])
    c = cores.set_index(["particle", "frame"])

    def midpoint(table: pd.DataFrame, a: int, b: int, f: int) -> np.ndarray:
        return table.loc[[(a, f), (b, f)], ["x", "y"]].to_numpy(float).mean(axis=0)

    for pair, g in res.dipoles.groupby("pair"):
        a, b = map(int, pair.split())
        f = int(g.frame.iloc[len(g) // 2])
        mid = midpoint(t, a, b, f)
        best = None
        for true_pair, tg in truth.groupby("pair"):
            ta, tb = map(int, true_pair.split())
            if (ta, f) in c.index and (tb, f) in c.index:
                d = float(np.hypot(*(midpoint(c, ta, tb, f) - mid))) * pixel_size_nm
                if d <= 1.0 and (best is None or d < best[0]):
                    best = (d, tg)
        if best is None:
            rows.append({"pair": pair, "matched": False})
            continue
        common = g.merge(best[1], on="frame", suffixes=("", "_true"))
        rows.append({"pair": pair, "matched": True, "frames": len(common),
                     "b_range": spacing_range(common.glide_separation_nm),
                     "b_range_true": spacing_range(common.glide_separation_nm_true),
                     "h_range": spacing_range(common.climb_separation_nm),
                     "h_range_true": spacing_range(common.climb_separation_nm_true),
                     "spacing_error_nm": float((common.separation_nm
                                                - common.separation_nm_true).abs().median())})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=6, help="movies (half HRTEM, half STEM)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--dose", type=float, default=1000.0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    rows, n_true = [], 0
    streams = np.random.SeedSequence(args.seed).spawn(args.n)
    for i, rng in enumerate(np.random.default_rng(s) for s in streams):
        cfg = GeneratorConfig(size=args.size, mode="hrtem" if i % 2 == 0 else "stem", dipole_fraction=2.0,
                              dose=(args.dose, args.dose))
        m = make_movie(rng, cfg, n_frames=args.frames, frame_interval=1.0)
        ps = float(m.meta["pixel_size"])
        kinds = m.cores.groupby("particle").kind.first()
        n_true += int((kinds == "dipole").sum() // 2)
        res = analyze(m.frames, pixel_size_nm=ps, frame_interval_s=1.0, progress=False)
        rows += [{"movie": i, "mode": cfg.mode, **r} for r in matched_pairs(res, m.cores, ps)]
    table = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    print(table.round(2).to_string(index=False))
    ok = table[table.matched.astype(bool)] if len(table) else table
    if len(ok):
        same = ((ok.b_range > ok.h_range) == (ok.b_range_true > ok.h_range_true)).mean()
        print(f"\n{n_true} true dipoles, {len(table)} measured pairs, {len(ok)} matched to a true pair; "
              f"expansion mode (b range > h range) as the truth's: {same:.2f}; median spacing error "
              f"{ok.spacing_error_nm.median():.2f} nm")
        glide_true = ok.b_range_true > ok.h_range_true
        for name, truth in (("glide", glide_true), ("climb", ~glide_true)):
            called = ((ok.b_range > ok.h_range) == glide_true)[truth]
            print(f"  truly expanding by {name}: {int(truth.sum())}, called so: {int(called.sum())}")


if __name__ == "__main__":
    main()
