"""Does the bundled model hold up on images from a different simulator?

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 \\
        python tests/benchmarks/bench_simulator_shift.py [--fields 10] [--model default]

Needs abTEM and torch in one environment (``pip install -e ".[validation]"``).
Each field is `bench_multislice.draw_field`'s: 256x256 px at 0.1 nm/px of LiNiO2
with two misfit edge dislocations of opposite sign, specimen, lens and detector
drawn by the generator from the field's seed (``realism=0``). It is imaged twice
under the *same* lens, detector, dose and noise stream: (a) abTEM plane-wave
multislice of the extruded 3-D structure at 2, 5 and 10 nm, (b) the generator's
phase-object image with its phase scale set from abTEM's mean projected
potential. The model detects cores in both; the table gives recall, false cores
and F1 (Hungarian matching within 0.5 nm, DESIGN.md) and the RMSE of the matches,
per simulator, thickness and dose.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from bench_accuracy import net_detect  # noqa: E402
from bench_multislice import draw_field, field_atoms, lens, multislice, our_image  # noqa: E402

from dislotrack.data_gen.conventions import h_from_b_hat, unit  # noqa: E402
from dislotrack.data_gen.imaging import column_peak, detect  # noqa: E402
from dislotrack.data_gen.sample import FrameGeometry, _potential  # noqa: E402
from dislotrack.models.io import load_model  # noqa: E402
from dislotrack.models.metrics import DetectionTally  # noqa: E402

THICKNESSES = (2.0, 5.0, 10.0)
DOSES = (500.0, 5000.0)


def field_images(seed: int) -> tuple[dict, np.ndarray, np.ndarray, float]:
    """Noiseless images {(simulator, thickness): image}, true cores (px), h, pixel size."""
    grid, spec, disl, optics, _ = draw_field(seed)
    k_max = 0.95 / (3 * grid.internal_pixel)  # inside abTEM's anti-aliasing limit
    o = replace(optics, absorption=0.0, aperture_inv_nm=min(optics.aperture_inv_nm, k_max))
    atoms, period = field_atoms(spec, disl, grid, max(THICKNESSES))
    _, waves, _, mean_phase = multislice(atoms, grid, o, period, THICKNESSES)
    pot, wmax = _potential(spec, disl, FrameGeometry(centre_nm=grid.fov_nm / 2), grid, "hrtem", 1.0)
    scale = column_peak(wmax, o.column_sigma_nm, grid) / pot.mean()  # peak phase per mean phase
    images = {}
    for t, wave, mp in zip(THICKNESSES, waves, mean_phase, strict=True):
        images["abTEM", t] = lens(wave, grid, o)
        images["generator", t] = our_image(pot, wmax, grid, replace(o, phase=mp * scale))
    xy = np.array([[d.x, d.y] for d in disl]) / grid.pixel_size
    h = h_from_b_hat(unit(np.array([d.b for d in disl])))
    return images, xy, h, grid.pixel_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fields", type=int, default=10)
    ap.add_argument("--model", default="default")
    args = ap.parse_args()
    net, card = load_model(args.model)
    threshold = float(card.get("decode_threshold", 0.5))
    tallies: dict[tuple, DetectionTally] = {}
    for seed in range(args.fields):
        images, xy, h, ps = field_images(seed)
        detector = draw_field(seed)[4]
        for (sim, t), clean in images.items():
            for dose in DOSES:
                # Same noise stream for both simulators of a field, thickness and dose.
                rng = np.random.default_rng([seed, int(t * 10), int(dose)])
                noisy = detect(clean, replace(detector, dose=dose), ps, rng)
                cores, _ = net_detect(net, noisy, threshold)
                tallies.setdefault((sim, t, dose), DetectionTally()).add(
                    cores[["x", "y"]].to_numpy(float), cores[["hx", "hy"]].to_numpy(float),
                    xy, h, pixel_size=ps)
        print(f"field {seed} done", file=sys.stderr, flush=True)
    print(f"# {platform.processor() or platform.machine()}, model {args.model} (threshold {threshold}), "
          f"{args.fields} fields x 2 cores, 256x256 px at 0.1 nm/px, HRTEM")
    print("| simulator | thickness [nm] | dose [e/Å²] | recall | false cores | F1 | RMSE [nm] |")
    print("|---|---|---|---|---|---|---|")
    for (sim, t, dose), tally in sorted(tallies.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
        s = tally.summary()
        print(f"| {sim} | {t:.0f} | {dose:.0f} | {s['recall']:.2f} | {s['fp']} | {s['f1']:.2f} "
              f"| {s['rmse_nm']:.3f} |")


if __name__ == "__main__":
    main()
