"""Does `lattice_free_mask` find the vacuum beyond a specimen's edge, and leave crystal alone?

    OMP_NUM_THREADS=1 python tests/benchmarks/bench_lattice_edge.py [--n 6] [--size 256] \\
        [--doses 50,100,200,500,1000,5000] [--time-size 512]

Generated frames (`dislotrack.data_gen`, realism 1, no rock salt) with a straight vacuum
edge 0-25 % of the field from its centre, HRTEM and STEM, ``--n`` per mode and dose;
``flat`` as rendered, ``ramp`` with the crystal's fringe contrast (the expected image
minus its 0.5 nm Gaussian blur) multiplied by a ramp from 1 to 0.2 along the edge before
the detector's noise, so the weak end is crystal too. Truth comes from the specimen's
edge: vacuum more than 1 nm beyond it, crystal more than 1 nm inside it; pixels within
`dislotrack.infer.events` ``border_nm`` = 2 nm of the frame's border (where a track's end
counts as at the border anyway) are not scored.

Prints, per mode, frames and dose, for the current `lattice_free_mask` (new) and the
previous one kept below (old, the 90th-percentile threshold): the fraction of vacuum
flagged (recall) and of crystal flagged (false), averaged over frames; then the time per
``--time-size`` square frame (median of 20 calls, after one warm-up).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from scipy import fft, ndimage

from dislotrack.data_gen.imaging import detect, draw_detector, draw_optics, draw_probe
from dislotrack.data_gen.sample import GeneratorConfig, draw_scene, render_frame
from dislotrack.data_gen.specimen import in_crystal
from dislotrack.infer.lattice_edge import lattice_free_mask

D_SPACING_NM = 0.473
EDGE_BAND_NM, BORDER_NM = 1.0, 2.0


def old_lattice_free_mask(frame: np.ndarray, *, pixel_size_nm: float, d_spacing_nm: float) -> np.ndarray:
    """The previous `lattice_free_mask`: the whole (003) ring's amplitude, smoothed over
    1 nm, under 0.3 of its 90th percentile, in regions of at least 4 nm^2."""
    image = np.asarray(frame, dtype=np.float32)
    spread = float(image.std())
    if not spread:
        return np.zeros(image.shape, bool)
    image = (image - image.mean()) / spread
    k0 = pixel_size_nm / d_spacing_nm
    rows = fft.fftfreq(image.shape[0])[:, None]
    cols = fft.rfftfreq(image.shape[1])[None, :]
    ring = np.exp(-0.5 * ((np.hypot(rows, cols) - k0) / (0.2 * k0)) ** 2).astype(np.float32)
    amplitude = np.abs(fft.irfft2(fft.rfft2(image) * ring, s=image.shape))
    amplitude = ndimage.gaussian_filter(amplitude, 1.0 / pixel_size_nm / 2.3548)
    mask = amplitude < 0.3 * np.percentile(amplitude, 90)
    labels, n = ndimage.label(mask)
    if not n:
        return mask
    large = np.bincount(labels.ravel()) > 4.0 / pixel_size_nm**2
    large[0] = False
    return large[labels]


def edge_frame(seed: int, mode: str, dose: float, size: int, ramp: bool):
    """A generated frame with a vacuum edge: (image, pixel size [nm/px], vacuum, crystal)."""
    rng = np.random.default_rng(seed)
    cfg = GeneratorConfig(size=size, mode=mode, dose=(dose, dose), rocksalt_probability=0.0)
    mode, grid, spec, disl = draw_scene(rng, cfg)
    spec.rocksalt = []
    angle = float(rng.uniform(0, 2 * np.pi))
    normal = np.array([np.cos(angle), np.sin(angle)])
    spec.vacuum_edge = (*(grid.fov_nm / 2 + normal * rng.uniform(0.0, 0.25) * grid.fov_nm), angle)
    det = draw_detector(rng, dose)
    sample = render_frame(spec, disl, grid=grid, mode=mode,
                          imaging=draw_optics(rng) if mode == "hrtem" else draw_probe(rng),
                          detector=det, rng=rng)[0]
    ps = grid.pixel_size
    yy, xx = np.mgrid[:size, :size] * ps
    xy = np.stack([xx.ravel(), yy.ravel()], axis=1)
    vacuum = ~in_crystal(spec, xy, margin_nm=EDGE_BAND_NM).reshape(size, size)
    crystal = in_crystal(spec, xy, margin_nm=-EDGE_BAND_NM).reshape(size, size)
    image = sample.image
    if ramp:  # contrast from 1 to 0.2 along the edge
        along = xx * -normal[1] + yy * normal[0]
        contrast = 1 - 0.8 * (along - along.min()) / np.ptp(along)
        local = ndimage.gaussian_filter(sample.clean, 0.5 / ps)
        image = detect(local + contrast * (sample.clean - local), det, ps, rng)
    scored = np.zeros((size, size), bool)
    b = int(round(BORDER_NM / ps))
    scored[b:-b, b:-b] = True
    return image, ps, vacuum & scored, crystal & scored


def time_per_frame(fn, size: int) -> float:
    """Median time of ``fn`` on a generated ``size`` x ``size`` frame [ms]."""
    image, ps, _, _ = edge_frame(0, "hrtem", 1000, size, ramp=False)
    fn(image, pixel_size_nm=ps, d_spacing_nm=D_SPACING_NM)
    times = []
    for _ in range(20):
        t = time.perf_counter()
        fn(image, pixel_size_nm=ps, d_spacing_nm=D_SPACING_NM)
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=6, help="frames per mode, dose and kind")
    ap.add_argument("--size", type=int, default=256, help="frame side [px]")
    ap.add_argument("--doses", default="50,100,200,500,1000,5000", help="[e/A^2]")
    ap.add_argument("--time-size", type=int, default=512, help="frame side for timing [px]")
    args = ap.parse_args()
    methods = {"old": old_lattice_free_mask, "new": lattice_free_mask}
    print(f"{args.size} px frames, {args.n} per row; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    print("mode  frames  dose  recall old   new  false old    new")
    for mode in ("hrtem", "stem"):
        for ramp in (False, True):
            for dose in map(float, args.doses.split(",")):
                scores = {name: [] for name in methods}
                for seed in range(args.n):
                    image, ps, vacuum, crystal = edge_frame(seed, mode, dose, args.size, ramp)
                    for name, fn in methods.items():
                        mask = fn(image, pixel_size_nm=ps, d_spacing_nm=D_SPACING_NM)
                        scores[name].append((mask[vacuum].mean(), mask[crystal].mean()))
                (ro, fo), (rn, fn_) = (np.mean(scores[m], axis=0) for m in methods)
                print(f"{mode:5s} {'ramp' if ramp else 'flat':6s} {dose:5.0f}  {ro:10.2f} {rn:5.2f}  "
                      f"{fo:9.3f} {fn_:6.3f}")
    for name, fn in methods.items():
        print(f"time per {args.time_size}^2 frame, {name}: {time_per_frame(fn, args.time_size):.1f} ms")


if __name__ == "__main__":
    main()
