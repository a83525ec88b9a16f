"""Detection accuracy of the network and of the GPA baseline on a fixed synthetic test set,
plus the false-core rate on perfect lattices (synthetic and real).

    python tests/benchmarks/bench_accuracy.py [--model STEM] [--n 20] [--size 256] \\
        [--pixel-size 0.1] [--tta [N]] [--no-gpa] [--real-only | --via-analyze]

Test set: for each mode (HRTEM, STEM) and dose (50, 100, 500, 1000, 5000 e/A^2), ``n``
images of ``size`` px at ``--pixel-size`` nm/px (default 0.1), drawn from
``SeedSequence([2025, mode, dose, i])`` with singles, dipoles, basal Burgers vectors, RS
domains and 10 % perfect lattices. The network sees each image resampled to its
canonical pixel size, as in infer. Metrics as DESIGN.md defines them (Hungarian
matching within 0.5 nm).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dislotrack.data_gen.conventions import CANONICAL_PIXEL_SIZE_NM, D003_LINIO2_NM
from dislotrack.data_gen.sample import GeneratorConfig, make_sample
from dislotrack.infer.detectors import NetworkDetector
from dislotrack.infer.lattice import shows_mirror_view
from dislotrack.infer.options import TTA_VIEWS
from dislotrack.infer.predict import PRECISIONS, network_dtype
from dislotrack.infer.preprocess import to_canonical
from dislotrack.models.io import load_model
from dislotrack.models.metrics import MATCH_RADIUS_NM, DetectionTally, match_cores
from dislotrack.models.unet import prepare_for_inference
from dislotrack.models.visibility import shows_half_plane_end

DOSES = [50.0, 100.0, 500.0, 1000.0, 5000.0]
MODES = ["hrtem", "stem"]
#: Real perfect lattices in ../shared/realdata (SOURCES.md: GPA finds no singularity in
#: any): path and pixel size [nm/px] (None = from the file; inferred ones per SOURCES.md).
REAL_PERFECT = [
    ("ncempy/16_STOimage.emi", None),  # SrTiO3 STEM
    ("atomsegnet/Si110_5nmX25us_03_none_none.png", 0.0098),  # Si [110]
    ("atomsegnet/10_dso_8nm_none_none.png", 0.0078),  # DyScO3
    ("kemstem/FigS6_0716__Cryo_NSMO110_5-1Mx_0p5us_1024px_REGISTERED.tif", 0.01),  # NSMO
    ("scilink/YBCO_tem.tif", None),  # layered cuprate, a planar fault
    ("temul/example_Se_implanted_MoS2.dm3", None),  # MoS2, point defects
    # Added in 0.1.13: every other perfect lattice there with a known pixel size.
    ("ncempy/Acquisition_18.emd", None),  # SrTiO3, Berkeley EMD
    ("atomap/test_ADF_cropped.hdf5", 0.009326),  # SrTiO3 ADF (unit missing in the file)
    ("atomap/test_ABF_cropped.hdf5", 0.009326),  # the same area in ABF: dark columns
    ("atomsegnet/01_8nm_1024px_16us_linesync_blind6_none.png", 0.0078),  # dumbbells
    ("atomsegnet/02_8nm_1024px_16us_linesync_none_none.png", 0.0078),  # dumbbells
    ("atomsegnet/03_afterimage_8nm_crp.png", 0.0078),  # dumbbells, cropped
    ("temul/Cropped_PTO-SRO_Aligned.hspy", None),  # PbTiO3/SrRuO3 layers
    ("scilink/MoS2_stem_Exp-001-5.npy", 0.0137),  # MoS2, point defects
]


def test_set(mode: str, dose: float, n: int, size: int, perfect: bool = False, pixel_size: float = 0.1,
             render_dose: float | None = None):
    """The fixed test images of one cell; ``render_dose`` renders the same structures at
    another dose (e.g. nearly noise-free twins)."""
    d = dose if render_dose is None else render_dose
    cfg = GeneratorConfig(size=size, mode=mode, dose=(d, d), pixel_size=pixel_size,
                          perfect_fraction=1.0 if perfect else 0.1)
    for i in range(n):
        yield make_sample(np.random.default_rng([2025, MODES.index(mode), int(dose), i, perfect]), cfg)


#: Dose of the twin images on which a core's visibility is judged [e/A^2]: shot noise negligible.
TWIN_DOSE = 1e7


#: The network's arithmetic (``--precision``; `dislotrack.infer.predict.network_dtype`).
PRECISION = {"name": "auto"}


def net_detect(net, image: np.ndarray, threshold: float, *, pixel_size: float | None = None,
               canonical: float | None = None, tta: int = 1):
    """The network as infer runs it: resampled to its canonical pixel size, mapped back;
    a mirror-view lattice shown flipped (`shows_mirror_view`)."""
    mirror = shows_mirror_view(image, pixel_size_nm=pixel_size or canonical or CANONICAL_PIXEL_SIZE_NM,
                               d_spacing_nm=D003_LINIO2_NM)
    det = NetworkDetector(net, device=torch.device("cpu"), threshold=threshold, scale=1.0,
                          d_spacing_nm=D003_LINIO2_NM, tta=tta, precision=PRECISION["name"],
                          mirror=mirror)
    can = image if pixel_size is None else to_canonical(image, pixel_size_nm=pixel_size,
                                                        canonical_nm=canonical)
    cores, rs = det([image], [can])[0]
    return cores, rs


def gpa_detect(image: np.ndarray, pixel_size: float):
    from dislotrack.infer.gpa_detect import detect_cores_gpa, rocksalt_mask_gpa

    try:
        cores = detect_cores_gpa(image, pixel_size_nm=pixel_size)
    except ValueError:  # no usable reflection: the baseline finds nothing
        cores = pd.DataFrame(columns=["x", "y", "hx", "hy"])
    try:
        rs = rocksalt_mask_gpa(image, pixel_size_nm=pixel_size)
    except ValueError:
        rs = np.zeros(image.shape, bool)
    return cores, rs


def evaluate(detector, n: int, size: int, pixel_size: float = 0.1,
             categories: list | None = None) -> tuple[pd.DataFrame, float]:
    """Metrics per mode and dose, and images/s; appends per-core rows to ``categories``."""
    rows, t_total, n_img = [], 0.0, 0
    for mode in MODES:
        for dose in DOSES:
            tally, inter, union = DetectionTally(), 0, 0
            twins = (test_set(mode, dose, n, size, pixel_size=pixel_size, render_dose=TWIN_DOSE)
                     if categories is not None else itertools.repeat(None))
            for s, twin in zip(test_set(mode, dose, n, size, pixel_size=pixel_size), twins,
                               strict=False):  # twins: as many, or endless Nones
                t0 = time.perf_counter()
                cores, rs = detector(s.image, s.meta["pixel_size"])
                t_total += time.perf_counter() - t0
                n_img += 1
                tally.add(cores[["x", "y"]].to_numpy(float), cores[["hx", "hy"]].to_numpy(float),
                          s.cores[["x", "y"]].to_numpy(float), s.cores[["hx", "hy"]].to_numpy(float),
                          pixel_size=s.meta["pixel_size"])
                if categories is not None:
                    categories.extend(core_categories(s, cores, mode, dose, twin))
                inter += np.logical_and(rs, s.rs_mask > 0).sum()
                union += np.logical_or(rs, s.rs_mask > 0).sum()
            r = tally.summary()
            rows.append({"mode": mode, "dose": dose, **{k: r[k] for k in
                         ("f1", "precision", "recall", "rmse_nm", "h_accuracy")},
                         "rs_iou": inter / union if union else np.nan})
    return pd.DataFrame(rows), n_img / t_total


def core_categories(s, cores: pd.DataFrame, mode: str, dose: float, twin=None) -> list[dict]:
    """Per true core: found (matched within 0.5 nm), the categories it belongs to, and
    whether its (003) half-plane shows (`shows_half_plane_end` on the nearly noise-free
    ``twin`` of the image, 0.5 nm around the label)."""
    ps = s.meta["pixel_size"]
    true_xy = s.cores[["x", "y"]].to_numpy(float)
    shows = np.full(len(true_xy), np.nan)
    if twin is not None and len(true_xy):
        assert np.allclose(twin.cores[["x", "y"]].to_numpy(float), true_xy), "twin differs"
        shows = shows_half_plane_end(twin.image, true_xy, pixel_size_nm=ps,
                                     d_spacing_nm=D003_LINIO2_NM).astype(float)
    _, matched = match_cores(cores[["x", "y"]].to_numpy(float), true_xy, MATCH_RADIUS_NM / ps)
    found = set(matched.tolist())
    ny, nx = s.rs_mask.shape
    rows = []
    for i, c in enumerate(s.cores.itertuples()):
        r, col = int(np.clip(round(c.y), 0, ny - 1)), int(np.clip(round(c.x), 0, nx - 1))
        border = min(c.x, c.y, nx - 1 - c.x, ny - 1 - c.y) * ps < 1.0
        rows.append({"mode": mode, "dose": dose, "found": i in found,
                     "basal": np.hypot(c.bx_nm, c.by_nm) < 0.4, "rocksalt": bool(s.rs_mask[r, col]),
                     "border": bool(border), "dipole": c.kind == "dipole", "shows_003": shows[i]})
    return rows


def category_table(rows: list[dict]) -> pd.DataFrame:
    """Recall by category, and of clean misfit cores (not basal, rock salt or border) per cell."""
    df = pd.DataFrame(rows)
    clean = df[~df.basal & ~df.rocksalt & ~df.border]
    cats = {"all": df, "basal Burgers vector": df[df.basal], "inside rock salt": df[df.rocksalt],
            "within 1 nm of the border": df[df.border], "dipole member": df[df.dipole],
            "single": df[~df.dipole], "misfit, clean": clean}
    if "shows_003" in df and df.shows_003.notna().all():
        shows = df.shows_003.astype(bool)
        rs = df.rocksalt & ~df.basal
        cats |= {"(003) end shows (noise-free twin)": df[shows],
                 "misfit, clean, (003) end shows": clean[shows[clean.index]],
                 "misfit in rock salt, (003) end shows": df[rs & shows],
                 "misfit in rock salt, (003) end does not show": df[rs & ~shows],
                 "basal, (003) end shows": df[df.basal & shows]}
    for mode in MODES:
        for dose in DOSES:
            cats[f"misfit, clean, {mode} {dose:.0f}"] = clean[(clean["mode"] == mode) & (clean.dose == dose)]
    return pd.DataFrame([{"category": k, "recall": v.found.mean() if len(v) else np.nan, "n": len(v)}
                         for k, v in cats.items()])


def false_cores_perfect(detector, n: int, size: int, pixel_size: float = 0.1) -> float:
    """False cores per 100 nm^2 on synthetic perfect lattices (all modes and doses)."""
    fp, area = 0, 0.0
    for mode in MODES:
        for dose in DOSES:
            for s in test_set(mode, dose, max(n // 2, 1), size, perfect=True, pixel_size=pixel_size):
                cores, _ = detector(s.image, s.meta["pixel_size"])
                fp += len(cores)
                area += (size * s.meta["pixel_size"]) ** 2
    return 100.0 * fp / area


def false_cores_real(net, threshold: float, root: Path, canonical: float, *,
                     tta: int = 1) -> pd.DataFrame:
    """The network on real perfect lattices: false cores per 100 nm^2 per file."""
    from dislotrack.infer.preprocess import to_canonical
    from dislotrack.infer.readers import open_movie

    rows = []
    for rel, ps_given in REAL_PERFECT:
        path = root / rel
        if not path.exists():
            logging.warning("missing %s", path)
            continue
        with open_movie(path) as m:
            ps = ps_given or m.calibration.pixel_size_nm
            frame = to_canonical(m[0], pixel_size_nm=ps, canonical_nm=canonical)
        cores, _ = net_detect(net, frame, threshold, tta=tta)
        area = frame.size * canonical**2
        rows.append({"file": rel, "pixel_size_nm": ps, "area_nm2": area,
                     "false_cores": len(cores), "per_100nm2": 100 * len(cores) / area})
    return pd.DataFrame(rows)


def false_cores_real_analyze(root: Path, model: str | None, precision: str = "auto") -> pd.DataFrame:
    """As `false_cores_real`, through `analyze` with infer's defaults (only the pixel size
    given where the file lacks it): what a user of ``dislotrack infer`` gets."""
    from dislotrack.infer.pipeline import analyze

    rows = []
    for rel, ps_given in REAL_PERFECT:
        path = root / rel
        if not path.exists():
            logging.warning("missing %s", path)
            continue
        res = analyze(path, model=model, pixel_size_nm=ps_given, progress=False, precision=precision)
        _, h, w = res.shape
        area = h * w * res.calibration.pixel_size_nm**2
        rows.append({"file": rel, "tta": res.options["tta"], "area_nm2": area,
                     "false_cores": int((res.detections.frame == 0).sum()),
                     "per_100nm2": 100 * int((res.detections.frame == 0).sum()) / area})
    return pd.DataFrame(rows)


def markdown(df: pd.DataFrame) -> str:
    """A DataFrame as a GitHub markdown table (3 decimals)."""
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pixel-size", type=float, default=0.1,
                    help="pixel size of the test images [nm/px]; each model sees them resampled "
                    "to its canonical pixel size, as in infer")
    ap.add_argument("--no-gpa", action="store_true")
    ap.add_argument("--tta", nargs="?", type=int, const=8, default=1, choices=TTA_VIEWS,
                    metavar="N", help="test-time augmentation over N views (as infer --tta)")
    ap.add_argument("--precision", default="auto", choices=[p for p in PRECISIONS if p != "float16"],
                    help="the network's arithmetic, as infer --precision (auto: bfloat16 on CPUs "
                    "with AMX)")
    ap.add_argument("--realdata", default=str(Path(__file__).resolve().parents[3] / "shared" / "realdata"))
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--real-only", action="store_true",
                    help="only the false-core check on real perfect lattices")
    ap.add_argument("--via-analyze", action="store_true",
                    help="only that check, through analyze() with infer's defaults")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    PRECISION["name"] = args.precision
    dtype = network_dtype(args.precision, torch.device("cpu"))
    print(f"network arithmetic: {'float32' if dtype is None else str(dtype).removeprefix('torch.')}")
    net, card = load_model(args.model)
    net = prepare_for_inference(net)
    thr = float(card.get("decode_threshold", 0.5))
    out = {"model": card.get("model_id"), "sha256": card.get("sha256"), "n_per_cell": args.n,
           "precision": "float32" if dtype is None else str(dtype).removeprefix("torch."),
           "size": args.size, "pixel_size_nm": args.pixel_size, "threads": args.threads}
    can = float(card["canonical_pixel_size_nm"])
    detect = lambda im, ps: net_detect(net, im, thr, pixel_size=ps, canonical=can, tta=args.tta)  # noqa: E731
    if args.via_analyze:
        real = false_cores_real_analyze(Path(args.realdata), args.model, args.precision)
        print(markdown(real))
        print(f"through analyze (infer's defaults): {100 * real.false_cores.sum() / real.area_nm2.sum():.3f} "
              f"false cores per 100 nm^2 over {real.area_nm2.sum():.0f} nm^2")
        out["real_perfect_analyze"] = real.to_dict("records")
        _write_json(args.json, out)
        return
    if args.real_only:
        out["real_perfect"] = report_real(net, thr, Path(args.realdata), can, args.tta)
        _write_json(args.json, out)
        return
    cats: list[dict] = []
    table, fps = evaluate(detect, args.n, args.size, args.pixel_size, categories=cats)
    out["network"] = table.to_dict("records")
    out["recall_by_category"] = category_table(cats).to_dict("records")
    out["network_fps"] = fps
    out["network_false_cores_per_100nm2_perfect"] = false_cores_perfect(
        detect, args.n, args.size, args.pixel_size)
    print(f"## network ({args.size}x{args.size}, CPU, {args.threads} threads): {fps:.1f} images/s")
    print(markdown(table))
    print(markdown(category_table(cats)))
    fpr = out["network_false_cores_per_100nm2_perfect"]
    print(f"false cores per 100 nm^2 on perfect lattices: {fpr:.3f}")
    out["real_perfect"] = report_real(net, thr, Path(args.realdata), can, args.tta)
    if not args.no_gpa:
        gtable, gfps = evaluate(gpa_detect, args.n, args.size, args.pixel_size)
        out["gpa"] = gtable.to_dict("records")
        out["gpa_fps"] = gfps
        print(f"## GPA baseline: {gfps:.1f} images/s")
        print(markdown(gtable))
    _write_json(args.json, out)


def report_real(net, threshold: float, root: Path, canonical: float, tta: int) -> list[dict]:
    """Print the false-core check on real perfect lattices; its rows for the JSON."""
    real = false_cores_real(net, threshold, root, canonical, tta=tta)
    if len(real):
        print(markdown(real))
        area = real.area_nm2.sum()
        tot = 100 * real.false_cores.sum() / area
        first = real[real.file.isin([f for f, _ in REAL_PERFECT[:6]])]  # those up to 0.1.12
        old = 100 * first.false_cores.sum() / first.area_nm2.sum()
        print(f"real perfect lattices: {tot:.3f} false cores per 100 nm^2 over {area:.0f} nm^2 "
              f"(the files up to 0.1.12: {old:.3f} over {first.area_nm2.sum():.0f} nm^2)")
    return real.to_dict("records")


def _write_json(path: str | None, out: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(out, indent=2, default=float))


if __name__ == "__main__":
    main()
