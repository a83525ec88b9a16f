"""Do the detection test set's labels sit where the image shows the core, and does it matter?

For every image of one mode of the fixed test set (`bench_accuracy.test_set`), the (003)
amplitude minimum of the noise-free image (GPA, 0.8 nm resolution, within 0.6 nm) is
found for each misfit core away from the border and rock salt, and its offset from the
label is measured along **h**. The bundled model is then scored (F1 at 0.5 nm, per image)
against the labels as generated and against the labels moved onto those minima.

Usage::

    cd tests/benchmarks && python bench_label_offset.py --mode hrtem [--n 10]
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from bench_accuracy import DOSES, net_detect, test_set
from scipy.ndimage import map_coordinates

from dislotrack.infer.gpa import complex_image, find_reflections
from dislotrack.models.io import load_model
from dislotrack.models.metrics import DetectionTally
from dislotrack.models.unet import prepare_for_inference


def amplitude_minimum(amp: np.ndarray, xy: np.ndarray, radius_px: float = 6.0) -> np.ndarray:
    """Sub-pixel (0.25 px grid) minimum of ``amp`` within ``radius_px`` of ``xy`` [px]."""
    yy, xx = np.mgrid[-radius_px:radius_px + 0.01:0.25, -radius_px:radius_px + 0.01:0.25]
    keep = np.hypot(xx, yy) <= radius_px
    v = map_coordinates(amp, [xy[1] + yy[keep], xy[0] + xx[keep]], order=3)
    j = int(np.argmin(v))
    return xy + [xx[keep][j], yy[keep][j]]


def image_row(s, net, threshold: float) -> dict:
    """Offset of the labels from the fringe-amplitude minima, and F1 against both."""
    p = s.meta["pixel_size"]
    lab = s.cores[["x", "y"]].to_numpy(float)
    h = s.cores[["hx", "hy"]].to_numpy(float)
    misfit = np.hypot(s.cores["bx_nm"], s.cores["by_nm"]).to_numpy() > 0.4  # basal: 0.14-0.25 nm
    moved, offsets = lab.copy(), []
    try:
        g = find_reflections(s.clean, pixel_size_nm=p, n=1)[0]
        amp = np.abs(complex_image(s.clean, g, pixel_size_nm=p, resolution_nm=0.8))
    except ValueError:  # no (003) reflection (e.g. all rock salt)
        amp = None
    for k, xy in enumerate(lab):
        inside = 8 <= xy[0] <= s.image.shape[1] - 9 and 8 <= xy[1] <= s.image.shape[0] - 9
        if amp is None or not (inside and misfit[k]) or s.rs_mask[int(round(xy[1])), int(round(xy[0]))]:
            continue
        moved[k] = amplitude_minimum(amp, xy)
        offsets.append((moved[k] - xy) @ h[k] * p)
    cores, _ = net_detect(net, s.image, threshold)
    pred, pred_h = cores[["x", "y"]].to_numpy(float), cores[["hx", "hy"]].to_numpy(float)
    f1 = {}
    for name, labels in (("f1", lab), ("f1_moved", moved)):
        tally = DetectionTally()
        tally.add(pred, pred_h, labels, h, pixel_size=p)
        f1[name] = tally.summary()["f1"]
    return {"defocus_nm": s.meta.get("imaging", {}).get("defocus_nm"), "n_cores": len(lab),
            "n_measured": len(offsets), "offset_h_nm": np.median(offsets) if offsets else np.nan, **f1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=["hrtem", "stem"], default="hrtem")
    ap.add_argument("--n", type=int, default=10, help="images per dose (default 10)")
    args = ap.parse_args()
    net, card = load_model(None)
    net, threshold = prepare_for_inference(net), float(card["decode_threshold"])
    rows = [{"dose": dose, "image": i, **image_row(s, net, threshold)}
            for dose in DOSES for i, s in enumerate(test_set(args.mode, dose, args.n, 256))]
    df = pd.DataFrame(rows)
    pd.set_option("display.width", 160)
    print(df.round(3).to_string(index=False))
    big = df["offset_h_nm"].abs() > 0.25
    print(f"\n{args.mode}: images with |median offset along h| > 0.25 nm: {big.sum()} of {len(df)}; "
          f"cores measured {df['n_measured'].sum()}, |offset| median "
          f"{df['offset_h_nm'].abs().median():.3f} nm")
    print("mean F1 per image (labels as generated / moved onto the minima):")
    print(df.groupby("dose")[["f1", "f1_moved"]].mean().round(3).to_string())
    print(f"all: {df['f1'].mean():.3f} / {df['f1_moved'].mean():.3f}; images with a large offset: "
          f"{df.loc[big, 'f1'].mean():.3f} / {df.loc[big, 'f1_moved'].mean():.3f}")


if __name__ == "__main__":
    main()
