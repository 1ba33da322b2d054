"""Procedural PA chest-radiograph phantom: the built-in dataset for the demo and the tests.

Why procedural: it needs no download, no licence and no patient, yet it has what the pipeline must prove it
handles: multi-label findings that change the anatomy the way real ones do, lung masks, and several images
per simulated patient (same anatomy, different positioning, exposure, noise and acute findings), so that
patient-level splits and re-identification attacks can be tested on it.

Everything is analytic in *patient coordinates* (x right of the image = patient's left, y down, the chest
spanning about [-1, 1]); each image maps its pixel grid into them with its own shift, rotation and scale, so
the same patient keeps the same anatomy while positioning varies. Every random number of image `i` comes
from generators keyed by (seed, i) and (seed, patient of i), so any slice of the stream renders on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from medsyn.data.adapters.common import check_options
from medsyn.data.base import Source, make_table
from medsyn.data.spec import DatasetSpec
from medsyn.errors import SpecError

PHANTOM_CLASSES = ["Cardiomegaly", "Effusion", "Nodule", "Pneumothorax", "Consolidation"]

MIN_SIZE, MAX_SIZE = 16, 512
_PIXEL_BUDGET = 1 << 21  # pixels per vectorised sub-batch: bounds the temporaries at 512 px
_FIELD = 8  # side of the low-resolution noise fields (parenchymal mottle, consolidation patches)
_F32 = np.float32
# Distinctive patient features (for re-identification tests) and their cumulative probabilities.
_FEATURES = ("none", "pacemaker", "granuloma", "fracture", "wires", "scoliosis")
_FEATURE_CUM = np.array([0.6, 0.68, 0.78, 0.88, 0.94, 1.0])

# Names of the uniform draws, one per column; new draws go at the end so that old streams stay stable.
_PATIENT_U = (
    "tw st dens ya ycp dome dome_lr mw ucx hx hh cardio ctr rib_sp rib_arch rib_phase rib_w clav_y clav_s "
    "v1 v2 v3 v4 v5 v6 feat f1 f2 f3 nod nod_side nod_y nod_x nod_r nod_c mass breast knob spine hil"
).split()
_IMAGE_U = (
    "dx dy rot scale insp gamma contrast bright noise eff eff_side eff_sev ptx ptx_side ptx_sev "
    "cons cons_side cons_y cons_x cons_r cons_d bubble marker marker_x nod_grow vessel"
).split()


@dataclass
class PhantomBatch:
    """Rendered images with their lung masks, multi-hot labels over PHANTOM_CLASSES and patient ids."""

    images: np.ndarray  # float32 (N, 1, S, S) in [0, 1]
    masks: np.ndarray  # uint8 (N, 1, S, S), both lung fields, heart excluded
    labels: np.ndarray  # float32 (N, K)
    patient_ids: list[str]


def _uniforms(seed: int, stream: int, ids: np.ndarray, names: tuple[str, ...] | list[str]) -> dict:
    """One uniform per name for each id, from a generator keyed by (seed, stream, id)."""
    u = np.array([np.random.default_rng([seed, stream, int(i)]).random(len(names)) for i in ids])
    u = u.reshape(len(ids), len(names))
    return {name: u[:, k] for k, name in enumerate(names)}


def _lerp(u: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return lo + (hi - lo) * u


def _patient_params(seed: int, pids: np.ndarray) -> dict[str, np.ndarray]:
    """Chronic, patient-specific anatomy: habitus, lung shape, heart size, ribs, features, nodules."""
    u = _uniforms(seed, 0, pids, _PATIENT_U)
    p: dict[str, np.ndarray] = {}
    p["tw"] = _lerp(u["tw"], 0.70, 0.82)  # thoracic half-width (inner ribs)
    p["st"] = _lerp(u["st"], 0.06, 0.17)  # soft-tissue thickness outside the ribs: body habitus
    p["dens"] = _lerp(u["dens"], 0.9, 1.1) + 1.2 * (p["st"] - 0.1)  # heavier patients attenuate more
    p["ya"] = _lerp(u["ya"], -0.80, -0.68)  # lung apex
    p["ycp"] = _lerp(u["ycp"], 0.46, 0.60)  # costophrenic angles
    p["dome"] = _lerp(u["dome"], 0.10, 0.20)  # dome height above the angles
    p["dome_lr"] = _lerp(u["dome_lr"], 0.0, 0.07)  # the left dome sits lower than the right
    p["mw"] = _lerp(u["mw"], 0.085, 0.12)  # mediastinum half-width
    p["ucx"] = _lerp(u["ucx"], 0.28, 0.38)  # lateral lung contour centre, fraction of tw
    p["hx"] = _lerp(u["hx"], 0.05, 0.11)  # heart shifted to the patient's left
    p["hh"] = _lerp(u["hh"], 0.34, 0.44)  # heart half-height
    cardio = u["cardio"] < 0.2
    # Cardiothoracic ratio: normal 0.38-0.49, enlarged 0.505-0.66 skewed towards subtle.
    p["ctr"] = np.where(cardio, 0.505 + 0.155 * u["ctr"] ** 1.5, _lerp(u["ctr"], 0.38, 0.49))
    p["cardio"] = cardio.astype(float)
    p["rib_sp"] = _lerp(u["rib_sp"], 0.125, 0.16)
    p["rib_arch"] = _lerp(u["rib_arch"], 0.35, 0.8)
    p["rib_phase"] = u["rib_phase"]
    p["rib_w"] = _lerp(u["rib_w"], 2.0, 4.0)  # band sharpness exponent: thin or broad ribs
    p["clav_y"] = _lerp(u["clav_y"], -0.66, -0.56)
    p["clav_s"] = _lerp(u["clav_s"], 0.15, 0.4)
    for k in range(1, 7):  # vessel-pattern phases, the patient's "fingerprint" in the lung texture
        p[f"v{k}"] = 2 * np.pi * u[f"v{k}"]
    p["feat"] = np.searchsorted(_FEATURE_CUM, u["feat"], side="right").astype(float)
    for k in (1, 2, 3):
        p[f"f{k}"] = u[f"f{k}"]
    nod = u["nod"] < 0.17
    p["nod"] = nod.astype(float)
    p["nod_side"] = np.where(u["nod_side"] < 0.5, -1.0, 1.0)
    p["nod_y"], p["nod_x"] = u["nod_y"], u["nod_x"]
    mass = u["mass"] < 0.25
    p["nod_r"] = np.where(mass, _lerp(u["nod_r"], 0.06, 0.12), _lerp(u["nod_r"], 0.02, 0.05))
    p["nod_c"] = _lerp(u["nod_c"], 0.25, 1.0)
    p["breast"] = np.where(u["breast"] < 0.5, _lerp(u["breast"], 0.0, 0.6), 0.0)
    p["knob"] = _lerp(u["knob"], 0.03, 0.07)
    p["spine"] = _lerp(u["spine"], 0.055, 0.075)
    p["hil"] = _lerp(u["hil"], -0.12, 0.0)
    p["scol"] = np.where(p["feat"] == _FEATURES.index("scoliosis"), _lerp(u["f1"], 0.04, 0.08), 0.0) * np.where(
        u["f2"] < 0.5, -1, 1
    )
    return p


def _image_params(seed: int, idx: np.ndarray, p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-image positioning, exposure, noise and acute findings (which may change between follow-ups)."""
    u = _uniforms(seed, 1, idx, _IMAGE_U)
    q: dict[str, np.ndarray] = {}
    q["dx"], q["dy"] = _lerp(u["dx"], -0.06, 0.06), _lerp(u["dy"], -0.06, 0.06)
    q["rot"] = np.deg2rad(_lerp(u["rot"], -5.0, 5.0))
    q["scale"] = _lerp(u["scale"], 0.9, 1.06)
    q["insp"] = _lerp(u["insp"], -0.035, 0.035)  # depth of inspiration moves the diaphragm
    q["gamma"] = np.exp(_lerp(u["gamma"], -0.3, 0.3))
    q["contrast"] = _lerp(u["contrast"], 0.85, 1.15)
    q["bright"] = _lerp(u["bright"], -0.08, 0.06)
    q["noise"] = _lerp(u["noise"], 0.01, 0.05)
    # Effusion is commoner with an enlarged heart (congestive failure); small ones only blunt the angle.
    q["eff"] = (u["eff"] < 0.13 + 0.25 * p["cardio"]).astype(float)
    q["eff_side"] = np.floor(u["eff_side"] * 3)  # 0 right, 1 left, 2 both
    q["eff_sev"] = 0.04 + 0.36 * u["eff_sev"] ** 1.5
    q["ptx"] = (u["ptx"] < 0.13).astype(float)
    q["ptx_side"] = np.where(u["ptx_side"] < 0.5, -1.0, 1.0)
    q["ptx_sev"] = 0.05 + 0.35 * u["ptx_sev"] ** 1.5
    q["cons"] = (u["cons"] < 0.2).astype(float)
    q["cons_side"] = np.where(u["cons_side"] < 0.5, -1.0, 1.0)
    q["cons_y"], q["cons_x"] = u["cons_y"], u["cons_x"]
    q["cons_r"] = _lerp(u["cons_r"], 0.1, 0.26)
    q["cons_d"] = _lerp(u["cons_d"], 0.2, 1.0)
    q["bubble"] = np.where(u["bubble"] < 0.7, u["bubble"] / 0.7, 0.0)
    q["marker"] = (u["marker"] < 0.6).astype(float)
    q["marker_x"] = np.where(u["marker_x"] < 0.5, -0.85, 0.78)
    q["nod_grow"] = _lerp(u["nod_grow"], 0.9, 1.15)
    q["vessel"] = _lerp(u["vessel"], 0.8, 1.2)
    return q


def _labels(p: dict[str, np.ndarray], q: dict[str, np.ndarray]) -> np.ndarray:
    return np.stack([p["cardio"], q["eff"], p["nod"], q["ptx"], q["cons"]], axis=1).astype(_F32)


def _check_args(n: int, size: int, seed: int, per_patient: int, start: int) -> None:
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"phantom size={size} must be in {MIN_SIZE}..{MAX_SIZE}")
    if n < 0 or start < 0 or seed < 0 or per_patient < 1:
        raise ValueError(f"phantom needs n, start, seed >= 0 and per_patient >= 1 (got {n}, {start}, {seed}, "
                         f"{per_patient})")


def _draw(n: int, seed: int, per_patient: int, start: int) -> tuple[np.ndarray, dict, dict]:
    """Image indices with their patient and image parameters (no pixels): enough for the label table."""
    idx = np.arange(start, start + n)
    pids = idx // per_patient
    upids, inverse = np.unique(pids, return_inverse=True)
    pp = _patient_params(seed, upids)
    p = {k: v[inverse] for k, v in pp.items()}
    return idx, p, _image_params(seed, idx, p)


def render_phantom(n: int, size: int = 64, seed: int = 0, per_patient: int = 4, start: int = 0) -> PhantomBatch:
    """Images start..start+n-1 of the infinite stream for `seed`; image i belongs to patient i // per_patient."""
    _check_args(n, size, seed, per_patient, start)
    idx, p, q = _draw(n, seed, per_patient, start)
    images = np.empty((n, 1, size, size), _F32)
    masks = np.empty((n, 1, size, size), np.uint8)
    step = max(1, _PIXEL_BUDGET // (size * size))
    for lo in range(0, n, step):
        sl = slice(lo, min(n, lo + step))
        img, mask, _ = _render(idx[sl], {k: v[sl] for k, v in p.items()}, {k: v[sl] for k, v in q.items()},
                               size, seed)
        images[sl, 0], masks[sl, 0] = img, mask
    return PhantomBatch(images, masks, _labels(p, q), [f"P{i:05d}" for i in idx // per_patient])


# ----------------------------------------------------------------------------------------------- rendering


def _ramp(d: np.ndarray, w: Any) -> np.ndarray:
    """Anti-aliased inside indicator of a signed distance (positive inside), `w` wide."""
    return np.clip(d / w + 0.5, 0.0, 1.0)


def _upsample(fields: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of (N, C, F, F) fields to (N, C, S, S) by two small matrix products."""
    f = fields.shape[-1]
    pos = np.clip((np.arange(size) + 0.5) * f / size - 0.5, 0, f - 1)
    lo = np.minimum(np.floor(pos).astype(int), f - 2)
    frac = (pos - lo).astype(_F32)
    m = np.zeros((size, f), _F32)
    m[np.arange(size), lo] = 1 - frac
    m[np.arange(size), lo + 1] = frac
    return np.einsum("sa,ncab,tb->ncst", m, fields, m, optimize=True)


class _Anatomy:
    """Geometry of one sub-batch in patient coordinates; every array broadcasts to (N, S, S)."""

    def __init__(self, p: dict[str, np.ndarray], q: dict[str, np.ndarray]):
        g = {k: v.astype(_F32)[:, None, None] for k, v in p.items()}
        self.g = g
        self.tw = g["tw"]
        insp = q["insp"].astype(_F32)[:, None, None]
        self.ycp = {-1: g["ycp"] + insp - 0.02, 1: g["ycp"] + insp}
        self.ydome = {-1: self.ycp[-1] - g["dome"], 1: self.ycp[1] - g["dome"] + g["dome_lr"]}
        self.udome = 0.45 * self.tw
        self.ucx = g["ucx"] * self.tw
        self.ax = self.tw - self.ucx
        self.ycy = 0.5 * (g["ya"] + g["ycp"]) + 0.12  # lateral lung contour is widest low in the chest
        self.ay = self.ycy - g["ya"]
        self.hw = g["ctr"] * self.tw  # heart half-width: CTR = heart width / thoracic width
        self.hy = 0.5 * (self.ydome[-1] + self.ydome[1]) - 0.03
        self.hh = g["hh"]
        self.hx = g["hx"]

    def spine_x(self, y: np.ndarray) -> np.ndarray:
        return self.g["scol"] * (1 - (y / 0.9) ** 2)

    def heart_out(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Signed distance-like value, positive outside the heart ellipse."""
        e = ((x - self.hx) / self.hw) ** 2 + ((y - self.hy) / self.hh) ** 2
        return (np.sqrt(e) - 1) * np.minimum(self.hw, self.hh)

    def diaphragm(self, u: np.ndarray, side: int) -> np.ndarray:
        k = (self.ycp[side] - self.ydome[side]) / (self.tw - self.udome) ** 2
        return self.ydome[side] + k * (u - self.udome) ** 2

    def lung(self, x: np.ndarray, y: np.ndarray, side: int, heart: np.ndarray | None = None) -> np.ndarray:
        """Signed distance-like value of one lung field (side -1 = patient's right), positive inside."""
        u = side * x
        yt = y - self.ycy
        ell = ((u - self.ucx) / self.ax) ** 2 + (np.minimum(yt, 0) / self.ay) ** 2 + (np.maximum(yt, 0) / 0.9) ** 2
        d = (1 - np.sqrt(ell)) * self.ax
        med = side * (x - self.spine_x(y)) - self.g["mw"]
        if side == 1:  # aortic knob on the patient's left
            med -= self.g["knob"] * np.exp(-(((y + 0.32) / 0.08) ** 2))
        d = np.minimum(d, med)
        d = np.minimum(d, self.heart_out(x, y) if heart is None else heart)
        return np.minimum(d, self.diaphragm(u, side) - y)


def _render(idx: np.ndarray, p: dict, q: dict, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one sub-batch: images (N,S,S) float32, lung masks (N,S,S) uint8, body masks (N,S,S) bool."""
    n = len(idx)
    fields = np.empty((n, 2, _FIELD, _FIELD), _F32)
    noise = np.empty((n, size, size), _F32)
    for j, i in enumerate(idx):
        rng = np.random.default_rng([seed, 1, int(i)])
        rng.random(len(_IMAGE_U))  # the draws _image_params used
        fields[j] = rng.standard_normal((2, _FIELD, _FIELD), dtype=_F32)
        noise[j] = rng.standard_normal((size, size), dtype=_F32)
    mottle, patches = _upsample(fields, size).transpose(1, 0, 2, 3)

    a = _Anatomy(p, q)
    g = a.g
    col = lambda k: q[k].astype(_F32)[:, None, None]  # noqa: E731
    # Pixel grid -> patient coordinates through this image's positioning.
    t = (np.arange(size, dtype=_F32) + 0.5) * (2 / size) - 1
    c, s, sc = np.cos(col("rot")), np.sin(col("rot")), col("scale")
    xi, yi = t[None, None, :] - col("dx"), t[None, :, None] - col("dy")
    x = (c * xi + s * yi) / sc
    y = (c * yi - s * xi) / sc
    w = np.maximum(0.012, 1.0 / (size * sc))  # edge width ~ one pixel: anti-aliased at every size
    ax_ = np.abs(x)

    # Body: neck, shoulders and chest wall; attenuation follows the thickness of a cylinder.
    bw = 0.2 + (a.tw + g["st"] - 0.2) * _ramp(y + 0.78, 0.16) + 0.14 * np.exp(-(((y + 0.62) / 0.16) ** 2))
    body_t = np.sqrt(np.clip(1 - (ax_ / bw) ** 2, 0, 1))
    att = g["dens"] * 2.2 * np.sqrt(body_t)

    # Lungs: air removes most of the soft-tissue attenuation; bases and apices overlap more tissue.
    heart = a.heart_out(x, y)
    d_r, d_l = a.lung(x, y, -1, heart), a.lung(x, y, 1, heart)
    lung = _ramp(d_r, w) + _ramp(d_l, w)
    mask = (d_r > 0) | (d_l > 0)
    ydome = np.where(x < 0, a.ydome[-1], a.ydome[1])
    depth = (0.78 + 0.22 * np.clip(np.maximum(d_r, d_l) / 0.12, 0, 1)) * (1 - 0.3 * _ramp(y - ydome + 0.05, 0.15))
    air = lung * depth * g["dens"] * 1.75
    air *= 1 - 0.25 * _ramp(g["ya"] + 0.12 - y, 0.1)

    # Pulmonary vessels radiate from the hila: a patient-specific angular pattern fading to the periphery.
    hu = np.where(x < 0, -1, 1) * (g["mw"] + 0.07)
    dxh, dyh = x - hu, y - g["hil"]
    rho = np.sqrt(dxh * dxh + dyh * dyh)
    th = np.arctan2(dyh, np.abs(dxh))
    ph = np.where(x < 0, 0, 1)
    ves = (np.cos(17 * th + 9 * rho + g["v1"] + ph * g["v4"]) + np.cos(29 * th - 14 * rho + g["v2"] + ph * g["v5"])
           + 0.6 * np.cos(11 * th + 21 * rho + g["v3"] + ph * g["v6"]))
    ves = np.maximum(ves, 0) * np.exp(-rho / 0.32) + 1.6 * np.exp(-((rho / 0.09) ** 2))
    att += lung * (0.09 * col("vessel") * ves + 0.06 * mottle)

    # Heart and great vessels are denser than the surrounding soft tissue; trachea is an air column.
    att += 0.25 * _ramp(-heart, 2 * w)
    trachea = np.exp(-(((x - a.spine_x(y)) / 0.035) ** 2)) * _ramp(-0.15 - y, 0.1) * _ramp(y + 0.95, 0.1)
    att -= 0.35 * trachea

    # Abdomen: gastric bubble under the left dome, only in some images.
    bub = ((x - 0.33) / 0.1) ** 2 + ((y - a.ydome[1] - 0.1) / 0.055) ** 2
    att -= 0.5 * col("bubble") * np.clip(1 - bub, 0, 1) ** 0.5

    # Breast shadows raise the density of the lower lateral lung fields in some patients.
    br = ((ax_ - 0.5) / 0.38) ** 2 + ((y - a.ycp[1] - 0.1) / 0.35) ** 2
    att += g["breast"] * np.clip(1 - br, 0, 1) ** 0.5

    # Bones: spine with vertebral bodies, posterior and anterior ribs, clavicles.
    sx = x - a.spine_x(y)
    att += 0.5 * _ramp(g["spine"] - np.abs(sx), w) * (0.8 + 0.2 * np.cos(2 * np.pi * y / (g["rib_sp"] * 1.05)))
    u = np.abs(sx)
    rib_y = y - (g["rib_arch"] * u * u - 0.15 * u)
    pos = 0.5 + 0.5 * np.cos(2 * np.pi * ((rib_y - g["ya"]) / g["rib_sp"] + g["rib_phase"]))
    ant = 0.5 + 0.5 * np.cos(2 * np.pi * ((y + 0.45 * u - g["ya"]) / (1.15 * g["rib_sp"]) + g["rib_phase"]))
    ribs = pos ** g["rib_w"] + 0.35 * ant ** 3 * _ramp(u - 0.22, 0.08)
    region = _ramp(u - g["spine"] + 0.01, 0.03) * _ramp(a.tw + 0.06 - u, 0.04)
    region *= _ramp(y - g["ya"] + 0.1, 0.05) * _ramp(a.ycp[1] + 0.08 - y, 0.06)
    att += 0.42 * ribs * region
    clav = y - (g["clav_y"] - g["clav_s"] * (u - 0.08) + 0.25 * (u - 0.08) ** 2)
    att += 0.55 * np.exp(-((clav / 0.035) ** 2)) * _ramp(u - 0.06, 0.03) * _ramp(0.7 - u, 0.05)

    _add_features(att, x, y, a, w)
    _add_findings(att, x, y, a, q, w, d_r, d_l, patches, ves)

    # Detector response and exposure.
    img = 1 - np.exp(-np.maximum(att - air, 0))
    img = np.clip(col("bright") + 0.04 + col("contrast") * img, 1e-4, 1) ** col("gamma")
    img += col("noise") * np.sqrt(img + 0.05) * noise
    marker = _ramp(0.04 - np.abs(t[None, None, :] - col("marker_x")), 1 / size)
    marker = marker * _ramp(0.05 - np.abs(t[None, :, None] + 0.85), 1 / size) * col("marker")
    img = np.maximum(img, 0.95 * marker)
    return np.clip(img, 0, 1).astype(_F32), mask.astype(np.uint8), body_t > 0


def _add_features(att: np.ndarray, x: np.ndarray, y: np.ndarray, a: _Anatomy, w: np.ndarray) -> None:
    """Distinctive patient features (device, calcified granuloma, healed rib fracture, sternal wires)."""
    g = a.g
    feat = g["feat"]
    f1, f2, f3 = g["f1"], g["f2"], g["f3"]
    # Pacemaker: generator box below the left clavicle and a lead curving down to the right ventricle.
    pm = feat == _FEATURES.index("pacemaker")
    px, py = 0.42 + 0.15 * f1, -0.52 + 0.08 * f2
    box = np.minimum(0.07 - np.abs(x - px), 0.045 - np.abs(y - py))
    t = np.clip((px - x) / (px - a.hx), 0, 1)
    lead = y - (py + (a.hy - py) * t ** 1.6)
    dev = 3.0 * _ramp(box, w) + 1.2 * np.exp(-((lead / 0.012) ** 2)) * (t > 0) * (t < 1)
    # Calcified granuloma: tiny, very dense dot in a lung (not a Nodule label, though it looks like one).
    gx = np.where(f3 < 0.5, -1, 1) * (g["mw"] + 0.15 + 0.4 * f1 * (a.tw - g["mw"]))
    gy = g["ya"] + 0.25 + 0.5 * f2 * (a.ycp[1] - g["ya"])
    gran = 1.5 * np.exp(-(((x - gx) ** 2 + (y - gy) ** 2) / 0.012**2))
    # Healed rib fracture: a callus bump on a lateral rib.
    fx = np.where(f3 < 0.5, -1, 1) * (a.tw * (0.6 + 0.3 * f1))
    fy = g["ya"] + 0.25 + 0.6 * f2 * (a.ycp[1] - g["ya"])
    frac = 0.7 * np.exp(-(((x - fx) / 0.03) ** 2 + ((y - fy) / 0.018) ** 2))
    # Sternotomy wires: a column of small dense loops on the midline.
    wy = np.cos(2 * np.pi * (y + 0.05 * f1) / 0.11) ** 8
    wires = 1.5 * wy * np.exp(-((x / 0.02) ** 2)) * _ramp(y + 0.5, 0.02) * _ramp(0.1 - y, 0.02)
    att += np.where(pm, dev, 0)
    att += np.where(feat == _FEATURES.index("granuloma"), gran, 0)
    att += np.where(feat == _FEATURES.index("fracture"), frac, 0)
    att += np.where(feat == _FEATURES.index("wires"), wires, 0)


def _add_findings(att: np.ndarray, x: np.ndarray, y: np.ndarray, a: _Anatomy, q: dict, w: np.ndarray,
                  d_r: np.ndarray, d_l: np.ndarray, patches: np.ndarray, ves: np.ndarray) -> None:
    """Acute findings and nodules, each an anatomical change confined to the lung fields it concerns."""
    g = a.g
    col = lambda k: q[k].astype(_F32)[:, None, None]  # noqa: E731
    side_lung = {-1: _ramp(d_r, w), 1: _ramp(d_l, w)}

    # Effusion: dependent fluid with a meniscus rising laterally; small ones only blunt the angle.
    eff, eside, sev = col("eff"), col("eff_side"), col("eff_sev")
    for side, on in ((-1, eside != 1), (1, eside != 0)):
        u = side * x
        height = sev * (a.ycp[side] - g["ya"])
        tt = np.clip((u - g["mw"]) / (a.tw - g["mw"]), 0, 1)
        level = a.ycp[side] - height * (0.35 + 0.65 * tt * tt)
        fluid = _ramp(y - level, 0.04 + w) * (0.7 + 0.3 * _ramp(y - level - 0.1, 0.2))
        att += eff * on * 1.3 * fluid * side_lung[side]

    # Pneumothorax: the lung retracts towards the hilum, leaving an avascular dark rim (apex first)
    # bounded by a thin visceral pleural line.
    ptx, pside, c = col("ptx"), col("ptx_side"), col("ptx_sev")
    for side in (-1, 1):
        on = ptx * (pside == side)
        if not on.any():
            continue
        cx_, cy_ = side * (g["mw"] + 0.12), a.ycp[side]
        xs, ys = cx_ + (x - cx_) / (1 - c), cy_ + (y - cy_) / (1 - 0.6 * c) ** 1.5
        d_in = a.lung(xs, ys, side) * (1 - c)
        inside = side_lung[side]
        space = inside * (1 - _ramp(d_in, w))
        pleura = np.exp(-((d_in / np.maximum(0.008, 0.5 * w)) ** 2)) * inside
        att += on * (-0.18 * space - 0.09 * ves * space + 0.35 * pleura + 0.12 * _ramp(d_in, w) * c)

    # Consolidation: patchy airspace opacity in one lobe-sized region.
    cons, cside = col("cons"), col("cons_side")
    cy_ = g["ya"] + 0.2 + col("cons_y") * (a.ycp[1] - g["ya"] - 0.25)
    cx_ = cside * (g["mw"] + 0.12 + col("cons_x") * (a.tw - g["mw"] - 0.3))
    r = col("cons_r")
    blob = np.clip(1 - ((x - cx_) ** 2 + (y - cy_) ** 2) / (r * r), 0, 1)
    patch = np.clip(blob * (1.3 + 0.6 * patches), 0, 1)
    on_side = np.where(cside < 0, side_lung[-1], side_lung[1])
    att += cons * col("cons_d") * 0.9 * patch * on_side

    # Nodule or mass: a round soft-edged opacity at a fixed place in the patient's lung.
    ns = g["nod_side"]
    yn = g["ya"] + 0.18 + g["nod_y"] * (a.ycp[1] - g["ya"] - 0.35)
    lat = a.ucx + a.ax * np.sqrt(np.clip(1 - ((np.minimum(yn - a.ycy, 0)) / a.ay) ** 2, 0, 1))
    xn = ns * (g["mw"] + 0.06 + (0.15 + 0.6 * g["nod_x"]) * (lat - g["mw"] - 0.12))
    rn = g["nod_r"] * col("nod_grow")
    dn = rn - np.sqrt((x - xn) ** 2 + (y - yn) ** 2)
    att += g["nod"] * g["nod_c"] * 0.8 * _ramp(dn, w + 0.15 * rn) * np.sqrt(np.clip(dn / rn, 0.2, 1))


# ----------------------------------------------------------------------------------------------- Source


@dataclass
class PhantomSource(Source):
    """The phantom as a lazy Source: renders chunks of `chunk` images on demand and caches the last one."""

    size: int = 64
    seed: int = 0
    per_patient: int = 4
    chunk: int = 256
    _cached: tuple[int, PhantomBatch] | None = field(default=None, init=False, repr=False)

    def _batch(self, i: int) -> tuple[PhantomBatch, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"phantom image {i} out of range 0..{len(self) - 1}")
        k = i // self.chunk
        if self._cached is None or self._cached[0] != k:
            lo = k * self.chunk
            n = min(self.chunk, len(self) - lo)
            self._cached = (k, render_phantom(n, self.size, self.seed, self.per_patient, start=lo))
        return self._cached[1], i - k * self.chunk

    def read_image(self, i: int) -> np.ndarray:
        batch, j = self._batch(i)
        return batch.images[j].copy()

    def read_mask(self, i: int) -> np.ndarray | None:
        batch, j = self._batch(i)
        return batch.masks[j, 0].copy()


def _int_option(spec: DatasetSpec, name: str, default: int, lo: int, hi: int | None = None) -> int:
    text = spec.options.get(name, str(default))
    try:
        value = int(text)
    except ValueError:
        raise SpecError(f"{spec}: option {name}={text!r} must be an integer") from None
    if value < lo or (hi is not None and value > hi):
        raise SpecError(f"{spec}: option {name}={value} must be in {lo}..{hi if hi is not None else 'inf'}")
    return value


def open_phantom(spec: DatasetSpec) -> Source:
    """`phantom?n=2000&size=64&seed=0&per_patient=4` as a lazy Source with lung masks and patient ids."""
    if spec.location:
        raise SpecError(f"{spec}: the phantom takes no location, only options n, size, seed, per_patient")
    check_options(spec, ("n", "size", "seed", "per_patient"))
    n = _int_option(spec, "n", 2000, 1, 10_000_000)
    size = _int_option(spec, "size", 64, MIN_SIZE, MAX_SIZE)
    seed = _int_option(spec, "seed", 0, 0, 2**63 - 1)
    per_patient = _int_option(spec, "per_patient", 4, 1, 1000)
    idx, p, q = _draw(n, seed, per_patient, 0)
    labels = _labels(p, q)
    rows: dict[str, Any] = {
        "source": [f"phantom/{i:06d}" for i in idx],
        "patient_id": [f"P{i:05d}" for i in idx // per_patient],
        "split": "",
        "mask": "phantom",
    }
    rows.update({c: labels[:, k] for k, c in enumerate(PHANTOM_CLASSES)})
    info = {
        "generator": "medsyn.data.phantom",
        "n": n, "size": size, "seed": seed, "per_patient": per_patient,
        "patients": int(len(np.unique(idx // per_patient))),
        "prevalence": {c: round(float(labels[:, k].mean()), 4) for k, c in enumerate(PHANTOM_CLASSES)},
        "mask": "both lung fields (heart excluded), independent of findings",
        "labels": "Cardiomegaly and Nodule are chronic (per patient); Effusion, Pneumothorax, Consolidation per image",
    }  # fmt: skip
    return PhantomSource(
        name="phantom", classes=list(PHANTOM_CLASSES), table=make_table(pd.DataFrame(rows), PHANTOM_CLASSES),
        info=info, size=size, seed=seed, per_patient=per_patient,
    )
