"""Make the README's figures in docs/.

    python tests/benchmarks/make_readme_figures.py

generator_examples.png: HRTEM and STEM frames of LiNiO2 with cores (h drawn from the
core into the extra half-plane) and rock-salt masks overlaid, plus a zoom on one core.
demo_trajectories.jpg, demo_displacement.png, demo_events.jpg: the figures
`dislotrack demo` writes, at two thirds of their size.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from dislotrack.data_gen.sample import GeneratorConfig, make_sample  # noqa: E402

OUT = Path(__file__).resolve().parents[2] / "docs" / "generator_examples.png"


def demo_figures() -> None:
    """The demo's trajectories and displacement figures, reduced for the README."""
    from dislotrack.infer.demo import make_demo_movie
    from dislotrack.infer.run import infer_one

    with tempfile.TemporaryDirectory() as tmp:
        path, _, _ = make_demo_movie(Path(tmp))
        infer_one(path, tmp, movie=False, device="cpu")
        figs = Path(tmp) / path.stem / "figures"
        for name, out in (("trajectories.png", "demo_trajectories.jpg"),
                          ("displacement.png", "demo_displacement.png"),
                          ("events.png", "demo_events.jpg")):
            im = Image.open(figs / name).convert("RGB")
            im = im.resize((im.width * 2 // 3, im.height * 2 // 3), Image.LANCZOS)
            im.save(OUT.parent / out, **({"quality": 85} if out.endswith(".jpg") else {"optimize": True}))
            print(OUT.parent / out)


def main() -> None:
    demo_figures()
    fig, axes = plt.subplots(2, 3, figsize=(13, 8.8))
    for row, (mode, seed) in enumerate([("hrtem", 21), ("stem", 33)]):
        cfg = GeneratorConfig(size=256, mode=mode, dose=(1500, 1500), material="LiNiO2",
                              density=0.8, rocksalt_probability=0.6, perfect_fraction=0.0)
        s = make_sample(np.random.default_rng(seed), cfg)
        c = s.cores
        for col, zoom in enumerate([False, True, None]):
            ax = axes[row, col]
            if zoom is None:
                t = s.targets()
                ax.imshow(t["heatmap"] + 0.5 * t["rs"], cmap="magma")
                ax.set_title(f"{mode.upper()} training targets: core heatmap + RS mask")
                ax.set_axis_off()
                continue
            ax.imshow(s.image, cmap="gray")
            if zoom and len(c):
                k = int(np.argmin(np.hypot(c.x - 128, c.y - 128)))
                x0, y0 = c.x.iloc[k], c.y.iloc[k]
                ax.set_xlim(x0 - 30, x0 + 30)
                ax.set_ylim(y0 + 30, y0 - 30)
            ax.contour(s.rs_mask, [0.5], colors="cyan", linewidths=1)
            ax.plot(c.x, c.y, "o", mfc="none", mec="red", ms=9 if zoom else 6)
            ax.quiver(c.x, c.y, c.hx, c.hy, color="red", angles="xy", scale_units="xy",
                      scale=0.12 if zoom else 0.06, width=0.006)
            im = s.meta["imaging"]
            desc = (f"Cs {im['cs_mm']:.2f} mm, defocus {im['defocus_nm']:.0f} nm" if mode == "hrtem"
                    else f"probe sigma {im['sigma_nm'] * 1000:.0f} pm")
            ax.set_title(f"{mode.upper()} {s.meta['material']} {s.meta['zone']}, {desc}"
                         + (" (zoom)" if zoom else ""), fontsize=9)
            ax.set_axis_off()
    fig.tight_layout()
    OUT.parent.mkdir(exist_ok=True)
    fig.savefig(OUT, dpi=80)
    print(OUT)


if __name__ == "__main__":
    import argparse

    # No options, but --help must not overwrite docs/.
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    main()
