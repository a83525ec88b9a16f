"""Where does the (003) fringe end relative to a core's label? A floor for core RMSE.

    python tests/benchmarks/bench_core_position.py [--n 8] [--doses 500,5000] [--width 0.25]

On `bench_accuracy`'s fixed test images (nearly noise-free twins unless ``--noisy``),
for every clean misfit core (not basal, not in rock salt, >= 1 nm from the border) the
phase vortex of the (003) fringe image (`FringeChannels`, mask ``--width``) nearest
the label, within 0.4 nm, is located to sub-pixel precision (zero of a complex
linear fit over the 4x4 pixels around the winding plaquette). Its offset from the
label is what any detector reading those fringes inherits: an RMSE floor.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import torch
from bench_accuracy import MODES, TWIN_DOSE, test_set

from dislotrack.data_gen.conventions import D003_LINIO2_NM
from dislotrack.models.fringes import FringeChannels
from dislotrack.models.normalise import normalise_image

SEARCH_NM, BORDER_NM = 0.4, 1.0


def fringe_image(image: np.ndarray, period_px: float, width: float) -> np.ndarray:
    """Complex (003) fringe image, as the network's fringe channels compute it."""
    t = torch.from_numpy(normalise_image(image).astype(np.float32))[None, None]
    ch, _ = FringeChannels(period_px, width=width).fringe(t)
    return (ch[0, 0] + 1j * ch[0, 1]).numpy().astype(complex)


def vortices(z: np.ndarray) -> np.ndarray:
    """Centres (x, y) [px] of the 2x2 plaquettes around which the phase winds."""
    ph = np.angle(z)
    loop = [ph[:-1, :-1], ph[:-1, 1:], ph[1:, 1:], ph[1:, :-1], ph[:-1, :-1]]
    w = sum(np.angle(np.exp(1j * (b - a))) for a, b in zip(loop[:-1], loop[1:], strict=True))
    yy, xx = np.nonzero(np.round(w / (2 * np.pi)))
    return np.stack([xx + 0.5, yy + 0.5], axis=1)


def zero_of(z: np.ndarray, x: float, y: float) -> tuple[float, float]:
    """Sub-pixel zero of z near the plaquette centre (x, y) from z ~ a + b dx + c dy."""
    r0, c0 = int(y - 0.5) - 1, int(x - 0.5) - 1
    if r0 < 0 or c0 < 0 or r0 + 4 > z.shape[0] or c0 + 4 > z.shape[1]:
        return x, y
    dy, dx = np.mgrid[r0 : r0 + 4, c0 : c0 + 4] - np.array([y, x])[:, None, None]
    design = np.stack([np.ones(16), dx.ravel(), dy.ravel()], axis=1).astype(complex)
    a, b, c = np.linalg.lstsq(design, z[r0 : r0 + 4, c0 : c0 + 4].ravel(), rcond=None)[0]
    step = np.linalg.lstsq(np.array([[b.real, c.real], [b.imag, c.imag]]), [-a.real, -a.imag],
                           rcond=None)[0]
    return (x + step[0], y + step[1]) if np.hypot(*step) <= 1 else (x, y)


def offsets(sample, width: float) -> pd.DataFrame:
    """Per clean misfit core: vortex offset from the label along h and across it [nm]."""
    ps, c = sample.meta["pixel_size"], sample.cores
    ny, nx = sample.rs_mask.shape
    r, col = (np.clip(c[k].round().astype(int), 0, m - 1) for k, m in (("y", ny), ("x", nx)))
    edge = np.minimum.reduce([c.x, c.y, nx - 1 - c.x, ny - 1 - c.y]) * ps
    clean = (np.hypot(c.bx_nm, c.by_nm) >= 0.4) & (sample.rs_mask[r, col] == 0) & (edge >= BORDER_NM)
    z = fringe_image(sample.image, D003_LINIO2_NM / ps, width)
    v = vortices(z)
    rows = []
    for core in c[clean].itertuples():
        d = np.hypot(v[:, 0] - core.x, v[:, 1] - core.y) if len(v) else np.array([np.inf])
        found = d.min() * ps <= SEARCH_NM
        dx, dy = (np.subtract(zero_of(z, *v[d.argmin()]), (core.x, core.y)) * ps
                  if found else (np.nan, np.nan))
        rows.append({"found": found, "along_h": dx * core.hx + dy * core.hy,
                     "across_h": -dx * core.hy + dy * core.hx})
    return pd.DataFrame(rows, columns=["found", "along_h", "across_h"]).astype(
        {"found": bool, "along_h": float, "across_h": float})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8, help="images per mode and dose")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--doses", default="500,5000", help="test-set doses [e/A^2]")
    ap.add_argument("--width", type=float, default=0.25, help="mask width (FringeChannels)")
    ap.add_argument("--noisy", action="store_true", help="the test images, not their twins")
    args = ap.parse_args()
    rows = []
    for mode in MODES:
        for dose in map(float, args.doses.split(",")):
            render = {} if args.noisy else {"render_dose": TWIN_DOSE}
            for s in test_set(mode, dose, args.n, args.size, **render):
                rows.append(offsets(s, args.width).assign(mode=mode, dose=dose))
    df = pd.concat(rows, ignore_index=True)
    ok = df[df.found]
    table = ok.groupby(["mode", "dose"]).agg(
        cores=("along_h", "size"), along_h_mean=("along_h", "mean"), along_h_sd=("along_h", "std"),
        across_h_mean=("across_h", "mean"), across_h_sd=("across_h", "std"))
    table["rmse_nm"] = ok.assign(r2=ok.along_h**2 + ok.across_h**2).groupby(
        ["mode", "dose"]).r2.mean() ** 0.5
    table["vortex_found"] = df.groupby(["mode", "dose"]).found.mean()
    print(f"## (003) vortex minus label [nm], width {args.width}, "
          f"{'noisy images' if args.noisy else 'noise-free twins'}")
    print(table.round(3).to_string())
    print(f"all: rmse {np.sqrt((ok.along_h**2 + ok.across_h**2).mean()):.3f} nm over {len(ok)} cores")


if __name__ == "__main__":
    main()
