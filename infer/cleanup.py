"""What a frame can support of the detector's findings: one frame's cores and rock salt,
cleaned of what its edges, blank areas and burned-in annotations would fake.

Pure: arrays and tables in, `FrameFindings` out; `dislotrack.infer.pipeline.analyze`
applies it to every frame as the detector yields it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage

from dislotrack.data_gen.conventions import edge_distance_px
from dislotrack.infer.events import ROCKSALT_MARGIN_NM, near_rocksalt
from dislotrack.infer.lattice_edge import lattice_free_mask, without_regions_holding_cores
from dislotrack.infer.overlays import MARGIN_NM as OVERLAY_MARGIN_NM
from dislotrack.infer.overlays import overlay_mask, shows_nothing

#: Cores closer to the frame edge than this fraction of the (003) spacing are not
#: reported: the fringes run on too little of one side of them to show a half-plane end,
#: and a dark or bright edge row (scan flyback, a crop) reads as one (a real perovskite
#: interface: 2 false cores 0.05-0.07 nm from its dark edge; real perovskite and cuprate
#: images: false cores 0.2-0.3 nm inside the edge, moving with it when flipped). On the
#: synthetic detection test set (6 images per cell) the band from 0.5 to 0.75 spacings
#: (0.24-0.35 nm) held 4 of 240 true detections and 2 false ones.
EDGE_MARGIN_FRINGES = 0.75

#: No rock salt is reported this close [nm] to a burned-in annotation: the network reads its
#: sharp edges as a region without the layered order (a real PZT image had all of its
#: "rock salt", 1.2 % of the frame, within 2 nm of its scale bar and text).
ANNOTATION_ROCKSALT_MARGIN_NM = 2.0

#: Per-detection flags that `clean_frame` adds and tracking reads (not written to detections.csv).
FLAGS = ("in_rocksalt", "at_specimen_edge")

#: A core within this distance [nm] of a region without (003) fringes that is not rock salt
#: (`dislotrack.infer.lattice_edge`) is at the specimen's edge: a track that ends there
#: left the crystal, as at the frame border (one that begins there nucleated at the surface).
LATTICE_EDGE_MARGIN_NM = 0.5


@dataclass(frozen=True)
class FrameFindings:
    """One frame's detections after `clean_frame`.

    Attributes
    ----------
    cores : DataFrame
        The detector's rows that the frame supports (every score, weak ones too), with
        booleans ``in_rocksalt`` (within `ROCKSALT_MARGIN_NM` of rock salt, where births
        and deaths are not events) and ``at_specimen_edge`` (within
        `LATTICE_EDGE_MARGIN_NM` of a region without (003) fringes that is not rock salt:
        vacuum or an amorphous layer, where a track that ends there left the crystal).
    rocksalt : ndarray of bool
        The rock-salt mask, cleared where nothing can be judged.
    rocksalt_fraction : float
        Rock salt's share of the frame outside burned-in annotations; NaN where rock
        salt was not judged (a blank frame, or frames that cannot show the lattice).
    blank : bool
        One value nearly throughout (`shows_nothing`: blank or saturated, perhaps with a
        scale bar): no specimen shows.
    overlaid : float
        Share of the frame under burned-in annotations or clipped areas (0: none).
    """

    cores: pd.DataFrame
    rocksalt: np.ndarray
    rocksalt_fraction: float
    blank: bool
    overlaid: float


def clean_frame(frame: np.ndarray, cores: pd.DataFrame, rocksalt: np.ndarray, *,
                pixel_size_nm: float, d_spacing_nm: float, blind: bool = False,
                report_threshold: float | None = None) -> FrameFindings:
    """The cores and rock salt that ``frame`` (as read) can support.

    Parameters
    ----------
    frame : ndarray
        The input frame [input px].
    cores : DataFrame
        The detector's cores in it (``x, y`` [input px], ...).
    rocksalt : ndarray of bool
        The detector's rock-salt mask, the frame's shape.
    pixel_size_nm, d_spacing_nm : float
        Calibration [nm/px] and the (003) spacing [nm].
    blind : bool
        The frames cannot show a core at all (too small or coarse:
        `dislotrack.infer.pipeline.cores_cannot_show`): nothing is kept and rock salt
        is not judged.
    report_threshold : float, optional
        Cores scoring at most this are weak peaks, kept for tracking but not reported:
        they do not make a lattice-free region crystal (a weak peak in vacuum would
        otherwise erase the specimen's edge). None: every core counts.

    Returns
    -------
    FrameFindings
        No cores on a blank frame, within `EDGE_MARGIN_FRINGES` (003) spacings of the
        edge or within `dislotrack.infer.overlays.MARGIN_NM` of a burned-in annotation
        (`overlay_mask`: scale bars, text, zero-filled borders); no rock salt on a blank
        frame or within `ANNOTATION_ROCKSALT_MARGIN_NM` of an annotation (its fraction is
        of the rest of the frame).
    """
    blank = shows_nothing(frame)
    if blank or blind:  # nothing to judge rock salt by, and any core found would be spurious
        return FrameFindings(cores.iloc[:0].assign(in_rocksalt=False, at_specimen_edge=False),
                             np.zeros_like(rocksalt), np.nan, blank, 0.0)
    cores = cores[edge_distance_px(cores["x"], cores["y"], frame.shape)
                  >= EDGE_MARGIN_FRINGES * d_spacing_nm / pixel_size_nm]
    drawn = overlay_mask(frame, pixel_size_nm=pixel_size_nm)
    unjudged = drawn  # where rock salt is not judged: on annotations and beside them
    if drawn.any():
        cores = cores[~near_rocksalt(cores["x"], cores["y"], drawn, OVERLAY_MARGIN_NM / pixel_size_nm)]
        unjudged = within_distance(drawn, ANNOTATION_ROCKSALT_MARGIN_NM / pixel_size_nm)
        rocksalt = rocksalt & ~unjudged
    flag = near_rocksalt(cores["x"], cores["y"], rocksalt, ROCKSALT_MARGIN_NM / pixel_size_nm)
    # Beside a region without (003) fringes that is not rock salt: the specimen's edge
    # (not beside annotations, where rock salt is not judged either).
    outside = (lattice_free_mask(frame, pixel_size_nm=pixel_size_nm, d_spacing_nm=d_spacing_nm)
               & ~rocksalt & ~unjudged) if len(cores) else None
    if outside is not None:  # a region holding a core is crystal (another grain)
        held = cores if report_threshold is None else cores[cores["score"] > report_threshold]
        outside = without_regions_holding_cores(outside, held["x"].to_numpy(), held["y"].to_numpy(),
                                                pixel_size_nm=pixel_size_nm)
    edge = (near_rocksalt(cores["x"], cores["y"], outside, LATTICE_EDGE_MARGIN_NM / pixel_size_nm)
            if outside is not None else np.zeros(len(cores), bool))
    fraction = (np.nan if unjudged.all()  # nothing left to judge rock salt on
                else float(rocksalt[~unjudged].mean()))
    return FrameFindings(cores.assign(in_rocksalt=flag, at_specimen_edge=edge), rocksalt, fraction,
                         False, float(drawn.mean()) if drawn.any() else 0.0)


def within_distance(mask: np.ndarray, radius_px: float) -> np.ndarray:
    """Pixels within ``radius_px`` (Euclidean, pixel centres) of ``mask``: the distance
    transform's ``<= radius_px``, computed in each connected region's box padded by the
    radius (a burned-in scale bar is a small part of a large frame).

    Parameters
    ----------
    mask : ndarray of bool (H, W)
    radius_px : float

    Returns
    -------
    ndarray of bool (H, W)
    """
    labels, n = ndimage.label(mask)
    if n > _MAX_BOXES:  # scattered specks: one transform is cheaper than many
        return ndimage.distance_transform_edt(~mask) <= radius_px
    out = np.zeros(mask.shape, bool)
    pad = int(np.ceil(radius_px)) + 1
    for box in ndimage.find_objects(labels):
        grown = tuple(slice(max(s.start - pad, 0), min(s.stop + pad, size))
                      for s, size in zip(box, mask.shape, strict=True))
        out[grown] |= ndimage.distance_transform_edt(~mask[grown]) <= radius_px
    return out


#: `within_distance` transforms the whole frame where a mask has more regions than this.
_MAX_BOXES = 32
