"""The network's h on both handednesses of the chiral [100] view, as `analyze` runs it.

    python tests/benchmarks/bench_mirror_view.py [--seeds 60] [--threads 2] [--as-read]

Generated 256² single images (HRTEM and STEM, 3000 e/Å², no rock salt, misfit cores
only), one view (``tta=1``); per zone: how many images `analyze` showed the network
flipped (`dislotrack.infer.lattice.shows_mirror_view`), the median angle between each
detected core's h and the nearest true core's (within 0.5 nm) and the position RMSE.
``--as-read`` turns the mirror handling off, for comparison (the network sees every
frame as read, as before 0.1.29).
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
from scipy.spatial import cKDTree

from dislotrack.data_gen.sample import GeneratorConfig, make_sample
from dislotrack.infer import lattice
from dislotrack.infer.pipeline import analyze


def measure(seeds: int, as_read: bool) -> dict[tuple[str, str], dict]:
    if as_read:
        lattice.Lattice.is_mirror_view = property(lambda self: False)
    found: dict[tuple[str, str], list] = {}
    for seed in range(seeds):
        for mode in ("stem", "hrtem"):
            cfg = GeneratorConfig(size=256, mode=mode, dose=(3000, 3000), rocksalt_probability=0.0,
                                  basal_fraction=0.0)
            s = make_sample(np.random.default_rng(seed), cfg)
            zone = s.meta.get("zone")
            res = analyze(s.image.astype(np.float32), pixel_size_nm=0.1, progress=False, tta=1)
            d, c = res.detections, s.cores
            if not len(d) or not len(c):
                continue
            dist, j = cKDTree(c[["x", "y"]].to_numpy()).query(d[["x", "y"]].to_numpy())
            near = dist < 5  # px: 0.5 nm
            cos = (d.hx.to_numpy()[near] * c.hx.to_numpy()[j[near]]
                   + d.hy.to_numpy()[near] * c.hy.to_numpy()[j[near]])
            found.setdefault((zone, mode), []).append(
                (np.degrees(np.arccos(np.clip(cos, -1, 1))), 0.1 * dist[near],
                 res.options.get("network_view") == "mirrored"))
    out = {}
    for key, items in sorted(found.items()):
        angles = np.concatenate([a for a, _, _ in items])
        offsets = np.concatenate([p for _, p, _ in items])
        out[key] = {"images": len(items), "mirrored": int(sum(m for _, _, m in items)),
                    "cores": len(angles), "median_h_error_deg": float(np.median(angles)),
                    "rmse_nm": float(np.sqrt(np.mean(offsets**2)))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--as-read", action="store_true", help="no mirror handling (before 0.1.29)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    print("| zone | mode | images (shown flipped) | cores | median h error [deg] | RMSE [nm] |")
    print("|---|---|---|---|---|---|")
    for (zone, mode), r in measure(args.seeds, args.as_read).items():
        print(f"| {zone} | {mode} | {r['images']} ({r['mirrored']}) | {r['cores']} | "
              f"{r['median_h_error_deg']:.1f} | {r['rmse_nm']:.3f} |")


if __name__ == "__main__":
    main()
