"""Image decoding (PNG/JPEG/TIFF via Pillow, DICOM via pydicom) and aspect-preserving resizing.

Everything returns float32 (C, H, W) in [0, 1]. DICOM metadata is never returned: only pixels leave here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from medsyn.errors import DataError

FITS = ("pad", "crop")


def load_image(path: str | Path, channels: int = 1) -> np.ndarray:
    """Decode an image file to float32 (C, H, W) in [0, 1]; DataError naming the file when it cannot."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    if path.suffix.lower() in (".dcm", ".dicom"):
        return _planes(load_dicom(path), channels)
    try:
        with Image.open(path) as img:
            img.load()  # forces the full decode, so truncated files fail here and not later
            return _pil_to_array(img, channels)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: unreadable or corrupt image ({exc})") from None


def _planes(gray: np.ndarray, channels: int) -> np.ndarray:
    """(H, W) grey -> (C, H, W), repeating the plane for colour models."""
    return np.repeat(gray[None], channels, axis=0) if channels == 3 else gray[None]


def _pil_to_array(img: Image.Image, channels: int) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float32)
        top = 65535.0 if arr.max(initial=0) <= 65535 else float(arr.max())
        return _planes(np.clip(arr / top, 0, 1), channels)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        return _planes((arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr), channels)
    mode = "RGB" if channels == 3 else "L"
    arr = np.asarray(img.convert(mode), dtype=np.float32) / 255.0
    return arr.transpose(2, 0, 1).copy() if channels == 3 else arr[None]


def load_dicom(path: Path) -> np.ndarray:
    """DICOM pixels as float32 (H, W) in [0, 1].

    Modality LUT (rescale) then VOI LUT / window are applied as a viewer would; MONOCHROME1 is inverted so
    bone is always bright; the result is scaled by the window when one is given, else by the stored bit
    depth's full range after the modality LUT (min-max), so any bit depth lands in [0, 1].
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: unreadable or corrupt DICOM file ({exc})") from None
    if "PixelData" not in ds:
        raise DataError(f"{path}: DICOM file has no pixel data")
    try:
        pixels = ds.pixel_array
    except (NotImplementedError, RuntimeError, ValueError) as exc:
        tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = f"{tsyntax.name} ({tsyntax})" if tsyntax is not None else "unknown"
        raise DataError(
            f"{path}: unsupported DICOM transfer syntax {name}; install a decoder plugin "
            f"(e.g. pylibjpeg, python-gdcm) or convert the file ({str(exc).splitlines()[0]})"
        ) from None
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]
    if pixels.ndim == 3:  # colour DICOM (secondary capture): luminance
        pixels = pixels[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    arr = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    has_window = "WindowCenter" in ds or "VOILUTSequence" in ds
    if has_window:
        arr = np.asarray(apply_voi_lut(arr, ds, index=0), dtype=np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        arr = 1.0 - arr
    return arr.astype(np.float32)


def fit_square(arr: np.ndarray, size: int, fit: str = "pad", nearest: bool = False) -> np.ndarray:
    """Resize (C, H, W) to (C, size, size) keeping the aspect ratio.

    `pad`: the long side becomes `size` and the short side is centred on black (0) padding, so nothing
    of the image is lost. `crop`: the short side becomes `size` and the long side is centre-cropped.
    Resampling is antialiased (Pillow's Lanczos on float data) and clipped to [0, 1]; `nearest` (for masks)
    copies values, so label values above 1 are kept.
    """
    if fit not in FITS:
        raise DataError(f"unknown fit {fit!r}; expected one of {', '.join(FITS)}")
    c, h, w = arr.shape
    scale = size / max(h, w) if fit == "pad" else size / min(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.LANCZOS
    out = np.zeros((c, size, size), dtype=np.float32)
    for ch in range(c):
        plane = arr[ch]
        if (nh, nw) != (h, w):
            plane = np.asarray(Image.fromarray(plane.astype(np.float32), mode="F").resize((nw, nh), resample))
        if fit == "pad":
            top, left = (size - nh) // 2, (size - nw) // 2
            out[ch, top : top + nh, left : left + nw] = plane
        else:
            top, left = (nh - size) // 2, (nw - size) // 2
            out[ch] = plane[top : top + size, left : left + size]
    return out if nearest else np.clip(out, 0.0, 1.0)
