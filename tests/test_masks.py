"""Image + mask sets through the data layer: each source kind with masks, `?masks=only`, sets without labels,
multi-label masks, nearest-neighbour resizing, `data inspect`'s mask lines and the bad-mask errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_cli_data import assert_one_line_error
from typer.testing import CliRunner

from conftest import SHARED_DATA, needs_data, run_cli, write_png
from medsyn.cli import app
from medsyn.data import open_dataset, prepare
from medsyn.data.inspect import inspect_dataset, label_columns_line
from medsyn.data.masks import MAX_LABEL, MaskError, fit_mask, load_mask
from medsyn.errors import DataError, SpecError

W, H = 24, 20  # write_png's default image size


def write_mask(path, arr: np.ndarray, palette: bool = False):
    """Save `arr` as is (Pillow picks the mode from the dtype), or as palette indices."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if palette:
        img = Image.new("P", (arr.shape[1], arr.shape[0]))
        img.putdata(arr.ravel().tolist())
        img.putpalette([v for k in range(256) for v in (k, 255 - k, 0)])
    else:
        img = Image.fromarray(arr)
    img.save(path)
    return path


def lungs(h: int = H, w: int = W, labels: tuple[int, int] = (1, 1)) -> np.ndarray:
    """Two rectangles ('lungs') with the given label values on background 0."""
    m = np.zeros((h, w), np.uint8)
    m[h // 4 : 3 * h // 4, w // 8 : 3 * w // 8] = labels[0]
    m[h // 4 : 3 * h // 4, 5 * w // 8 : 7 * w // 8] = labels[1]
    return m


def csv_set(root, n: int = 8, masked=range(0, 8, 2), labels: bool = True, mask_value: int = 255) -> str:
    """n images of n // 2 patients; the rows in `masked` have a binary mask (0/`mask_value`)."""
    rows = []
    for i in range(n):
        write_png(root / "img" / f"{i}.png", seed=i)
        row = {"path": f"img/{i}.png", "patient_id": f"p{i // 2}", "mask": ""}
        if i in masked:
            row["mask"] = f"masks/{i}.png"
            write_mask(root / row["mask"], lungs() * mask_value)
        if labels:
            row.update({"Effusion": str(i % 2), "Nodule": str(int(i % 4 == 0))})
        rows.append(row)
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return f"csv:{root / 'labels.csv'}"


def prep(spec: str, out, size: int = 16, **kw):
    return prepare(spec, size, out, quiet=True, workers=0, **kw)


@pytest.mark.parametrize(
    "arr,palette,expected",
    [
        (lungs() * 255, False, lungs()),  # 0/255 -> binary 0/1
        (lungs(), False, lungs()),  # a 0/1 PNG is a mask, not a black image
        (lungs(labels=(1, 2)), False, lungs(labels=(1, 2))),  # multi-label values kept
        (lungs(labels=(3, 8)), True, lungs(labels=(3, 8))),  # palette indices are the labels
        (lungs().astype(bool), False, lungs()),  # 1-bit
        (lungs().astype(np.uint16) * 65535, False, lungs()),  # 16-bit binary
        (np.repeat((lungs() * 255)[..., None], 3, axis=2), False, lungs()),  # grey saved as RGB
    ],
)
def test_mask_files_read_as_labels(tmp_path, arr, palette, expected):
    mask = load_mask(write_mask(tmp_path / "m.png", arr, palette))
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize(
    "arr,suffix,message",
    [
        (np.arange(H * W, dtype=np.uint8).reshape(H, W), ".png", "distinct values"),  # smoothed / JPEG-like
        (lungs() * np.arange(1, W + 1, dtype=np.uint8)[None] % (MAX_LABEL + 2), ".png", "labels 0..8"),  # 9 labels
        (np.dstack([lungs() * 255, lungs() * 0, lungs() * 0]), ".png", "colour mask"),
        (lungs().astype(np.float32) * 0.5, ".tif", "not integers"),
    ],
)
def test_masks_that_are_not_labels_are_refused_naming_the_file(tmp_path, arr, suffix, message):
    path = write_mask(tmp_path / f"bad{suffix}", arr)
    with pytest.raises(MaskError, match=f"bad{suffix}.*{message}"):
        load_mask(path)


def test_nearest_neighbour_resize_keeps_label_values():
    labels = np.random.default_rng(0).integers(0, MAX_LABEL + 1, size=(50, 70)).astype(np.uint8)
    for size, fit in ((16, "pad"), (16, "crop"), (128, "pad")):
        out = fit_mask(labels, size, fit)
        assert out.shape == (1, size, size) and out.dtype == np.uint8
        assert set(np.unique(out)) <= set(np.unique(labels))  # no in-between value is invented
    block = np.kron(lungs(10, 12, (2, 5)), np.ones((4, 4), np.uint8))  # 40x48, labels 2 and 5
    assert set(np.unique(fit_mask(block, 12, "pad"))) == {0, 2, 5}


def test_csv_mask_column_prepares_masks_beside_the_images(tmp_path):
    spec = csv_set(tmp_path, masked=(0, 1, 2, 5))
    # an absolute path works too, and a label mask with values 1 and 2 keeps them
    write_mask(tmp_path / "abs" / "7.png", lungs(labels=(1, 2)))
    table = pd.read_csv(tmp_path / "labels.csv", dtype=str, keep_default_na=False)
    table.loc[7, "mask"] = str(tmp_path / "abs" / "7.png")
    table.to_csv(tmp_path / "labels.csv", index=False)
    ds = prep(spec, tmp_path / "c")
    assert ds.classes == ["Effusion", "Nodule"] and len(ds) == 8  # masks=all: every image takes part
    assert ds.masks.shape == (8, 1, 16, 16) and ds.has_masks
    by_source = dict(zip(ds.index["source"].str.rsplit("/", n=1).str[-1], ds.index["has_mask"], strict=True))
    assert by_source == {f"{i}.png": int(i in (0, 1, 2, 5, 7)) for i in range(8)}
    rows = ds.mask_rows()
    assert len(rows) == 5 and set(ds.mask_rows("train")) <= set(rows)
    masks = ds.masks_for(rows)
    assert masks.shape == (5, 1, 16, 16) and ds.mask_labels == [0, 1, 2]
    expected = fit_mask(lungs(), 16, "pad")  # resized like the image: the 24x20 image is padded top and bottom
    row_0 = int(np.flatnonzero(ds.index["source"].str.endswith("/0.png"))[0])
    np.testing.assert_array_equal(ds.masks_for(np.array([row_0]))[0], expected)
    assert ds.masks[ds.index["has_mask"] == 0].max() == 0
    assert ds.meta["masks"]["count"] == 5 and not ds.meta["masks"]["only"]
    with pytest.raises(DataError, match="have no mask"):
        ds.masks_for(ds.rows())
    image, mask, label = ds.torch_dataset("train", masks=True)[0]
    assert image.shape == (1, 16, 16) and mask.shape == (1, 16, 16) and label.shape == (2,)


def test_masks_only_keeps_the_masked_images_and_the_default_keeps_all(tmp_path):
    spec = csv_set(tmp_path, n=12, masked=range(0, 12, 3))  # rows 0, 3, 6, 9: Nodule positive only in 0
    everything = open_dataset(spec)
    assert len(everything) == 12 and everything.info["masks"] == {"with_mask": 4, "without_mask": 8, "only": False}
    only = open_dataset(f"{spec}?masks=only")
    assert len(only) == 4 and (only.table["mask"] != "").all()
    assert only.info["masks"]["without_mask"] == 8
    ds = prep(f"{spec}?masks=only", tmp_path / "c")
    assert len(ds) == 4 and (ds.index["has_mask"] == 1).all() and ds.meta["masks"]["only"]
    assert len(ds.mask_rows()) == 4
    assert prep(spec, tmp_path / "all").meta["content_hash"] != ds.meta["content_hash"]
    # a class whose positives all lack a mask is left out of the masked set, and said so
    rows = pd.read_csv(tmp_path / "labels.csv", dtype=str, keep_default_na=False)
    rows.loc[0, "Nodule"] = "0"
    rows.loc[4, "Nodule"] = "1"
    rows.to_csv(tmp_path / "labels.csv", index=False)
    only = open_dataset(f"{spec}?masks=only")
    assert only.classes == ["Effusion"] and only.info["masks"]["classes_left_out"] == ["Nodule"]
    with pytest.raises(SpecError, match="masks='some'"):
        open_dataset(f"{spec}?masks=some")


def test_a_set_without_labels_is_valid_as_an_image_mask_set(tmp_path):
    spec = csv_set(tmp_path, masked=range(8), labels=False)
    with pytest.raises(DataError, match=r"no label columns.*\?masks=only"):
        open_dataset(spec)
    ds = prep(f"{spec}?masks=only", tmp_path / "c")
    assert ds.classes == [] and ds.labels.shape == (8, 0) and len(ds.mask_rows()) == 8
    assert (ds.index.groupby("patient_id")["split"].nunique() == 1).all()  # split by patient as ever
    assert len(ds.rows("train")) > 0 and len(ds.rows("test")) > 0
    report = inspect_dataset(f"{spec}?masks=only")
    assert report["classes"] == [] and report["unlabelled"] == 0
    assert not [p for p in report["problems"] if "label" in p]
    assert label_columns_line(report["info"]).startswith("labels auto-detected: none (an image+mask set)")


def test_folder_with_a_parallel_mask_folder(tmp_path):
    root, masks = tmp_path / "xray", tmp_path / "xray" / "masks"  # the mask folder may sit inside DIR
    for cls in ("normal", "pneumonia"):
        for i in range(3):
            write_png(root / cls / f"{i}.png", seed=i)
        write_mask(masks / cls / "0.bmp", lungs() * 255)  # matched by relative path, any image suffix
    write_mask(masks / "pneumonia" / "1.tif", lungs(labels=(1, 2)))
    src = open_dataset(f"folder:{root}?mask_dir={masks}")
    assert src.classes == ["normal", "pneumonia"]  # the mask folder is not a class
    has = dict(zip(src.table["source"].str.split("xray/").str[-1], src.table["mask"] != "", strict=True))
    assert has == {f"{c}/{i}.png": (i == 0 or (c, i) == ("pneumonia", 1)) for c in ("normal", "pneumonia")
                   for i in range(3)}  # fmt: skip
    np.testing.assert_array_equal(src[int(np.flatnonzero(src.table["mask"].str.endswith("1.tif"))[0])].mask,
                                  lungs(labels=(1, 2)))  # fmt: skip
    ds = prep(f"folder:{root}?mask_dir={masks}&masks=only", tmp_path / "c")
    assert len(ds) == 3 and ds.mask_labels == [0, 1, 2]
    write_mask(masks / "normal" / "0.png", lungs() * 255)
    with pytest.raises(DataError, match=r"0\.png: more than one mask"):
        open_dataset(f"folder:{root}?mask_dir={masks}")
    with pytest.raises(DataError, match="no mask matches an image"):
        open_dataset(f"folder:{root}?mask_dir={tmp_path / 'xray' / 'normal'}")
    with pytest.raises(SpecError, match="mask_dir=DIR"):
        open_dataset(f"folder:{root}?masks={masks}")


def test_folder_without_class_folders_is_an_image_mask_set(tmp_path):
    for i in range(4):
        write_png(tmp_path / "img" / f"{i}.png", seed=i)
        write_mask(tmp_path / "lungs" / f"{i}.png", lungs() * 255)
    with pytest.raises(DataError, match=r"no class sub-folders.*\?masks=only"):
        open_dataset(f"folder:{tmp_path / 'img'}?mask_dir={tmp_path / 'lungs'}")
    src = open_dataset(f"folder:{tmp_path / 'img'}?mask_dir={tmp_path / 'lungs'}&masks=only")
    assert src.classes == [] and len(src) == 4 and (src.table["mask"] != "").all()


def test_phantom_masks_and_masks_only(tmp_path):
    ds = prep("phantom?n=8", tmp_path / "a")
    assert ds.has_masks and len(ds.mask_rows()) == 8 and ds.mask_labels == [0, 1]
    assert 0.05 < ds.meta["masks"]["foreground"]["mean"] < 0.6  # two lung fields
    only = prep("phantom?n=8&masks=only", tmp_path / "b")  # every phantom image has its lung mask
    np.testing.assert_array_equal(np.asarray(only.masks), np.asarray(ds.masks))
    with pytest.raises(DataError, match="masks=only but no image has a mask.*mask=COLUMN"):
        open_dataset(f"{csv_set(tmp_path / 'csv', masked=())}?masks=only")


def test_rgb_image_with_a_lower_resolution_grey_mask(tmp_path):
    image = np.zeros((30, 40, 3), np.uint8)
    image[10:20, 8:16] = (200, 40, 40)  # a red patch where the mask is
    Image.fromarray(image).save(tmp_path / "a.png")
    write_mask(tmp_path / "a_mask.png", _patch(15, 20, (5, 10, 4, 8)))  # half the size, same aspect
    pd.DataFrame({"path": ["a.png"], "mask": ["a_mask.png"]}).to_csv(tmp_path / "l.csv", index=False)
    ds = prep(f"csv:{tmp_path / 'l.csv'}?channels=3&masks=only", tmp_path / "c", size=20, val=0, test=0)
    img, mask = np.asarray(ds.images[0]), ds.masks_for(np.array([0]))[0, 0]
    assert img.shape == (3, 20, 20) and set(np.unique(mask)) == {0, 1}
    red = (img[0] > 100) & (img[1] < 100)
    assert (red == (mask == 1)).mean() > 0.97  # the half-size mask lands on the patch it marks
    write_mask(tmp_path / "a_mask.png", _patch(20, 20, (5, 10, 4, 8)))  # another aspect ratio
    with pytest.raises(DataError, match=r"a_mask\.png: mask is 20x20 px but its image .*a\.png is 40x30"):
        prep(f"csv:{tmp_path / 'l.csv'}?channels=3&masks=only", tmp_path / "d", size=20, val=0, test=0)


def _patch(h: int, w: int, box: tuple[int, int, int, int]) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[box[0] : box[1], box[2] : box[3]] = 255
    return m


def test_bad_masks_are_clear_errors_like_corrupt_images(tmp_path):
    spec = csv_set(tmp_path, masked=(0, 2, 4))
    with pytest.raises(DataError, match="no column 'lung' \\(from mask=\\)"):
        open_dataset(f"{spec}?mask=lung")
    (tmp_path / "masks" / "2.png").unlink()
    with pytest.raises(DataError, match=r"1 masks in labels\.csv \(column 'mask'\) listed but not found.*2\.png"):
        open_dataset(spec)
    write_mask(tmp_path / "masks" / "2.png", lungs() * 255)
    corrupt = tmp_path / "masks" / "4.png"
    corrupt.write_bytes(corrupt.read_bytes()[:40])
    with pytest.raises(DataError, match=r"4\.png: unreadable or corrupt mask.*--skip-bad"):
        prep(spec, tmp_path / "c")
    ds = prep(spec, tmp_path / "c", skip_bad=True)  # as a corrupt image: skipped with its image, recorded
    assert len(ds) == 7 and ds.meta["skipped"]["count"] == 1 and "4.png" in ds.meta["skipped"]["files"][0]["error"]
    assert len(ds.mask_rows()) == 2
    assert_one_line_error(
        run_cli("data", "prepare", spec, "--size", "16", "--out", str(tmp_path / "d")), "4.png", "corrupt mask"
    )


def test_inspect_counts_masks_labels_and_foreground(tmp_path):
    spec = csv_set(tmp_path, masked=(0, 1, 4, 6))
    write_mask(tmp_path / "masks" / "6.png", np.zeros((H, W), np.uint8))  # empty
    write_mask(tmp_path / "masks" / "4.png", np.arange(H * W, dtype=np.uint8).reshape(H, W))  # not labels
    report = inspect_dataset(spec)
    masks = report["masks"]
    assert (masks["with_mask"], masks["without_mask"], masks["only"], masks["unusable"]) == (4, 4, False, 1)
    assert masks["count"] == 3 and masks["labels"] == [0, 1] and masks["empty"] == 1
    assert masks["foreground"]["min"] == 0 and masks["foreground"]["max"] == pytest.approx(lungs().mean(), 1e-3)
    problems = " | ".join(report["problems"])
    assert "1 masks cannot be used" in problems and "4.png" in problems and "1 masks are empty" in problems
    assert "images cannot be decoded" not in problems  # the images are fine
    runner = CliRunner()
    out = runner.invoke(app, ["data", "inspect", f"{spec}?masks=only", "--quiet"])
    assert out.exit_code == 0, out.output
    assert "masks: 4 images have one and only they take part (masks=only; 4 without left out)" in out.output
    assert "labels 0, 1; foreground" in out.output and "over 3 masks" in out.output
    write_mask(tmp_path / "masks" / "4.png", lungs() * 255)
    out = runner.invoke(app, ["data", "inspect", spec, "--quiet"])
    assert "masks: 4 of 8 images have one; all take part (add ?masks=only" in out.output
    out = runner.invoke(app, ["data", "prepare", f"{spec}?masks=only", "--size", "16", "--out",
                              str(tmp_path / "c"), "--quiet", "--workers", "0"])  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "masks.npy: 4 masks, labels 0, 1" in out.output
    assert json.loads((tmp_path / "c" / "meta.json").read_text())["masks"]["count"] == 4


@needs_data("covid-chestxray")
def test_covid_lung_masks_only(tmp_path):
    root = SHARED_DATA / "covid-chestxray"
    spec = f"ieee8023:{root}?masks=only"
    on_disk = {p.name for p in (root / "masks").iterdir()}
    everything = open_dataset(f"ieee8023:{root}")
    expected = int(everything.table["source"].str.rsplit("/", n=1).str[-1].isin(on_disk).sum())
    ds = prep(spec, tmp_path / "c", size=32)
    assert len(ds) == expected == everything.info["masks"]["with_mask"] > 100
    assert (ds.index["has_mask"] == 1).all() and ds.mask_labels == [0, 1]
    fg = ds.masks_for(ds.rows()).reshape(len(ds), -1).mean(axis=1)
    assert fg.min() > 0.05 and fg.max() < 0.7  # every lung mask covers a plausible part of its square
    assert ds.meta["source_info"]["masks"]["without_mask"] == len(everything) - expected
