"""DICOM: real files decode and normalise; MONOCHROME1 is inverted; windows apply; unsupported or
truncated files give one clear error naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from medsyn.data.images import load_image
from medsyn.errors import DataError

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", bits: int = 12, **extra) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.PatientName, ds.PatientID = "Doe^Jane", "SECRET-123"
    ds.Modality, ds.SOPClassUID, ds.SOPInstanceUID = "DX", meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    for k, v in extra.items():
        setattr(ds, k, v)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_real_dicom_file_is_normalised():
    img = load_image(TEST_FILES / "CT_small.dcm")
    assert img.shape == (1, 128, 128) and img.dtype == np.float32
    assert img.min() == 0.0 and img.max() == 1.0


def test_monochrome1_is_inverted(tmp_path):
    ramp = np.tile(np.linspace(0, 4095, 32), (16, 1))
    m2 = load_image(write_dicom(tmp_path / "m2.dcm", ramp, "MONOCHROME2"))[0]
    m1 = load_image(write_dicom(tmp_path / "m1.dcm", ramp, "MONOCHROME1"))[0]
    np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-6)
    assert m2[0, 0] < m2[0, -1]


def test_window_is_applied(tmp_path):
    ramp = np.tile(np.linspace(0, 4095, 64), (8, 1))
    img = load_image(write_dicom(tmp_path / "w.dcm", ramp, WindowCenter=2048, WindowWidth=1024))[0]
    # outside the window everything saturates; inside it spans [0, 1]
    assert img[0, 0] == 0.0 and img[0, -1] == 1.0
    inside = img[0, (ramp[0] > 1600) & (ramp[0] < 2500)]
    assert inside.min() > 0.05 and inside.max() < 0.95


def test_any_bit_depth_lands_in_unit_range(tmp_path):
    for bits in (8, 10, 16):
        px = np.random.default_rng(bits).integers(0, 2**bits, size=(8, 8))
        img = load_image(write_dicom(tmp_path / f"b{bits}.dcm", px, bits=bits))
        assert img.min() == 0.0 and img.max() == 1.0


def test_unsupported_transfer_syntax_is_one_clear_error():
    path = TEST_FILES / "MR_small_jpeg_ls_lossless.dcm"
    with pytest.raises(DataError, match="unsupported DICOM transfer syntax JPEG-LS") as err:
        load_image(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_truncated_dicom_is_one_clear_error():
    with pytest.raises(DataError, match="MR_truncated.dcm"):
        load_image(TEST_FILES / "MR_truncated.dcm")
