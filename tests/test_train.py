"""Training engine: run folder contents, exact resume, atomic checkpoints, divergence guard, CLI."""

from __future__ import annotations

import csv
import errno
from pathlib import Path

import pytest
import torch
import typer
import yaml
from train_helpers import kill_at_step, one_second_per_step, tiny
from typer.testing import CliRunner

from medsyn import __version__
from medsyn.cli.train import register
from medsyn.data.cache import prepare
from medsyn.errors import CheckpointError, ConfigError, MedsynError
from medsyn.models.diffusion import DiffusionGenerator
from medsyn.train import TrainConfig, losses, train
from medsyn.train.checkpoint import load_checkpoint

LOSS_COLUMNS_SKIP = {"img_per_s"}  # wall-clock rate: the only column that may differ between runs
DDPM_TINY = {"mult": [1, 2], "attention": [False, True], "res_blocks": 1, "ddim_steps": 2}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare("phantom?n=64&seed=0", 16, tmp_path_factory.mktemp("cache") / "phantom16", quiet=True).path




def loss_rows(run: Path, sub: str = ".") -> list[dict[str, str]]:
    with open(run / sub / "losses.csv", newline="") as fh:
        return [{k: v for k, v in r.items() if k not in LOSS_COLUMNS_SKIP} for r in csv.DictReader(fh)]


def weights(path: Path) -> dict[str, torch.Tensor]:
    ck = torch.load(path, map_location="cpu", weights_only=True)
    return {f"{part}.{k}": v for part in ("G", "D", "G_ema") if part in ck for k, v in ck[part].items()}


def test_config_yaml_roundtrip_and_validation(tmp_path: Path, cache: Path) -> None:
    cfg = tiny(cache, model="stylegan2", augment="ada", classes=["Effusion"]).resolved()
    (tmp_path / "c.yaml").write_text(cfg.to_yaml())
    assert TrainConfig.from_yaml(tmp_path / "c.yaml") == cfg
    assert cfg.lr_g == 2.5e-3 and cfg.r1_gamma == 0.1 and cfg.loss == "ns"  # model defaults filled in
    with pytest.raises(ConfigError, match="unknown model"):
        tiny(cache, model="vqgan").resolved()
    with pytest.raises(ConfigError, match="size 20"):
        tiny(cache, size=20).resolved()
    with pytest.raises(ConfigError, match="lr"):
        TrainConfig.from_dict({**cfg.to_dict(), "lr": 1.0})
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        train(tiny(cache, precision="fp16"), tmp_path / "run")


def test_run_folder_contents(tmp_path: Path, cache: Path) -> None:
    run = train(tiny(cache, model="acgan", augment="diffaugment", sample_every=2), tmp_path / "run", quiet=True)
    for name in (
        "config.yaml",
        "run.json",
        "losses.csv",
        "losses.png",
        "checkpoints/last.pt",
        "checkpoints/previous.pt",
        "samples/step-0000002.png",
        "samples/step-0000004.png",
    ):
        assert (run / name).is_file(), name  # fmt: skip
    ck = load_checkpoint(run / "checkpoints" / "last.pt")  # weights_only=True inside
    assert ck["step"] == 4 and ck["images_seen"] == 32 and ck["medsyn_version"] == __version__
    for key in ("G", "D", "G_ema", "opt_g", "opt_d", "scaler_g", "scaler_d", "rng", "sampler_position", "config"):
        assert key in ck
    assert load_checkpoint(run / "checkpoints" / "previous.pt")["step"] == 2
    rows = loss_rows(run)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4] and set(rows[0]) >= {"d_loss", "g_loss", "cls_loss"}
    assert TrainConfig.from_yaml(run / "config.yaml") == tiny(cache, model="acgan", augment="diffaugment",
                                                                sample_every=2).resolved()  # fmt: skip


@pytest.mark.parametrize("model,extra", [("acgan", {"augment": "diffaugment"}),
                                         ("stylegan2", {"augment": "ada", "r1_every": 2}),
                                         ("ddpm", {"model_extra": DDPM_TINY})])  # fmt: skip
def test_resume_after_kill_is_exact(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, model: str,
                                    extra: dict) -> None:  # fmt: skip
    """6 steps in one go == killed during step 6 (checkpoint at 4, rows logged to 5) + --resume."""
    cfg = tiny(cache, model=model, steps=6, ckpt_every=4, **extra)
    whole = train(cfg, tmp_path / "whole", quiet=True)
    kill_at_step(monkeypatch, 6)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "killed", quiet=True)
    assert len(loss_rows(tmp_path / "killed")) == 5
    monkeypatch.undo()
    resumed = train(None, tmp_path / "killed", resume=True, quiet=True)
    assert loss_rows(resumed) == loss_rows(whole)
    a, b = weights(whole / "checkpoints/last.pt"), weights(resumed / "checkpoints/last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_extends_a_finished_run(tmp_path: Path, cache: Path) -> None:
    whole = train(tiny(cache, steps=6, ckpt_every=3), tmp_path / "whole", quiet=True)
    part = train(tiny(cache, steps=3, ckpt_every=3), tmp_path / "part", quiet=True)
    train(tiny(cache, steps=6, ckpt_every=3), part, resume=True, quiet=True)
    assert loss_rows(part) == loss_rows(whole)
    with pytest.raises(ConfigError, match="seed"):
        train(tiny(cache, steps=8, seed=1), part, resume=True)
    with pytest.raises(ConfigError, match="already holds"):
        train(tiny(cache), part)


def test_time_limit_stops_with_a_checkpoint_and_counts_resumed_time(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fake clock advancing 1 s per step: a 3.5 s limit stops at the first step past it (step 4),
    checkpointed; resuming with the same limit trains no further, a larger one continues."""
    one_second_per_step(monkeypatch)
    cfg = tiny(cache, steps=100, log_every=2, ckpt_every=50)
    run = train(cfg, tmp_path / "run", quiet=True, time_limit_s=3.5)
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ck["step"] == 4 and ck["train_seconds"] == pytest.approx(4.0)
    train(None, run, resume=True, quiet=True, time_limit_s=3.5)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 4
    train(None, run, resume=True, quiet=True, time_limit_s=7.5)
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ck["step"] == 8 and ck["train_seconds"] == pytest.approx(8.0)
    with pytest.raises(ConfigError, match="time limit"):
        train(cfg, tmp_path / "bad", time_limit_s=0)
    # the clock is read after every step, not only at log steps: slow steps do not overrun the budget
    sparse = train(tiny(cache, steps=100, log_every=50, ckpt_every=50), tmp_path / "sparse", quiet=True, time_limit_s=2.5)
    assert load_checkpoint(sparse / "checkpoints" / "last.pt")["step"] == 3


def test_disk_full_keeps_last_good_checkpoint(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saves = {"n": 0}
    real_save = torch.save

    def full_disk(*a: object, **kw: object) -> None:
        saves["n"] += 1
        if saves["n"] == 3:  # checkpoints at steps 0, 2 succeed; step 4 hits a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(*a, **kw)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match="disk full") as err:
        train(tiny(cache), tmp_path / "run", quiet=True)
    assert "\n" not in str(err.value)
    ckpts = tmp_path / "run" / "checkpoints"
    assert load_checkpoint(ckpts / "last.pt")["step"] == 2
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.pt", "previous.pt"]  # no temporary left behind


def test_damaged_last_checkpoint_falls_back_to_previous(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 16.8: a truncated last.pt is detected, said in one line, and --resume continues from previous.pt."""
    whole = train(tiny(cache, steps=6), tmp_path / "whole", quiet=True)
    run = train(tiny(cache, steps=4), tmp_path / "run", quiet=True)  # checkpoints at 2 (previous) and 4 (last)
    last = run / "checkpoints" / "last.pt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    train(tiny(cache, steps=6), run, resume=True, quiet=True)
    said = capsys.readouterr().err
    assert "last.pt is damaged (truncated" in said and "previous.pt" in said
    assert loss_rows(run) == loss_rows(whole)  # steps 3-4 trained again from step 2, exactly as before
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 6


def test_damaged_checkpoints_and_foreign_run_are_one_line_errors(tmp_path: Path, cache: Path) -> None:
    run = train(tiny(cache, steps=2), tmp_path / "run", quiet=True)
    ckpts = run / "checkpoints"
    saved = {name: (ckpts / name).read_bytes() for name in ("last.pt", "previous.pt")}
    for name, data in saved.items():
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0xFF  # one bit-flipped byte inside a stored tensor: a CRC mismatch
        (ckpts / name).write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="damaged checkpoint") as err:
        train(None, run, resume=True)
    assert "\n" not in str(err.value) and "previous.pt is damaged too" in str(err.value)
    for name, data in saved.items():
        (ckpts / name).write_bytes(data)
    meta = (run / "run.json").read_text().replace(f'"medsyn_version": "{__version__}"', '"medsyn_version": "0.0.1"')
    (run / "run.json").write_text(meta)
    with pytest.raises(CheckpointError, match="0.0.1"):
        train(None, run, resume=True)


def test_divergence_rolls_back_then_gives_up(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    real_loss = losses.d_loss
    calls = {"n": 0}

    def nan_once_at_step_3(kind: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        out = real_loss(kind, real, fake)
        return out * float("nan") if calls["n"] == 3 else out

    monkeypatch.setattr(losses, "d_loss", nan_once_at_step_3)
    run = train(tiny(cache, steps=4), tmp_path / "run", quiet=True)
    assert "rolled back to step 2" in capsys.readouterr().err
    rows = loss_rows(run)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4] and all(r["d_loss"] != "nan" for r in rows)
    lr = load_checkpoint(run / "checkpoints/last.pt")["opt_d"]["param_groups"][0]["lr"]
    assert lr == pytest.approx(1e-4)  # halved by the rollback

    monkeypatch.setattr(losses, "d_loss", lambda kind, real, fake: real_loss(kind, real, fake) * float("nan"))
    with pytest.raises(MedsynError, match="diverged") as err:
        train(tiny(cache, steps=4, max_rollbacks=2), tmp_path / "bad", quiet=True)
    assert "\n" not in str(err.value)


def test_diffusion_divergence_rolls_back_and_gan_options_are_refused(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The ddpm step runs under the same guard: a NaN loss at step 3 rolls back to the step-2 checkpoint."""
    real_loss = DiffusionGenerator.loss
    calls = {"n": 0}

    def nan_once_at_step_3(self: DiffusionGenerator, x0: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        calls["n"] += 1
        out = real_loss(self, x0, y)
        return out * float("nan") if calls["n"] == 3 else out

    monkeypatch.setattr(DiffusionGenerator, "loss", nan_once_at_step_3)
    run = train(tiny(cache, model="ddpm", model_extra=DDPM_TINY), tmp_path / "run", quiet=True)
    assert "rolled back to step 2" in capsys.readouterr().err
    assert [r["loss"] != "nan" for r in loss_rows(run)] == [True] * 4
    ck = load_checkpoint(run / "checkpoints/last.pt")
    assert ck["opt"]["param_groups"][0]["lr"] == pytest.approx(1e-4) and "D" not in ck  # halved; no critic
    for gan_only in ({"loss": "hinge"}, {"lr_d": 1e-3}, {"augment": "ada"}):
        with pytest.raises(ConfigError, match="only apply to GANs"):
            train(tiny(cache, model="ddpm", **gan_only), tmp_path / "no")


def test_dcgan_trains_one_generator_per_class(tmp_path: Path, cache: Path) -> None:
    run = train(tiny(cache, model="dcgan", steps=2, classes=["Effusion", "Nodule"], loss="wgan-gp",
                     sample_every=2), tmp_path / "run", quiet=True)  # fmt: skip
    subs = sorted(p.name for p in (run / "classes").iterdir())
    assert subs == ["00-effusion", "01-nodule", "02-no-finding"]
    for sub in subs:
        assert (run / "classes" / sub / "checkpoints/last.pt").is_file()
        assert (run / "classes" / sub / "samples/step-0000002.png").is_file()
        assert "gp" in loss_rows(run, f"classes/{sub}")[0]
    assert load_checkpoint(run / "classes/01-nodule/checkpoints/last.pt")["model"]["extra"] == {"d_norm": "none"}


def test_cli_train_and_config_reproduces(tmp_path: Path, cache: Path) -> None:
    app = typer.Typer()
    register(app)
    app.callback()(lambda: None)
    runner = CliRunner()
    args = ["train", str(cache), "--model", "cgan", "--size", "16", "--steps", "3", "--batch", "8", "--width", "8",
            "--log-every", "1", "--device", "cpu", "--out", str(tmp_path / "a"), "--quiet"]  # fmt: skip
    assert runner.invoke(app, args).exit_code == 0
    again = ["train", "--config", str(tmp_path / "a" / "config.yaml"), "--out", str(tmp_path / "b"), "--quiet"]
    assert runner.invoke(app, again).exit_code == 0
    assert loss_rows(tmp_path / "a") == loss_rows(tmp_path / "b")
    assert yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())["model"] == "cgan"
    # a settings file without the data, beside a SPEC on the command line (it used to be refused: no 'data')
    (tmp_path / "settings.yaml").write_text("model: cgan\nsteps: 3\nbatch: 8\nwidth: 8\nsize: 16\nlog_every: 1\n")
    beside = ["train", str(cache), "--config", str(tmp_path / "settings.yaml"), "--device", "cpu", "--out",
              str(tmp_path / "s"), "--quiet"]  # fmt: skip
    assert runner.invoke(app, beside).exit_code == 0
    assert yaml.safe_load((tmp_path / "s" / "config.yaml").read_text())["data"] == str(cache.absolute())
    bad = runner.invoke(app, ["train", str(cache), "--model", "vqgan", "--out", str(tmp_path / "c")])
    assert isinstance(bad.exception, ConfigError)
