"""Benchmark: patient re-identification and a TRTR baseline on the NIH ChestX-ray14 sample (CPU).

    .venv/bin/python benchmarks/bench_reid_nih.py [--data DIR] [--threads 2] [--epochs 15] [--no-trtr]

Data: Data_Entry_2017.csv + images/ (the 703-image, 192-patient, 64 px sample). Patients are split
60/15/25 into train / val / test. The re-id network trains on same/different-patient pairs of train
patients, stops early on val patients, and is scored on pairs of test patients (never seen). As a
sanity check of the linkage step, near-copies of training images (+ small noise) and real test images
stand in for a leaking and a non-leaking synthetic set. TRTR: smallcnn, 'any finding' vs 'No Finding'.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from medsyn.evaluate.classifier import ClassifierConfig, train_classifier
from medsyn.evaluate.privacy.linkage import match_synthetic
from medsyn.evaluate.privacy.reid import HEADS, ReidConfig, train_reid
from medsyn.evaluate.privacy.verification import verification_auroc
from medsyn.evaluate.utility import per_class_auroc

DATA = Path("/work/shared/data/nih-cxr14-sample")


def load(data: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 images (N, 1, S, S), 'any finding' labels (N, 1), patient ids; via the data layer if present."""
    try:
        from medsyn.data import open_dataset
    except ImportError:  # data layer not installed yet: read the CSV and PNGs directly
        import pandas as pd
        from PIL import Image

        table = pd.read_csv(data / "Data_Entry_2017.csv")
        images = np.stack([np.asarray(Image.open(data / "images" / f).convert("L"))[None]
                           for f in table["Image Index"]])
        any_finding = (table["Finding Labels"] != "No Finding").to_numpy(np.float32)[:, None]
        return images, any_finding, table["Patient ID"].astype(str).to_numpy()
    src = open_dataset(f"nih:{data}")
    images = np.stack([np.round(src.read_image(i) * 255).astype(np.uint8) for i in range(len(src))])
    any_finding = (np.nan_to_num(src.labels()) > 0).any(axis=1).astype(np.float32)[:, None]
    return images, any_finding, src.table["patient_id"].astype(str).to_numpy()


def split_patients(ids: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Row indices per split; each patient in exactly one split (60/15/25 of patients)."""
    uniq = np.random.default_rng(seed).permutation(np.unique(ids))
    n_train, n_val = int(0.6 * len(uniq)), int(0.15 * len(uniq))
    parts = {"train": uniq[:n_train], "val": uniq[n_train:n_train + n_val], "test": uniq[n_train + n_val:]}
    return {name: np.flatnonzero(np.isin(ids, members)) for name, members in parts.items()}


def ci(d: dict, lo: str = "ci_low", hi: str = "ci_high") -> str:
    return f"[{d[lo]:.3f}, {d[hi]:.3f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--encoder", default="smallcnn")
    ap.add_argument("--head", default="cosine", choices=HEADS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-trtr", action="store_true")
    args = ap.parse_args()
    if not (args.data / "Data_Entry_2017.csv").exists():
        raise SystemExit(f"no NIH sample at {args.data} (need Data_Entry_2017.csv and images/)")
    torch.set_num_threads(args.threads)
    t0 = time.time()
    images, any_finding, ids = load(args.data)
    rows = split_patients(ids, args.seed)
    print(f"loaded {len(images)} images of {len(np.unique(ids))} patients, size {images.shape[-1]} px "
          f"({time.time() - t0:.1f} s); split images " + ", ".join(f"{k}={len(v)}" for k, v in rows.items()))
    tr, va, te = rows["train"], rows["val"], rows["test"]

    t = time.time()
    cfg = ReidConfig(encoder=args.encoder, head=args.head, epochs=args.epochs, steps_per_epoch=args.steps,
                     seed=args.seed, patience=4)
    model = train_reid(images[tr], ids[tr], cfg, val_images=images[va], val_patient_ids=ids[va])
    hist = model.history
    print(f"re-id: {args.encoder} + {args.head} head, {len(hist['epochs'])} epochs x {args.steps} steps x "
          f"{cfg.batch_pairs} pairs, best epoch {hist['best_epoch']} "
          f"(val AUROC {hist['best_val_auroc']:.3f}), {time.time() - t:.0f} s")
    ver = verification_auroc(model, images[te], ids[te], seed=args.seed)
    print(f"re-id verification AUROC on held-out patients: {ver['auroc']:.3f} 95% CI {ci(ver)} "
          f"({ver['n_patients']} patients, {ver['n_positive_pairs']} same-patient / "
          f"{ver['n_negative_pairs']} different-patient pairs, patient bootstrap n={ver['n_bootstrap']})")
    for fpr, e in ver["thresholds"].items():
        print(f"  pair threshold at FPR {fpr}: logit {e['threshold']:.2f}, TPR {e['tpr']:.3f}")

    rng = np.random.default_rng(args.seed)
    noisy = np.clip(images[tr].astype(np.float32) + rng.normal(0, 3, images[tr].shape), 0, 255) / 255
    for name, synth in (("near-copies of train images", noisy.astype(np.float32)),
                        ("real test images (unseen patients)", images[te])):
        res = match_synthetic(model, synth, images[tr], ids[tr], ver, at_fpr=0.01, heldout_images=images[va])
        cal = "; ".join(f"{g['synthetic']['fraction']:.3f} {ci(g['synthetic'])} above the gallery threshold "
                        f"passed by {float(f):.0%} of val images" for f, g in res["gallery_calibrated"].items())
        print(f"  linkage, {name}: {res['synthetic']['fraction']:.3f} above pair threshold FPR 0.01 "
              f"(val-image baseline {res['heldout_baseline']['fraction']:.3f}); {cal}")

    if not args.no_trtr:
        t = time.time()
        ccfg = ClassifierConfig(model="smallcnn", epochs=15, patience=4, seed=args.seed)
        clf, info = train_classifier(images[tr], any_finding[tr], images[va], any_finding[va], ccfg)
        res = per_class_auroc(clf, images[te], any_finding[te], ids[te], classes=["any finding"])
        e = res["classes"]["any finding"]
        print(f"TRTR smallcnn 'any finding' vs 'No Finding': AUROC {e['auroc']:.3f} 95% CI {ci(e)} "
              f"({e['n_pos']} pos / {e['n_neg']} neg test images, {res['n_patients']} patients; best epoch "
              f"{info['best_epoch']}, {time.time() - t:.0f} s)")
    print(f"total {time.time() - t0:.0f} s on {args.threads} CPU threads (CPU shared with other jobs)")


if __name__ == "__main__":
    main()
