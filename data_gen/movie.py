"""Synthetic movies: dislocations that glide, climb, nucleate as dipoles and
annihilate, rock-salt domains that grow, and specimen drift, with truth per frame.

Velocities of a `TrackSpec` are given in nm per frame along ``b_hat`` (glide)
and **h** (climb), the conventions of `dislotrack.data_gen.conventions`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from dislotrack.data_gen.conventions import b_hat_from_h, glide_climb, h_from_b_hat, unit
from dislotrack.data_gen.dislocations import Dislocation
from dislotrack.data_gen.imaging import (
    Detector,
    Grid,
    Optics,
    Probe,
    draw_detector,
    draw_optics,
    draw_probe,
)
from dislotrack.data_gen.sample import (
    CORE_COLUMNS,
    FrameGeometry,
    GeneratorConfig,
    burgers_vector,
    draw_distortion,
    draw_illumination,
    draw_mode,
    render_frame,
)
from dislotrack.data_gen.specimen import (
    SpecimenParams,
    add_rocksalt_near,
    draw_specimen,
    grain_frame,
    rotation_matrix,
    second_grain,
    smooth_displacement,
    snap_core,
    snap_pair,
)

TRUTH_COLUMNS = ["particle", "first_frame", "last_frame", "n_frames", "glide_velocity_nm_s",
                 "climb_velocity_nm_s", "partner"]


@dataclass
class TrackSpec:
    """The true path of one dislocation (specimen coordinates, nm)."""

    particle: int
    b: np.ndarray  # projected Burgers vector [nm]
    first_frame: int
    path: np.ndarray  # (n_alive, 2) positions [nm], one per frame from first_frame
    partner: int = -1

    @property
    def last_frame(self) -> int:
        return self.first_frame + len(self.path) - 1

    @property
    def h(self) -> np.ndarray:
        return h_from_b_hat(unit(self.b))

    def at(self, frame: int) -> Dislocation | None:
        if not self.first_frame <= frame <= self.last_frame:
            return None
        x, y = self.path[frame - self.first_frame]
        return Dislocation(float(x), float(y), self.b, particle=self.particle, partner=self.partner)


def linear_path(start: np.ndarray, b: np.ndarray, n: int, *, glide: float, climb: float,
                jitter: float = 0.0, rng: np.random.Generator | None = None) -> np.ndarray:
    """Positions of a core moving at constant glide/climb rates [nm/frame], plus jitter [nm]."""
    h = h_from_b_hat(unit(b))
    step = glide * b_hat_from_h(h) + climb * h
    path = np.asarray(start, float) + np.arange(n)[:, None] * step
    if jitter > 0 and rng is not None:
        path = path + rng.normal(0, jitter, path.shape)
    return path


def dipole_tracks(centre: np.ndarray, b: np.ndarray, *, first_frame: int, n_expand: int,
                  n_hold: int, speed: float, motion: str = "glide", start_sep: float = 0.6,
                  pid: int = 0) -> tuple[TrackSpec, TrackSpec]:
    """A dipole that nucleates at ``start_sep`` nm, expands at ``speed`` nm/frame per core
    (by glide along b_hat or climb along h), holds, then contracts and annihilates."""
    h = h_from_b_hat(unit(b))
    e = b_hat_from_h(h) if motion == "glide" else h
    sep = np.concatenate([start_sep / 2 + speed * np.arange(n_expand + 1),
                          np.full(n_hold, start_sep / 2 + speed * n_expand),
                          start_sep / 2 + speed * np.arange(n_expand - 1, -1, -1)])
    c = np.asarray(centre, float)
    p1 = c - sep[:, None] * e
    p2 = c + sep[:, None] * e
    return (TrackSpec(pid, np.asarray(b, float), first_frame, p1, partner=pid + 1),
            TrackSpec(pid + 1, -np.asarray(b, float), first_frame, p2, partner=pid))


@dataclass
class MovieScenario:
    """Everything that defines a movie apart from the noise."""

    n_frames: int
    frame_interval: float  # [s]
    tracks: list[TrackSpec]
    drift_nm: np.ndarray  # (n_frames, 2)
    rs_growth: np.ndarray  # (n_frames,)


@dataclass
class MovieSample:
    """A labelled movie. ``cores`` has a ``frame`` column plus `CORE_COLUMNS`;
    ``drift`` has frame, dx, dy [px] (a feature at x in frame 0 is at x + dx)."""

    def __repr__(self) -> str:  # the dataclass's printed every array (6 kB for 10 x 128 px)
        events = 0 if self.events is None else len(self.events)
        return (f"MovieSample(frames={self.frames.shape}, {len(self.truth)} dislocations, "
                f"{events} events, mode={self.meta.get('mode')!r}, "
                f"pixel_size={self.meta.get('pixel_size')} nm)")

    frames: np.ndarray
    cores: pd.DataFrame
    rs_masks: np.ndarray
    drift: pd.DataFrame
    truth: pd.DataFrame  # per particle: first/last frame, glide/climb velocity [nm/s]
    meta: dict = field(default_factory=dict)
    events: pd.DataFrame | None = None  # true events: frame, kind, x_nm, y_nm (image), particles
    clean: np.ndarray | None = field(default=None, repr=False)  # noise-free frames (keep_clean)


def draw_drift(rng: np.random.Generator, n: int, *, frame_interval: float = 1.0, speed: float = 0.05,
               walk: float = 0.02) -> np.ndarray:
    """Specimen drift [nm] at each of ``n`` frames ``frame_interval`` [s] apart: a steady
    drift (each component's velocity drawn with SD ``speed`` [nm/s]) plus a random walk
    (SD ``walk`` [nm] per second, growing as the square root of time)."""
    v = rng.normal(0, speed, 2) * frame_interval
    steps = v + rng.normal(0, walk, (n, 2)) * np.sqrt(frame_interval)
    steps[0] = 0
    return np.cumsum(steps, axis=0)


#: Closest approach [nm] of two cores in one frame, a dipole's own pair apart. Cores
#: interact (like signs repel, opposite ones annihilate) and an image shows two cores
#: closer than about 1 nm as one; independent random paths used to run through each other.
MIN_CORE_APPROACH_NM = 1.0
#: Tries at placing a single or a dipole clear of the cores placed before; then it is dropped.
_PLACEMENT_TRIES = 20


def closest_approach(new: list[TrackSpec], placed: list[TrackSpec]) -> float:
    """Smallest distance [nm] between a core of ``new`` and one of ``placed`` in any
    frame where both exist (infinite if they never coexist)."""
    best = np.inf
    for a in new:
        for b in placed:
            lo, hi = max(a.first_frame, b.first_frame), min(a.last_frame, b.last_frame)
            if lo <= hi:
                gap = (a.path[lo - a.first_frame : hi - a.first_frame + 1]
                       - b.path[lo - b.first_frame : hi - b.first_frame + 1])
                best = min(best, float(np.hypot(gap[:, 0], gap[:, 1]).min()))
    return best


def draw_scenario(rng: np.random.Generator, cfg: GeneratorConfig, spec: SpecimenParams,
                  n_frames: int, fov_nm: float, frame_interval: float = 1.0) -> MovieScenario:
    """Random singles (gliding/climbing, some entering late) and nucleating dipoles, no
    two cores (but a dipole's pair) closer than `MIN_CORE_APPROACH_NM` in any frame (on
    the paths before `snap_scenario` moves cores to lattice sites, by up to ~0.29 nm, a
    dipole's pair up to ~0.41 nm: 0.85 nm or more after in default 256 px movies, ~0.6 nm
    in crowded ones). Speeds are drawn in nm/s, drift too (`draw_drift`); a dipole's
    expansion and hold last a number of frames. A core in the second grain has its b."""
    tracks: list[TrackSpec] = []

    def in_grain(xy: np.ndarray, b: np.ndarray) -> np.ndarray:
        """b drawn in the first grain's frame, turned into the grain at ``xy`` (same draws
        from ``rng`` either way)."""
        return rotation_matrix(grain_frame(spec, bool(second_grain(spec, xy)[0]))[0] - spec.rotation) @ b

    def single(pid: int) -> list[TrackSpec]:
        b = burgers_vector(rng, spec.crystal, spec.rotation, cfg.basal_fraction)
        start = rng.uniform(0.15, 0.85, 2) * fov_nm
        b = in_grain(start, b)
        f0 = 0 if rng.random() < 0.8 or n_frames < 4 else int(rng.integers(0, n_frames // 2))
        g, c = rng.uniform(-0.6, 0.6), rng.uniform(-0.4, 0.15)
        path = linear_path(start, b, n_frames - f0, glide=g * frame_interval,
                           climb=c * frame_interval, jitter=0.02, rng=rng)
        return [TrackSpec(pid, b, f0, path)]

    def dipole(pid: int) -> list[TrackSpec]:
        b = burgers_vector(rng, spec.crystal, spec.rotation, cfg.basal_fraction)
        n_exp = int(rng.integers(3, max(4, n_frames // 3)))
        f0 = int(rng.integers(0, max(1, n_frames - 2 * n_exp)))
        centre = rng.uniform(0.2, 0.8, 2) * fov_nm
        pair = dipole_tracks(centre, in_grain(centre, b), first_frame=f0, n_expand=n_exp,
                             n_hold=int(rng.integers(0, 5)),
                             speed=float(rng.uniform(0.05, 0.3)) * frame_interval,  # nm/s -> per frame
                             motion=str(rng.choice(["glide", "climb"])), pid=pid)
        return [TrackSpec(t.particle, t.b, t.first_frame, t.path[: n_frames - f0], t.partner)
                for t in pair]

    def place(draw: Callable[[int], list[TrackSpec]], n: int) -> None:
        for _ in range(n):
            for _ in range(_PLACEMENT_TRIES):
                new = draw(len(tracks))
                if closest_approach(new, tracks) >= MIN_CORE_APPROACH_NM:
                    tracks.extend(new)
                    break

    place(single, rng.poisson(max(cfg.density * fov_nm**2 / 100 * 0.6, 0.5)))
    place(dipole, rng.poisson(cfg.dipole_fraction * 2))
    return MovieScenario(n_frames, frame_interval, tracks,
                         draw_drift(rng, n_frames, frame_interval=frame_interval),
                         1.0 + rng.uniform(0, 1.0) * np.arange(n_frames) / max(n_frames - 1, 1))


def snap_scenario(spec: SpecimenParams, scn: MovieScenario) -> MovieScenario:
    """Cores on their lattice sites in every frame (they move in lattice steps), in the
    lattice of the grain they start in. A dipole's two cores are snapped together in
    each frame both exist (`specimen.snap_pair`): at least as far apart as on their
    paths (0.6 nm at nucleation and annihilation), never on neighbouring sites."""
    by_id = {t.particle: t for t in scn.tracks}
    paths = {t.particle: np.array(t.path, float) for t in scn.tracks}
    done: set[int] = set()
    for t in scn.tracks:
        if t.particle in done:
            continue
        mate = by_id.get(t.partner)
        group = [t] if mate is None else [t, mate]
        grain = bool(second_grain(spec, np.mean([g.path[0] for g in group], axis=0))[0])
        for f in range(t.first_frame, t.last_frame + 1):
            alive = [g for g in group if g.at(f) is not None]
            k = [f - g.first_frame for g in alive]
            if len(alive) == 2:
                p1, p2 = snap_pair(spec, alive[0].path[k[0]], alive[1].path[k[1]], alive[0].b, grain)
                paths[alive[0].particle][k[0]], paths[alive[1].particle][k[1]] = p1, p2
            else:
                paths[t.particle][k[0]] = snap_core(spec, t.path[k[0]], t.b, grain)
        if mate is not None:  # frames where only the partner lives
            for f in range(mate.first_frame, mate.last_frame + 1):
                if t.at(f) is None:
                    paths[mate.particle][f - mate.first_frame] = snap_core(
                        spec, mate.path[f - mate.first_frame], mate.b, grain)
        done.update(g.particle for g in group)
    tracks = [TrackSpec(t.particle, t.b, t.first_frame, paths[t.particle], t.partner)
              for t in scn.tracks]
    return replace(scn, tracks=tracks)


def true_velocities(scn: MovieScenario, distortion: np.ndarray | None = None,
                    labels: pd.DataFrame | None = None, drift_px: np.ndarray | None = None,
                    pixel_size: float = 1.0) -> pd.DataFrame:
    """Per particle: frames and glide/climb velocities [nm/s] by linear fit of the true
    path (the same estimator infer uses, on exact positions), in image axes (through the
    STEM scan ``distortion`` if given, as infer sees them).

    With ``labels`` (the movie's core labels [px], with ``frame`` and ``particle``),
    ``drift_px`` (n_frames, 2) and ``pixel_size``, the path is where the image shows each
    core, less the drift: the lattice sites the cores move on are also displaced by the
    other cores' fields, which change as those move (without this, a detector that found
    every label exactly would be 1 % off in the median, 25 % at worst). A core no label
    places (outside the frame) counts in ``n_frames`` but not in the fit.
    """
    dmat = np.eye(2) if distortion is None else distortion
    shown = {} if labels is None else dict(tuple(labels.groupby("particle")))
    rows = []
    for t in scn.tracks:
        h = h_from_b_hat(unit(dmat @ t.b))
        if labels is not None:
            seen = shown.get(t.particle, labels.iloc[:0])
            frames = seen["frame"].to_numpy()
            path = (seen[["x", "y"]].to_numpy() - drift_px[frames]) * pixel_size
        else:
            frames = t.first_frame + np.arange(len(t.path))
            path = t.path @ dmat.T
        tt = frames * scn.frame_interval
        g, c = glide_climb(path - path[:1], h) if len(path) else (np.zeros(0), np.zeros(0))
        vg = np.polyfit(tt, g, 1)[0] if len(tt) > 1 else np.nan
        vc = np.polyfit(tt, c, 1)[0] if len(tt) > 1 else np.nan
        rows.append({"particle": t.particle, "first_frame": t.first_frame, "last_frame": t.last_frame,
                     "n_frames": len(t.path), "glide_velocity_nm_s": vg,
                     "climb_velocity_nm_s": vc, "partner": t.partner})
    return pd.DataFrame(rows, columns=TRUTH_COLUMNS)


def render_movie(rng: np.random.Generator, cfg: GeneratorConfig, spec: SpecimenParams,
                 scn: MovieScenario, *, mode: str, imaging: Optics | Probe,
                 detector: Detector, grid: Grid, keep_clean: bool = False,
                 on_frame: Callable[[int], object] | None = None) -> MovieSample:
    """Render every frame of a scenario with fresh noise and the frame's drift
    (``keep_clean``: also keep each frame's noise-free expected image as ``clean``;
    ``on_frame(f)`` is called after each frame, e.g. for a progress bar)."""
    distortion = draw_distortion(rng, mode)
    illumination = draw_illumination(rng, grid.size)
    scn = snap_scenario(spec, scn)
    frames, masks, cores, clean = [], [], [], []
    for f in range(scn.n_frames):
        disl = [d for t in scn.tracks if (d := t.at(f)) is not None]
        geo = FrameGeometry(drift_nm=scn.drift_nm[f], distortion=distortion,
                            centre_nm=grid.fov_nm / 2)
        s = render_frame(spec, disl, grid=grid, mode=mode, imaging=imaging, detector=detector,
                         rng=rng, geo=geo, rs_growth=float(scn.rs_growth[f]),
                         illumination=illumination)[0]
        frames.append(s.image)
        if keep_clean:
            clean.append(s.clean)
        masks.append(s.rs_mask)
        cores.append(s.cores.assign(frame=f))
        if on_frame is not None:
            on_frame(f)
    table = pd.concat(cores, ignore_index=True)[["frame", *CORE_COLUMNS]]
    table = table.astype({"frame": int, "particle": int, "partner": int})
    # What the image shows is the drift seen through the (STEM) scan distortion.
    drift_px = scn.drift_nm @ distortion.T / grid.pixel_size
    drift = pd.DataFrame({"frame": np.arange(scn.n_frames), "dx": drift_px[:, 0], "dy": drift_px[:, 1]})
    meta = {"mode": mode, "pixel_size": grid.pixel_size, "size": grid.size,
            "frame_interval": scn.frame_interval, "material": spec.material, "zone": spec.zone,
            "imaging": imaging.as_dict(), "detector": detector.as_dict()}
    def geometry(f: int, xy: np.ndarray) -> np.ndarray:  # where the image shows xy
        return FrameGeometry(drift_nm=scn.drift_nm[f], distortion=distortion,
                             centre_nm=grid.fov_nm / 2).apply(xy + smooth_displacement(spec, xy))

    events = _events_at_labels(true_events(scn, geometry), table, grid.pixel_size)
    return MovieSample(np.stack(frames), table, np.stack(masks), drift,
                       true_velocities(scn, distortion, table, drift_px, grid.pixel_size), meta, events,
                       np.stack(clean) if keep_clean else None)


def _events_at_labels(events: pd.DataFrame, cores: pd.DataFrame, pixel_size: float) -> pd.DataFrame:
    """Put each event where the image shows its cores (mean of their labels) when they are
    all labelled at the event's frame; otherwise keep the mapped scenario position. An
    event none of whose cores is labelled then (beyond the specimen's edge, or out of
    the field) is dropped: the image cannot show it."""
    if not len(events):
        return events
    by_key = cores.set_index(["frame", "particle"])[["x", "y"]]
    events = events.copy()
    shown = np.ones(len(events), bool)
    for n, (i, ev) in enumerate(events.iterrows()):
        keys = [(int(ev["frame"]), int(p)) for p in str(ev["particles"]).split()]
        labelled = [k in by_key.index for k in keys]
        if all(labelled):
            xy = by_key.loc[keys].to_numpy(float).mean(axis=0) * pixel_size
            events.loc[i, ["x_nm", "y_nm"]] = xy
        shown[n] = any(labelled)
    return events[shown].reset_index(drop=True)


def make_movie(rng: np.random.Generator, cfg: GeneratorConfig | None = None, *, n_frames: int = 20,
               frame_interval: float = 1.0, keep_clean: bool = False,
               on_frame: Callable[[int], object] | None = None) -> MovieSample:
    """A random labelled movie.

    Parameters
    ----------
    rng : numpy.random.Generator or int
        The random generator, or a seed for one.
    cfg : GeneratorConfig, optional
        Size, pixel size, mode, dose range and densities.
    n_frames : int
    frame_interval : float
        [s]; velocities are drawn in nm/s.
    keep_clean : bool
        Also return each frame's noise-free expected image (``MovieSample.clean``).
    on_frame : callable, optional
        Called with each frame's index once it is rendered (progress).

    Raises
    ------
    ValueError
        If ``n_frames`` < 2 (no motion to label) or ``frame_interval`` is not a positive
        number of seconds.
    """
    if not (isinstance(n_frames, (int, np.integer)) and n_frames >= 2):
        raise ValueError(f"n_frames must be an integer >= 2, got {n_frames!r}")
    if not (np.isfinite(frame_interval) and frame_interval > 0):
        raise ValueError(f"frame_interval must be a positive number of seconds, got {frame_interval}")
    cfg = cfg or GeneratorConfig()
    if not isinstance(cfg, GeneratorConfig):  # a dict failed deep inside, on cfg.mode
        raise TypeError(f"cfg must be a GeneratorConfig (e.g. GeneratorConfig(size=128)), got "
                        f"{type(cfg).__name__}")
    rng = np.random.default_rng(rng)  # a seed too (a Generator is passed through)
    mode = draw_mode(rng, cfg)
    grid = Grid(cfg.size, cfg.pixel_size)
    spec = draw_specimen(rng, fov_nm=grid.fov_nm, realism=cfg.realism, material=cfg.material)
    scn = draw_scenario(rng, cfg, spec, n_frames, grid.fov_nm, frame_interval)
    first = [d for t in scn.tracks if (d := t.at(t.first_frame)) is not None]
    if cfg.realism > 0:
        add_rocksalt_near(rng, spec, first, fov_nm=grid.fov_nm,
                          probability=cfg.rocksalt_probability, n_free=0.2 * cfg.realism)
    dose = float(np.exp(rng.uniform(*np.log(cfg.dose))))
    imaging = draw_optics(rng) if mode == "hrtem" else draw_probe(rng)
    return render_movie(rng, cfg, spec, scn, mode=mode, imaging=imaging,
                        detector=draw_detector(rng, dose), grid=grid, keep_clean=keep_clean,
                        on_frame=on_frame)


def seed_like_scenario(spec: SpecimenParams, fov_nm: float, *, n_frames: int = 30,
                       frame_interval: float = 1.0, climb_nm_s: float = -0.18,
                       glide_nm_s: float = 0.38) -> MovieScenario:
    """The demo movie, after Wang et al. (PNAS 2025): one dislocation climbing
    (negative climb, 0.18 nm/s), one gliding at 0.38 nm/s, and a dipole that
    nucleates, expands by glide and annihilates; 1 frame/s, small drift."""
    rot = rotation_matrix(spec.rotation)
    b = rot @ spec.crystal.burgers["misfit"]
    n = n_frames
    h = h_from_b_hat(unit(b))
    bh = b_hat_from_h(h)
    c = np.full(2, fov_nm / 2)
    # Start each core so that its whole path stays inside the field.
    climber = c + 0.3 * fov_nm * bh - climb_nm_s * frame_interval * n / 2 * h
    # The glider has the opposite Burgers vector (its b_hat is -bh) and glides along it.
    glider = c - 0.3 * fov_nm * h + glide_nm_s * frame_interval * n / 2 * bh
    tracks = [
        TrackSpec(0, b, 0, linear_path(climber, b, n, glide=0.0, climb=climb_nm_s * frame_interval)),
        TrackSpec(1, -b, 0, linear_path(glider, -b, n, glide=glide_nm_s * frame_interval, climb=0.0)),
    ]
    n_exp = max(3, n // 4)
    pair = dipole_tracks(c + 0.25 * fov_nm * h, b, first_frame=max(1, n // 6), n_expand=n_exp,
                         n_hold=max(1, n // 10), speed=0.25 * frame_interval, motion="glide", pid=2)
    tracks += [TrackSpec(t.particle, t.b, t.first_frame, t.path[: n - t.first_frame], t.partner)
               for t in pair]
    step = np.array([0.03, -0.02]) * frame_interval  # nm/s -> nm per frame
    drift = np.cumsum(np.tile(step, (n, 1)), axis=0) - step
    return MovieScenario(n, frame_interval, tracks, drift, np.ones(n))


def true_events(scn: MovieScenario, geometry: Callable[[int, np.ndarray], np.ndarray] | None = None
                ) -> pd.DataFrame:
    """Nucleations (tracks starting after frame 0) and annihilations (tracks ending
    before the last frame); a pair with partners at the same frame is a dipole event.

    ``geometry(frame, xy)`` maps specimen nm to image nm (drift and scan distortion);
    by default only the scenario's drift is added.
    """
    rows = []
    by_id = {t.particle: t for t in scn.tracks}
    for t in scn.tracks:
        partner = by_id.get(t.partner)
        for kind, frame, pos, cond in [
            ("nucleation", t.first_frame, t.path[0], t.first_frame > 0),
            ("annihilation", t.last_frame, t.path[-1], t.last_frame < scn.n_frames - 1),
        ]:
            if not cond:
                continue
            pair = partner is not None and (
                partner.first_frame == frame if kind == "nucleation" else partner.last_frame == frame)
            if pair and partner.particle < t.particle:
                continue  # one row per dipole event
            other = partner.path[0 if kind == "nucleation" else -1] if pair else pos
            mid = (pos + other) / 2
            xy = geometry(frame, mid[None])[0] if geometry else mid + scn.drift_nm[frame]
            rows.append({"frame": frame, "kind": f"dipole_{kind}" if pair else kind,
                         "x_nm": xy[0], "y_nm": xy[1],
                         "particles": f"{t.particle} {partner.particle}" if pair else str(t.particle)})
    return pd.DataFrame(rows, columns=["frame", "kind", "x_nm", "y_nm", "particles"])
