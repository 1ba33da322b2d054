"""Procedural PA chest-radiograph phantom: the built-in dataset for the demo and the tests.

Why procedural: it needs no download, no licence and no patient, yet it has what the pipeline must prove it
handles: multi-label findings that change the anatomy the way real ones do, lung masks, and several images
per simulated patient (same anatomy; different positioning, exposure, noise and acute findings), so that
patient-level splits and re-identification attacks can be tested on it.

How: the anatomy is analytic in *patient coordinates* (x to the image right = the patient's left, y down,
the chest spanning about [-1, 1]), drawn once per patient on a canvas slightly larger than the field of
view. Most shapes are sums of functions of x alone and of y alone, so they cost one full-size operation.
Acute findings are added per image, then each image is cut from its patient's canvas by its own affine
warp (shift, rotation, scale), exposed and given noise. Every random number of image `i` comes from
generators keyed by (seed, i) and (seed, patient of i), so any slice of the stream renders on its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from medsyn.data.adapters.common import check_options
from medsyn.data.base import Source, make_table
from medsyn.data.spec import DatasetSpec
from medsyn.errors import SpecError

PHANTOM_CLASSES = ["Cardiomegaly", "Effusion", "Nodule", "Pneumothorax", "Consolidation"]

PHANTOM_VERSION = 1  # bump when the same seed would render different pixels
MIN_SIZE, MAX_SIZE = 16, 512
_CANVAS = 1.2  # the patient canvas spans [-_CANVAS, _CANVAS]: room for shifts, rotations and zoom-out
_SHARPNESS = 0.8  # canvas pixels per output pixel: real 64 px thumbnails are smoother than crisp edges
_PIXEL_BUDGET = 1 << 19  # canvas pixels per vectorised sub-batch: keeps temporaries in cache
_FIELD = 8  # side of the low-resolution noise fields (parenchymal mottle, consolidation patches)
# Distinctive patient features (for re-identification tests), drawn with these cumulative probabilities.
_FEATURES = ("none", "pacemaker", "granuloma", "fracture", "wires", "scoliosis")
_FEATURE_CUM = np.array([0.6, 0.68, 0.78, 0.88, 0.94, 1.0])

# Names of the uniform draws, one column each; new draws go at the end so that old streams stay stable.
_PATIENT_U = [
    "tw", "st", "dens", "ya", "ycp", "dome", "dome_lr", "mw", "ucx", "hx", "hh", "cardio", "ctr", "rib_sp",
    "rib_arch", "rib_phase", "rib_w", "clav_y", "clav_s", "v1", "v2", "v3", "v4", "v5", "v6", "feat", "f1",
    "f2", "f3", "nod", "nod_side", "nod_y", "nod_x", "nod_r", "nod_c", "mass", "breast", "knob", "spine",
    "hil", "bubble", "hr", "sh", "mottle"
]  # fmt: skip
_IMAGE_U = [
    "dx", "dy", "rot", "scale", "aspect", "gamma", "contrast", "bright", "noise", "eff", "eff_side",
    "eff_sev", "ptx", "ptx_side", "ptx_sev", "cons", "cons_side", "cons_y", "cons_x", "cons_r", "cons_d",
    "marker", "marker_x"
]  # fmt: skip


@dataclass
class PhantomBatch:
    """Rendered images with their lung masks, multi-hot labels over PHANTOM_CLASSES and patient ids."""

    images: np.ndarray  # float32 (N, 1, S, S) in [0, 1]
    masks: np.ndarray  # uint8 (N, 1, S, S): both lung fields, heart excluded, independent of findings
    labels: np.ndarray  # float32 (N, K)
    patient_ids: list[str]


# ----------------------------------------------------------------------------------------------- parameters


def _rngs(seed: int, stream: int, ids: np.ndarray) -> list[np.random.Generator]:
    return [np.random.default_rng([seed, stream, int(i)]) for i in ids]


def _lerp(u: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return lo + (hi - lo) * u


def _draw(rngs: list[np.random.Generator], names: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One uniform per name and one low-resolution Gaussian field from each generator, in that order."""
    draws = np.empty((len(rngs), len(names)))
    fields = np.empty((len(rngs), _FIELD, _FIELD), np.float32)
    for j, rng in enumerate(rngs):
        draws[j] = rng.random(len(names))
        fields[j] = rng.standard_normal((_FIELD, _FIELD), dtype=np.float32)
    return {name: draws[:, k] for k, name in enumerate(names)}, fields


def _patient_params(u: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Chronic, patient-specific anatomy: habitus, lung shape, heart size, ribs, features, nodules."""
    p: dict[str, np.ndarray] = {}
    p["tw"] = _lerp(u["tw"], 0.74, 0.86)  # thoracic half-width (inner ribs)
    p["st"] = _lerp(u["st"], 0.1, 0.24)  # soft tissue outside the ribs: body habitus
    p["dens"] = _lerp(u["dens"], 0.92, 1.08) + 0.8 * (p["st"] - 0.13)  # heavier patients attenuate more
    p["ya"] = _lerp(u["ya"], -0.84, -0.72)  # lung apices
    p["ycp"] = _lerp(u["ycp"], 0.42, 0.58)  # costophrenic angles
    p["dome"] = _lerp(u["dome"], 0.13, 0.24)  # dome height above the angles
    p["dome_lr"] = _lerp(u["dome_lr"], 0.0, 0.07)  # the left dome sits lower than the right
    p["mw"] = _lerp(u["mw"], 0.1, 0.14)  # mediastinum half-width
    p["ucx"] = _lerp(u["ucx"], 0.36, 0.46)  # centre of the lateral lung contour, fraction of tw
    p["hx"] = _lerp(u["hx"], -0.02, 0.05)  # heart offset to the patient's left
    p["hh"] = _lerp(u["hh"], 0.3, 0.4)  # heart half-height
    p["hr"] = _lerp(u["hr"], 0.3, 0.4)  # share of the heart width right of its centre line
    p["sh"] = _lerp(u["sh"], 0.12, 0.3)  # shoulders above the apices
    cardio = u["cardio"] < 0.2
    # Cardiothoracic ratio: normal 0.38-0.5, enlarged 0.5-0.66; both crowd the 0.5 threshold (subtle cases).
    p["ctr"] = np.where(cardio, 0.501 + 0.16 * u["ctr"] ** 2, 0.5 - 0.12 * u["ctr"] ** 1.6)
    p["cardio"] = cardio.astype(float)
    p["rib_sp"] = _lerp(u["rib_sp"], 0.13, 0.165)
    p["rib_arch"] = _lerp(u["rib_arch"], 0.45, 0.85)
    p["rib_phase"] = u["rib_phase"]
    p["rib_w"] = _lerp(u["rib_w"], -0.1, 0.3)  # band threshold: broad or thin ribs
    p["clav_y"] = _lerp(u["clav_y"], -0.68, -0.58)
    p["clav_s"] = _lerp(u["clav_s"], 0.35, 0.55)
    for k in range(1, 7):  # vessel-pattern phases: the patient's fingerprint in the lung texture
        p[f"v{k}"] = 2 * np.pi * u[f"v{k}"]
    p["feat"] = np.searchsorted(_FEATURE_CUM, u["feat"], side="right").astype(float)
    for k in (1, 2, 3):
        p[f"f{k}"] = u[f"f{k}"]
    p["scol"] = (p["feat"] == _FEATURES.index("scoliosis")) * _lerp(u["f1"], 0.04, 0.08) * np.sign(u["f2"] - 0.5)
    p["nod"] = (u["nod"] < 0.17).astype(float)
    p["nod_side"] = np.where(u["nod_side"] < 0.5, -1.0, 1.0)
    p["nod_y"], p["nod_x"] = u["nod_y"], u["nod_x"]
    mass = u["mass"] < 0.25
    p["nod_r"] = np.where(mass, _lerp(u["nod_r"], 0.08, 0.14), _lerp(u["nod_r"], 0.035, 0.07))
    p["nod_c"] = _lerp(u["nod_c"], 0.6, 1.4)
    p["breast"] = np.where(u["breast"] < 0.5, _lerp(u["breast"], 0.0, 0.5), 0.0)
    p["knob"] = _lerp(u["knob"], 0.03, 0.07)
    p["spine"] = _lerp(u["spine"], 0.05, 0.07)
    p["hil"] = _lerp(u["hil"], -0.12, 0.0)
    p["bubble"] = np.where(u["bubble"] < 0.7, u["bubble"] / 0.7, 0.0)
    p["mottle"] = _lerp(u["mottle"], 0.06, 0.14)  # parenchymal texture, drawn from the patient's field
    return p


def _image_params(u: dict[str, np.ndarray], p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-image positioning, exposure, noise and acute findings (which may change between follow-ups)."""
    q: dict[str, np.ndarray] = {}
    q["dx"], q["dy"] = _lerp(u["dx"], -0.06, 0.06), _lerp(u["dy"], -0.06, 0.06)
    q["rot"] = np.deg2rad(_lerp(u["rot"], -5.0, 5.0))
    q["scale"] = _lerp(u["scale"], 0.9, 1.06)
    q["aspect"] = _lerp(u["aspect"], -0.03, 0.03)  # depth of inspiration, tube-detector geometry
    q["gamma"] = np.exp(_lerp(u["gamma"], -0.3, 0.3))
    q["contrast"] = _lerp(u["contrast"], 0.78, 0.98)
    q["bright"] = _lerp(u["bright"], -0.06, 0.05)
    q["noise"] = _lerp(u["noise"], 0.002, 0.015)
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
    q["marker"] = (u["marker"] < 0.6).astype(float)
    q["marker_x"] = np.where(u["marker_x"] < 0.5, -0.86, 0.8)
    return q


def _labels(p: dict[str, np.ndarray], q: dict[str, np.ndarray]) -> np.ndarray:
    return np.stack([p["cardio"], q["eff"], p["nod"], q["ptx"], q["cons"]], axis=1).astype(np.float32)


@dataclass
class _Plan:
    """Parameters of images start..start+n-1, without pixels: enough for the label table."""

    idx: np.ndarray  # image numbers
    pids: np.ndarray  # patient number of each image
    patients: dict[str, np.ndarray]  # per distinct patient
    inverse: np.ndarray  # image -> row in `patients`
    images: dict[str, np.ndarray]  # per image
    patient_fields: np.ndarray  # (P, F, F) lung texture of each distinct patient
    image_fields: np.ndarray  # (N, F, F) consolidation patchiness of each image
    rngs: list[np.random.Generator]  # per image, positioned after its draws: the pixel noise comes next

    @property
    def labels(self) -> np.ndarray:
        return _labels({k: v[self.inverse] for k, v in self.patients.items()}, self.images)


def _plan(n: int, seed: int, per_patient: int, start: int) -> _Plan:
    idx = np.arange(start, start + n)
    pids = idx // per_patient
    upids, inverse = np.unique(pids, return_inverse=True)
    u, patient_fields = _draw(_rngs(seed, 0, upids), _PATIENT_U)
    patients = _patient_params(u)
    rngs = _rngs(seed, 1, idx)
    u, image_fields = _draw(rngs, _IMAGE_U)
    images = _image_params(u, {k: v[inverse] for k, v in patients.items()})
    return _Plan(idx, pids, patients, inverse, images, patient_fields, image_fields, rngs)


def render_phantom(n: int, size: int = 64, seed: int = 0, per_patient: int = 4, start: int = 0) -> PhantomBatch:
    """Images start..start+n-1 of the infinite stream for `seed`; image i belongs to patient i // per_patient."""
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"phantom size={size} must be in {MIN_SIZE}..{MAX_SIZE}")
    if min(n, start, seed) < 0 or per_patient < 1:
        raise ValueError(
            f"phantom needs n, start, seed >= 0 and per_patient >= 1, got {n}, {start}, {seed}, {per_patient}"
        )
    plan = _plan(n, seed, per_patient, start)
    images = np.empty((n, 1, size, size), np.float32)
    masks = np.empty((n, 1, size, size), np.uint8)
    step = max(1, _PIXEL_BUDGET // _canvas_size(size) ** 2)
    with torch.no_grad(), _one_thread():
        for lo in range(0, n, step):
            sl = slice(lo, min(n, lo + step))
            img, mask = _render(plan, sl, size)
            images[sl, 0], masks[sl, 0] = img.numpy(), mask.numpy()
    return PhantomBatch(images, masks, plan.labels, [f"P{p:05d}" for p in plan.pids])


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch single-threaded: the sub-batches are small, and intra-op threads cost more than they gain
    (measured 6x slower with 2 threads on a shared 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------- geometry


def _ramp(d: torch.Tensor, w: float | torch.Tensor) -> torch.Tensor:
    """Anti-aliased inside indicator of a signed distance (positive inside), `w` wide."""
    return (d / w + 0.5).clamp_(0.0, 1.0)


def _bump(z: torch.Tensor) -> torch.Tensor:
    """Smooth compact bump: 1 at z=0, 0 for |z| >= 1 (cheaper than a Gaussian)."""
    return (1 - z * z).clamp_(min=0.0).square_()


def _canvas_size(size: int) -> int:
    """Canvas side: a little coarser than the output, so the warp blurs like a real detector and is cheaper."""
    return int(np.ceil(_CANVAS * size * _SHARPNESS))


class _Columns(dict):
    """Parameter columns as (M, 1, 1) float32 tensors, converted on first use (most renders need few)."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        super().__init__()
        self.arrays = arrays

    def __missing__(self, key: str) -> torch.Tensor:
        value = self[key] = torch.as_tensor(self.arrays[key], dtype=torch.float32).view(-1, 1, 1)
        return value


class _Anatomy:
    """Per-patient geometry as (M, 1, 1) tensors; methods take x (.., 1, C) and y (.., C, 1) grids."""

    def __init__(self, p: dict[str, np.ndarray]):
        self.p = p
        self.g = g = _Columns(p)
        self.tw = g["tw"]
        self.ycp = {-1: g["ycp"] - 0.02, 1: g["ycp"]}
        self.ydome = {-1: self.ycp[-1] - g["dome"], 1: self.ycp[1] - g["dome"] + g["dome_lr"]}
        self.udome = 0.45 * self.tw
        self.ucx = g["ucx"] * self.tw
        self.ax = self.tw - self.ucx
        self.ycy = 0.5 * (g["ya"] + g["ycp"]) + 0.15  # the lateral contour is widest low in the chest
        self.ay = self.ycy - g["ya"]
        width = 2 * g["ctr"] * self.tw  # CTR = heart width / thoracic width
        self.hr, self.hl = width * g["hr"], width * (1 - g["hr"])
        self.hy = self.ydome[1] - 0.02  # widest at the left dome: the cardiophrenic angle
        self.hh = g["hh"]

    def take(self, rows: np.ndarray) -> _Anatomy:
        return _Anatomy({k: v[rows] for k, v in self.p.items()})

    def spine_x(self, y: torch.Tensor) -> torch.Tensor:
        return self.g["scol"] * (1 - (y / 0.9) ** 2)

    def heart_out(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Signed distance-like value, positive outside the heart; its right border is the flatter one."""
        prof = (1 - ((y - self.hy) / self.hh) ** 2).clamp(min=0).sqrt()
        xc = self.g["hx"] + 0.25 * (y - self.hy)  # long axis tilted down to the patient's left
        out = torch.maximum(x - (xc + self.hl * prof), (xc - self.hr * prof) - x)
        return torch.maximum(out, (y - self.hy).abs() - self.hh)

    def diaphragm(self, u: torch.Tensor, side: int) -> torch.Tensor:
        k = (self.ycp[side] - self.ydome[side]) / (self.tw - self.udome) ** 2
        return self.ydome[side] + k * (u - self.udome) ** 2

    def lung(self, x: torch.Tensor, y: torch.Tensor, side: int, heart: torch.Tensor | None = None) -> torch.Tensor:
        """Signed distance-like value of one lung field (side -1 = the patient's right), positive inside."""
        u = side * x
        yt = y - self.ycy
        fy = (-yt.clamp(max=0) / self.ay) ** 1.5 + (yt.clamp(min=0) / 1.5) ** 2  # tapered apex
        d = (1 - (((u - self.ucx) / self.ax) ** 2 + fy).sqrt()) * self.ax
        medial = side * self.spine_x(y) + self.g["mw"] + 0.04 * _ramp(-0.35 - y, 0.3)  # wider at the top
        if side == 1:  # aortic knob on the patient's left
            medial = medial + self.g["knob"] * _bump((y + 0.33) / 0.1)
        d = torch.minimum(d, u - medial)
        d = torch.minimum(d, self.heart_out(x, y) if heart is None else heart)
        return torch.minimum(d, self.diaphragm(u, side) - y)


def _grid(c: int) -> tuple[torch.Tensor, torch.Tensor]:
    t = ((torch.arange(c, dtype=torch.float32) + 0.5) * (2 / c) - 1) * _CANVAS
    return t.view(1, 1, c), t.view(1, c, 1)


def _upsample(fields: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear upsampling of (N, F, F) fields to (N, S, S) by two small matrix products."""
    f = fields.shape[-1]
    pos = ((torch.arange(size) + 0.5) * f / size - 0.5).clamp(0, f - 1)
    lo = pos.floor().long().clamp(max=f - 2)
    frac = pos - lo
    m = torch.zeros(size, f)
    m[torch.arange(size), lo] = 1 - frac
    m[torch.arange(size), lo + 1] = frac
    return m @ fields @ m.T


# ----------------------------------------------------------------------------------------------- rendering


def _patient_canvas(a: _Anatomy, c: int, texture: torch.Tensor) -> dict[str, torch.Tensor]:
    """Attenuation of each patient's chest without acute findings, plus the fields findings (and tests) need.

    `texture` (M, C, C) is the patient's smooth random field: parenchymal mottle.
    """
    g = a.g
    x, y = _grid(c)
    w = max(0.012, 2 * _CANVAS / c)  # about one pixel: anti-aliased edges at every size
    ax_ = x.abs()

    # Body: neck, shoulders and chest wall; soft tissue attenuation follows the body's thickness.
    ysh = g["ya"] - g["sh"]
    bw = 0.28 + (a.tw + g["st"] - 0.28) * _ramp(y - ysh, 0.25) + 0.3 * _bump((y - ysh - 0.12) / 0.35)
    body = (1 - x * x / (bw * bw)).clamp_(min=0)
    inside_body = body.sign()
    att = g["dens"] * 2.2 * body.sqrt_()

    # Lungs: air removes most of the attenuation; the bases and apices overlap more tissue.
    heart = a.heart_out(x, y)
    d_r, d_l = a.lung(x, y, -1, heart), a.lung(x, y, 1, heart)
    lung_r, lung_l = _ramp(d_r, w), _ramp(d_l, w)
    lung = lung_r + lung_l
    dist = torch.maximum(d_r, d_l)
    inner = 0.65 + 0.35 * (dist / 0.12).clamp(0, 1)  # the chest wall is curved: soft lateral edges
    ydome = 0.5 * (a.ydome[-1] + a.ydome[1])
    zone = (1 - 0.3 * _ramp(y - ydome + 0.02, 0.2)) * (1 - 0.25 * _ramp(g["ya"] + 0.12 - y, 0.12))
    att -= lung * inner * (g["dens"] * 1.45 * zone)

    # Pulmonary vessels radiate from the hila: a patient-specific angular pattern fading to the periphery.
    dxh, dyh = ax_ - (g["mw"] + 0.07), y - g["hil"]
    rho = (dxh * dxh + dyh * dyh).sqrt_()
    th = torch.atan2(dyh.expand_as(rho), dxh.expand_as(rho))
    left = (x > 0).float()
    ves = torch.cos(17 * th + 9 * rho + (g["v1"] + left * g["v4"]))
    ves += torch.cos(29 * th - 14 * rho + (g["v2"] + left * g["v5"]))
    ves += 0.6 * torch.cos(11 * th + 21 * rho + (g["v3"] + left * g["v6"]))
    ves = ves.clamp_(min=0) * torch.exp(-rho / 0.3) + 1.5 * _bump(rho / 0.14)
    att += lung * (0.12 * ves + g["mottle"] * texture)

    # Heart and great vessels are denser than the soft tissue around them; the trachea is an air column.
    att += 0.25 * _ramp(-heart, 2 * w) * _ramp(a.hy - y, 0.15)  # below the domes it merges with the liver
    sx = x - a.spine_x(y)
    att -= 0.35 * _bump(sx / 0.045) * (_ramp(-0.2 - y, 0.15) * _ramp(y + 1.0, 0.1))

    # Gastric bubble under the left dome; breast shadows over the lower lateral fields.
    bub = ((x - 0.33) / 0.1) ** 2 + ((y - a.ydome[1] - 0.1) / 0.055) ** 2
    att -= (0.5 * g["bubble"]) * (1 - bub).clamp_(min=0).sqrt_()
    br = ((ax_ - 0.5) / 0.38) ** 2 + ((y - a.ycp[1] - 0.05) / 0.35) ** 2
    att += g["breast"] * (1 - br).clamp_(min=0).sqrt_()

    # Bones: spine with vertebral bodies, posterior and anterior ribs, clavicles.
    vert = 0.8 + 0.2 * torch.cos(2 * np.pi * y / (g["rib_sp"] * 1.05))
    att += 0.45 * _ramp(g["spine"] - sx.abs(), w) * vert
    arch = g["rib_arch"] * ax_ * ax_ - 0.15 * ax_
    pos = torch.cos(2 * np.pi * ((y - arch - g["ya"]) / g["rib_sp"] + g["rib_phase"]))
    ribs = ((pos - g["rib_w"]) / (0.6 - 0.5 * g["rib_w"])).clamp_(0, 1)
    ant = torch.cos(2 * np.pi * ((y + 0.5 * ax_ - g["ya"]) / (1.15 * g["rib_sp"]) + g["rib_phase"]))
    ribs += ((ant - 0.3) * 2).clamp_(0, 1) * (0.3 * _ramp(ax_ - 0.25, 0.1))
    region = _ramp(ax_ - g["spine"] + 0.01, 0.03) * _ramp(a.tw + 0.06 - ax_, 0.04)
    region = region * (_ramp(y - g["ya"] + 0.12, 0.05) * _ramp(a.ycp[1] - y, 0.15))
    att += 0.13 * ribs * region
    clav = y - (g["clav_y"] - g["clav_s"] * (ax_ - 0.08) + 0.3 * (ax_ - 0.08) ** 2)
    att += 0.5 * _bump(clav / 0.04) * (_ramp(ax_ - 0.06, 0.03) * _ramp(0.72 - ax_, 0.06))

    _add_features(att, x, y, a, w)
    return {"att": att, "dist": dist, "body": inside_body, "lung_r": lung_r, "lung_l": lung_l, "ves": ves}


def _subset(a: _Anatomy, on: np.ndarray) -> tuple[np.ndarray, _Anatomy] | None:
    rows = np.flatnonzero(on)
    return (rows, a.take(rows)) if len(rows) else None


def _add_features(att: torch.Tensor, x: torch.Tensor, y: torch.Tensor, a: _Anatomy, w: float) -> None:
    """Distinctive patient features, and nodules (chronic: the same place in every image of a patient)."""
    feat = a.p["feat"]
    if sub := _subset(a, feat == _FEATURES.index("pacemaker")):
        rows, s = sub
        g = s.g
        # Generator box below the left clavicle and a lead curving down to the right ventricle.
        px, py = 0.4 + 0.15 * g["f1"], -0.5 + 0.08 * g["f2"]
        box = torch.minimum(0.07 - (x - px).abs(), 0.045 - (y - py).abs())
        t = ((px - x) / (px - g["hx"] + 0.05)).clamp(0, 1)
        lead = y - (py + (s.hy - 0.05 - py) * t**1.6)
        inside = ((t > 0) & (t < 1)).float()
        att[rows] += 3.0 * _ramp(box, w) + 1.0 * _bump(lead / max(0.015, w)) * inside
    if sub := _subset(a, feat == _FEATURES.index("granuloma")):
        # Calcified granuloma: a tiny, very dense dot in a lung. Not a Nodule, though it looks like one.
        rows, s = sub
        g = s.g
        gx = torch.where(g["f3"] < 0.5, -1.0, 1.0) * (g["mw"] + 0.15 + 0.4 * g["f1"] * (s.tw - g["mw"]))
        gy = g["ya"] + 0.25 + 0.5 * g["f2"] * (s.ycp[1] - g["ya"])
        r = max(0.018, w)
        att[rows] += 1.2 * _bump((x - gx) / r) * _bump((y - gy) / r)
    if sub := _subset(a, feat == _FEATURES.index("fracture")):
        # Healed rib fracture: a callus on a lateral rib.
        rows, s = sub
        g = s.g
        fx = torch.where(g["f3"] < 0.5, -1.0, 1.0) * (s.tw * (0.6 + 0.3 * g["f1"]))
        fy = g["ya"] + 0.25 + 0.6 * g["f2"] * (s.ycp[1] - g["ya"])
        att[rows] += 0.6 * _bump((x - fx) / 0.05) * _bump((y - fy) / 0.03)
    if sub := _subset(a, feat == _FEATURES.index("wires")):
        # Sternotomy wires: a column of small dense loops on the midline.
        rows, s = sub
        loops = torch.cos(2 * np.pi * (y + 0.05 * s.g["f1"]) / 0.11) ** 8
        att[rows] += 1.5 * loops * _bump(x / max(0.025, w)) * (_ramp(y + 0.5, 0.02) * _ramp(0.1 - y, 0.02))
    if sub := _subset(a, a.p["nod"] > 0):
        # Nodule or mass: a round soft-edged opacity at a fixed place in the patient's lung.
        rows, s = sub
        g = s.g
        yn = g["ya"] + 0.18 + g["nod_y"] * (s.ycp[1] - g["ya"] - 0.35)
        lat = s.ucx + s.ax * (1 - (((yn - s.ycy).clamp(max=0)) / s.ay) ** 2).clamp(min=0).sqrt()
        xn = g["nod_side"] * (g["mw"] + 0.06 + (0.15 + 0.6 * g["nod_x"]) * (lat - g["mw"] - 0.12))
        rn = g["nod_r"]
        dn = rn - ((x - xn) ** 2 + (y - yn) ** 2).sqrt()
        att[rows] += (0.8 * g["nod_c"]) * _ramp(dn, w + 0.15 * rn) * (dn / rn).clamp(0.2, 1).sqrt()


def _add_findings(
    att: torch.Tensor,
    canvas: dict[str, torch.Tensor],
    inv: np.ndarray,
    a: _Anatomy,
    q: dict[str, np.ndarray],
    fields: np.ndarray,
) -> None:
    """Acute findings, each an anatomical change confined to the lung field it concerns.

    `canvas` holds per-patient fields, `inv` the patient row of each image and `a` the per-image anatomy.
    """
    pc = lambda key, rows: canvas[key][inv[rows]]  # noqa: E731
    c = att.shape[-1]
    x, y = _grid(c)
    w = max(0.012, 2 * _CANVAS / c)
    T = lambda k, rows: torch.as_tensor(q[k][rows], dtype=torch.float32).view(-1, 1, 1)  # noqa: E731

    # Effusion: dependent fluid with a meniscus rising laterally; small ones only blunt the angle.
    for side, lung_key, other_only in ((-1, "lung_r", 1), (1, "lung_l", 0)):  # eff_side: 0 right, 1 left, 2 both
        if not (sub := _subset(a, (q["eff"] > 0) & (q["eff_side"] != other_only))):
            continue
        rows, s = sub
        g = s.g
        u = side * x
        height = T("eff_sev", rows) * (s.ycp[side] - g["ya"])
        tt = ((u - g["mw"]) / (s.tw - g["mw"])).clamp(0, 1)
        level = s.ycp[side] - height * (0.35 + 0.65 * tt * tt)
        fluid = _ramp(y - level, 0.04 + w) * (0.75 + 0.25 * _ramp(y - level - 0.1, 0.2))
        att[rows] += 1.3 * fluid * pc(lung_key, rows)

    # Pneumothorax: the lung retracts towards the hilum, apex first, leaving an avascular dark rim
    # bounded by a thin visceral pleural line; the collapsed lung is a little denser.
    for side, lung_key in ((-1, "lung_r"), (1, "lung_l")):
        if not (sub := _subset(a, (q["ptx"] > 0) & (q["ptx_side"] == side))):
            continue
        rows, s = sub
        g = s.g
        sev = T("ptx_sev", rows)
        cx, cy = side * (g["mw"] + 0.12), s.ycp[side]
        d_in = s.lung(cx + (x - cx) / (1 - sev), cy + (y - cy) / (1 - 0.6 * sev) ** 1.5, side) * (1 - sev)
        inside = pc(lung_key, rows)
        kept = _ramp(d_in, w)
        space = inside * (1 - kept)
        pleura = _bump(d_in / max(0.01, 0.6 * w)) * inside
        att[rows] += -0.2 * space - 0.09 * pc("ves", rows) * space + 0.3 * pleura + 0.12 * sev * kept

    # Consolidation: patchy airspace opacity in a lobe-sized region of one lung.
    if sub := _subset(a, q["cons"] > 0):
        rows, s = sub
        g = s.g
        side = T("cons_side", rows)
        cy = g["ya"] + 0.2 + T("cons_y", rows) * (s.ycp[1] - g["ya"] - 0.25)
        cx = side * (g["mw"] + 0.12 + T("cons_x", rows) * (s.tw - g["mw"] - 0.3))
        r = T("cons_r", rows)
        blob = (1 - ((x - cx) ** 2 + (y - cy) ** 2) / (r * r)).clamp_(min=0)
        patches = _upsample(torch.from_numpy(fields[rows]), c)
        patch = (blob * blob * (1.6 + 0.9 * patches)).clamp_(0, 1)  # ill-defined and patchy
        lung_side = torch.where(side < 0, pc("lung_r", rows), pc("lung_l", rows))
        att[rows] += (0.9 * T("cons_d", rows)) * patch * lung_side


def _render(plan: _Plan, sl: slice, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images sl of the plan: (N, S, S) float32 images and uint8 lung masks."""
    q = {k: v[sl] for k, v in plan.images.items()}
    n, c = len(plan.idx[sl]), _canvas_size(size)
    noise = torch.empty(n, size, size)
    gen = torch.Generator()
    for j, rng in enumerate(plan.rngs[sl]):
        gen.manual_seed(int(rng.integers(2**62)))  # torch draws the pixel noise: twice as fast
        torch.randn(size, size, generator=gen, out=noise[j])

    # Patients of this slice: draw each one's canvas once, then give every image its own copy.
    upat, inv = np.unique(plan.inverse[sl], return_inverse=True)
    anatomy = _Anatomy({k: v[upat] for k, v in plan.patients.items()})
    canvas = _patient_canvas(anatomy, c, _upsample(torch.from_numpy(plan.patient_fields[upat]), c))
    inv_t = torch.from_numpy(inv)
    att, dist = canvas["att"].index_select(0, inv_t), canvas["dist"].index_select(0, inv_t)
    _add_findings(att, canvas, inv, anatomy.take(inv), q, plan.image_fields[sl])

    # Positioning: output pixel o shows patient point M^-1 (o - shift), M = rotation * scale * aspect.
    cos, sin = np.cos(q["rot"]), np.sin(q["rot"])
    sx, sy = q["scale"] * (1 - q["aspect"]), q["scale"] * (1 + q["aspect"])
    inv_m = np.stack([np.stack([cos / sx, sin / sx], 1), np.stack([-sin / sy, cos / sy], 1)], 1)  # (N, 2, 2)
    shift = np.stack([q["dx"], q["dy"]], 1)[:, :, None]
    theta = np.concatenate([inv_m, -inv_m @ shift], 2) / _CANVAS
    grid = F.affine_grid(torch.as_tensor(theta, dtype=torch.float32), [n, 1, size, size], align_corners=False)
    warped = F.grid_sample(torch.stack([att, dist], 1), grid, align_corners=False, padding_mode="border")
    att, dist = warped.unbind(1)

    # Detector response, exposure and quantum noise; a side marker in a top corner of some images.
    col = lambda k: torch.as_tensor(q[k], dtype=torch.float32).view(-1, 1, 1)  # noqa: E731
    img = 1 - torch.exp(-att.clamp(min=0))
    img = (col("bright") + 0.03 + col("contrast") * img).clamp_(1e-4, 1).pow_(col("gamma"))
    img += col("noise") * (img + 0.05).sqrt() * noise
    t = (torch.arange(size, dtype=torch.float32) + 0.5) * (2 / size) - 1
    marker = _ramp(0.025 - (t.view(1, 1, -1) - col("marker_x")).abs(), 1 / size)
    marker = marker * _ramp(0.035 - (t.view(1, -1, 1) + 0.86).abs(), 1 / size) * col("marker")
    img = torch.maximum(img, 0.92 * marker).clamp_(0, 1)
    return img, (dist > 0).to(torch.uint8)


# ----------------------------------------------------------------------------------------------- Source


@dataclass
class PhantomSource(Source):
    """The phantom as a lazy Source: renders chunks of `chunk` images on demand and caches the last one."""

    size: int = 64
    seed: int = 0
    per_patient: int = 4
    chunk: int = 64
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
    n = _int_option(spec, "n", 2000, 1, 1_000_000)
    size = _int_option(spec, "size", 64, MIN_SIZE, MAX_SIZE)
    seed = _int_option(spec, "seed", 0, 0, 2**63 - 1)
    per_patient = _int_option(spec, "per_patient", 4, 1, 1000)
    plan = _plan(n, seed, per_patient, 0)
    labels = plan.labels
    rows: dict[str, Any] = {
        "source": [f"phantom/{i:06d}" for i in plan.idx],
        "patient_id": [f"P{i:05d}" for i in plan.pids],
        "split": "",
        "mask": "phantom",
    }
    rows.update({c: labels[:, k] for k, c in enumerate(PHANTOM_CLASSES)})
    info = {
        "generator": "medsyn.data.phantom", "version": PHANTOM_VERSION,
        "n": n, "size": size, "seed": seed, "per_patient": per_patient,
        "patients": len(plan.patients["tw"]),
        "prevalence": {c: round(float(labels[:, k].mean()), 4) for k, c in enumerate(PHANTOM_CLASSES)},
        "mask": "both lung fields (heart excluded), independent of findings",
        "labels": "Cardiomegaly and Nodule are chronic (per patient); Effusion, Pneumothorax, Consolidation per image",
    }  # fmt: skip
    return PhantomSource(
        name="phantom",
        classes=list(PHANTOM_CLASSES),
        table=make_table(pd.DataFrame(rows), PHANTOM_CLASSES),
        info=info,
        size=size,
        seed=seed,
        per_patient=per_patient,
    )
