"""Reader study: the study file (seeded stratified mix of held-out real and synthetic images), the web app's
pages and errors (through Starlette's TestClient, no network), and the analysis statistics."""

from __future__ import annotations

import io
import json
import re
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from fastapi.testclient import TestClient
from PIL import Image
from scipy.stats import binomtest
from typer.testing import CliRunner

from conftest import run_cli
from medsyn.cli.reader_study import register
from medsyn.data.cache import PreparedDataset, prepare
from medsyn.data.phantom import PHANTOM_CLASSES, render_phantom
from medsyn.errors import ConfigError, DataError
from medsyn.generate.layout import Layout
from medsyn.readerstudy import Study, analyze, create_study, make_app, reader_study_section
from medsyn.readerstudy.analyze import kappa, rates
from medsyn.readerstudy.create import allocate

SIZE = 32


def write_synthetic(folder: Path, n: int = 60, seed: int = 7) -> Path:
    """A phantom set laid out as `medsyn generate` writes a csv-layout run (labels.csv + images + manifest)."""
    batch = render_phantom(n, SIZE, seed=seed, start=200_000)
    labels = batch.labels.astype(np.uint8)
    layout = Layout.for_source("csv", PHANTOM_CLASSES, {})
    paths = layout.image_paths(labels)
    folder.mkdir(parents=True)
    for rel, img in zip(paths, np.round(batch.images * 255).astype(np.uint8), strict=True):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0]).save(folder / rel)
    layout.write_labels(folder, folder.name, paths, labels)
    manifest = {"format": "medsyn-synthetic", "layout": "csv", "labels_file": "labels.csv", "images": n, "seed": 0}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def make_study(tmp: Path, n: int = 24, seed: int = 0, by_class: bool = False, name: str = "study.sqlite") -> Path:
    real = tmp / "real"
    if not (real / "meta.json").is_file():
        prepare("phantom?n=160", SIZE, real, quiet=True)
    syn = tmp / "synthetic"
    if not syn.exists():
        write_synthetic(syn)
    create_study(str(real), syn, tmp / name, n=n, seed=seed, by_class=by_class, quiet=True)
    return tmp / name


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    return make_study(tmp_path_factory.mktemp("rs"))


def _pixels(png: bytes) -> bytes:
    return np.asarray(Image.open(io.BytesIO(png))).tobytes()


def _stored(path: Path) -> pd.DataFrame:
    with Study(path).connect() as con:
        return pd.read_sql("SELECT id, truth, grp, png FROM images", con)


def test_study_mixes_half_held_out_real_and_half_synthetic(study):
    images = _stored(study)
    assert len(images) == 24 and (images["truth"] == "real").sum() == 12
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in images["id"])
    ds = PreparedDataset(study.parent / "real")
    pix = {_pixels(p) for p in images.loc[images["truth"] == "real", "png"]}
    held = {np.asarray(ds.images[r][0]).tobytes() for r in np.concatenate([ds.rows("val"), ds.rows("test")])}
    train = {np.asarray(ds.images[r][0]).tobytes() for r in ds.rows("train")}
    assert pix <= held and not pix & train  # held-out patients only, never a training image


def test_same_seed_same_images_and_by_class_balances_groups(study, tmp_path):
    again = make_study(study.parent, seed=0, name="again.sqlite")
    other = make_study(study.parent, seed=1, name="other.sqlite")
    pix = [{_pixels(p) for p in _stored(s)["png"]} for s in (study, again, other)]
    assert pix[0] == pix[1] and pix[0] != pix[2]
    balanced = _stored(make_study(study.parent, n=20, by_class=True, name="by-class.sqlite"))
    counts = balanced.groupby(["grp", "truth"]).size().unstack(fill_value=0)
    assert (counts["real"] == counts["synthetic"]).all() and counts.to_numpy().sum() == 20


def test_allocate_spreads_evenly_within_what_each_group_has():
    assert allocate({"a": 10, "b": 1, "c": 10}, 9) == {"a": 4, "b": 1, "c": 4}
    with pytest.raises(ConfigError, match="--n 4 or fewer"):
        allocate({"a": 1, "b": 1}, 3)


def test_bad_create_inputs_are_one_line_errors(study, tmp_path):
    with pytest.raises(ConfigError, match="even"):
        create_study(str(study.parent / "real"), study.parent / "synthetic", tmp_path / "x.sqlite", n=7)
    with pytest.raises(DataError, match="exists"):
        make_study(study.parent)  # never overwrites a study (it may hold answers)
    with pytest.raises(ConfigError, match="or fewer"):
        create_study(str(study.parent / "real"), study.parent / "synthetic", tmp_path / "x.sqlite", n=1000)
    result = run_cli("reader-study", "analyze", str(tmp_path / "missing.sqlite"), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "study file not found" in result.stderr and "Traceback" not in result.stderr


def _png_chunks(png: bytes) -> list[str]:
    pos, names = 8, []
    while pos < len(png):
        length = struct.unpack(">I", png[pos : pos + 4])[0]
        names.append(png[pos + 4 : pos + 8].decode("ascii"))
        pos += 12 + length
    return names


def _start(client: TestClient, name: str) -> str:
    resp = client.post("/start", data={"name": name}, follow_redirects=False)
    assert resp.status_code == 303
    return resp.headers["location"].rsplit("/", 1)[1]


def _next_id(client: TestClient, token: str) -> str | None:
    m = re.search(r'name="image_id" value="([0-9a-f]+)"', client.get(f"/r/{token}").text)
    return m.group(1) if m else None


def test_served_pages_and_images_reveal_no_source_or_truth(study):
    ds = PreparedDataset(study.parent / "real")
    secrets_ = {str(study.parent), "phantom", "labels.csv", "images/", ".png", "manifest"}
    secrets_ |= {str(p) for p in ds.index["patient_id"].unique() if len(str(p)) > 3}
    truth = dict(_stored(study)[["id", "truth"]].itertuples(index=False))
    client = TestClient(make_app(study, "admin-secret"))
    token = _start(client, "ada")
    pages: dict[str, str] = {}
    while (image_id := _next_id(client, token)) is not None:
        page = client.get(f"/r/{token}").text
        pages[image_id] = page.replace(image_id, "ID")
        png = client.get(f"/r/{token}/image/{image_id}").content
        assert _png_chunks(png) in (["IHDR", "IDAT", "IEND"], ["IHDR", "IDAT", "IDAT", "IEND"])
        assert not any(s.encode() in png for s in secrets_)
        client.post(f"/r/{token}/answer", data={"image_id": image_id, "answer": "real", "confidence": "3"})
    served = [
        *pages.values(),
        client.get("/").text,
        client.get(f"/r/{token}").text,
        client.get(f"/r/{token}/stop").text,
    ]
    assert not [s for s in secrets_ for text in served if s in text]
    # a page differs between images only in its id and progress: nothing on it tells real from synthetic
    strip = [re.sub(r"\d+", "#", p) for p in pages.values()]
    assert len(set(strip)) == 1 and {truth[i] for i in pages} == {"real", "synthetic"}


def test_requests_that_cannot_be_served_are_clear_4xx(study, tmp_path):
    path = make_study(study.parent, name="errors.sqlite")
    client = TestClient(make_app(path, "admin-secret"))  # raises on any server error (500)
    token = _start(client, "bob")
    image_id = _next_id(client, token)
    good = {"image_id": image_id, "answer": "synthetic", "confidence": "4"}
    assert client.post(f"/r/{token}/answer", data=good, follow_redirects=False).status_code == 303
    cases = [
        (client.post(f"/r/{token}/answer", data=good), 409, "already answered"),
        (client.post(f"/r/{token}/answer", data={**good, "confidence": "9"}), 422, "confidence must be 1 to 5"),
        (client.post(f"/r/{token}/answer", data={**good, "confidence": "high"}), 422, "confidence"),
        (client.post(f"/r/{token}/answer", data={**good, "answer": "maybe"}), 422, "answer must be"),
        (client.post(f"/r/{token}/answer", data={"image_id": image_id}), 422, "answer"),
        (client.post(f"/r/{token}/answer", json=good), 422, "image_id"),
        (client.post(f"/r/{token}/answer", data={**good, "image_id": "0" * 16}), 404, "no such image"),
        (client.post(f"/r/{token}/answer", data={**good, "finding": "Fracture"}), 422, "unknown finding"),
        (client.post("/r/nope/answer", data=good), 404, "unknown reader"),
        (client.get("/r/nope"), 404, "unknown reader"),
        (client.get(f"/r/{token}/image/{'f' * 16}"), 404, "no such image"),
        (client.get("/resume", params={"token": "nope"}), 404, "unknown reader"),
        (client.post("/start", data={"name": "bob"}), 409, "taken"),
        (client.post("/start", data={"name": "   "}), 422, "1 to 80"),
        (client.post("/admin/login", data={"token": "wrong"}), 403, "wrong admin token"),
        (client.get("/admin/counts.json"), 403, "admin only"),
        (client.get("/admin/counts.json", headers={"Authorization": "Bearer wrong"}), 403, "admin only"),
        (client.get("/nowhere"), 404, "Not Found"),
        (client.delete(f"/r/{token}"), 405, "Method Not Allowed"),
    ]
    for resp, status, text in cases:
        assert (resp.status_code, text in resp.text) == (status, True), (status, resp.text[-300:])
    counts = client.get("/admin/counts.json", headers={"Authorization": "Bearer admin-secret"}).json()
    assert counts["answers"] == 1 and counts["readers"][0]["name"] == "bob"


def test_admin_token_never_travels_in_a_url(study):
    """The token is typed into a form once (then an HttpOnly cookie) or sent as a header; a token in the
    query string opens nothing, so it never needs to appear in history or logs."""
    client = TestClient(make_app(study, "admin-secret"))
    assert "admin-login" in client.get("/admin", params={"token": "admin-secret"}).text  # still the sign-in form
    assert client.get("/admin/counts.json", params={"token": "admin-secret"}).status_code == 403
    signed_in = client.post("/admin/login", data={"token": "admin-secret"})
    assert signed_in.status_code == 200 and "live counts" in signed_in.text and "admin-secret" not in signed_in.text
    cookie = signed_in.history[0].headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "admin-secret" not in cookie
    assert client.get("/admin/counts.json").json()["images"] > 0  # the session cookie


def test_a_reader_stops_and_resumes_where_they_left_off(study):
    path = make_study(study.parent, name="resume.sqlite")
    first = TestClient(make_app(path))
    token = _start(first, "cy")
    for _ in range(3):
        first.post(f"/r/{token}/answer", data={"image_id": _next_id(first, token), "answer": "real", "confidence": "2"})
    where = _next_id(first, token)
    assert "3 of 24 answers are saved" in first.get(f"/r/{token}/stop").text
    later = TestClient(make_app(path))  # a new server process, as after a restart
    resp = later.get("/resume", params={"token": token})
    assert resp.status_code == 200 and f'value="{where}"' in resp.text and 'value="3"' in resp.text
    other = _start(later, "di")
    assert Study(path).reader(token)[1] != Study(path).reader(other)[1]  # each reader has their own order


def _frame(rows: list[tuple[str, str, str, str, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["reader", "image", "truth", "answer", "confidence"])


def test_rates_and_kappa_match_their_definitions():
    truth = ["real"] * 6 + ["synthetic"] * 4
    perfect = _frame([("a", f"i{k}", t, t, 5) for k, t in enumerate(truth)])
    r = rates(perfect)
    assert r["accuracy"]["value"] == 1.0 and r["auroc"] == 1.0
    assert r["p_value_vs_chance"] == pytest.approx(2 * 0.5**10)
    ci = binomtest(10, 10).proportion_ci(method="exact")
    assert (r["accuracy"]["ci_low"], r["accuracy"]["ci_high"]) == pytest.approx((ci.low, ci.high))
    always_real = rates(_frame([("b", f"i{k}", t, "real", 3) for k, t in enumerate(truth)]))
    assert always_real["sensitivity"]["value"] == 0.0 and always_real["specificity"]["value"] == 1.0
    assert always_real["accuracy"]["value"] == 0.6 and always_real["auroc"] == 0.5
    both = pd.concat([perfect, _frame([("b", f"i{k}", t, t, 2) for k, t in enumerate(truth)])])
    assert kappa(both)["value"] == pytest.approx(1.0)
    # two readers who disagree on every image: observed agreement 0, expected 0.5 -> kappa -1
    flip = {"real": "synthetic", "synthetic": "real"}
    opposed = pd.concat([perfect, _frame([("c", f"i{k}", t, flip[t], 1) for k, t in enumerate(truth)])])
    assert kappa(opposed)["value"] == pytest.approx(-1.0)
    assert kappa(perfect)["value"] is None and "two readers" in kappa(perfect)["note"]


def test_analysis_counts_every_answer_and_writes_the_page(study, tmp_path):
    path = make_study(study.parent, name="analysis.sqlite")
    client = TestClient(make_app(path))
    truth = dict(_stored(path)[["id", "truth"]].itertuples(index=False))
    for name, right in (("e", True), ("f", False)):
        token = _start(client, name)
        for k in range(24 if right else 10):
            image_id = _next_id(client, token)
            answer = truth[image_id] if right else "real"
            client.post(
                f"/r/{token}/answer", data={"image_id": image_id, "answer": answer, "confidence": str(k % 5 + 1)}
            )
    section = analyze(path, tmp_path / "out")
    assert section == json.loads((tmp_path / "out" / "reader_study.json").read_text())
    assert section["study"]["answers"] == 34 and section["study"]["complete_readers"] == 1
    e, f = section["readers"]
    assert (e["reader"], e["accuracy"]["value"], f["answered"]) == ("e", 1.0, 10)
    assert section["pooled"]["accuracy"]["n"] == 34
    assert sum(v["n"] for v in section["by_confidence"].values()) == 34
    assert sum(v["n"] for v in section["by_group"].values()) == 34
    assert section["fleiss_kappa"]["images"] == 10
    page = (tmp_path / "out" / "report.html").read_text()
    assert section["verdict"] in page and page.count("data:image/png;base64,") == 3
    assert len(pd.read_csv(tmp_path / "out" / "answers.csv")) == 34
    assert reader_study_section(path)["pooled"] == section["pooled"]


def test_cli_create_and_analyze(study, tmp_path):
    app = typer.Typer()
    register(app)
    out = tmp_path / "cli.sqlite"
    result = CliRunner().invoke(app, ["reader-study", "create", "--real", str(study.parent / "real"), "--synthetic",
                                      str(study.parent / "synthetic"), "--n", "10", "--out", str(out), "--by-class",
                                      "--quiet"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "10 images (5 real held-out, 5 synthetic)" in result.output
    result = CliRunner().invoke(app, ["reader-study", "analyze", str(out), "--out", str(tmp_path / "res")])
    assert result.exit_code == 0 and "no answers yet" in result.output


def test_evaluate_folds_the_reader_study_into_its_report(study, tmp_path):
    """`medsyn evaluate --reader-study FILE`: the analysis is a report section; a wrong file fails first."""
    from medsyn.evaluate import evaluate
    from medsyn.report.html import _reader_study

    path = make_study(study.parent, name="folded.sqlite")
    client = TestClient(make_app(path))
    truth = dict(_stored(path)[["id", "truth"]].itertuples(index=False))
    token = _start(client, "g")
    for _ in range(6):
        image_id = _next_id(client, token)
        client.post(f"/r/{token}/answer", data={"image_id": image_id, "answer": truth[image_id], "confidence": "4"})
    section = reader_study_section(path)
    html = _reader_study({"reader_study": section})
    assert "Reader study: can people tell?" in html and section["verdict"].split()[0] in html
    assert "100.0%" in html and "(6 of 6," in html  # pooled accuracy with its k of n
    assert _reader_study({}) == ""
    with pytest.raises(DataError, match="study file not found"):  # before any data is read or model trained
        evaluate("phantom?n=40", tmp_path / "no-synthetic", tmp_path / "eval", reader_study=tmp_path / "none.sqlite")
