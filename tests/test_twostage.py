"""Two-stage mask-then-image generation (`--model twostage`): the model, both stages trained by one command or
one at a time, exact resume of each, the time split, generated image + mask pairs, `generate --masks`, sets
without masks and sets without labels."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image
from test_cli_data import assert_one_line_error
from test_distributed import WORLD, _free_port, _worker
from test_masks import csv_set, lungs
from train_helpers import one_second_per_step, tiny, whole_and_resumed
from typer.testing import CliRunner

from conftest import run_cli
from medsyn.cli import app
from medsyn.data.cache import prepare
from medsyn.data.prepared import PreparedDataset
from medsyn.errors import ConfigError, DataError
from medsyn.generate import core as generate_core
from medsyn.generate import export, generate
from medsyn.generate.privacy_filter import Screen
from medsyn.models import GANConfig, load_generator, save_generator
from medsyn.models.registry import build_generator
from medsyn.models.twostage import TwoStageGenerator, decode_masks, encode_masks
from medsyn.train import TrainConfig, train
from medsyn.train.checkpoint import load_checkpoint

K = 5  # the phantom's classes


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare("phantom?n=64&seed=0", 16, tmp_path_factory.mktemp("cache") / "phantom16", quiet=True).path


@pytest.fixture(scope="module")
def run(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both stages, 4 steps each, with sample grids."""
    return train(tiny(cache, model="twostage", sample_every=2), tmp_path_factory.mktemp("runs") / "both", quiet=True)


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return [{k: v for k, v in r.items() if k != "img_per_s"} for r in csv.DictReader(fh)]


def png(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


def test_masks_encode_decode_and_the_generator_round_trips(tmp_path: Path) -> None:
    masks = torch.from_numpy(lungs(16, 16, labels=(1, 2))[None, None]).repeat(2, 1, 1, 1)
    enc = encode_masks(masks, [0, 1, 2])
    assert enc.shape == (2, 2, 16, 16) and set(enc.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(decode_masks(enc, [0, 1, 2]), masks)
    torch.manual_seed(0)
    G = build_generator(GANConfig("twostage", 16, 1, K, width=8, extra={"mask_labels": [0, 1, 2], "style_dim": 8}))
    assert isinstance(G, TwoStageGenerator) and G.opts["unet_levels"] == 3 and G.opts["d_layers"] == 2
    assert not G.masks.conditional  # Stage I draws masks whatever the labels unless mask_conditional
    G.eval()
    z, y = torch.randn(3, G.z_dim), torch.eye(K)[:3]
    images, drawn = G.draw(z, y)
    assert images.shape == (3, 1, 16, 16) and images.abs().max() <= 1 and drawn.dtype == torch.uint8
    assert set(drawn.unique().tolist()) <= {0, 1, 2} and torch.equal(images, G(z, y))
    assert G.z_dim == 100 + 8  # Stage I's noise, then the painter's style code
    one = masks[:1].repeat(3, 1, 1, 1)
    painted = G.paint(one, y)
    assert not torch.allclose(painted[0], painted[1])  # the label reaches the painting
    styled = G.paint(one, y[:1].repeat(3, 1), z)
    assert not torch.allclose(styled[0], styled[1])  # and so does the style code (same mask, same label)
    assert torch.equal(G.paint(one, y, torch.zeros_like(z)), painted)  # no code: the prior's centre
    save_generator(G, tmp_path)
    assert torch.equal(load_generator(tmp_path).paint(one, y, z), G.paint(one, y, z))
    extra = {"mask_labels": [0, 1, 2], "mask_conditional": True}
    pix2pix = build_generator(GANConfig("twostage", 16, 1, K, width=8, extra=extra)).eval()  # the default painter
    assert pix2pix.z_dim == 100 and torch.equal(pix2pix.paint(one, y, z[:, :100]), pix2pix.paint(one, y))
    assert pix2pix.masks.conditional


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"unet_levels": 5}, "unet_levels 5"),
        ({"d_layers": 3}, "at most 2"),
        ({"mask_labels": [1, 2]}, "mask_labels"),
        ({"mask_labels": [0]}, "no foreground label"),
        ({"l1_weight": -1}, "l1_weight"),
        ({"mask_share": 1.0}, "mask_share"),
        ({"mask_steps": 0}, "mask_steps"),
        ({"style_dim": -1}, "style_dim must be an integer >= 0"),
        ({"diversity_cap": -0.1}, "diversity_cap"),
        ({"d_norm": "spectral"}, "d_norm must be one of \\['batch', 'group'\\]"),
        ({"mbstd": -1}, "mbstd must be an integer >= 0"),
        ({"mask_conditional": "yes"}, "mask_conditional must be true or false"),
    ],
)
def test_impossible_model_options_are_one_line_errors(extra: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        build_generator(GANConfig("twostage", 16, 1, K, width=8, extra=extra))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"model": "twostage", "loss": "wgan-gp"}, "twostage cannot use loss wgan-gp"),
        ({"model": "twostage", "augment": "ada"}, "twostage cannot use augment ada"),
        ({"model": "cgan", "stage": "masks"}, "applies to --model twostage"),
        ({"model": "twostage", "stage": "all"}, "stage must be one of"),
    ],
)
def test_impossible_train_settings_are_one_line_errors(kw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        TrainConfig(data="phantom", **kw).validate()
    assert "\n" not in str(err.value)


def test_trains_both_stages_generates_pairs_and_exports(tmp_path: Path, run: Path) -> None:
    for name in ("masks/checkpoints/last.pt", "masks/samples/step-0000004.png", "masks/losses.png",
                 "images/checkpoints/last.pt", "images/samples/step-0000004.png", "generator.safetensors"):  # fmt: skip
        assert (run / name).is_file(), name
    assert set(rows(run / "masks/losses.csv")[0]) >= {"d_loss", "g_loss"}
    assert set(rows(run / "images/losses.csv")[0]) >= {"d_loss", "g_loss", "l1"}
    grid = Image.open(run / "images/samples/step-0000004.png")
    assert grid.height == 4 * 3 * 64  # 4 groups x (mask, painted, real) rows, 16 px tiles enlarged to 64
    prog = json.loads((run / "run.json").read_text())["progress"]
    assert [(s["stage"], s["steps"]) for s in prog["stages"]] == [("masks", 4), ("images", 4)]
    assert prog["train_seconds"] == pytest.approx(sum(s["train_seconds"] for s in prog["stages"]), abs=0.01)
    ck = load_checkpoint(run / "images/checkpoints/last.pt")
    assert ck["model"]["extra"]["mask_labels"] == [0, 1] and "D" in ck
    G = load_generator(run)  # the joined generator: both stages' EMA weights
    assert isinstance(G, TwoStageGenerator) and G.trained.tolist() == [1.0, 1.0]
    m_ck = load_checkpoint(run / "masks/checkpoints/last.pt")
    assert all(torch.equal(G.masks.state_dict()[k], v) for k, v in m_ck["G_ema"].items())

    a = generate(run, 6, tmp_path / "a", quiet=True)
    table = pd.read_csv(a / "labels.csv")
    assert list(table.columns[:2]) == ["path", "patient_id"] and table.columns[-1] == "mask"
    assert table["mask"].tolist() == [f"masks/images/{i:07d}.png" for i in range(6)]
    for path, mask in zip(table["path"], table["mask"], strict=True):
        m = png(a / mask)
        assert png(a / path).shape == m.shape == (16, 16) and set(np.unique(m).tolist()) <= {0, 1}
    manifest = json.loads((a / "manifest.json").read_text())
    assert manifest["masks"] == {"dir": "masks", "labels": [0, 1], "source": "Stage I"}
    assert manifest["training"]["stages"][1]["stage"] == "images"
    back = prepare(f"csv:{a / 'labels.csv'}?masks=only", 16, tmp_path / "back", quiet=True)  # reads as a mask set
    assert len(back.mask_rows()) == 6
    b = generate(export(run, tmp_path / "exported"), 6, tmp_path / "b", quiet=True)
    assert sorted(p.relative_to(b) for p in b.rglob("*.png")) == sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert all(p.read_bytes() == (b / p.relative_to(a)).read_bytes() for p in a.rglob("*.png"))


def test_balance_and_privacy_filter_redraw_masks_with_their_images(
    tmp_path: Path, run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bal = generate(run, None, tmp_path / "bal", balance=True, quiet=True)
    n = len(pd.read_csv(bal / "labels.csv"))
    assert n > 0 and len(list((bal / "masks").rglob("*.png"))) == n
    plain = generate(run, 8, tmp_path / "plain", quiet=True)
    check, calls = Screen.check, {"n": 0}

    def reject_even_first(self: Screen, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """The filter rejects the even candidates of the first round, as if they were near-copies."""
        check(self, images, labels)
        calls["n"] += 1
        return (np.arange(len(images)) % 2 == 0) & (calls["n"] == 1)

    draw, pairs = generate_core._draw, []

    def recording(*args: object, **kwargs: object) -> tuple[np.ndarray, np.ndarray | None]:
        """Every (image, mask) pair the generator painted, first round and re-draws."""
        images, masks = draw(*args, **kwargs)
        pairs.extend((im.tobytes(), m.tobytes()) for im, m in zip(images, masks, strict=True))
        return images, masks

    monkeypatch.setattr(Screen, "check", reject_even_first)
    monkeypatch.setattr(generate_core, "_draw", recording)
    safe = generate(run, 8, tmp_path / "safe", quiet=True, privacy_filter=True)
    painted = dict(pairs)
    for i in range(8):
        image, mask = f"images/{i:07d}.png", f"masks/images/{i:07d}.png"
        assert ((safe / image).read_bytes() != (plain / image).read_bytes()) == (i % 2 == 0)  # re-drawn or kept
        assert ((safe / mask).read_bytes() == (plain / mask).read_bytes()) or i % 2 == 0
        assert painted[png(safe / image)[None].tobytes()] == png(safe / mask)[None].tobytes()  # its own mask


def test_generate_masks_paints_user_masks(tmp_path: Path, cache: Path, run: Path) -> None:
    user = tmp_path / "user"
    (user / "sub").mkdir(parents=True)
    Image.fromarray(lungs(40, 30) * 255).save(user / "a.png")  # 0/255, another size and aspect ratio
    Image.fromarray(lungs(16, 16)).save(user / "sub" / "b.bmp")  # 0/1
    out = generate(run, None, tmp_path / "out", masks=user, quiet=True)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["images"] == 2 and manifest["masks"]["source"] == "supplied (--masks)"
    assert "labels drawn from the training label distribution" in manifest["notes"][0]
    written = png(out / "masks/images/0000000.png")
    assert written.shape == (16, 16) and set(np.unique(written).tolist()) == {0, 1}
    np.testing.assert_array_equal(png(out / "masks/images/0000001.png"), lungs(16, 16))
    assert png(out / "images/0000001.png").shape == (16, 16)
    Image.fromarray(lungs(16, 16, labels=(1, 2))).save(user / "c.png")
    with pytest.raises(ConfigError, match=r"label value\(s\) \[2\] are not among the run's mask labels \[0, 1\]"):
        generate(run, None, tmp_path / "bad", masks=user, quiet=True)
    with pytest.raises(ConfigError, match="leave out --n"):
        generate(run, 3, tmp_path / "bad", masks=user, quiet=True)
    cgan = train(tiny(cache, steps=1), tmp_path / "cgan", quiet=True)
    res = CliRunner().invoke(app, ["generate", str(cgan), "--masks", str(user), "--out", str(tmp_path / "bad")])
    assert isinstance(res.exception, ConfigError) and "only --model twostage runs do; this is cgan" in str(res.exception)


def test_a_style_coded_painter_trains_and_logs_its_diversity(tmp_path: Path, cache: Path) -> None:
    cfg = tiny(cache, model="twostage", stage="images", model_extra={"style_dim": 4, "mask_conditional": True})
    run = train(cfg, tmp_path / "styled", quiet=True)
    logged = rows(run / "images/losses.csv")
    assert len(logged) == 4 and all(float(r["diversity"]) > 0 for r in logged)
    G = load_generator(run)
    assert G.z_dim == 100 + 4 and G.masks.conditional


def test_stages_one_at_a_time_give_the_joined_generator_of_both(tmp_path: Path, cache: Path, run: Path) -> None:
    cfg = tiny(cache, model="twostage", sample_every=2, stage="images")
    staged = train(cfg, tmp_path / "staged", quiet=True)
    assert [s["stage"] for s in json.loads((staged / "run.json").read_text())["progress"]["stages"]] == ["images"]
    with pytest.raises(ConfigError, match="Stage I .* not trained; train it with --stage masks"):
        generate(staged, 2, tmp_path / "x", quiet=True)
    (tmp_path / "user").mkdir()
    Image.fromarray(lungs(16, 16)).save(tmp_path / "user" / "m.png")
    generate(staged, None, tmp_path / "painted", masks=tmp_path / "user", quiet=True)  # needs Stage II only
    res = CliRunner().invoke(app, ["train", "--resume", "--out", str(staged), "--stage", "masks", "--quiet"])
    assert res.exit_code == 0, res.output
    assert (staged / "generator.safetensors").read_bytes() == (run / "generator.safetensors").read_bytes()
    masks_only = train(tiny(cache, model="twostage", stage="masks", steps=1), tmp_path / "masks_only", quiet=True)
    with pytest.raises(ConfigError, match="Stage II .* not trained yet"):
        generate(masks_only, 2, tmp_path / "y", quiet=True)


def test_diffaugment_reaches_the_mask_stage_only(tmp_path: Path, cache: Path, run: Path) -> None:
    """On a small mask set the mask discriminator wins at once without augmentation (90 covid masks at 64 px:
    noise after 1,000 steps; lung pairs at 500 with DiffAugment); the painter is never augmented."""
    aug = train(tiny(cache, model="twostage", sample_every=2, augment="diffaugment"), tmp_path / "aug", quiet=True)
    plain, augmented = (load_checkpoint(r / "images" / "checkpoints" / "last.pt") for r in (run, aug))
    assert all(torch.equal(plain["D"][k], augmented["D"][k]) for k in plain["D"])  # Stage II: the same updates
    plain, augmented = (load_checkpoint(r / "masks" / "checkpoints" / "last.pt") for r in (run, aug))
    assert not all(torch.equal(plain["D"][k], augmented["D"][k]) for k in plain["D"])  # Stage I: augmented


@pytest.mark.parametrize("kill_at", [2, 5])  # a step of Stage I (3 steps), of Stage II
def test_each_stage_resumes_exactly_after_a_kill(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch,
                                                 kill_at: int) -> None:  # fmt: skip
    cfg = tiny(cache, model="twostage", steps=3)
    whole, resumed = whole_and_resumed(cfg, tmp_path, monkeypatch, kill_at)
    for sub in ("masks", "images"):
        assert rows(resumed / sub / "losses.csv") == rows(whole / sub / "losses.csv")
        a, b = (load_checkpoint(r / sub / "checkpoints/last.pt") for r in (whole, resumed))
        for key in ("G", "G_ema", "D"):
            assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), (sub, key)
    assert (resumed / "generator.safetensors").read_bytes() == (whole / "generator.safetensors").read_bytes()


def test_time_limit_is_split_between_the_stages(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake clock, 1 s per step: an 8 s limit gives Stage I 4 s (mask_share 0.5) and Stage II the rest; a resume
    with a larger limit continues Stage II only."""
    one_second_per_step(monkeypatch)
    cfg = tiny(cache, model="twostage", steps=100, ckpt_every=50)
    run = train(cfg, tmp_path / "run", quiet=True, time_limit_s=8)
    prog = json.loads((run / "run.json").read_text())["progress"]
    assert [(s["steps"], s["stop_reason"]) for s in prog["stages"]] == [(4, "time-limit"), (4, "time-limit")]
    assert prog["train_seconds"] == pytest.approx(8.0) and prog["stop_reason"] == "time-limit"
    train(None, run, resume=True, quiet=True, time_limit_s=10)
    prog = json.loads((run / "run.json").read_text())["progress"]
    assert [s["steps"] for s in prog["stages"]] == [4, 6]


def test_a_set_without_masks_is_refused_in_one_line(tmp_path: Path) -> None:
    spec = csv_set(tmp_path / "data", masked=())
    proc = run_cli("train", spec, "--model", "twostage", "--size", "16", "--steps", "1", "--out", str(tmp_path / "r"))
    assert_one_line_error(proc, "--model twostage trains on image + mask pairs", "?masks=only")
    assert not (tmp_path / "r").exists()


def test_a_set_without_labels_trains_and_generates(tmp_path: Path) -> None:
    spec = csv_set(tmp_path / "data", masked=range(8), labels=False) + "?masks=only"
    with pytest.raises(DataError, match="no labels .* only --model twostage"):
        train(tiny(tmp_path, data=spec), tmp_path / "cgan", quiet=True)
    run = train(tiny(tmp_path, data=spec, model="twostage", steps=2), tmp_path / "run", quiet=True)
    out = generate(run, 3, tmp_path / "out", quiet=True)
    table = pd.read_csv(out / "labels.csv")
    assert list(table.columns) == ["path", "patient_id", "mask"] and len(table) == 3
    assert all(set(np.unique(png(out / m)).tolist()) <= {0, 1} for m in table["mask"])
    assert load_generator(run).num_classes == 0


def test_only_images_with_a_mask_are_trained_on(tmp_path: Path) -> None:
    spec = csv_set(tmp_path / "data", n=16, masked=range(0, 16, 2))  # every other image has a mask
    run = train(tiny(tmp_path, data=spec, model="twostage", steps=1), tmp_path / "run", quiet=True)
    meta = json.loads((run / "run.json").read_text())
    ds = PreparedDataset(meta["data"]["cache"])
    masked = len(ds.mask_rows("train"))
    assert 0 < masked < len(ds.rows("train")) and meta["labels"]["train_images"] == masked
    positives = np.nan_to_num(ds.labels[ds.mask_rows("train")]).sum(axis=0)  # the label groups count masked rows
    assert [g["count"] for g in meta["groups"] if any(g["label"])] == positives.astype(int).tolist()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed support")
def test_two_gloo_ranks_train_both_stages_identically(tmp_path: Path, cache: Path) -> None:
    cfg = tiny(cache, model="twostage", steps=3, batch=4)
    mp.start_processes(_worker, args=(_free_port(), cfg, tmp_path / "run", tmp_path), nprocs=WORLD,
                       start_method="fork")  # fmt: skip
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True)["weights"] for r in range(WORLD))
    assert r0.keys() == r1.keys() and all(torch.equal(r0[k], r1[k]) for k in r0)  # Stage II's, dumped last
    for sub in ("masks", "images"):
        ck = load_checkpoint(tmp_path / "run" / sub / "checkpoints/last.pt")
        assert ck["world"] == WORLD and ck["images_seen"] == 3 * 4 * WORLD
    assert load_generator(tmp_path / "run").trained.tolist() == [1.0, 1.0]
